"""Images per second of ResNet50 transfer learning and fine-tuning, side by side in one run.

    CNNLAB_RESNET50_WEIGHTS=... python benchmarks/finetune_speed.py [--images 64] [--rounds 3] [--threads 2]

Rows: the frozen-feature path (a forward pass, what phase 1 and ``cnnlab transfer`` cost per image) and a
full fine-tuning step (forward, backward, SGD), at 128 and 224 px, float32 against bfloat16 autocast, in
channels_last memory against contiguous NCHW. Then cnnlab's ``fit`` against a plain PyTorch loop doing the
same steps (same network, optimizer, batches; target: within 1.05x). Each row alternates its variants
round by round so machine noise hits them alike; medians are shown, ratios against the first variant.
Random uint8 images: speed does not depend on the pixels.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def build(size: int, bf16: bool):
    from cnnlab.models.registry import create_model
    from cnnlab.models.resnet50_classifier import ResNet50Config

    config = ResNet50Config(input_shape=(size, size, 3), num_classes=10, seed=0, image_size=size, cpu_bf16=bf16)
    return create_model(config, "cpu")


def features_seconds(model, images) -> float:
    started = time.perf_counter()
    model.features(images, batch_size=32, progress=False)
    return time.perf_counter() - started


def plain_loop_seconds(model, images, labels, batch_size: int, channels_last: bool = True) -> float:
    """The smallest honest loop: slice, scale, forward under the model's autocast, cross-entropy, backward, step.
    ``channels_last=False`` puts the weights and every batch in contiguous NCHW memory."""
    import torch
    import torch.nn.functional as F

    memory = torch.channels_last if channels_last else torch.contiguous_format
    network, optimizer = model.network.to(memory_format=memory), model.optimizer
    network.train()
    x = torch.from_numpy(images)
    y = torch.from_numpy(labels)
    started = time.perf_counter()
    for start in range(0, len(x), batch_size):
        batch = (x[start : start + batch_size].float() / 127.5 - 1).permute(0, 3, 1, 2).contiguous(memory_format=memory)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=model.amp_dtype is not None):
            logits = network(batch)
        loss = F.cross_entropy(logits.float(), y[start : start + batch_size], label_smoothing=model.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def fit_seconds(model, images, labels, batch_size: int) -> float:
    started = time.perf_counter()
    model.fit(images, labels, batch_size=batch_size, epochs=1, verbose=0, shuffle=False)
    return time.perf_counter() - started


def table_row(name: str, variants: dict, rounds: int, images: int) -> list[str]:
    """Run each variant ``rounds`` times, interleaved; one Markdown row per variant."""
    times = {label: [] for label in variants}
    for run in variants.values():
        run()  # warm-up: allocator, one-time kernels
    for _ in range(rounds):
        for label, run in variants.items():
            times[label].append(run())
    first = statistics.median(next(iter(times.values())))
    rows = []
    for label, values in times.items():
        median = statistics.median(values)
        rows.append(f"| {name} | {label} | {images / median:.1f} | {median / first:.2f} |")
    return rows


def size_rows(size: int, images, labels, rounds: int) -> list[str]:
    """Every measurement at one image size."""
    count = len(images)
    models = {"float32": build(size, False), "bfloat16": build(size, True)}
    rows = table_row(f"frozen features, {size} px", {
        label: (lambda m=m: features_seconds(m, images)) for label, m in models.items()
    }, rounds, count)  # fmt: skip
    rows += table_row(f"fine-tune step, {size} px, batch 32", {
        label: (lambda m=m: fit_seconds(m, images, labels, 32)) for label, m in models.items()
    }, rounds, count)  # fmt: skip
    bf16 = models["bfloat16"]
    rows += table_row(f"plain loop, {size} px, bfloat16", {
        "channels_last": lambda: plain_loop_seconds(bf16, images, labels, 32),
        "contiguous NCHW": lambda: plain_loop_seconds(bf16, images, labels, 32, channels_last=False),
    }, rounds, count)  # fmt: skip
    rows += table_row(f"fit against a plain loop, {size} px, bfloat16", {
        "plain PyTorch loop": lambda: plain_loop_seconds(bf16, images, labels, 32),
        "cnnlab fit": lambda: fit_seconds(bf16, images, labels, 32),
    }, rounds, count)  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="images per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    args = parser.parse_args()

    import torch

    from cnnlab.core.runtime import configure_threads, cpu_has_bf16, cpu_model_name

    threads = configure_threads(args.threads)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, args.images)
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {cpu_model_name()}, {threads} threads, torch {torch.__version__}, "
          f"bf16 units: {cpu_has_bf16()}, {args.images} images per measurement, median of {args.rounds}\n")  # fmt: skip
    print("| measurement | variant | images/s | time ratio |\n|---|---|---|---|")
    for size in args.sizes:
        images = rng.integers(0, 256, (args.images, size, size, 3), dtype=np.uint8)
        print("\n".join(size_rows(size, images, labels, args.rounds)), flush=True)


if __name__ == "__main__":
    main()
