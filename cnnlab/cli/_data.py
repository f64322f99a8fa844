"""The data options every training command shares (--data, --image-size, ...), and the loaders they feed."""

from __future__ import annotations

import argparse

DATA_HELP = (
    "the data set: cifar10 (default; $CNNLAB_CIFAR10, the cache or a download), cifar100 ($CNNLAB_CIFAR100), "
    "a folder of class subfolders (optionally inside train/ and test/ or val/), an .npz with x_train, y_train "
    "[, x_test, y_test, class_names], or a CIFAR-10/100 archive or folder"
)


def parse_image_size(text: str) -> tuple[int, int]:
    """'64' -> (64, 64); '48x64' -> (48, 64), height first as in Keras."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        size = tuple(int(part) for part in parts)
    except ValueError:
        size = ()
    if len(parts) == 1 and size:
        size = size * 2
    if len(size) != 2 or min(size) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; give N (a square) or HxW, e.g. 64 or 48x64")
    return size


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction between 0 and 1, e.g. 0.2")
    return value


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of processes; give 0 or more, e.g. 4")
    return int(text)


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of class folder names; give e.g. cat,dog,bird")
    return names


def add_data_options(parser: argparse.ArgumentParser, stream: bool = False) -> None:
    """The data flags; ``stream`` adds --stream, for commands that can train on a folder streamed from disk."""
    group = parser.add_argument_group("data")
    group.add_argument("--data", metavar="SPEC", default=None, help=DATA_HELP)
    group.add_argument(
        "--image-size",
        type=parse_image_size,
        metavar="N|HxW",
        help="image folders: resize to N x N or H x W (default: the most common size, at most 256)",
    )
    group.add_argument(
        "--color-mode", choices=("rgb", "grayscale"), default="rgb", help="image folders: channels (default: rgb)"
    )
    group.add_argument(
        "--crop-to-aspect-ratio",
        action="store_true",
        help="image folders: cut the centre to the target's aspect ratio instead of squashing",
    )
    group.add_argument(
        "--pad-to-aspect-ratio",
        action="store_true",
        help="image folders: pad with black to the target's aspect ratio instead of squashing",
    )
    group.add_argument(
        "--class-names",
        type=_names,
        metavar="A,B,...",
        help="image folders: the class folders to use, in this order (default: all, sorted)",
    )
    group.add_argument(
        "--validation-split",
        type=_fraction,
        metavar="FRACTION",
        help="a folder without train/ and test/: share held out as the test set (stratified, default: 0.2)",
    )
    group.add_argument(
        "--strict", action="store_true", help="stop at the first unreadable image instead of skipping it"
    )
    if stream:  # default None: stream a folder only when its arrays would pass the memory limit
        group.add_argument("--stream", action="store_true", default=None, help="image folders: decode the images "
                           "batch by batch while training instead of holding them in memory (default: only when "
                           "they would pass the memory limit, $CNNLAB_MEMORY_LIMIT)")  # fmt: skip
        group.add_argument("--data-workers", type=_count, metavar="N", help="streamed folders and shard sets: "
                           "processes that decode or read the images while training (default: up to 4 for a "
                           "folder, 2 for shards; 0 reads in the training process)")  # fmt: skip


def dataset_from_args(args: argparse.Namespace):
    """The ImageDataset the data options name (a StreamedDataset for a folder streamed, where --stream exists)."""
    from cnnlab.data.load import load_dataset

    data = load_dataset(
        args.data,
        image_size=args.image_size,
        color_mode=args.color_mode,
        crop_to_aspect_ratio=args.crop_to_aspect_ratio,
        pad_to_aspect_ratio=getattr(args, "pad_to_aspect_ratio", False),
        class_names=getattr(args, "class_names", None),
        validation_split=args.validation_split,
        seed=getattr(args, "split_seed", None) or 0,
        strict=args.strict,
        stream=getattr(args, "stream", False),
    )
    workers = getattr(args, "data_workers", None)
    if workers is not None and getattr(data, "streamed", False):  # before any split's feed is made
        data.num_workers = workers
    return data


def lab_data_from_args(args: argparse.Namespace, **overrides):
    """The lab split (LabData) of the data set the options name; ``overrides`` go to ``load_lab_data``
    (n_train_val, n_test, val_fraction, seed, dtype)."""
    from cnnlab.data.split import load_lab_data

    return load_lab_data(dataset_from_args(args), **overrides)


def split_pairs(data) -> tuple[tuple, tuple, tuple]:
    """(x, y) of the lab split's training, validation and test images, as fit and the evaluations take them:
    arrays, or a streamed set's feeds, which bring their own labels (y None)."""
    if getattr(data, "streamed", False):
        return (data.train, None), (data.validation, None), (data.test, None)
    return (data.x_train, data.y_train), (data.x_val, data.y_val), (data.x_test, data.y_test)


def first_training_images(data, count: int):
    """(images, labels) of the lab split's first ``count`` training images as uint8 arrays (a streamed split
    decodes just those): for sample figures and TensorBoard's sample images."""
    from cnnlab.data.stream import first_images

    return first_images(*split_pairs(data)[0], count)
