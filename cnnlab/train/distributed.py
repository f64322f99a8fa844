"""Training as one process of many: the process group, DDP around the network, sums over the ranks.

``fit`` asks ``join`` whether torch.distributed is initialized with more than one process. If so it trains
through DistributedDataParallel (gradients averaged over the ranks in every step), takes its ``Shard`` of each
global batch and sums its totals over the ranks, so every rank logs the same numbers and its callbacks
(EarlyStopping, TerminateOnNaN) decide alike; rank 0 alone writes the run folder. Who starts the processes is
not this module's business: torchrun (``init_from_env``) or Ray Train, which initializes the group itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cnnlab.core.errors import ConfigError
from cnnlab.core.runtime import THREADS_ENV, configure_threads, pick_device
from cnnlab.train.feed import ALONE, Shard


def current_shard() -> Shard:
    """This process's place in the initialized process group; ALONE without one (or in a group of one)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return Shard(dist.get_rank(), dist.get_world_size())
    return ALONE


def is_main_process() -> bool:
    """Whether this process writes the files and prints: rank 0, or the only process."""
    return current_shard().rank == 0


def join(model, params: dict, verbose: int) -> tuple[Shard, DistributedDataParallel | None]:
    """fit's shard and the DDP wrapper its training step calls (None for one process); ``params`` (fit's,
    which callbacks and config.json see) gain ``world``, the number of processes.

    ``params["batch_size"]`` is the global batch: each rank takes ``batch_size / world`` images of it and DDP
    averages the ranks' gradients, the gradient of the whole global batch, so the learning rate stays as given.
    Building the wrapper broadcasts rank 0's weights and buffers, so every rank starts from the same network."""
    shard = current_shard()
    if shard.world == 1:
        return shard, None
    batch_size, samples = params["batch_size"], params["samples"]
    if batch_size % shard.world:
        raise ConfigError(
            f"a global batch of {batch_size} does not split evenly among {shard.world} processes; "
            f"give a batch size that is a multiple of {shard.world}"
        )
    if samples < 2 * shard.world:
        raise ConfigError(f"{samples} training images cannot give each of {shard.world} processes two; use fewer")
    if verbose and shard.rank == 0:
        print(
            f"global batch {batch_size} = {shard.world} processes x {batch_size // shard.world}; "
            f"learning rate {model.learning_rate} as given (not scaled)",
            flush=True,
        )
    params["world"], device = shard.world, model.device
    ids = [torch.cuda.current_device() if device.index is None else device.index] if device.type == "cuda" else None
    return shard, DistributedDataParallel(model.network, device_ids=ids)


def sum_over_ranks(totals: torch.Tensor, shard: Shard) -> torch.Tensor:
    """``totals`` summed over every rank (in place): each rank then holds the same sums."""
    if shard.world > 1:
        dist.all_reduce(totals)
    return totals


def share_buffers(network: nn.Module, shard: Shard) -> None:
    """Give every rank rank 0's buffers (BatchNorm's running statistics). DDP broadcasts them before each
    forward, but the last step's forward updates each rank's copy with its own half-batch; after this, the
    validation and the saved model see the same network on every rank."""
    if shard.world > 1:
        for buffer in network.buffers():
            dist.broadcast(buffer, 0)


def barrier(shard: Shard) -> None:
    """Wait until every rank arrives here (after a checkpoint is written: no rank runs ahead of it)."""
    if shard.world > 1:
        dist.barrier()


def from_rank0(value):
    """Rank 0's ``value`` on every rank (a decision only rank 0 can make, such as whether to resume)."""
    if current_shard().world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def init_from_env(device: str = "auto", threads: int | None = None) -> str | None:
    """Join the process group that torchrun describes in the environment (RANK, LOCAL_RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT) and return the device this process trains on; None when the environment names
    no group of two or more. CUDA: NCCL with one GPU per process, cuda:LOCAL_RANK; otherwise gloo on the CPU.
    Threads per process: ``threads``, else $CNNLAB_THREADS, else 1 (N processes each taking every core would
    oversubscribe the machine N times over)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    configure_threads(threads or (None if os.environ.get(THREADS_ENV) else 1))
    chosen = pick_device(device)
    if chosen.type == "cuda":
        local, here = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
        if local >= here:
            raise ConfigError(
                f"process {local} on this machine needs GPU {local}, but there are {here}; "
                f"start at most --nproc_per_node={here}, or train on the CPU with --device cpu"
            )
        chosen = torch.device("cuda", local)
        torch.cuda.set_device(chosen)
    elif chosen.type != "cpu":
        raise ConfigError(f"device {chosen} cannot join a process group; use CUDA GPUs (NCCL) or --device cpu (gloo)")
    # torchrun keeps one key-value store for all attempts of a job, so a restarted rank could read the address
    # its dead predecessor published there and fail to connect: each attempt keeps its keys apart.
    store, rank, world = next(dist.rendezvous("env://"))
    store = dist.PrefixStore(f"cnnlab/attempt{restart_count()}", store)
    if chosen.type == "cuda":
        dist.init_process_group("nccl", store=store, rank=rank, world_size=world, device_id=chosen)
    else:
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    return str(chosen)


def leave(finished: bool = True) -> None:
    """Leave the process group ``init_from_env`` joined (at the end of a command, on every rank). After a clean
    finish every rank first waits for the others: a rank that closed its connections while another still used
    them (rank 0 testing and reporting) made gloo abort that process ("terminate called without an active
    exception"). After an error nobody waits, since the others may never arrive."""
    if dist.is_available() and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def restart_count() -> int:
    """How often torchrun has restarted this job's workers (0: the first attempt, or not under torchrun)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def torchrun_job() -> str | None:
    """A name of this torchrun job that stays the same when it restarts its workers: the rendezvous id when one
    was given (--rdzv-id, the same on every machine), else the folder torchrun made for this job's logs (its
    name ends in a random suffix, and each attempt writes below it); None where neither is known."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    if run_id != "none":
        return run_id
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")  # <log dir>/<run id>_<random>/attempt_<n>/<rank>/...
    return str(Path(error_file).parents[2]) if error_file else None
