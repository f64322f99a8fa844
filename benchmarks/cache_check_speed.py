"""What verifying the data cache costs a load: CIFAR-10 from its cache with and without the checks.

    CNNLAB_CIFAR10=... python benchmarks/cache_check_speed.py [--repeats 5]

Each load runs in a fresh process (the CRC-32 is computed once per file and process), side by side:
a bare memory map of the four arrays (what a load cost before the checks), ``load_cifar10`` (sizes and
CRC-32s checked), and a second ``load_cifar10`` in the same process (sizes only). Best of the repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MEASURE = """
import json, sys, time
import numpy as np
from pathlib import Path
from cnnlab.core.files import cache_dir
from cnnlab.data import cifar
from cnnlab.data.cache import cache_key
source = sys.argv[1]
folder = cache_dir() / "cifar10" / cache_key(Path(source))
started = time.perf_counter()
for name in ("x_train", "y_train", "x_test", "y_test"):
    np.load(folder / f"{name}.npy", mmap_mode="r")
bare = time.perf_counter() - started
started = time.perf_counter()
cifar.load_cifar10(source)
first = time.perf_counter() - started
started = time.perf_counter()
cifar.load_cifar10(source)
again = time.perf_counter() - started
print(json.dumps({"bare memory map": bare, "load_cifar10, checked": first, "load_cifar10 again": again}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.environ.get("CNNLAB_CIFAR10"), help="CIFAR-10 archive ($CNNLAB_CIFAR10)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not args.data:
        sys.exit("give a CIFAR-10 archive with --data or $CNNLAB_CIFAR10")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-W", "ignore", "-c", MEASURE, args.data]
    subprocess.run(command, env=env, check=True, capture_output=True)  # decodes into the cache if needed
    runs = [json.loads(subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout)
            for _ in range(args.repeats)]  # fmt: skip
    best = {name: min(run[name] for run in runs) for name in runs[0]}
    bare = best["bare memory map"]
    print(f"| load from the cache (best of {args.repeats}, fresh processes) | seconds | x bare |")
    print("|---|---|---|")
    for name, seconds in best.items():
        print(f"| {name} | {seconds:.4f} | {seconds / bare:.1f} |")


if __name__ == "__main__":
    main()
