"""`cnnlab device`: which accelerator is there, and how many images per second a conv layer gets (lab part 2)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cnnlab.core.runtime import describe_devices
from cnnlab.experiments.device_bench import (
    BENCHMARK_BATCH_SIZES,
    BENCHMARK_LAYER,
    batch_speedup_answer,
    measure_conv_throughput,
    plot_throughput,
)


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of whole numbers, e.g. 1,3,32"
        ) from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be positive, got {text!r}")
    return sizes


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "device",
        help="show the CPU/GPU and measure conv-layer images/s per batch size (lab part 2)",
        description=(
            f"Describe the CPU and any CUDA or MPS device, then time {BENCHMARK_LAYER} at several batch "
            "sizes on every device, print a table and the answer to 'is a GPU equally faster for 3 and "
            "1,000 images?', and save a plot of images/s against batch size."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--batch-sizes",
        type=_batch_sizes,
        default=",".join(map(str, BENCHMARK_BATCH_SIZES)),
        metavar="N,N,...",
        help="batch sizes to time",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timings per batch size (median kept); 1 is quickest, more is steadier",
    )
    parser.add_argument("--image-size", type=int, default=32, help="side of the square 3-channel test images")
    parser.add_argument("--out", type=Path, default=Path("device-out"), help="folder for the plot and JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    devices = describe_devices()
    for info in devices:
        facts = ", ".join(f"{key} {value}" for key, value in info.facts.items())
        print(f"{info.device}: {info.name} ({facts})")

    measurements = measure_conv_throughput(
        [info.device for info in devices], args.batch_sizes, repeats=args.repeats, image_size=args.image_size
    )
    print(f"\n{BENCHMARK_LAYER} on {args.image_size}x{args.image_size}x3 images, median of {args.repeats}:")
    print(f"{'device':<8} {'batch':>6} {'images/s':>12} {'ms/batch':>10}")
    for m in measurements:
        print(f"{m.device:<8} {m.batch_size:>6} {m.images_per_second:>12,.0f} {m.seconds_per_batch * 1e3:>10.3f}")
    print(f"\n{batch_speedup_answer(measurements)}")

    threads = {"cpu": f", {devices[0].facts['torch threads used']} thread(s)"}
    labels = {info.device: f"{info.device}: {info.name}{threads.get(info.device, '')}" for info in devices}
    plot = plot_throughput(measurements, args.out / "throughput.png", image_size=args.image_size, labels=labels)
    record = {
        "layer": BENCHMARK_LAYER,
        "image_size": args.image_size,
        "repeats": args.repeats,
        "devices": [{"device": i.device, "name": i.name, **i.facts} for i in devices],
        "measurements": [{**vars(m), "images_per_second": m.images_per_second} for m in measurements],
    }
    data = args.out / "throughput.json"
    data.write_text(json.dumps(record, indent=2) + "\n")
    print(f"Plot: {plot}\nData: {data}")
    return 0
