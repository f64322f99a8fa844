"""`cnnlab train --workers N`: the command's own training on N Ray Train workers, here or on a Ray cluster.

Ray Train's ``TorchTrainer`` starts the workers, sets up their process group (gloo; NCCL with GPUs) and, with
``max_failures``, restarts them all when one dies. Each worker runs the function the command hands over, the one
that trains in a single process, and fit, finding torch.distributed initialized, trains as one rank of the group
(cnnlab.train.distributed). After every epoch each rank reports to Ray; rank 0 adds the checkpoint fit has just
written into the run folder, which Ray keeps under <run folder>/ray. After a restart every worker first copies
Ray's latest checkpoint into the run folder, so all ranks resume from the same epoch.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cnnlab.core.errors import CnnlabError, ConfigError
from cnnlab.core.files import atomic_write
from cnnlab.core.runtime import configure_threads
from cnnlab.experiments.tune.engines import start_ray, threads_per_trial
from cnnlab.train.callbacks import Callback
from cnnlab.train.checkpoint import CHECKPOINT
from cnnlab.train.distributed import barrier, current_shard

RUN_NAME = "cnnlab-train"  # Ray's name for the run: its checkpoints lie in <run folder>/ray/cnnlab-train
# What each worker runs: (resume, device, callbacks for fit) -> anything; it trains through Model.fit.
Work = Callable[[bool, str, list[Callback]], object]


@dataclass(frozen=True)
class RayWorkers:
    """How many Ray Train workers, on which cluster (None: Ray started here), and what each one gets."""

    workers: int
    address: str | None = None
    use_gpu: bool = False
    threads: int | None = None  # per worker; None: $CNNLAB_THREADS, else 1
    max_failures: int = 0  # restarts of the whole group after a worker dies

    def describe(self) -> str:
        where = f"the Ray cluster at {self.address}" if self.address else "Ray started on this machine"
        gpu = "1 GPU and " if self.use_gpu else ""
        return (
            f"Ray Train: {self.workers} workers ({where}); each gets {gpu}{self.threads or threads_per_trial()} CPU "
            f"thread(s) and 1/{self.workers} of every global batch; restarts after a worker dies: {self.max_failures}"
        )


class ReportToRay(Callback):
    """After every epoch every rank reports the epoch's metrics to Ray (Ray waits for a report from each); rank 0
    adds the checkpoint that fit's BackupAndRestore has just written, which Ray copies under its storage path."""

    order = 95  # after BackupAndRestore (80) wrote this epoch's checkpoint and its barrier let every rank on

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def on_epoch_end(self, epoch, logs=None):
        from ray import train

        metrics = {"epoch": epoch + 1, **{key: float(value) for key, value in (logs or {}).items()}}
        if self.model.shard.rank != 0:
            train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:  # Ray takes a folder: this epoch's checkpoint alone
            shutil.copyfile(self.folder / CHECKPOINT, Path(folder) / CHECKPOINT)
            train.report(metrics, checkpoint=train.Checkpoint.from_directory(folder))


def _worker(config: dict) -> None:
    """One Ray Train worker: its threads, Ray's latest checkpoint into the run folder (after a restart), then
    the command's training as this rank."""
    from ray import train
    from ray.train.torch import get_device

    configure_threads(config["threads"])
    folder, resume = Path(config["folder"]), False
    restored = train.get_checkpoint()
    if restored is not None:  # Ray restarted the workers: every rank continues from Ray's checkpoint
        folder.mkdir(parents=True, exist_ok=True)  # a machine other than rank 0's may not have the folder yet
        with restored.as_directory() as saved:
            atomic_write(folder / CHECKPOINT, lambda tmp: shutil.copyfile(Path(saved) / CHECKPOINT, tmp))
        resume = True
        if current_shard().rank == 0:
            print(f"Ray restarted the workers: each resumes from Ray's last checkpoint, {restored.path}", flush=True)
    barrier(current_shard())  # no rank reads the folder's checkpoint before every copy is in place
    config["work"](resume, str(get_device()) if config["use_gpu"] else "cpu", [ReportToRay(folder)])


def train_on_ray(work: Work, folder: Path, workers: RayWorkers):
    """Run ``work`` on ``workers.workers`` Ray Train workers and return Ray's Result. ``folder`` is the run folder
    (absolute: the workers may run elsewhere); Ray keeps its copies of the checkpoints in ``folder``/ray."""
    try:
        import ray
        from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
        from ray.train.torch import TorchTrainer
    except ImportError as error:
        raise ConfigError(f"--workers needs Ray Train ({error}); install it with: pip install 'cnnlab[ray]'") from error
    threads = workers.threads or threads_per_trial()
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")  # workers print plainly; Ray passes this on to them
    started_here = not ray.is_initialized()
    if started_here:
        start_ray(ray, workers.address, workers.workers * threads, threads, log_to_driver=True)
    try:
        trainer = TorchTrainer(
            _worker,
            train_loop_config={"work": work, "folder": str(folder), "threads": threads, "use_gpu": workers.use_gpu},
            scaling_config=ScalingConfig(
                num_workers=workers.workers, use_gpu=workers.use_gpu, resources_per_worker={"CPU": threads}
            ),
            run_config=RunConfig(
                name=RUN_NAME,
                storage_path=str(folder / "ray"),
                failure_config=FailureConfig(max_failures=workers.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=2),  # as fit keeps two in the run folder
            ),
        )
        return trainer.fit()
    except TrainingFailedError as error:
        raise CnnlabError(f"Ray Train stopped: {_last_line(error)}") from error
    finally:
        if started_here:
            ray.shutdown()


def _last_line(error: BaseException) -> str:
    """The line of a worker's error that says what went wrong (its traceback ends with it)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
