"""Using a trained model on the CPU: `predict` on a folder of photos, and ONNX Runtime against PyTorch.

    CNNLAB_CIFAR10=/path/to/cifar-10.tar.xz python benchmarks/predict_speed.py [--photos 1000] [--threads 1]

Part 1 writes CIFAR-10 test images, upscaled to --size px, as JPEG files into a temp folder and classifies
them with the lab's model B twice: through ``predict_images`` (decode all, one batched prediction) and
through a plain loop that opens, resizes and predicts one photo at a time (target: >= 3x).
Part 2 times the exported ONNX file in ONNX Runtime against PyTorch's predict (both from uint8 pixels
to probabilities) for model B and the recipe network at batch 1 and 256. Weights are left untrained:
speed does not depend on their values. Prints Markdown tables; the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from cnnlab.core.runtime import configure_threads
from cnnlab.data.arrays import scale_images
from cnnlab.data.cifar import load_cifar10
from cnnlab.evaluate.export import INPUT_NAME, export_onnx
from cnnlab.evaluate.predict import predict_images
from cnnlab.experiments.recipes import build_recipe_model
from cnnlab.models.cnn import LAB_MODELS
from cnnlab.models.registry import create_model


def seconds(action: Callable[[], object], repeats: int = 1) -> float:
    """Best of ``repeats`` after one warm-up: the least disturbed run on a shared machine."""
    action()
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        timings.append(time.perf_counter() - started)
    return min(timings)


def write_photos(images: np.ndarray, folder: Path, size: int) -> list[Path]:
    paths = []
    for i, image in enumerate(tqdm(images, desc="writing JPEGs", leave=False)):
        path = folder / f"photo_{i:04d}.jpg"
        Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC).save(path, quality=90)
        paths.append(path)
    return paths


def one_at_a_time(model, paths: list[Path]) -> None:
    """What a user writes without predict: open, convert, resize, predict, for each photo."""
    height, width, _ = model.input_shape
    for path in paths:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR))
        model.predict(scale_images(pixels[None]))


def onnx_against_torch(name: str, model, folder: Path, repeats: int) -> list[str]:
    import onnxruntime
    import torch

    path = export_onnx(model, folder / f"{name.replace(' ', '_')}.onnx").path
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    rows = []
    for batch, calls in ((1, 200), (256, 4)):
        images = np.random.default_rng(0).integers(0, 256, (batch, *model.input_shape), dtype=np.uint8)
        torch_time = seconds(lambda x=images, n=calls: [model.predict(x) for _ in range(n)], repeats)
        onnx_time = seconds(lambda x=images, n=calls: [session.run(None, {INPUT_NAME: x}) for _ in range(n)], repeats)
        torch_rate, onnx_rate = batch * calls / torch_time, batch * calls / onnx_time
        rows.append(f"| {name} | {batch} | {torch_rate:,.0f} | {onnx_rate:,.0f} | {onnx_rate / torch_rate:.2f}x |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="CIFAR-10 archive or folder (default: $CNNLAB_CIFAR10)")
    parser.add_argument("--photos", type=int, default=1000, help="photos in the folder (default: 1000)")
    parser.add_argument("--size", type=int, default=128, help="side of the JPEG photos in px (default: 128)")
    parser.add_argument("--threads", type=int, help="torch threads (default: $CNNLAB_THREADS, else all cores)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per figure, best kept (default: 1)")
    args = parser.parse_args()
    threads = configure_threads(args.threads)
    (x_train, _), (x_test, _) = load_cifar10(args.data, allow_download=False)
    model_b = create_model(LAB_MODELS["B"], device="cpu")
    recipe = build_recipe_model("fast", scale_images(x_train[:2000]), device="cpu")

    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        paths = write_photos(x_test[: args.photos], folder, args.size)
        batched = seconds(lambda: predict_images(model_b, paths), args.repeats)
        looped = seconds(lambda: one_at_a_time(model_b, paths), args.repeats)
        print(f"\n{args.photos} JPEG photos of {args.size} x {args.size} px, lab model B, {threads} thread(s)\n")
        print("| way | seconds | photos/s |\n|---|---|---|")
        print(f"| predict_images (batched) | {batched:.2f} | {args.photos / batched:,.0f} |")
        print(f"| plain loop, one photo at a time | {looped:.2f} | {args.photos / looped:,.0f} |")
        print(f"\npredict_images is {looped / batched:.1f}x the plain loop (target >= 3x)\n")

        print("| model | batch | PyTorch images/s | ONNX Runtime images/s | ONNX / PyTorch |\n|---|---|---|---|---|")
        for name, model in (("lab model B", model_b), ("recipe network", recipe)):
            for row in onnx_against_torch(name, model, folder, args.repeats):
                print(row)


if __name__ == "__main__":
    main()
