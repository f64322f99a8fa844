"""Any labelled image set that fits in memory, as one type: CIFAR-10, CIFAR-100, a folder of class subfolders
or an .npz.

    from cnnlab.datasets import load_dataset
    flowers = load_dataset("path/to/flowers", image_size=(64, 64))   # class names = subfolder names
    flowers.class_names, flowers.image_shape, flowers.x_train.shape

Images stay uint8 NHWC until a batch is taken. A decoded folder is cached as .npy files keyed on its
listing and the decode settings, so the second load is a memory map away.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tarfile
import warnings
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cnnlab.data import (
    CLASS_NAMES,
    _batch_key,
    _cache_key,
    _read_archive,
    download,
    is_tar_archive,
    load_cifar10,
    python_batch_images,
    read_cache,
    source_description,
    stratified_split,
    unpickle_arrays,
    validate_arrays,
    write_cache,
)
from cnnlab.errors import ConfigError, DataError
from cnnlab.files import cache_dir
from cnnlab.images import COLOR_MODES, MAX_IMAGE_PIXELS, find_images, load_images

CIFAR100_ENV = "CNNLAB_CIFAR100"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
CIFAR100_HELP = (
    f"pass a local copy with --data PATH or {CIFAR100_ENV}=PATH (the official cifar-100-python.tar.gz or "
    "the folder it unpacks to)"
)
MEMORY_ENV = "CNNLAB_MEMORY_LIMIT"
DEFAULT_SIZE_CAP = 256
TEST_FOLDER_NAMES = ("test", "val", "validation")
LABEL_MODES = ("fine", "coarse")
SPEC_HELP = (
    "--data takes cifar10, cifar100, a folder of class subfolders (optionally inside train/ and test/), "
    "an .npz with x_train and y_train, or a CIFAR archive"
)
_FOLDER_CACHE_FORMAT = 1
_CIFAR100_FORMAT = 1
_CIFAR100_ARRAYS = ("x_train", "y_train_fine", "y_train_coarse", "x_test", "y_test_fine", "y_test_coarse")
MAX_CLASSES = 100_000  # above any real data set's (ImageNet-21k has 21,841): a larger label is damage
_SIZE_SAMPLE = 200  # files whose headers decide the default image size
_NAMES_SHOWN = 3


@dataclass
class ImageDataset:
    """A labelled image set: uint8 NHWC images, int64 labels, class names and where it came from.

    ``class_names`` left empty become "0", "1", ...; ``origin`` holds kind (cifar10, cifar100, folder, npz),
    path, checksum, official (True/False/None) and a note (e.g. a lossy copy, images skipped); ``source``
    repeats the path for older reports.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    class_names: tuple[str, ...] = ()
    origin: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.class_names:  # unnamed classes are called by their numbers
            labels = [y for y in (self.y_train, self.y_test) if y is not None and len(y)]
            self.class_names = range(max(int(np.max(y)) for y in labels) + 1) if labels else ()
        self.class_names = tuple(str(name) for name in self.class_names)
        if len(self.class_names) < 2:
            raise DataError(
                f"{self.origin.get('path', 'data set')}: needs at least two classes, got {self.class_names}"
            )
        arrays = {"x_train": self.x_train, "y_train": self.y_train, "x_test": self.x_test, "y_test": self.y_test}
        validate_arrays(arrays, str(self.origin.get("path", "data set")), len(self.class_names), image_shape=None)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def load_dataset(
    spec: str | os.PathLike | None = None,
    *,
    image_size: int | tuple[int, int] | None = None,
    color_mode: str = "rgb",
    crop_to_aspect_ratio: bool = False,
    validation_split: float | None = None,
    seed: int = 0,
    label_mode: str = "fine",
    strict: bool = False,
    max_pixels: int = MAX_IMAGE_PIXELS,
    progress: bool = True,
) -> ImageDataset:
    """Load a data set from a spec: None or "cifar10" ($CNNLAB_CIFAR10), "cifar100" ($CNNLAB_CIFAR100),
    a folder of class subfolders, an .npz, or a CIFAR-10/100 archive or folder (recognised by its contents).

    Folders follow Keras' ``image_dataset_from_directory``: class names are the sorted subfolder names;
    ``train/`` and ``test/`` (or ``val/``) inside give the split, else ``validation_split`` (stratified,
    ``seed``) holds out a test share. ``image_size`` (h, w) or an int for squares; when None it is the most
    common size among up to 200 sampled images, shrunk to 256 on its longer side. ``crop_to_aspect_ratio``
    cuts the centre instead of squashing; ``color_mode`` is "rgb" or "grayscale". Unreadable images are
    skipped with a warning, or refused with ``strict=True``. ``label_mode`` picks CIFAR-100's 100 fine or
    20 coarse classes. The size, colour and crop options apply to folders only.
    """
    size = _as_size(image_size)
    if color_mode not in COLOR_MODES:
        raise ConfigError(f"color_mode must be one of {COLOR_MODES}, got {color_mode!r}")
    if label_mode not in LABEL_MODES:
        raise ConfigError(f"label_mode must be one of {LABEL_MODES}, got {label_mode!r}")
    if validation_split is not None and not 0 < validation_split < 1:
        raise ConfigError(f"validation_split must lie between 0 and 1 (e.g. 0.2), got {validation_split}")
    name = str(spec).lower() if spec is not None else "cifar10"
    if name in ("cifar10", "cifar100"):
        return _check_options(_load_cifar(name, None, label_mode), size, color_mode, validation_split)
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"--data {spec}: no such file or folder; {SPEC_HELP}")
    kind = _cifar_kind(path)
    if kind:
        return _check_options(_load_cifar(kind, path, label_mode), size, color_mode, validation_split)
    if path.suffix.lower() == ".npz":
        return _split_npz(_check_options(_load_npz(path), size, color_mode), validation_split, seed)
    if not path.is_dir():
        raise DataError(f"{path}: not an image folder, .npz or CIFAR archive; {SPEC_HELP}")
    settings = {
        "image_size": size,
        "color_mode": color_mode,
        "resize": "crop" if crop_to_aspect_ratio else "stretch",
        "validation_split": validation_split,
        "seed": seed,
        "max_pixels": max_pixels,
    }
    return _load_folder(path, settings, strict, progress)


