"""Image folders: one sub-folder per class, optionally under train/ and test/ (or val/), decoded into arrays.

Files are found with one walk (link-loop safe), classes are checked to match across splits, and the decoded
arrays are cached under a key of the files' names, sizes and times and the decoding settings.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cnnlab.core.errors import ConfigError, DataError
from cnnlab.core.files import cache_dir
from cnnlab.data.arrays import stratified_split
from cnnlab.data.cache import read_cache, write_cache
from cnnlab.data.dataset import ImageDataset, check_memory
from cnnlab.data.images import find_images, load_images

DEFAULT_SIZE_CAP = 256
TEST_FOLDER_NAMES = ("test", "val", "validation")
_FOLDER_CACHE_FORMAT = 1
_SIZE_SAMPLE = 200  # files whose headers decide the default image size
_NAMES_SHOWN = 3


@dataclass
class _Scan:
    """What a folder holds: per split, class name -> image files; plus what was left out and why."""

    splits: dict[str, dict[str, list[Path]]]
    ignored: list[Path] = field(default_factory=list)
    loops: list[Path] = field(default_factory=list)


def _scan_classes(folder: Path, scan: _Scan) -> dict[str, list[Path]]:
    classes = {}
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and not entry.name.startswith("."):
            classes[entry.name] = find_images(entry, scan.ignored, scan.loops)
        elif entry.is_file():
            scan.ignored.append(entry)
    return classes


def _scan(root: Path) -> _Scan:
    scan = _Scan({})
    folders = {entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith(".")}
    test_names = folders & set(TEST_FOLDER_NAMES)
    if "train" in folders and len(test_names) == 1 and folders == {"train", *test_names}:
        scan.splits = {
            "train": _scan_classes(root / "train", scan),
            "test": _scan_classes(root / test_names.pop(), scan),
        }
        _check_same_classes(root, scan.splits)
    else:
        scan.splits = {"train": _scan_classes(root, scan)}
    _drop_empty_classes(root, scan.splits)
    return scan


def _check_same_classes(root: Path, splits: dict[str, dict[str, list[Path]]]) -> None:
    train, test = set(splits["train"]), set(splits["test"])
    if train != test:
        raise DataError(
            f"{root}: train/ and test/ have different class folders (only in train: {_names(train - test)}; "
            f"only in test: {_names(test - train)}); give both the same class subfolders"
        )


def _names(items) -> str:
    return ", ".join(sorted(map(str, items))) or "none"


def _drop_empty_classes(root: Path, splits: dict[str, dict[str, list[Path]]]) -> None:
    classes = splits["train"]
    if not any(classes.values()):
        raise DataError(
            f"{root}: no images in class subfolders; put each class's images in a folder named after the class, "
            f"e.g. {root / 'cat' / '1.jpg'}"
        )
    empty = [name for name, files in classes.items() if not files]
    if empty:
        warnings.warn(f"{root}: class folder(s) {_names(empty)} hold no images and are left out", stacklevel=4)
        for split in splits.values():
            for name in empty:
                split.pop(name, None)
    if len(classes) < 2:
        raise DataError(f"{root}: only one class ({_names(classes)}); a classifier needs at least two class subfolders")


def _common_size(files: list[Path]) -> tuple[int, int]:
    """The most common (h, w) among up to 200 evenly sampled headers, shrunk to fit 256 on its longer side."""
    sizes = Counter()
    for path in files[:: max(1, len(files) // _SIZE_SAMPLE)]:
        try:
            with Image.open(path) as image:
                sizes[image.size[::-1]] += 1
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
    if not sizes:
        raise DataError(f"none of the sampled images (e.g. {files[0]}) can be read; check the folder")
    height, width = sizes.most_common(1)[0][0]
    scale = min(1.0, DEFAULT_SIZE_CAP / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _folder_key(root: Path, scan: _Scan, settings: dict) -> str:
    """sha256 over the listing (relative paths, sizes, mtimes) and decode settings: any change decodes again."""
    digest = hashlib.sha256(json.dumps({"format": _FOLDER_CACHE_FORMAT, **settings}, sort_keys=True).encode())
    for split, classes in scan.splits.items():
        for name, files in classes.items():
            for path in files:
                try:
                    stat = path.stat()
                    ident = f"{split}|{name}|{path.relative_to(root)}|{stat.st_size}|{stat.st_mtime_ns}\n"
                except OSError:  # a dangling link: decoding will skip it
                    ident = f"{split}|{name}|{path.relative_to(root)}|missing\n"
                digest.update(ident.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:32]


def load_folder(root: Path, settings: dict, strict: bool, progress: bool) -> ImageDataset:
    scan = _scan(root)
    if "test" in scan.splits and settings["validation_split"] is not None:
        raise ConfigError(f"{root} has train/ and test/ folders; leave out --validation-split")
    _warn_left_out(root, scan)
    class_names = tuple(scan.splits["train"])
    if settings["image_size"] is None:
        settings = settings | {
            "image_size": _common_size([f for files in scan.splits["train"].values() for f in files])
        }
    cache = cache_dir() / "folders" / _folder_key(root, scan, settings | {"strict": strict})
    cached = read_cache(cache, cache_format=_FOLDER_CACHE_FORMAT)
    if cached is None:
        write_cache(cache, *_decode_folder(root, scan, class_names, settings, strict, progress))
        cached = read_cache(cache, cache_format=_FOLDER_CACHE_FORMAT)
    arrays, meta = cached
    has_test = meta["has_test"]
    origin = {**meta["origin"], "path": str(root), "source": str(root), "checksum": cache.name}
    return ImageDataset(
        arrays["x_train"],
        arrays["y_train"],
        arrays["x_test"] if has_test else None,
        arrays["y_test"] if has_test else None,
        class_names,
        origin,
    )


def _warn_left_out(root: Path, scan: _Scan) -> None:
    if scan.ignored:
        shown = _names(path.relative_to(root) for path in scan.ignored[:_NAMES_SHOWN])
        warnings.warn(f"{root}: ignored {len(scan.ignored)} non-image file(s) (e.g. {shown})", stacklevel=4)
    if scan.loops:
        warnings.warn(f"{root}: symlink loop(s) not followed again: {_names(scan.loops[:_NAMES_SHOWN])}", stacklevel=4)


def _decode_folder(root, scan: _Scan, class_names, settings: dict, strict: bool, progress: bool):
    """Decode every split (memory checked first), warn about skipped and converted images, split if asked."""
    size, channels = settings["image_size"], 1 if settings["color_mode"] == "grayscale" else 3
    count = sum(len(files) for classes in scan.splits.values() for files in classes.values())
    check_memory(count, size, channels, str(root))
    arrays, skipped, notes = {}, [], Counter()
    for split, classes in scan.splits.items():
        paths = [path for files in classes.values() for path in files]
        labels = np.repeat(np.arange(len(class_names)), [len(classes[name]) for name in class_names])
        images, kept, split_skipped, split_notes = load_images(
            paths, size, settings["resize"], settings["color_mode"], strict, progress, settings["max_pixels"]
        )
        label_of = dict(zip(map(str, paths), labels, strict=True))
        arrays[f"x_{split}"] = images
        arrays[f"y_{split}"] = np.array([label_of[str(path)] for path in kept], dtype=np.int64)
        skipped += split_skipped
        notes += split_notes
    _warn_decoded(root, skipped, notes)
    if not len(arrays["x_train"]):
        raise DataError(f"{root}: none of the {count} images could be read (e.g. {skipped[0][1]}); check the files")
    layout = "train/test folders" if "x_test" in arrays else "one folder"
    if "x_test" not in arrays and settings["validation_split"]:
        x, x_test, y, y_test = stratified_split(
            arrays["x_train"], arrays["y_train"], settings["validation_split"], settings["seed"]
        )
        arrays = {"x_train": x, "y_train": y, "x_test": x_test, "y_test": y_test}
        layout = f"one folder, stratified {settings['validation_split']:.0%} test split (seed {settings['seed']})"
    has_test = "x_test" in arrays
    if not has_test:
        arrays["x_test"], arrays["y_test"] = arrays["x_train"][:0], arrays["y_train"][:0]
    note = f"{len(skipped)} unreadable image(s) skipped" if skipped else None
    origin = {
        "kind": "folder",
        "official": None,
        "layout": layout,
        "image_size": list(size),
        "skipped": len(skipped),
        "converted": dict(notes),
        "ignored_files": len(scan.ignored),
        "note": note,
    }
    return arrays, {"format": _FOLDER_CACHE_FORMAT, "has_test": has_test, "origin": origin}


def _warn_decoded(root: Path, skipped: list, notes: Counter) -> None:
    if skipped:
        shown = _names(path.relative_to(root) for path, _ in skipped[:_NAMES_SHOWN])
        warnings.warn(
            f"{root}: skipped {len(skipped)} unreadable image(s) (e.g. {shown}); fix or remove them, "
            "or pass strict=True (--strict) to stop at the first",
            stacklevel=5,
        )
    if notes:
        counts = "; ".join(f"{count} x {note}" for note, count in notes.most_common())
        warnings.warn(f"{root}: converted {notes.total()} image(s): {counts}", stacklevel=5)
