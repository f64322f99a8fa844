"""Grad-CAM and saliency speed: 16 test images through the lab's CNN, one 224 x 224 photo through ResNet50.

    python benchmarks/explain_speed.py [--threads 2] [--weights PATH]   # or $CNNLAB_RESNET50_WEIGHTS

Each map is timed (best and median of --repeats) beside a plain forward pass of the same batch in the
same run, so the ratio column survives a noisy machine. The lab CNN is the lab's model B (4 conv blocks),
untrained: the time does not depend on the weights or the pixel values, so random images stand in for
CIFAR-10 and the photo. The last row times everything the report would draw for the lab CNN (filter grid,
feature maps, Grad-CAM on 16 images, top losses over 2,000 test images, their figures), once. ResNet50
rows need its weights.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from cnnlab.core.runtime import configure_threads
from cnnlab.evaluate import explain, filters
from cnnlab.models.cnn import LAB_MODELS
from cnnlab.models.registry import create_model


def seconds_per_call(action: Callable[[], object], repeats: int, least: float = 0.25) -> tuple[float, float]:
    """(best, median) seconds per call over ``repeats`` timings; calls shorter than ``least`` seconds are
    looped. On a shared machine two threads stall whenever one is descheduled (single calls vary 100x
    here), so the best timing is the one to compare, as timeit advises; the median shows the noise."""
    started = time.perf_counter()
    action()  # warm-up: first-call allocations, captum imports, kernel selection
    loops = max(1, int(least / max(time.perf_counter() - started, 1e-6)))
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(loops):
            action()
        timings.append((time.perf_counter() - started) / loops)
    return min(timings), statistics.median(timings)


def timed_rows(name: str, model, images: np.ndarray, repeats: int) -> list[tuple[str, float, float, float]]:
    best_forward, median_forward = seconds_per_call(lambda: explain.predict_probabilities(model, images), repeats)
    rows = [(f"{name}: forward only", best_forward, median_forward, 1.0)]
    for method in explain.METHODS:
        best, median = seconds_per_call(lambda method=method: explain.explain(model, images, method), repeats)
        rows.append((f"{name}: {method}", best, median, best / best_forward))
    return rows


def report_figures(model, rng: np.random.Generator) -> None:
    """What the lab report would add for one trained lab CNN."""
    test_images = rng.integers(0, 256, (2000, 32, 32, 3), dtype=np.uint8)
    test_labels = rng.integers(0, 10, 2000)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        filters.filter_grid(model, out / "filters.png")
        filters.feature_map_figure(test_images[0], filters.feature_maps(model, test_images[0]), out / "maps.png")
        explain.overlay_figure(explain.grad_cam(model, test_images[:16]), out / "gradcam.png")
        losses = explain.top_losses(model, test_images, test_labels, k=12)
        explain.top_losses_figure(test_images, losses, path=out / "losses.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    parser.add_argument("--weights", help="ResNet50 weights (default: $CNNLAB_RESNET50_WEIGHTS; rows skipped without)")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    threads = configure_threads(args.threads)
    rng = np.random.default_rng(0)
    lab_model = create_model(LAB_MODELS["B"], device="cpu")
    rows = timed_rows(
        "lab CNN (model B), 16 images", lab_model, rng.integers(0, 256, (16, 32, 32, 3), np.uint8), args.repeats
    )
    started = time.perf_counter()
    report_figures(lab_model, rng)
    once = time.perf_counter() - started
    rows.append(("lab CNN: all report figures (once)", once, once, float("nan")))

    from cnnlab.core.errors import ConfigError, DataError
    from cnnlab.models import resnet50_weights

    try:
        resnet = resnet50_weights.load_resnet50(args.weights, progress=False)
    except (ConfigError, DataError) as error:
        print(f"ResNet50 rows skipped: {error}")
    else:
        photo = rng.integers(0, 256, (1, 224, 224, 3), np.uint8)
        rows += timed_rows("ResNet50, one 224x224 photo", resnet, photo, args.repeats)

    print(f"torch {torch.__version__}, {threads} threads, best and median of {args.repeats} after a warm-up\n")
    print("| what | best s | median s | best / forward |\n|---|---:|---:|---:|")
    for name, best, median, ratio in rows:
        print(f"| {name} | {best:.3f} | {median:.3f} | {'' if np.isnan(ratio) else f'{ratio:.1f}'} |")


if __name__ == "__main__":
    main()
