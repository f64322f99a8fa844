"""Augmentation speed: cnnlab's batched Augmentation against kornia.augmentation and the legacy Keras
ImageDataGenerator in one run, and the time augmentation adds to an epoch of the lab's model B.

    CNNLAB_CIFAR10=... python benchmarks/augment_speed.py [--rounds 5] [--threads 1] \
        [--keras-python /tmp/tf-venv/bin/python]

The transform is the lab's kind: rotation_range=15, width/height_shift_range=0.1, horizontal_flip, on
batches of 128 images of 32x32x3 (the lab's 7,500 training images; random ones without CIFAR-10).
Each pipeline passes over all images once per round; the table gives the median images per second.
The epoch table trains model B (4 conv, 16 filters, 1x50 dense, dropout, batch 128) one epoch at a
time, with and without augmentation, alternating so machine noise hits both alike (target < 25% extra).

Keras is optional and never a cnnlab dependency: with TensorFlow importable here it is timed in this
process; else ``--keras-python`` names the Python of a separate environment that has it
(``python -m venv /tmp/tf-venv && /tmp/tf-venv/bin/pip install tensorflow-cpu scipy pillow``), which
gets the same images through a temporary .npy file. Without either, the Keras row is skipped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

BATCH = 128
SETTINGS = {"rotation_range": 15, "width_shift_range": 0.1, "height_shift_range": 0.1, "horizontal_flip": True}
MODEL_B = {"n_conv_layers": 4, "n_filters": 16, "n_dense_layers": 1, "n_nodes": 50, "use_dropout": True}


def timed(run, *args, **kwargs) -> tuple[float, float]:
    """(wall, CPU) seconds of run(...); with one thread, CPU time is what a quiet machine's wall time would be."""
    wall, cpu = time.perf_counter(), time.process_time()
    run(*args, **kwargs)
    return time.perf_counter() - wall, time.process_time() - cpu


def keras_pass_times(x: np.ndarray, rounds: int) -> list[tuple[float, float]]:
    """(wall, CPU) seconds per pass of ImageDataGenerator.flow over x (NHWC floats), as the lab feeds fit."""
    from tensorflow.keras.preprocessing.image import ImageDataGenerator  # optional, see the module doc

    flow = ImageDataGenerator(**SETTINGS).flow(x, np.zeros(len(x)), batch_size=BATCH, seed=0)
    steps = math.ceil(len(x) / BATCH)
    return [timed(lambda: [next(flow) for _ in range(steps)]) for _ in range(rounds + 1)][1:]  # 1st: warm-up


def keras_worker(path: str, rounds: int) -> None:
    """Entry point under the TensorFlow environment's Python: print the pass times as JSON."""
    print(json.dumps(keras_pass_times(np.load(path), rounds)))


def keras_times(x: np.ndarray, rounds: int, keras_python: str | None) -> list[tuple[float, float]] | str:
    """Pass times of Keras here, or under keras_python; a reason string when neither can run it."""
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        if not keras_python:
            return (
                "skipped: TensorFlow is not installed here. To compare, make a separate environment "
                "(python -m venv /tmp/tf-venv && /tmp/tf-venv/bin/pip install tensorflow-cpu scipy pillow) "
                "and pass --keras-python /tmp/tf-venv/bin/python"
            )
    else:
        return keras_pass_times(x, rounds)
    with tempfile.TemporaryDirectory() as folder:
        np.save(f"{folder}/x.npy", x)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        done = subprocess.run(
            [keras_python, __file__, "--keras-worker", f"{folder}/x.npy", str(rounds)],
            capture_output=True,
            text=True,
            env=env,
        )
    if done.returncode:
        return f"skipped: {keras_python} failed: {done.stderr.strip().splitlines()[-1:]}"
    return [tuple(pair) for pair in json.loads(done.stdout.strip().splitlines()[-1])]


def torch_pass_times(augment, x, rounds: int) -> list[tuple[float, float]]:
    """(wall, CPU) seconds per pass of an augmentation callable over x in batches, as fit hands them over."""
    batches = [x[start : start + BATCH].permute(0, 3, 1, 2) for start in range(0, len(x), BATCH)]
    return [timed(lambda: [augment(batch) for batch in batches]) for _ in range(rounds + 1)][1:]


