"""`cnnlab transfer`: ImageNet ResNet50 as a frozen feature extractor with a trained dense head on CIFAR-10.

Beyond the lab, which calls fine-tuning too slow for the exercise: the backbone runs once per image
(features kept in memory), so only a 20,490-weight head is trained. Defaults are sized for a CPU.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cnnlab.errors import ConfigError

# Part 4 of the lab: its CNN trained from scratch on 7,500 images reaches about this test accuracy.
LAB_CNN_ACCURACY = "about 0.52-0.58 (lab Part 4: 7,500 training images, 2,000 test images)"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "transfer",
        help="frozen ImageNet ResNet50 + trained dense head on the lab's CIFAR-10 subset",
        description="Upscale CIFAR-10 images, run the ImageNet ResNet50 once to get 2048 features per image, "
        "train a dense softmax head on them, and report test accuracy and time beside the lab's own CNN. "
        "Train images are the first N of the lab's 10,000 train/validation pool, test images the first M "
        "of its 2,000 test images. Feature extraction dominates the time and grows with --size squared.",
    )
    parser.add_argument("--data", type=Path, help="CIFAR-10 archive or folder (default: $CNNLAB_CIFAR10)")
    parser.add_argument(
        "--weights",
        type=Path,
        help="ResNet50 weights: npm .tgz, TF.js folder, .h5 or .safetensors (default: $CNNLAB_RESNET50_WEIGHTS)",
    )
    parser.add_argument("--train", type=int, default=2000, help="training images (default: %(default)s)")
    parser.add_argument("--test", type=int, default=500, help="test images (default: %(default)s)")
    parser.add_argument(
        "--size",
        type=int,
        default=128,
        help="upscale 32 px images to this size; 224 is ImageNet's, ~3x slower than 128 (default: %(default)s)",
    )
    parser.add_argument(
        "--epochs", type=int, default=30, help="passes of the head over the features (default: %(default)s)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=32, help="images per ResNet50 forward pass (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the head's initialisation and shuffling")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="also write the figures to OUT/transfer.json")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.train <= 50_000 or not 1 <= args.test <= 10_000:
        raise ConfigError("--train must be 1..50,000 and --test 1..10,000 (CIFAR-10's sizes)")
    if args.epochs < 1 or args.batch_size < 1:
        raise ConfigError("--epochs and --batch-size must be at least 1")
    import torch

    from cnnlab import pretrained
    from cnnlab.data import load_cifar10, source_description
    from cnnlab.device import pick_device

    started = time.perf_counter()
    (x_train, y_train), (x_test, y_test) = load_cifar10(args.data)
    model = pretrained.load_resnet50(args.weights, progress=not args.quiet).to(pick_device(args.device))
    result = pretrained.transfer_learning(
        model,
        x_train[: args.train],
        y_train[: args.train],
        x_test[: args.test],
        y_test[: args.test],
        size=args.size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        progress=not args.quiet,
        seed=args.seed,
    )
    total = time.perf_counter() - started
    threads = torch.get_num_threads()
    print("Transfer learning: ImageNet ResNet50 (frozen) + dense softmax head on CIFAR-10")
    print(
        f"  images      {result.n_train:,} train (first of the training set), {result.n_test:,} test "
        f"(first of the test set), upscaled 32 -> {result.size} px"
    )
    print(
        f"  features    {result.feature_seconds:.1f} s ({result.images_per_second:.1f} images/s, "
        f"{threads} CPU thread{'s' if threads > 1 else ''}, device {next(model.parameters()).device})"
    )
    print(f"  head        {args.epochs} epochs in {result.head_seconds:.1f} s")
    print(f"  total       {total:.1f} s including data and weight loading")
    print(f"  accuracy    train {result.train_accuracy:.4f}, test {result.test_accuracy:.4f}")
    print(f"  lab's CNN   {LAB_CNN_ACCURACY}")
    if not source_description(args.data).get("official"):
        print("  note        the CIFAR-10 copy is not the official archive; accuracy may differ by a few points")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        report = {
            **result.__dict__,
            "images_per_second": result.images_per_second,
            "epochs": args.epochs,
            "threads": threads,
            "total_seconds": total,
        }
        (args.out / "transfer.json").write_text(json.dumps(report, indent=2))
        print(f"Figures: {args.out / 'transfer.json'}")
    return 0
