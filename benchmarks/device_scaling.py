"""A finer batch-size sweep than `cnnlab device`: powers of two from 1 to 1024, more repeats.

Shows where each device's images/s stops growing (the batch that fills it). Writes the plot and the
numbers to runs/device-scaling/ (or the folder given as the first argument). Takes 10-30 seconds
on a small CPU:  python benchmarks/device_scaling.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cnnlab.core.files import write_json
from cnnlab.core.runtime import configure_threads
from cnnlab.experiments.device_bench import BENCHMARK_LAYER, measure_conv_throughput, plot_throughput

BATCH_SIZES = [2**power for power in range(11)]


def main(out: Path) -> None:
    threads = configure_threads()
    measurements = measure_conv_throughput(batch_sizes=BATCH_SIZES, repeats=5, min_sample_seconds=0.1)
    print(f"{BENCHMARK_LAYER} on 32x32x3 images, {threads} CPU thread(s), median of 5")
    for m in measurements:
        print(f"{m.device:<8} {m.batch_size:>5} {m.images_per_second:>12,.0f} images/s")
    out.mkdir(parents=True, exist_ok=True)
    print(f"plot: {plot_throughput(measurements, out / 'scaling.png')}")
    write_json(out / "scaling.json", [vars(m) for m in measurements])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", type=Path, default=Path("runs/device-scaling"), help="output folder")
    main(parser.parse_args().out)
