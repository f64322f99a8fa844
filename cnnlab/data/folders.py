"""Image folders: one sub-folder per class, optionally under train/ and test/ (or val/), decoded into arrays.

Files are found with one walk (link-loop safe), classes are checked to match across splits, and the decoded
arrays are cached under a key of the files' names, sizes and times and the decoding settings.
"""

from __future__ import annotations

import hashlib
import json
import os
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
from cnnlab.data.images import GRAYSCALE_NOTE, IMAGE_SUFFIXES, find_images, load_images

TEST_FOLDER_NAMES = ("test", "val", "validation")
SPLIT_FOLDER_NAMES = ("train", *TEST_FOLDER_NAMES)
JUNK_FOLDERS = ("__pycache__", "__MACOSX")  # and every dot-folder (.ipynb_checkpoints, .git, ...)
DEFAULT_SIZE_CAP = 256
_FOLDER_CACHE_FORMAT = 1
_SIZE_SAMPLE = 200  # files whose headers decide the default image size
_NAMES_SHOWN = 3
_ENTRIES_SHOWN = 8
# The settings a folder was loaded with, kept in its origin so that it can be loaded the same way again.
LOAD_KEYS = ("color_mode", "resize", "validation_split", "seed", "class_names")


@dataclass
class _Scan:
    """What a folder holds: per split, class name -> image files; plus what was left out and why."""

    splits: dict[str, dict[str, list[Path]]]
    ignored: list[Path] = field(default_factory=list)
    loops: list[Path] = field(default_factory=list)


def _is_junk(entry: Path) -> bool:
    """Tool droppings that are never classes: caches, notebook checkpoints, hidden folders."""
    return entry.name.startswith(".") or entry.name in JUNK_FOLDERS


def _scan_classes(folder: Path, scan: _Scan) -> dict[str, list[Path]]:
    classes = {}
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and not _is_junk(entry):
            classes[entry.name] = find_images(entry, scan.ignored, scan.loops)
        elif entry.is_file():
            scan.ignored.append(entry)
    return classes


def _has_class_folders(folder: Path) -> bool:
    return any(entry.is_dir() and not _is_junk(entry) for entry in folder.iterdir())


def _split_folders(root: Path) -> tuple[str, str] | None:
    """(train, test) folder names when ``root`` holds the split layout: train/ and a test/ (or val/,
    validation/) that hold class subfolders. Their images in flat folders make them classes instead."""
    folders = {entry.name for entry in root.iterdir() if entry.is_dir()}
    tests = [name for name in TEST_FOLDER_NAMES if name in folders]
    if "train" not in folders or not tests:
        return None
    if not all(_has_class_folders(root / name) for name in ("train", tests[0])):
        return None
    return "train", tests[0]


def _scan(root: Path, class_names: tuple[str, ...] | None = None) -> _Scan:
    scan = _Scan({})
    split = _split_folders(root)
    if split:
        scan.splits = {"train": _scan_classes(root / split[0], scan), "test": _scan_classes(root / split[1], scan)}
        _check_same_classes(root, scan.splits, split[1])
        _warn_beside_splits(root, split)
    else:
        scan.splits = {"train": _scan_classes(root, scan)}
        _warn_split_names(root, scan.splits["train"])
    if class_names is not None:
        scan.splits = _pick_classes(root, scan.splits, class_names)
    _drop_empty_classes(root, scan.splits)
    return scan


def _holds_images(folder: Path) -> bool:
    return any(Path(name).suffix.lower() in IMAGE_SUFFIXES for _, _, files in os.walk(folder) for name in files)


def _entry_name(entry: Path) -> str:
    if not entry.is_dir():
        return entry.name
    return entry.name + ("/ (holds images)" if not _is_junk(entry) and _holds_images(entry) else "/")


def _warn_beside_splits(root: Path, split: tuple[str, str]) -> None:
    """One warning naming everything beside the split folders that is left out (logs/, scripts, caches)."""
    beside = [entry for entry in sorted(root.iterdir()) if entry.name not in split]
    if not beside:
        return
    names = [_entry_name(entry) for entry in beside]
    more = f" and {len(names) - _ENTRIES_SHOWN} more" if len(names) > _ENTRIES_SHOWN else ""
    warnings.warn(
        f"{root}: split layout {split[0]}/ + {split[1]}/; ignored {', '.join(names[:_ENTRIES_SHOWN])}{more}",
        stacklevel=6,
    )


def _warn_split_names(root: Path, classes: dict[str, list[Path]]) -> None:
    """Class folders named train/ or val/ are split folders that were not laid out as such."""
    names = [name for name in classes if name in SPLIT_FOLDER_NAMES]
    if names:
        warnings.warn(
            f"{root}: class folder(s) {', '.join(names)} look like split folders, but each subfolder here is taken "
            f"as a class; put the classes one level down (train/cat/1.jpg and val/cat/2.jpg), or pass the folder "
            f"that holds the class folders (e.g. {root / names[0]})",
            stacklevel=6,
        )