def _as_size(image_size) -> tuple[int, int] | None:
    if image_size is None:
        return None
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(side, int) and side >= 1 for side in size):
        raise ConfigError(f"image_size must be an int or (height, width) of positive ints, got {image_size!r}")
    return size


def _check_options(dataset: ImageDataset, size, color_mode: str, validation_split=None) -> ImageDataset:
    """Archives and arrays come at one size, with a test split; say so instead of ignoring a folder option."""
    if validation_split is not None:
        raise ConfigError(f"{dataset.origin['path']} has its own test split; leave out --validation-split")
    height, width, channels = dataset.image_shape
    if size is not None and size != (height, width):
        raise ConfigError(
            f"{dataset.origin['path']} holds {height}x{width} images; --image-size applies to image folders only"
        )
    if color_mode == "grayscale" and channels != 1:
        raise ConfigError(f"{dataset.origin['path']} holds colour images; --color-mode applies to image folders only")
    return dataset


# --------------------------------------------------------------------------- CIFAR-10 and CIFAR-100


def _cifar_kind(path: Path) -> str | None:
    """'cifar10' or 'cifar100' when ``path`` is such an archive or unpacked folder, by the files it holds."""
    if path.is_dir():
        for folder in (path, *[child for child in path.iterdir() if child.is_dir()]):
            if (folder / "data_batch_1").is_file() or (folder / "data_batch_1.bin").is_file():
                return "cifar10"
            if (folder / "train").is_file() and (folder / "meta").is_file():
                return "cifar100"
        return None
    if path.suffix.lower() == ".npz" or not is_tar_archive(path):
        return None
    try:
        with tarfile.open(path, mode="r|*") as tar:  # streamed: stops at the first telling file name
            for member in tar:
                base = os.path.basename(member.name)
                if member.isfile() and _batch_key(base):
                    return "cifar10"
                if member.isfile() and base in ("train", "test", "meta"):
                    return "cifar100"
    except (tarfile.TarError, EOFError, OSError) as error:
        raise DataError(f"{path}: archive is truncated or corrupt ({error}); download it again") from error
    raise DataError(f"{path}: a tar archive without CIFAR-10 or CIFAR-100 batches; {SPEC_HELP}")


