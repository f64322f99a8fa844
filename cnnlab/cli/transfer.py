"""`cnnlab transfer`: ImageNet ResNet50 as a frozen feature extractor with a trained dense head on CIFAR-10
or the data --data names.

Beyond the lab, which calls fine-tuning too slow for the exercise: the backbone runs once per image
(features kept in memory), so only a 20,490-weight head is trained. Defaults are sized for a CPU.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cnnlab.cli._data import add_data_options, dataset_from_args
from cnnlab.core.errors import ConfigError

# Part 4 of the lab: its CNN trained from scratch on 7,500 images reaches about this test accuracy.
LAB_CNN_ACCURACY = "about 0.52-0.58 (lab Part 4: 7,500 training images, 2,000 test images)"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "transfer",
        help="frozen ImageNet ResNet50 + trained dense head on the lab's CIFAR-10 subset (or --data)",
        description="Upscale CIFAR-10 images (or the RGB images --data names), run the ImageNet ResNet50 once "
        "to get 2048 features per image, train a dense softmax head on them, and report test accuracy and time "
        "beside the lab's own CNN. CIFAR-10's train images are the first N of the lab's 10,000 train/validation "
        "pool, test images the first M of its 2,000 test images; other data sets give stratified samples (and a "
        "stratified 20% test set when they have none). With --out the whole classifier (backbone and head) is "
        "saved as a cnnlab model that predict accepts. "
        "Feature extraction dominates the time and grows with --size squared.",
    )
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
        help="resize the images' shorter side to this size (CIFAR-10: upscale from 32 px); 224 is ImageNet's, ~3x "
        "slower than 128 (default: %(default)s)",
    )
    parser.add_argument(
        "--epochs", type=int, default=30, help="passes of the head over the features (default: %(default)s)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=32, help="images per ResNet50 forward pass (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the head's initialisation and shuffling")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: %(default)s)")
    parser.add_argument(
        "--out",
        type=Path,
        help="also write the figures to OUT/transfer.json and the whole model to OUT/weights.safetensors",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_data_options(parser)
    parser.set_defaults(func=run)


def _split(dataset, n_train: int, n_test: int, seed: int):
    """Train and test images for the head: CIFAR-10's first N and M (the lab's order); any other set
    stratified samples, with a stratified 20% held out as the test set when it has none."""
    from cnnlab.data.arrays import stratified_split

    x, y, x_test, y_test = dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test
    if dataset.origin.get("kind") == "cifar10":
        return x[:n_train], y[:n_train], x_test[:n_test], y_test[:n_test]
    if x_test is None:
        x, x_test, y, y_test = stratified_split(x, y, 0.2, seed)
    if n_train < len(x):
        x, _, y, _ = stratified_split(x, y, len(x) - n_train, seed)
    if n_test < len(x_test):
        x_test, _, y_test, _ = stratified_split(x_test, y_test, len(x_test) - n_test, seed)
    return x, y, x_test, y_test


def run(args: argparse.Namespace) -> int:
    if args.train < 1 or args.test < 1:
        raise ConfigError("--train and --test must be at least 1 image")
    if args.epochs < 1 or args.batch_size < 1:
        raise ConfigError("--epochs and --batch-size must be at least 1")
    import torch

    from cnnlab.data.cifar import accuracy_caveat
    from cnnlab.experiments import transfer

    started = time.perf_counter()
    dataset = dataset_from_args(args)
    x_train, y_train, x_test, y_test = _split(dataset, args.train, args.test, args.seed)
    result = transfer.transfer_learning(
        x_train,
        y_train,
        x_test,
        y_test,
        size=args.size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        progress=not args.quiet,
        seed=args.seed,
        class_names=dataset.class_names,
        weights=args.weights,
        device=args.device,
    )
    model = result.model
    total = time.perf_counter() - started
    threads = torch.get_num_threads()
    height, width = dataset.image_shape[:2]
    name = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}.get(dataset.origin.get("kind"), dataset.origin.get("path"))
    print(f"Transfer learning: ImageNet ResNet50 (frozen) + dense softmax head on {name}")
    print(f"  classes     {', '.join(dataset.class_names)}")
    print(
        f"  images      {result.n_train:,} train, {result.n_test:,} test, {height}x{width} px resized to a shorter "
        f"side of {result.size} px"
    )
    print(
        f"  features    {result.feature_seconds:.1f} s ({result.images_per_second:.1f} images/s, "
        f"{threads} CPU thread{'s' if threads > 1 else ''}, device {model.device})"
    )
    print(f"  head        {args.epochs} epochs in {result.head_seconds:.1f} s")
    print(f"  total       {total:.1f} s including data and weight loading")
    print(f"  accuracy    train {result.train_accuracy:.4f}, test {result.test_accuracy:.4f}")
    if dataset.origin.get("kind") == "cifar10":
        print(f"  lab's CNN   {LAB_CNN_ACCURACY}")
    if accuracy_caveat(dataset.origin):
        print(f"  note       {accuracy_caveat(dataset.origin)}")
    if args.out:
        _save(args, result, threads, total)
    return 0


def _save(args: argparse.Namespace, result, threads: int, total: float) -> None:
    """transfer.json with the figures, and the head as a self-describing cnnlab model."""
    from cnnlab.core.files import write_json

    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        **{key: value for key, value in result.__dict__.items() if key != "model"},
        "images_per_second": result.images_per_second,
        "epochs": args.epochs,
        "threads": threads,
        "total_seconds": total,
        "class_names": list(result.model.class_names),
    }
    write_json(args.out / "transfer.json", report)
    path = args.out / "weights.safetensors"
    result.model.save(path)
    print(f"Figures: {args.out / 'transfer.json'}")
    print(
        f"Model: {path} (the whole classifier: frozen ImageNet ResNet50 + the trained head, photos in; "
        f"cnnlab predict/evaluate/export/explain take it, and cnnlab train --model resnet50 fine-tunes further)"
    )