def kornia_pipeline():
    """kornia.augmentation's nearest equivalent (its shift is also a fraction; 'border' = Keras' 'nearest')."""
    import kornia.augmentation as K
    import torch

    return torch.nn.Sequential(
        K.RandomAffine(degrees=SETTINGS["rotation_range"], translate=(0.1, 0.1), padding_mode="border", p=1.0),
        K.RandomHorizontalFlip(),
    )


def epoch_times(x, y, augment, rounds: int) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) seconds of model B epochs without and with augment, alternating; one warm-up each first."""
    from cnnlab.models.cnn import build_cnn

    runs = {"no augmentation": None, "with augmentation": augment}
    models = {name: build_cnn(**MODEL_B, device="cpu", seed=0) for name in runs}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for round_ in range(rounds + 1):
        for name, transform in runs.items():
            seconds = timed(
                models[name].fit, x, y, batch_size=BATCH, epochs=1, verbose=0, augment=transform, seed=round_
            )
            if round_:
                times[name].append(seconds)
    return times


def medians(times: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)


def lab_images():
    """The lab's training images, or random ones of the same shape without CIFAR-10."""
    from cnnlab.core.errors import CnnlabError
    from cnnlab.data.split import load_lab_data

    try:
        data = load_lab_data()
        return data.x_train, data.y_train, "the lab's 7,500 CIFAR-10 training images"
    except CnnlabError as error:
        rng = np.random.default_rng(0)
        x = rng.uniform(-1, 1, (7500, 32, 32, 3)).astype(np.float32)
        return x, rng.integers(0, 10, 7500), f"7,500 random images (CIFAR-10 not found: {error})"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--keras-worker":
        return keras_worker(sys.argv[2], int(sys.argv[3]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed passes per pipeline (median reported)")
    parser.add_argument("--epoch-rounds", type=int, default=3, help="timed epochs with and without augmentation")
    parser.add_argument("--threads", type=int, help="torch threads (default: $CNNLAB_THREADS or the free cores)")
    parser.add_argument("--keras-python", help="Python of an environment with TensorFlow, to time Keras too")
    args = parser.parse_args()

    import torch

    from cnnlab.core.runtime import configure_threads
    from cnnlab.data.augment import Augmentation

    threads = configure_threads(args.threads)
    x, y, described = lab_images()
    print(f"Data: {described}; batch {BATCH}; torch threads {threads}; CPU; {SETTINGS}")
    images = torch.from_numpy(np.ascontiguousarray(x))
    ours = Augmentation(**SETTINGS, seed=0)
    measured = {
        "cnnlab Augmentation (grid_sample, per-sample)": torch_pass_times(ours, images, args.rounds),
        "kornia.augmentation RandomAffine + RandomHorizontalFlip": torch_pass_times(
            kornia_pipeline(), images, args.rounds
        ),
    }
    keras = keras_times(x, args.rounds, args.keras_python)
    if isinstance(keras, str):
        print(f"Keras ImageDataGenerator {keras}")
    else:
        measured["Keras ImageDataGenerator.flow (legacy, scipy per image)"] = keras
    print(f"\nImages per second, median of {args.rounds} passes over {len(x):,} images (CPU = process time):\n")
    print("| pipeline | images/s (wall) | images/s (CPU) | cnnlab is faster by (CPU) |\n|---|---:|---:|---:|")
    first_cpu = medians(next(iter(measured.values())))[1]
    for name, times in measured.items():
        wall, cpu = medians(times)
        print(f"| {name} | {len(x) / wall:,.0f} | {len(x) / cpu:,.0f} | {cpu / first_cpu:.1f}x |")

    epochs = epoch_times(images, torch.from_numpy(np.asarray(y)), ours, args.epoch_rounds)
    print(f"\nModel B, one epoch of {len(x):,} images, batch {BATCH} (median of {args.epoch_rounds}):\n")
    print("| training | s/epoch (wall) | s/epoch (CPU) | extra (wall) | extra (CPU) |\n|---|---:|---:|---:|---:|")
    base_wall, base_cpu = medians(epochs["no augmentation"])
    for name, times in epochs.items():
        wall, cpu = medians(times)
        print(f"| {name} | {wall:.2f} | {cpu:.2f} | {wall / base_wall - 1:+.1%} | {cpu / base_cpu - 1:+.1%} |")


if __name__ == "__main__":
    main()
