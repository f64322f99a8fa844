"""Training on several processes: fit as one rank of many (DDP over gloo on the CPU), `torchrun -m cnnlab train`,
a killed torchrun worker that resumes, and `cnnlab train --workers N` on a Ray cluster, killed and restarted too.

Every process talks over 127.0.0.1 only, every subprocess has a timeout, every process uses one thread. The
helper tests/dist_worker.py trains through cnnlab's API or its `train` command under torchrun or Ray.
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from ray_head import free_port, ray_head

from cnnlab.cli import main
from cnnlab.core.errors import ConfigError
from cnnlab.data.batches import batch_windows, steps_per_epoch
from cnnlab.models.cnn import build_cnn
from cnnlab.train import distributed
from cnnlab.train.callbacks import BackupAndRestore, CSVLogger, History, ProgbarLogger, RunFolder
from cnnlab.train.feed import Shard

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
BIN = Path(sys.executable).parent
TRAIN = ["--epochs", "2", "--batch-size", "16", "--n-conv-layers", "1", "--n-filters", "4", "--n-train-val", "96",
         "--n-test", "24", "--quiet"]  # fmt: skip


def _env(**extra: str) -> dict[str, str]:
    """One thread per process, cnnlab (and the helper) importable in every child, Ray kept on loopback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, "PYTHONPATH": f"{REPO}{os.pathsep}{TESTS}", "OMP_NUM_THREADS": "1", "CNNLAB_THREADS": "1",
            "MASTER_ADDR": "127.0.0.1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **extra}  # fmt: skip


