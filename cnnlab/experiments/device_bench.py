"""Lab part 2's measurement: images per second of one conv layer at several batch sizes, per device."""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from cnnlab.core.errors import ConfigError
from cnnlab.core.runtime import describe_devices, pick_device

BENCHMARK_BATCH_SIZES = (1, 3, 32, 256, 1000)
BENCHMARK_LAYER = "Conv2d(3 -> 64, 3x3, padding 1), float32 forward pass"


@dataclass(frozen=True)
class Throughput:
    """How fast one device ran the benchmark layer at one batch size."""

    device: str
    batch_size: int
    seconds_per_batch: float

    @property
    def images_per_second(self) -> float:
        return self.batch_size / self.seconds_per_batch


def _synchronize(device: torch.device) -> None:
    """GPUs run asynchronously: wait for queued work, or the clock measures only the launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _time_runs(layer: torch.nn.Module, batch: torch.Tensor, runs: int) -> float:
    _synchronize(batch.device)
    start = time.perf_counter()
    for _ in range(runs):
        layer(batch)
    _synchronize(batch.device)
    return (time.perf_counter() - start) / runs


def measure_conv_throughput(
    devices: Sequence[str] | None = None,
    batch_sizes: Sequence[int] = BENCHMARK_BATCH_SIZES,
    *,
    repeats: int = 3,
    image_size: int = 32,
    min_sample_seconds: float = 0.02,
    progress: bool = True,
) -> list[Throughput]:
    """Images per second of BENCHMARK_LAYER on image_size x image_size x 3 inputs for each device and batch.

    Each device and batch shape is warmed up first, then timed ``repeats`` times; each timing repeats the batch
    until it lasts about min_sample_seconds (so tiny batches are not lost in timer noise), and the
    median is kept because other programs on the machine slow single timings down.
    """
    if repeats < 1 or image_size < 3 or not batch_sizes or min(batch_sizes) < 1:
        raise ConfigError(
            f"need repeats >= 1, image size >= 3 and positive batch sizes; got repeats={repeats}, "
            f"image_size={image_size}, batch_sizes={list(batch_sizes)}"
        )
    targets = [pick_device(name) for name in (devices or [info.device for info in describe_devices()])]
    results = []
    with (
        tqdm(
            total=len(targets) * len(batch_sizes),
            desc="conv benchmark",
            unit="setting",
            disable=None if progress else True,
            leave=False,
        ) as bar,
        torch.inference_mode(),
    ):
        for device in targets:
            torch.manual_seed(0)
            layer = torch.nn.Conv2d(3, 64, 3, padding=1).to(device).eval()
            # A device's first call pays one-off start-up costs (CUDA context, library loading).
            _time_runs(layer, torch.rand(1, 3, image_size, image_size, device=device), 1)
            for batch_size in batch_sizes:
                batch = torch.rand(batch_size, 3, image_size, image_size, device=device)
                first = _time_runs(layer, batch, 1)  # also the warm-up for this batch shape
                runs = max(1, min(10_000, math.ceil(min_sample_seconds / max(first, 1e-9))))
                seconds = statistics.median(_time_runs(layer, batch, runs) for _ in range(repeats))
                results.append(Throughput(str(device), batch_size, seconds))
                bar.update()
    return results


def batch_speedup_answer(measurements: Sequence[Throughput]) -> str:
    """Answer the lab's question "is a GPU equally faster for 3 and for 1,000 images?" from measurements:
    the accelerator's speed-up over the CPU at the smallest and the largest batch measured."""
    speed = {(m.device, m.batch_size): m.images_per_second for m in measurements}
    cpu_batches = sorted(batch for device, batch in speed if device == "cpu")
    if len(cpu_batches) < 2:
        raise ConfigError("the answer compares batch sizes on the CPU; measure 'cpu' at two batch sizes or more")
    small, large = cpu_batches[0], cpu_batches[-1]
    for device in sorted({device for device, _ in speed if device != "cpu"}):
        if (device, small) in speed and (device, large) in speed:
            at_small = speed[device, small] / speed["cpu", small]
            at_large = speed[device, large] / speed["cpu", large]
            equal = max(at_small, at_large) <= 1.5 * min(at_small, at_large)
            reason = (
                "a small batch leaves most of the GPU's cores idle while paying the same fixed cost per "
                "kernel launch, so the advantage grows with the batch"
                if at_large > at_small
                else "here the small batch gained more, so the layer is too small to fill the GPU at any batch"
            )
            return (
                f"{'Roughly yes' if equal else 'No'}: {device} runs {at_small:.1f}x the CPU's speed for a batch "
                f"of {small} and {at_large:.1f}x for a batch of {large} ({speed[device, large]:,.0f} vs "
                f"{speed['cpu', large]:,.0f} images/s)" + ("." if equal else f"; {reason}.")
            )
    ratio = speed["cpu", large] / speed["cpu", small]
    reason = (
        "sharing the fixed cost per call among more images pays off"
        if ratio >= 1.5
        else "a CPU's few cores are already busy with one image, so batching does not help it"
    )
    return (
        f"No GPU was measured here, so the GPU/CPU speed-up cannot be given for this machine. On the CPU a "
        f"batch of {large} runs at {speed['cpu', large]:,.0f} images/s, {ratio:.2f}x the "
        f"{speed['cpu', small]:,.0f} images/s of a batch of {small}: {reason}, whereas a GPU needs large "
        "batches to fill its thousands of cores."
    )


def plot_throughput(
    measurements: Sequence[Throughput],
    path: str | os.PathLike,
    *,
    image_size: int = 32,
    labels: Mapping[str, str] | None = None,
) -> Path:
    """Save images/s against batch size (both axes logarithmic, one line per device) as a PNG;
    ``labels`` maps a device such as "cpu" to its legend text."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    from cnnlab.plots import save_figure

    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axis = figure.subplots()
    for device in dict.fromkeys(m.device for m in measurements):
        points = sorted((m.batch_size, m.images_per_second) for m in measurements if m.device == device)
        axis.plot(*zip(*points, strict=True), marker="o", label=(labels or {}).get(device, device))
    axis.set_xscale("log")
    axis.set_yscale("log")
    batch_sizes = sorted({m.batch_size for m in measurements})
    axis.set_xticks(batch_sizes, labels=[str(size) for size in batch_sizes])
    axis.xaxis.set_minor_formatter(NullFormatter())
    axis.set_xlabel("batch size (images)")
    axis.set_ylabel("images per second")
    axis.set_title(f"{BENCHMARK_LAYER}\non {image_size}x{image_size}x3 images", fontsize=10)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend()
    return save_figure(figure, path, dpi=100)
