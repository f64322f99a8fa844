"""Image-folder decoding speed: cnnlab's loader against a one-process Pillow loop (and, optionally, Keras'
``image_dataset_from_directory``) on the same files, in one run.

    CNNLAB_CIFAR10=... python benchmarks/folder_speed.py [--rounds 3] [--keras-python /tmp/tf-venv/bin/python]

Two folders are written once into --workdir (default: a temporary folder): the 10,000 CIFAR-10 test images
as 32x32 PNG in class folders, and the same images upscaled to 256x256 JPEG (quality 90), loaded at 64x64.
Rows: the plain loop a user would write (Image.open, convert, resize, one process); cnnlab's load_images on
one worker (shows what JPEG draft decoding gives) and on every free core (adds the process pool). Rounds
alternate between loaders so machine noise hits all alike; the table gives the median images per second
and the ratio to the Pillow loop. Also printed: the time of a second ``load_dataset`` of the PNG folder
(read from the .npy cache).

Keras is never a cnnlab dependency: ``--keras-python`` names the Python of a separate environment with
TensorFlow (``python -m venv /tmp/tf-venv && /tmp/tf-venv/bin/pip install tensorflow-cpu``); without it the
Keras row is skipped with a note.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from cnnlab.core.runtime import available_cores
from cnnlab.data.cifar import CLASS_NAMES, load_cifar10
from cnnlab.data.images import load_images
from cnnlab.data.load import load_dataset

KERAS_SCRIPT = """
import json, sys, time
import tensorflow as tf
root, height, width = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
started = time.perf_counter()
data = tf.keras.utils.image_dataset_from_directory(root, image_size=(height, width), batch_size=256, shuffle=False)
count = sum(int(images.shape[0]) for images, _ in data)
print(json.dumps(count / (time.perf_counter() - started)))
"""


def write_folders(workdir: Path, count: int) -> tuple[list[Path], list[Path]]:
    """The CIFAR-10 test images as 32x32 PNG and as 256x256 JPEG, one folder per class (kept between runs)."""
    _, (x_test, y_test) = load_cifar10()
    png, jpeg = [], []
    for index in range(count):
        name = CLASS_NAMES[int(y_test[index])]
        png.append(workdir / "png" / name / f"{index:05d}.png")
        jpeg.append(workdir / "jpeg256" / name / f"{index:05d}.jpg")
        if png[-1].exists() and jpeg[-1].exists():
            continue
        for path in (png[-1], jpeg[-1]):
            path.parent.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(np.asarray(x_test[index]))
        image.save(png[-1])
        image.resize((256, 256), Image.Resampling.BICUBIC).save(jpeg[-1], quality=90)
    return png, jpeg


def pillow_loop(paths: list[Path], size: tuple[int, int]) -> np.ndarray:
    """What a user writes by hand: open, convert to RGB, resize, one image after another."""
    images = np.empty((len(paths), *size, 3), dtype=np.uint8)
    for index, path in enumerate(paths):
        with Image.open(path) as image:
            image = image.convert("RGB")
            if image.size != size[::-1]:
                image = image.resize(size[::-1], Image.Resampling.BILINEAR)
            images[index] = np.asarray(image)
    return images


def keras_rate(root: Path, size: tuple[int, int], keras_python: str | None) -> float | str:
    if not keras_python:
        return "skipped: pass --keras-python PATH (a Python with TensorFlow) to time Keras"
    result = subprocess.run(
        [keras_python, "-c", KERAS_SCRIPT, str(root), str(size[0]), str(size[1])],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode:
        return f"skipped: Keras failed ({result.stderr.strip().splitlines()[-1:]})"
    return float(result.stdout.strip().splitlines()[-1])


def measure(paths: list[Path], size: tuple[int, int], rounds: int) -> dict[str, float]:
    """Median images/s per loader, rounds alternating between loaders."""
    loaders = {
        "Pillow loop, 1 process": lambda: pillow_loop(paths, size),
        "cnnlab load_images, 1 worker": lambda: load_images(paths, size, workers=1, progress=False),
        f"cnnlab load_images, {available_cores()} workers": lambda: load_images(paths, size, progress=False),
    }
    rates = {name: [] for name in loaders}
    for _ in range(rounds):
        for name, run in loaders.items():
            started = time.perf_counter()
            run()
            rates[name].append(len(paths) / (time.perf_counter() - started))
    return {name: statistics.median(values) for name, values in rates.items()}


def print_table(title: str, rates: dict[str, float], keras: float | str) -> None:
    baseline = rates["Pillow loop, 1 process"]
    print(f"\n{title}\n| loader | images/s | vs Pillow loop |\n|---|---:|---:|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:,.0f} | {rate / baseline:.2f}x |")
    if isinstance(keras, float):
        print(f"| Keras image_dataset_from_directory | {keras:,.0f} | {keras / baseline:.2f}x |")
    else:
        print(f"(Keras {keras})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000, help="test images used (default: all 10,000)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, help="where the folders are written (default: a temp folder)")
    parser.add_argument("--keras-python", help="Python of an environment with TensorFlow (optional)")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="folder-speed-"))
    started = time.perf_counter()
    png, jpeg = write_folders(workdir, args.count)
    print(
        f"{args.count:,} images per folder in {workdir} (written in {time.perf_counter() - started:.0f} s); "
        f"{available_cores()} free cores"
    )
    for title, paths, size, root in (
        ("32x32 PNG, loaded at 32x32", png, (32, 32), workdir / "png"),
        ("256x256 JPEG, loaded at 64x64", jpeg, (64, 64), workdir / "jpeg256"),
    ):
        print_table(title, measure(paths, size, args.rounds), keras_rate(root, size, args.keras_python))
    with tempfile.TemporaryDirectory() as cache, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        os.environ["CNNLAB_CACHE"] = cache
        load_dataset(workdir / "png", image_size=32, progress=False)
        started = time.perf_counter()
        load_dataset(workdir / "png", image_size=32, progress=False)
        print(f"\nsecond load_dataset of the PNG folder (from the .npy cache): {time.perf_counter() - started:.2f} s")


if __name__ == "__main__":
    sys.exit(main())
