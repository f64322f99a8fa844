"""Training speed of one process against two gloo processes on this machine (torchrun on 127.0.0.1), one run.

    python benchmarks/ddp_speed.py [--steps 40] [--batch 128] [--rounds 2]

Each setting trains the lab's CNN (model A: 2 conv blocks of 16 filters, no dense layer) on synthetic 32x32x3
uint8 images for a fixed number of global steps at the same global batch, after a warm-up epoch, through
``Model.fit`` (so the sums over ranks, the per-epoch BatchNorm broadcast and DDP's gradient all-reduce are in
the time). Settings: 1 process x 1 thread, 1 process x 2 threads (the same cores as two processes) and
2 processes x 1 thread. Rounds alternate the settings so machine noise hits each alike; the table gives the
best round's images/s.

Not measured: N GPUs (NCCL; this machine has none), several machines (the network), and data loading (the
images sit in memory). On a shared machine the numbers move with the other load; compare within one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = [(1, 1), (1, 2), (2, 1)]  # (processes, threads per process)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def worker(steps: int, batch: int, threads: int, result: Path) -> None:
    """One rank (or the only process): warm up, then time one epoch of ``steps`` global steps."""
    import numpy as np

    from cnnlab.core.runtime import configure_threads
    from cnnlab.models.cnn import build_cnn
    from cnnlab.train.distributed import barrier, current_shard, init_from_env, leave

    if init_from_env("cpu", threads) is None:
        configure_threads(threads)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (steps * batch, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, steps * batch)
    model = build_cnn(n_conv_layers=2, n_filters=16, device="cpu")
    model.fit(x[: 4 * batch], y[: 4 * batch], batch_size=batch, epochs=1, verbose=0)  # warm-up
    barrier(current_shard())
    started = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
    seconds = time.perf_counter() - started
    if current_shard().rank == 0:
        result.write_text(json.dumps({"seconds": seconds, "images": len(x)}))
    leave()


def measure(processes: int, threads: int, steps: int, batch: int) -> float:
    """Images per second of one setting, run in fresh processes (torchrun for two)."""
    with tempfile.TemporaryDirectory() as folder:
        result = Path(folder) / "result.json"
        args = [
            __file__,
            "--worker",
            str(result),
            "--steps",
            str(steps),
            "--batch",
            str(batch),
            "--threads",
            str(threads),
        ]
        if processes == 1:
            command = [sys.executable, *args]
        else:
            torchrun = str(Path(sys.executable).with_name("torchrun"))
            command = [torchrun, f"--nproc_per_node={processes}", "--master-addr", "127.0.0.1",
                       "--master-port", str(_free_port()), *args]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MASTER_ADDR": "127.0.0.1"}
        done = subprocess.run(command, env=env, timeout=600, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{processes} x {threads} failed:\n{done.stderr[-3000:]}")
        measured = json.loads(result.read_text())
    return measured["images"] / measured["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="global steps timed per setting")
    parser.add_argument("--batch", type=int, default=128, help="global batch (split among the processes)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.steps, args.batch, args.threads, args.worker)
        return
    load = os.getloadavg()[0]
    best: dict[tuple[int, int], float] = {}
    for _ in range(args.rounds):
        for processes, threads in SETTINGS:
            speed = measure(processes, threads, args.steps, args.batch)
            best[processes, threads] = max(best.get((processes, threads), 0.0), speed)
    baseline = best[SETTINGS[0]]
    print(f"lab CNN model A, 32x32x3 synthetic images, global batch {args.batch}, {args.steps} steps, best of "
          f"{args.rounds} rounds, CPU: {os.cpu_count()} logical cores, load average {load:.1f} before\n")  # fmt: skip
    print("| processes x threads | batch per process | images/s | vs 1 x 1 |")
    print("|---|---|---|---|")
    for (processes, threads), speed in best.items():
        print(f"| {processes} x {threads} | {args.batch // processes} | {speed:,.0f} | {speed / baseline:.2f}x |")


if __name__ == "__main__":
    main()
