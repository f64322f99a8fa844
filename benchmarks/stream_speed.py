"""Streamed data against arrays in memory: images per second and peak memory of the ways to feed training, side
by side in one run.

    CNNLAB_CIFAR10=... python benchmarks/stream_speed.py [--sizes 10000 50000] [--steps 300] [--workdir DIR]

For each N, a folder of the first N CIFAR-10 training images upscaled to 64x64 (bicubic, JPEG quality 90, one
subfolder per class) is written once into --workdir, and packed once into shards (cnnlab pack). Methods, each
in a process of its own so that its peak RSS (the main process, and its largest DataLoader worker, whose RSS
counts the pages it shares with the main process) is its own:

    in-memory  the folder decoded into arrays (load_dataset; cached in WORKDIR/cache after the first run)
    stream     the folder streamed (load_dataset(..., stream=True), cnnlab.data.stream); noted as skipped
               where this cnnlab has no streamed folders
    shards     the packed shards (load_shards, 2 DataLoader workers)

Each is timed twice, both capped at --steps batches of 128: the bare feed (a training epoch's batches, nothing
done with them) and training the lab's model B (4 conv blocks, 16 filters, a dense layer of 50, dropout) for
that many steps. Loading (decoding the folder, opening the index) is not timed. Targets (issue 24): shards at
least 0.8x in-memory with 2 workers; peak RSS of the streamed methods at N = 50,000 within 10% of N = 10,000.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cnnlab.data.load import load_dataset
from cnnlab.data.pack import pack
from cnnlab.data.shards import is_shard_set, load_shards
from cnnlab.models.cnn import build_cnn
from cnnlab.train.feed import TensorFeed

METHODS = ("in-memory", "stream", "shards")
SIZE = 64
BATCH = 128
MODEL_B = {"n_conv_layers": 4, "n_filters": 16, "n_dense_layers": 1, "n_nodes": 50, "use_dropout": True}


def write_folder(workdir: Path, count: int) -> Path:
    """The first ``count`` CIFAR-10 training images as 64x64 JPEGs in class folders (kept between runs)."""
    root = workdir / f"jpeg64-{count}"
    done = workdir / f"jpeg64-{count}.complete"  # beside the folder: inside, pack would warn about a non-image
    if done.exists():
        return root
    data = load_dataset("cifar10", progress=False)
    if count > len(data.x_train):
        raise SystemExit(f"CIFAR-10 has {len(data.x_train):,} training images; ask for at most that many")
    for index in range(count):
        path = root / data.class_names[int(data.y_train[index])] / f"{index:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(np.asarray(data.x_train[index])).resize((SIZE, SIZE), Image.Resampling.BICUBIC)
        image.save(path, quality=90)
    done.touch()
    return root


def pack_once(folder: Path, out: Path) -> Path:
    if not is_shard_set(out):
        pack(folder, out, image_size=SIZE, overwrite=True, progress=False)
    return out


class FirstSteps:
    """The first ``steps`` batches of each of a feed's epochs, so that every method trains on as many images."""

    def __init__(self, feed, steps: int):
        self.feed, self.steps = feed, steps
        self.shuffles_itself = feed.shuffles_itself
        self.samples = min(feed.samples, steps * BATCH)

    def batches(self, batch_size, order=None, **options):
        return islice(self.feed.batches(batch_size, order, **options), self.steps)


def open_method(method: str, folder: Path, shards: Path):
    """(feed, arrays or None): the training split as this method delivers it; in-memory also gives the arrays
    that fit takes as they are (moved to the device whole, as a user's arrays are)."""
    if method == "in-memory":
        data = load_dataset(folder, image_size=SIZE, progress=False)
        return TensorFeed(torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)), data
    if method == "stream":
        return load_dataset(folder, image_size=SIZE, stream=True).train, None
    return load_shards(shards, num_workers=2).train, None


def epoch_batches(feed):
    """A training epoch's batches, as fit asks for them."""
    if feed.shuffles_itself:
        return feed.batches(BATCH, None, epoch=0, seed=0, train=True)
    return feed.batches(BATCH, torch.randperm(feed.samples, generator=torch.Generator().manual_seed(0)))


