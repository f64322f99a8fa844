"""`cnnlab pack`: a data set as WebDataset tar shards plus an index, for training that streams it."""

from __future__ import annotations

import argparse
from pathlib import Path

from cnnlab.cli._data import DATA_HELP, _fraction, _names, parse_image_size


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "pack",
        help="pack a data set into WebDataset tar shards for streamed training",
        description="Decode a data set once, resized, into WebDataset tar shards (train-000000.tar, ..., "
        "test-000000.tar, ...: uint8 .npy images and class labels, in a seeded random order) and an index.json "
        "(classes, image shape, counts per split and class, each shard's size and sha256); a folder's files are "
        "listed per split in train-files.txt and test-files.txt. Image folders are decoded a chunk at a "
        "time, so memory stays flat whatever their size. Training then streams the shards: cnnlab train --data "
        "DIR. A killed pack leaves no index.json; run it again to complete it.",
    )
    parser.add_argument("spec", metavar="SPEC", help=DATA_HELP)
    parser.add_argument("--out", type=Path, required=True, help="folder for the shards and index.json")
    parser.add_argument(
        "--image-size",
        type=parse_image_size,
        metavar="N|HxW",
        help="image folders: resize to N x N or H x W (default: the most common size, at most 256)",
    )
    parser.add_argument(
        "--shard-size",
        type=float,
        default=100.0,
        metavar="MB",
        help="largest shard in MB (default: 100); a split of 8+ images gets at least 8 shards",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a shard set that --out already holds")
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples' order and of --validation-split")
    parser.add_argument("--color-mode", choices=("rgb", "grayscale"), default="rgb", help="image folders: channels")
    parser.add_argument("--crop-to-aspect-ratio", action="store_true", help="image folders: cut the centre")
    parser.add_argument("--pad-to-aspect-ratio", action="store_true", help="image folders: pad with black")
    parser.add_argument("--class-names", type=_names, metavar="A,B,...", help="image folders: the classes to pack")
    parser.add_argument(
        "--validation-split",
        type=_fraction,
        metavar="FRACTION",
        help="a folder without train/ and test/: share packed as the test split (stratified)",
    )
    parser.add_argument("--strict", action="store_true", help="stop at the first unreadable image")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cnnlab.data.pack import pack

    index = pack(
        args.spec,
        args.out,
        image_size=args.image_size,
        shard_size_mb=args.shard_size,
        color_mode=args.color_mode,
        crop_to_aspect_ratio=args.crop_to_aspect_ratio,
        pad_to_aspect_ratio=args.pad_to_aspect_ratio,
        class_names=args.class_names,
        validation_split=args.validation_split,
        seed=args.seed,
        strict=args.strict,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    counts = index["counts"]
    for split, count in counts.items():
        print(f"{split}: {count['samples']:,} images in {count['shards']} shard(s), {count['bytes'] / 1e6:,.1f} MB")
    height, width, channels = index["image_shape"]
    print(f"Wrote {args.out / 'index.json'}: {len(index['class_names'])} classes, {height}x{width}x{channels} images")
    sizes = f" --n-train-val {counts['train']['samples']}"
    if "test" in counts:
        sizes += f" --n-test {counts['test']['samples']}"
    print(f"Train on all of it: cnnlab train --data {args.out}{sizes}")
    return 0