def _load_cifar(kind: str, path: Path | None, label_mode: str) -> ImageDataset:
    if kind == "cifar100":
        return _load_cifar100(path, label_mode)
    (x_train, y_train), (x_test, y_test) = load_cifar10(path)
    described = source_description(path)
    official = described.get("official")
    origin = {
        "kind": "cifar10",
        "path": described.get("source"),
        "source": described.get("source"),
        "checksum": described.get("md5"),
        "md5": described.get("md5"),
        "official": official,
        "note": None if official else "not the official archive (e.g. a lossy copy): accuracy may differ",
    }
    return ImageDataset(x_train, y_train, x_test, y_test, CLASS_NAMES, origin)


def _load_cifar100(path: Path | None, label_mode: str) -> ImageDataset:
    """CIFAR-100 from ``path``, $CNNLAB_CIFAR100, the cache or the md5-checked official download."""
    source = path or os.environ.get(CIFAR100_ENV) or None
    if source is not None:
        source = Path(source).expanduser()
        if not source.exists():
            raise DataError(f"CIFAR-100 source {source} does not exist; {CIFAR100_HELP}")
    folder = cache_dir() / "cifar100" / (_cache_key(source) if source else "official")
    cached = read_cache(folder, _CIFAR100_ARRAYS, _CIFAR100_FORMAT)
    if cached is None:
        archive = source or download(CIFAR100_URL, CIFAR100_MD5, what="CIFAR-100", offline_help=CIFAR100_HELP)
        write_cache(folder, *_decode_cifar100(archive))
        cached = read_cache(folder, _CIFAR100_ARRAYS, _CIFAR100_FORMAT)
    arrays, meta = cached
    origin = {
        "kind": "cifar100",
        "path": meta["source"],
        "source": meta["source"],
        "checksum": meta["md5"],
        "md5": meta["md5"],
        "official": meta["official"],
        "label_mode": label_mode,
        "note": None if meta["official"] else "not the official archive: accuracy may differ",
    }
    return ImageDataset(
        arrays["x_train"],
        arrays[f"y_train_{label_mode}"],
        arrays["x_test"],
        arrays[f"y_test_{label_mode}"],
        meta[f"{label_mode}_label_names"],
        origin,
    )


def _cifar100_member(name: str) -> tuple[str, str] | None:
    base = os.path.basename(name)
    return (base, "python") if base in ("train", "test", "meta") else None


def _decode_cifar100(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    if path.is_dir():
        files = {f.name: (f.read_bytes(), "python") for f in sorted(path.rglob("*")) if _cifar100_member(f.name)}
        md5 = None
    else:
        files, md5 = _read_archive(path, member_key=_cifar100_member)
    missing = [name for name in ("train", "test", "meta") if name not in files]
    if missing:
        raise DataError(f"{path}: no CIFAR-100 file named {', '.join(missing)}; {CIFAR100_HELP}")
    meta = unpickle_arrays(files["meta"][0], f"{path}:meta")
    names = {}
    for mode in LABEL_MODES:
        key = f"{mode}_label_names".encode()
        if not isinstance(meta, dict) or key not in meta:
            raise DataError(f"{path}:meta has no {key.decode()}; get a fresh copy of the archive")
        names[mode] = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[key]]
    arrays = {}
    for split in ("train", "test"):
        batch = unpickle_arrays(files[split][0], f"{path}:{split}")
        arrays[f"x_{split}"] = python_batch_images(batch, f"{path}:{split}", b"fine_labels", b"coarse_labels")
        for mode in LABEL_MODES:
            arrays[f"y_{split}_{mode}"] = np.asarray(batch[f"{mode}_labels".encode()], dtype=np.int64)
    for mode in LABEL_MODES:
        labelled = {
            f"{x}_{s}": arrays[f"{x}_{s}" + (f"_{mode}" if x == "y" else "")] for x in "xy" for s in ("train", "test")
        }
        validate_arrays(labelled, f"{path} ({mode} labels)", len(names[mode]))
    official = md5 == CIFAR100_MD5
    if md5 is not None and not official:
        warnings.warn(
            f"{path.name}: md5 {md5} is not the official CIFAR-100 archive's; loading it anyway", stacklevel=4
        )
    meta_out = {"format": _CIFAR100_FORMAT, "source": str(path), "md5": md5, "official": official}
    return arrays, meta_out | {f"{mode}_label_names": names[mode] for mode in LABEL_MODES}


# --------------------------------------------------------------------------- .npz