def child(method: str, folder: Path, shards: Path, steps: int, device: str) -> dict:
    """Both timings of one method, and this process's peak memory."""
    feed, arrays = open_method(method, folder, shards)
    started = time.perf_counter()
    images = sum(len(labels) for _, labels in islice(epoch_batches(feed), steps))
    feed_rate = images / (time.perf_counter() - started)
    capped = FirstSteps(feed, steps)
    model = build_cnn(input_shape=(SIZE, SIZE, 3), class_names=[str(i) for i in range(10)], device=device, **MODEL_B)
    started = time.perf_counter()
    if arrays is not None:
        model.fit(arrays.x_train[: capped.samples], arrays.y_train[: capped.samples], BATCH, verbose=0, seed=0)
    else:
        model.fit(capped, None, BATCH, verbose=0, seed=0)
    train_rate = capped.samples / (time.perf_counter() - started)
    return {
        "feed": feed_rate,
        "train": train_rate,
        "main_mb": peak_rss_mb(),
        "worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def peak_rss_mb() -> float:
    """This process's peak RSS since it started (VmHWM). Not ru_maxrss: Linux carries a parent's peak over into
    a child's ru_maxrss across fork and exec, so every child would report at least this benchmark's own peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(method: str, folder: Path, shards: Path, args: argparse.Namespace) -> dict | str:
    command = [
        sys.executable,
        __file__,
        "--child",
        method,
        "--folder",
        str(folder),
        "--shards",
        str(shards),
        "--steps",
        str(args.steps),
        "--device",
        args.device,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
        lines = result.stderr.strip().splitlines() or ["no output"]
        return f"skipped: {lines[-1]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def print_table(results: dict) -> None:
    print(
        "\n| N | method | feed images/s | vs in-memory | training images/s | vs in-memory | peak RSS main / worker MB |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|")
    for count, methods in results.items():
        base = methods["in-memory"]
        for method, row in methods.items():
            if isinstance(row, str):
                print(f"| {count:,} | {method} | {row} | | | | |")
                continue
            ratios = [f"{row[key] / base[key]:.2f}x" if isinstance(base, dict) else "-" for key in ("feed", "train")]
            print(
                f"| {count:,} | {method} | {row['feed']:,.0f} | {ratios[0]} | {row['train']:,.0f} | {ratios[1]} | "
                f"{row['main_mb']:,.0f} / {row['worker_mb']:,.0f} |"
            )
    sizes = sorted(results)
    if len(sizes) > 1:
        for method in ("stream", "shards"):
            rows = [results[n].get(method) for n in (sizes[0], sizes[-1])]
            if all(isinstance(row, dict) for row in rows):
                growth = (rows[1]["main_mb"] + rows[1]["worker_mb"]) / (rows[0]["main_mb"] + rows[0]["worker_mb"])
                print(f"{method}: peak RSS (main + worker) at {sizes[-1]:,} is {growth:.2f}x that at {sizes[0]:,}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000], help="images per folder")
    parser.add_argument("--steps", type=int, default=300, help="batches of 128 timed per method (default: 300)")
    parser.add_argument("--device", default="auto", help="training device (default: auto)")
    parser.add_argument("--workdir", type=Path, help="where folders and shards are kept (default: a temp folder)")
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--shards", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.folder, args.shards, args.steps, args.device)))
        return
    args.workdir = args.workdir or Path(tempfile.mkdtemp(prefix="stream-speed-"))
    os.environ.setdefault("CNNLAB_CACHE", str(args.workdir / "cache"))
    results = {}
    for count in args.sizes:
        started = time.perf_counter()
        folder = write_folder(args.workdir, count)
        shards = pack_once(folder, args.workdir / f"shards-{count}")
        load_dataset(folder, image_size=SIZE, progress=False)  # decoded into the cache here, not in the timed child
        print(f"{count:,} images: {folder} and {shards} ready in {time.perf_counter() - started:.0f} s")
        results[count] = {method: run_child(method, folder, shards, args) for method in METHODS}
    print_table(results)


if __name__ == "__main__":
    sys.exit(main())