def _run(command: list[str], timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    done = subprocess.run(command, env=_env(**env), capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert done.returncode == 0, f"{' '.join(command)}\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


def _torchrun(nproc: int, *args: str, restarts: int = 0) -> list[str]:
    return [str(BIN / "torchrun"), f"--nproc_per_node={nproc}", f"--max-restarts={restarts}",
            "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *args]  # fmt: skip


def _history(folder: Path) -> list[dict[str, str]]:
    with open(folder / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def toy_npz(tmp_path_factory) -> Path:
    from dist_worker import write_npz

    return write_npz(tmp_path_factory.mktemp("data") / "toy.npz")


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, toy_npz) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """`torchrun --nproc_per_node=2 -m cnnlab train` uninterrupted, with each process's writes logged: (b), and the
    history the killed runs must end with."""
    root = tmp_path_factory.mktemp("straight")
    out, writes = root / "run", root / "writes"
    writes.mkdir()
    done = _run(_torchrun(2, "-m", "cnnlab", "train", "--data", str(toy_npz), "--out", str(out), *TRAIN),
                CNNLAB_TEST_WRITES=str(writes), PYTHONPATH=f"{TESTS / 'write_audit'}{os.pathsep}{REPO}")  # fmt: skip
    return out, writes, done


# ----------------------------------------------------------------------------------- (f) units, one process


def test_the_last_batch_joins_the_one_before_when_it_cannot_give_every_process_two_images():
    assert [steps_per_epoch(n, 10) for n in (1, 10, 11, 20, 21, 22)] == [1, 1, 1, 2, 2, 3]  # one process: as before
    assert [steps_per_epoch(n, 16, world=2) for n in (35, 36, 48, 49)] == [2, 3, 3, 3]
    for world in (2, 3, 4):
        for samples in range(2 * world, 80):
            for window in batch_windows(samples, 8 * world, world):
                shares = [Shard(rank, world).take(torch.arange(window.start, window.stop)) for rank in range(world)]
                assert min(len(share) for share in shares) >= 2, (samples, world, window)


def test_a_global_batch_that_does_not_split_evenly_is_refused(monkeypatch):
    monkeypatch.setattr(distributed, "current_shard", lambda: Shard(0, 2))
    x, y = np.zeros((8, 8, 8, 3), np.uint8), np.arange(8) % 2
    model = build_cnn((8, 8, 3), n_conv_layers=1, n_filters=4, num_classes=2, device="cpu")
    with pytest.raises(ConfigError, match="global batch of 5 does not split evenly among 2 processes"):
        model.fit(x, y, batch_size=5, epochs=1, verbose=0)
    assert model.shard.world == 1 and model._ddp is None, "a refused fit leaves no distributed state behind"


def test_ranks_other_than_0_print_and_write_nothing_but_read_the_checkpoint(tmp_path):
    model = build_cnn((8, 8, 3), n_conv_layers=1, n_filters=4, num_classes=2, device="cpu")
    model.shard = Shard(1, 2)
    callbacks = model._callback_list(History(), [], 1, tmp_path, True, None, {"epochs": 1})
    kinds = {type(callback) for callback in callbacks.callbacks}
    assert BackupAndRestore in kinds and not kinds & {ProgbarLogger, CSVLogger, RunFolder}
    assert all(callback.run_dir is None for callback in callbacks.callbacks), "user callbacks see no run folder"


def test_a_process_group_of_one_trains_exactly_as_no_group():
    """World size 1 (a group of one, in memory) is the one-process fit: same weights and history, no DDP."""
    x, y = (np.random.default_rng(0).integers(0, 255, (40, 8, 8, 3)).astype(np.uint8), np.arange(40) % 2)

    def fit():
        model = build_cnn((8, 8, 3), n_conv_layers=1, n_filters=4, num_classes=2, device="cpu")
        history = model.fit(x, y, batch_size=16, epochs=2, verbose=0, validation_split=0.25)
        return model, history

    alone, alone_history = fit()
    torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
    try:
        grouped, grouped_history = fit()
    finally:
        torch.distributed.destroy_process_group()
    assert grouped_history.history == alone_history.history and "world" not in grouped_history.params
    for key, value in alone.network.state_dict().items():
        assert torch.equal(grouped.network.state_dict()[key], value), key


def test_ray_options_without_workers_and_ray_missing_are_one_line(tmp_path, capsys, monkeypatch):
    assert main(["train", "--address", "127.0.0.1:6379", "--out", str(tmp_path / "a")]) == 2
    assert capsys.readouterr().err.strip() == (
        "cnnlab train: error: --address, --use-gpu, --max-failures and --ray-token-file go with --workers N (Ray Train)"
    )
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    assert main(["train", "--workers", "2", "--out", str(tmp_path / "b")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("cnnlab train: error: --workers needs Ray Train") and "pip install 'cnnlab[ray]'" in error
    assert "\n" not in error


# ----------------------------------------------------------------------------------- (a) fit as two ranks


def _fit(tmp_path: Path, nproc: int, *flags: str) -> list[dict]:
    """tests/dist_worker.py fit, alone or as `nproc` torchrun processes; each rank's saved weights and history."""
    out = tmp_path / f"{nproc}-processes"
    out.mkdir()
    command = (
        [sys.executable, str(TESTS / "dist_worker.py")]
        if nproc == 1
        else _torchrun(nproc, str(TESTS / "dist_worker.py"))
    )
    _run([*command, "fit", str(out), *flags])
    return [torch.load(out / f"rank{rank}.pt") for rank in range(nproc)]


def test_two_processes_train_a_network_without_batchnorm_to_the_weights_of_one(tmp_path):
    """Global batch 16: one process takes all 16, two take 8 each and DDP averages their gradients, which is the
    16-image gradient; the order is drawn from the same seeded generator on every rank. Only float rounding of
    the sums may differ."""
    (alone,) = _fit(tmp_path, 1)
    rank0, rank1 = _fit(tmp_path, 2)
    for key, value in alone["state"].items():
        torch.testing.assert_close(rank0["state"][key], value, rtol=1e-5, atol=1e-6)
        assert torch.equal(rank0["state"][key], rank1["state"][key]), f"{key}: the ranks' weights differ"
    diff = max((rank0["state"][k] - v).abs().max().item() for k, v in alone["state"].items())
    print(f"max abs weight difference, 2 processes vs 1: {diff:.3g}")
    np.testing.assert_allclose(rank0["history"]["loss"], alone["history"]["loss"], rtol=1e-6)
    assert rank0["history"] == rank1["history"], "every rank logs the sums over all ranks"


def test_two_processes_with_batchnorm_train_but_normalise_each_half_batch_on_its_own(tmp_path):
    """What differs with BatchNorm: each rank normalises its 8 images with their own mean and variance, not the 16
    images' (no SyncBatchNorm), so the gradients and weights differ from the one-process run's; the running
    statistics are rank 0's (DDP broadcasts them before each step, fit after each epoch). It still trains: the
    loss falls, the weights stay finite and both ranks hold the same network."""
    (alone,) = _fit(tmp_path, 1, "--batchnorm")
    rank0, rank1 = _fit(tmp_path, 2, "--batchnorm")
    loss = rank0["history"]["loss"]
    assert loss[1] < loss[0], f"two processes with BatchNorm should still learn: loss {loss}"
    for key, value in rank0["state"].items():
        assert torch.isfinite(value.float()).all(), key
        assert torch.equal(rank1["state"][key], value), f"{key}: ranks must hold the same weights and statistics"
    diff = max((rank0["state"][k].float() - v.float()).abs().max().item() for k, v in alone["state"].items())
    print(f"max abs weight difference with BatchNorm, 2 processes vs 1: {diff:.3g}")
    assert diff > 1e-4, "per-rank BatchNorm statistics should make the weights differ from one process's"


# ----------------------------------------------------------------------------------- (b), (c) torchrun CLI


def test_torchrun_cnnlab_train_writes_the_run_folder_once_from_rank_0(straight_run):
    out, writes, done = straight_run
    assert len(_history(out)) == 2 and (out / "metrics.json").is_file() and (out / "weights.safetensors").is_file()
    written = {log.name.split("-")[0]: log.read_text().splitlines() for log in writes.glob("rank[01]-*.txt")}
    in_run = {rank: {Path(p).name for p in paths if Path(p).parent == out} for rank, paths in written.items()}
    assert {"history.csv", "metrics.json", "config.json", "checkpoint.pt"} <= in_run["rank0"], in_run
    assert not in_run["rank1"], f"rank 1 wrote into the run folder: {in_run['rank1']}"
    assert done.stdout.count("Test accuracy:") == 1 and done.stdout.count("Data: ") == 1, done.stdout
    assert "global batch 16 = 2 processes x 8; learning rate 0.01 as given (not scaled)" in done.stdout


def test_torchrun_restarts_a_killed_worker_and_the_run_resumes_from_its_checkpoint(tmp_path, toy_npz, straight_run):
    """Rank 1 SIGKILLs itself after the first step of epoch 2 on the first attempt; torchrun --max-restarts=1
    starts both workers again and they resume after epoch 1, ending with the uninterrupted run's history."""
    out = tmp_path / "run"
    command = _torchrun(2, str(TESTS / "dist_worker.py"), "cli", "--", "--data", str(toy_npz), "--out", str(out),
                        *TRAIN, restarts=1)  # fmt: skip
    done = _run(command)
    assert f"torchrun restart 1 of this job in {out}: resuming from its last checkpoint" in done.stdout, done.stdout
    assert "Resuming" in done.stdout and "exitcode: -9" in done.stderr
    assert _history(out) == _history(straight_run[0])


@pytest.mark.parametrize("source", ["shards", "streamed folder"])
def test_torchrun_trains_on_data_that_is_not_held_in_memory(tmp_path, toy_npz, source):
    """Two processes on packed shards (each rank reads its own shards) and on a streamed folder (each rank decodes
    its half of every batch): both ranks take the same number of steps, so neither waits for the other forever."""
    from dist_worker import toy_data

    data = tmp_path / "data"
    if source == "shards":
        _run([sys.executable, "-m", "cnnlab", "pack", str(toy_npz), "--out", str(data), "--quiet"])
        flags = []
    else:
        for index, (image, label) in enumerate(zip(*toy_data(96), strict=True)):
            (data / f"class{label}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(data / f"class{label}" / f"{index}.png")
        flags = ["--stream", "--validation-split", "0.25"]
    out = tmp_path / "run"
    done = _run(_torchrun(2, "-m", "cnnlab", "train", "--data", str(data), "--out", str(out), *flags, *TRAIN))
    assert "global batch 16 = 2 processes x 8" in done.stdout, done.stdout
    rows = _history(out)
    assert len(rows) == 2 and all(math.isfinite(float(row["loss"])) for row in rows), rows
    assert (out / "metrics.json").is_file() and done.stdout.count("Test accuracy:") == 1, done.stdout


# ----------------------------------------------------------------------------------- (d), (e) a Ray cluster


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """`ray start --head` on 127.0.0.1 with 2 CPUs (tests/ray_head.py); its HOME holds no token, so it runs without
    authentication. Its workers import cnnlab and tests/dist_worker.py."""
    pytest.importorskip("ray.train", reason="Ray Train is the optional extra cnnlab[ray]")
    home, port = tmp_path_factory.mktemp("home"), free_port()
    with ray_head(home, port, PYTHONPATH=f"{REPO}{os.pathsep}{TESTS}", OMP_NUM_THREADS="1", CNNLAB_THREADS="1"):
        yield f"127.0.0.1:{port}", home


def test_cnnlab_train_on_two_ray_workers_of_a_cluster(tmp_path, toy_npz, ray_cluster, straight_run):
    address, home = ray_cluster
    out = tmp_path / "run"
    done = _run([sys.executable, "-m", "cnnlab", "train", "--workers", "2", "--address", address, "--data",
                 str(toy_npz), "--out", str(out), *TRAIN], timeout=180, HOME=str(home))  # fmt: skip
    assert f"Ray Train: 2 workers (the Ray cluster at {address}); each gets 1 CPU thread(s)" in done.stdout
    assert "global batch 16 = 2 processes x 8" in done.stdout and "Test accuracy:" in done.stdout, done.stdout
    assert _history(out) == _history(straight_run[0]), "the same training as under torchrun"
    reported = sorted((out / "ray" / "cnnlab-train").glob("checkpoint_*/checkpoint.pt"))
    assert reported, f"no checkpoint reported to Ray under {out / 'ray'}"


def test_a_killed_ray_worker_is_restarted_and_resumes_from_rays_checkpoint(tmp_path, toy_npz, ray_cluster,
                                                                         straight_run):  # fmt: skip
    """Rank 1 SIGKILLs itself in epoch 2, once (a marker file); FailureConfig(max_failures=1) restarts the
    workers, which copy Ray's checkpoint into the run folder and resume; the history is the uninterrupted one."""
    address, home = ray_cluster
    out = tmp_path / "run"
    done = _run([sys.executable, str(TESTS / "dist_worker.py"), "cli", "--marker", str(tmp_path / "killed"), "--",
                 "--workers", "2", "--max-failures", "1", "--address", address, "--data", str(toy_npz), "--out",
                 str(out), *TRAIN], timeout=240, HOME=str(home))  # fmt: skip
    assert (tmp_path / "killed").exists(), "the worker was not killed"
    assert "Ray restarted the workers: each resumes from Ray's last checkpoint" in done.stdout, done.stdout[-3000:]
    assert "Resuming" in done.stdout
    assert _history(out) == _history(straight_run[0])