def _pick_classes(root: Path, splits: dict, class_names: tuple[str, ...]) -> dict[str, dict[str, list[Path]]]:
    """The named classes only, in the order given (Keras' ``class_names``); a name without a folder is refused."""
    repeated = sorted({name for name in class_names if class_names.count(name) > 1})
    if repeated:
        raise ConfigError(f"class_names lists {_names(repeated)} more than once; name each class once")
    missing = [name for name in class_names if name not in splits["train"]]
    if missing:
        raise DataError(
            f"{root}: class_names has {_names(missing)}, but there is no such class folder (folders: "
            f"{_names(splits['train'])}); fix the names or the folders"
        )
    return {split: {name: classes[name] for name in class_names} for split, classes in splits.items()}


def _check_same_classes(root: Path, splits: dict[str, dict[str, list[Path]]], test_name: str = "test") -> None:
    train, test = set(splits["train"]), set(splits["test"])
    if train != test:
        raise DataError(
            f"{root}: train/ and {test_name}/ have different class folders (only in train: {_names(train - test)}; "
            f"only in {test_name}: {_names(test - train)}); give both the same class subfolders"
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
        warnings.warn(f"{root}: class folder(s) {_names(empty)} hold no images and are left out", stacklevel=5)
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


def _listing(root: Path, scan: _Scan) -> tuple[str, dict[str, str]]:
    """Two digests from one pass of stat calls. The cache's, over relative paths, sizes and mtimes: any change
    decodes again. Per split, the files' identity, over class, path inside the class folder and size: a copy
    of the folder, or its train/ passed on its own, is known again (``cnnlab evaluate`` needs this)."""
    listing, identities = hashlib.sha256(), {}
    for split, classes in scan.splits.items():
        identity = hashlib.sha256()
        for name, files in classes.items():
            for path in files:
                relative = path.relative_to(root)
                try:
                    stat = path.stat()
                    size, mtime = stat.st_size, stat.st_mtime_ns
                except OSError:  # a dangling link: decoding will skip it
                    size = mtime = "missing"
                inside = "/".join(relative.parts[len(scan.splits) :])  # below the split and class folders
                listing.update(f"{split}|{name}|{relative}|{size}|{mtime}\n".encode("utf-8", "surrogateescape"))
                identity.update(f"{name}|{inside}|{size}\n".encode("utf-8", "surrogateescape"))
        identities[split] = identity.hexdigest()[:32]
    return listing.hexdigest(), identities


def _folder_key(listing: str, settings: dict) -> str:
    """The cache key: the listing's digest and the decode settings."""
    text = json.dumps({"format": _FOLDER_CACHE_FORMAT, **settings}, sort_keys=True) + listing
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass
class FolderListing:
    """A scanned folder, ready to decode into arrays or to stream from disk: both paths share it, so they
    see the same files, labels, classes, image size and warnings."""

    root: Path
    scan: _Scan
    class_names: tuple[str, ...]
    settings: dict  # load_dataset's settings, with the image size filled in
    digest: str  # over paths, sizes and times: the cache key's part
    identities: dict[str, str]  # per split: known again in a copy (cnnlab evaluate)

    def split_files(self, split: str) -> tuple[list[Path], np.ndarray]:
        """A split's files in class order and their labels: the order decoded arrays hold them in."""
        classes = self.scan.splits[split]
        labels = np.repeat(np.arange(len(self.class_names)), [len(classes[name]) for name in self.class_names])
        return [path for name in self.class_names for path in classes[name]], labels.astype(np.int64)

    @property
    def count(self) -> int:
        return sum(len(files) for classes in self.scan.splits.values() for files in classes.values())

    @property
    def channels(self) -> int:
        return 1 if self.settings["color_mode"] == "grayscale" else 3

    def layout(self) -> str:
        split, seed = self.settings["validation_split"], self.settings["seed"]
        if "test" in self.scan.splits:
            return "train/test folders"
        return f"one folder, stratified {split:.0%} test split (seed {seed})" if split else "one folder"

    def key(self, strict: bool) -> str:
        """The decode cache's key, also the data set's checksum (streamed or not, the same)."""
        return _folder_key(self.digest, self.settings | {"strict": strict})

    def origin(self, strict: bool) -> dict:
        """The origin entries that say where the images came from and how they were loaded."""
        load = {key: self.settings.get(key) for key in LOAD_KEYS}
        return {"path": str(self.root), "source": str(self.root), "checksum": self.key(strict),
                "split_checksums": self.identities, "load": load}  # fmt: skip


def scan_folder(root: Path, settings: dict) -> FolderListing:
    """Find a folder's classes and files (warning about what is left out) and settle the image size."""
    scan = _scan(root, settings.get("class_names"))
    if "test" in scan.splits and settings["validation_split"] is not None:
        raise ConfigError(f"{root} has train/ and test/ folders; leave out --validation-split")
    _warn_left_out(root, scan)
    if settings["image_size"] is None:
        settings = settings | {
            "image_size": _common_size([f for files in scan.splits["train"].values() for f in files])
        }
    digest, identities = _listing(root, scan)
    return FolderListing(root, scan, tuple(scan.splits["train"]), settings, digest, identities)


def load_folder(found: FolderListing, strict: bool, progress: bool) -> ImageDataset:
    """Decode (or read from the cache) a scanned folder with the ``load_dataset`` settings."""
    cache = cache_dir() / "folders" / found.key(strict)
    cached = read_cache(cache, cache_format=_FOLDER_CACHE_FORMAT)
    if cached is None:
        write_cache(cache, *_decode_folder(found, strict, progress))
        cached = read_cache(cache, cache_format=_FOLDER_CACHE_FORMAT)
    arrays, meta = cached
    has_test = meta["has_test"]
    return ImageDataset(
        arrays["x_train"],
        arrays["y_train"],
        arrays["x_test"] if has_test else None,
        arrays["y_test"] if has_test else None,
        found.class_names,
        {**meta["origin"], **found.origin(strict)},
    )


def _warn_left_out(root: Path, scan: _Scan) -> None:
    if scan.ignored:
        shown = _names(path.relative_to(root) for path in scan.ignored[:_NAMES_SHOWN])
        warnings.warn(f"{root}: ignored {len(scan.ignored)} non-image file(s) (e.g. {shown})", stacklevel=5)
    if scan.loops:
        warnings.warn(f"{root}: symlink loop(s) not followed again: {_names(scan.loops[:_NAMES_SHOWN])}", stacklevel=5)


def _decode_folder(found: FolderListing, strict: bool, progress: bool):
    """Decode every split (memory checked first), warn about skipped and converted images, split if asked."""
    root, settings, size = found.root, found.settings, found.settings["image_size"]
    check_memory(found.count, size, found.channels, str(root))
    arrays, skipped, notes = {}, [], Counter()
    for split in found.scan.splits:
        paths, labels = found.split_files(split)
        images, kept, split_skipped, split_notes = load_images(
            paths, size, settings["resize"], settings["color_mode"], strict, progress, settings["max_pixels"]
        )
        label_of = dict(zip(map(str, paths), labels, strict=True))
        arrays[f"x_{split}"] = images
        arrays[f"y_{split}"] = np.array([label_of[str(path)] for path in kept], dtype=np.int64)
        skipped += split_skipped
        notes += split_notes
    notes = warn_decoded(root, skipped, notes, settings["color_mode"])
    if not len(arrays["x_train"]):
        raise DataError(
            f"{root}: none of the {found.count} images could be read (e.g. {skipped[0][1]}); check the files"
        )
    if "x_test" not in arrays and settings["validation_split"]:
        x, x_test, y, y_test = stratified_split(
            arrays["x_train"], arrays["y_train"], settings["validation_split"], settings["seed"]
        )
        arrays = {"x_train": x, "y_train": y, "x_test": x_test, "y_test": y_test}
    has_test = "x_test" in arrays
    if not has_test:
        arrays["x_test"], arrays["y_test"] = arrays["x_train"][:0], arrays["y_train"][:0]
    note = f"{len(skipped)} unreadable image(s) skipped" if skipped else None
    origin = {
        "kind": "folder",
        "official": None,
        "layout": found.layout(),
        "image_size": list(size),
        "skipped": len(skipped),
        "converted": dict(notes),
        "ignored_files": len(found.scan.ignored),
        "note": note,
    }
    return arrays, {"format": _FOLDER_CACHE_FORMAT, "has_test": has_test, "origin": origin}


def warn_decoded(root: Path, skipped: list, notes: Counter, color_mode: str, stacklevel: int = 6) -> Counter:
    """One warning on the files skipped as unreadable, one on the images converted; returns the conversions
    worth telling (grey was asked for: dropping colour, or keeping grey, is no news)."""
    if color_mode == "grayscale":
        notes = Counter({k: n for k, n in notes.items() if k != GRAYSCALE_NOTE and not k.startswith("grayscale (")})
    if skipped:
        shown = _names(path.relative_to(root) for path, _ in skipped[:_NAMES_SHOWN])
        warnings.warn(
            f"{root}: skipped {len(skipped)} unreadable image(s) (e.g. {shown}); fix or remove them, "
            "or pass strict=True (--strict) to stop at the first",
            stacklevel=stacklevel,
        )
    if notes:
        counts = "; ".join(f"{count} x {note}" for note, count in notes.most_common())
        warnings.warn(f"{root}: converted {notes.total()} image(s): {counts}", stacklevel=stacklevel)
    return notes