def _load_npz(path: Path) -> ImageDataset:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(f"{path}: not a readable .npz ({error}); save it with numpy.savez") from error
    if "x_train" not in arrays or "y_train" not in arrays:
        raise DataError(f"{path}: needs arrays x_train and y_train (found {sorted(arrays)}); see numpy.savez")
    for split in ("train", "test"):
        x, y = arrays.get(f"x_{split}"), arrays.get(f"y_{split}")
        if (x is None) != (y is None):
            raise DataError(f"{path}: x_{split} and y_{split} come together; save both or neither")
        if x is None:
            continue
        if x.dtype != np.uint8:
            raise DataError(f"{path}: x_{split} must be uint8 images 0-255, got {x.dtype}; save them unscaled")
        arrays[f"x_{split}"] = x[..., None] if x.ndim == 3 else x  # grey (N, h, w) gets a channel axis
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{path}: y_{split} must hold integer class numbers, got {y.dtype}")
        arrays[f"y_{split}"] = y.reshape(-1).astype(np.int64) if y.ndim == 2 and y.shape[1] == 1 else y.astype(np.int64)
    labels = np.concatenate([arrays[k].reshape(-1) for k in ("y_train", "y_test") if k in arrays])
    names = arrays.get("class_names")
    if names is None and labels.max(initial=0) >= MAX_CLASSES:  # the classes would be named "0", "1", ... up to it
        raise DataError(f"{path}: a label of {labels.max()} is over {MAX_CLASSES - 1:,}; labels count classes from 0")
    names = [str(n) for n in names] if names is not None else [str(i) for i in range(int(labels.max(initial=0)) + 1)]
    checksum = hashlib.sha256(path.read_bytes()).hexdigest()
    origin = {
        "kind": "npz",
        "path": str(path),
        "source": str(path),
        "checksum": checksum,
        "official": None,
        "note": None,
    }
    return ImageDataset(
        arrays["x_train"], arrays["y_train"], arrays.get("x_test"), arrays.get("y_test"), tuple(names), origin
    )


def _split_npz(dataset: ImageDataset, validation_split: float | None, seed: int) -> ImageDataset:
    """An .npz without test arrays gets a stratified test share when ``validation_split`` asks for one."""
    if validation_split is None:
        return dataset
    if dataset.x_test is not None:
        raise ConfigError(f"{dataset.origin['path']} has x_test and y_test; leave out --validation-split")
    x, x_test, y, y_test = stratified_split(dataset.x_train, dataset.y_train, validation_split, seed)
    return ImageDataset(x, y, x_test, y_test, dataset.class_names, dataset.origin)


# --------------------------------------------------------------------------- memory


def memory_limit() -> int:
    """Bytes a decoded data set may take: $CNNLAB_MEMORY_LIMIT (bytes, or e.g. "8GB"), else half the memory."""
    text = os.environ.get(MEMORY_ENV, "").strip().upper().replace(" ", "")
    if text:
        number, scale = (
            (text[:-2], 1e9) if text.endswith("GB") else (text[:-1], 1e9) if text.endswith("G") else (text, 1)
        )
        try:
            limit = float(number) * scale
        except ValueError:
            raise ConfigError(f"{MEMORY_ENV}={text!r} is neither bytes nor GB; e.g. {MEMORY_ENV}=8GB") from None
        return int(limit)
    try:
        import psutil

        total = psutil.virtual_memory().total
    except ImportError:  # psutil is optional; POSIX reports physical pages too
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return total // 2


def check_memory(count: int, size: tuple[int, int], channels: int, where: str) -> None:
    """Refuse, before decoding, a data set whose uint8 arrays would not fit the memory limit."""
    height, width = size
    needed, limit = count * height * width * channels, memory_limit()
    if needed <= limit:
        return
    side = math.isqrt(limit // max(1, count * channels))
    fix = f"use --image-size {side} or smaller" if side else "use fewer images"
    raise DataError(
        f"{where}: {count:,} images at {height}x{width}x{channels} need {needed / 1e9:.2f} GB, over the limit of "
        f"{limit / 1e9:.2f} GB; {fix}, or raise {MEMORY_ENV}"
    )


# --------------------------------------------------------------------------- image folders


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


def _load_folder(root: Path, settings: dict, strict: bool, progress: bool) -> ImageDataset:
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
