"""CIFAR-10 from the official archives or a local copy, and the lab's preprocessing.

Sources, in order: the ``source`` argument, ``$CNNLAB_CIFAR10``, the decoded cache, the official
download. Any source is decoded once into uint8 ``.npy`` files under the cache, so later loads are
a memory map away (well under a second).
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import mmap
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split
from tqdm.auto import tqdm

from cnnlab.errors import DataError
from cnnlab.files import cache_dir
from cnnlab.locks import writes_cache_entry

CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SHAPE = (32, 32, 3)
SOURCE_ENV = "CNNLAB_CIFAR10"
CACHE_FORMAT = 1  # bump when the decoded layout changes

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = {
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530",
}
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
_RECORD_BYTES = 1 + 32 * 32 * 3  # binary layout: label byte, then R, G, B planes

OFFLINE_HELP = (
    "pass a local copy of CIFAR-10 with --data PATH or the environment variable "
    f"{SOURCE_ENV}=PATH (the official cifar-10-python.tar.gz or cifar-10-binary.tar.gz, a .tar.xz "
    "of either, or the folder they unpack to)"
)


# --------------------------------------------------------------------------- decoding


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles the python-layout batches, which hold only dicts, lists, bytes and numpy arrays.

    Any other global (the way a malicious pickle runs code) is refused.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: CIFAR batches hold only arrays")


def unpickle_arrays(raw: bytes, name: str):
    """Unpickle a CIFAR python-layout file with the restricted unpickler; DataError names the file."""
    try:
        return _ArrayOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as error:
        raise DataError(
            f"{name}: not a readable CIFAR python batch ({error}); get a fresh copy of the archive"
        ) from error


def _decode_python_batch(raw: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    batch = unpickle_arrays(raw, name)
    return python_batch_images(batch, name, b"labels"), np.asarray(batch[b"labels"]).astype(np.int64)


def python_batch_images(batch, name: str, *label_keys: bytes) -> np.ndarray:
    """The NHWC uint8 images of a CIFAR-10/100 python batch (a dict with b"data" and the label keys)."""
    if not isinstance(batch, dict) or any(key not in batch for key in (b"data", *label_keys)):
        keys = ", ".join(repr(key.decode()) for key in (b"data", *label_keys))
        raise DataError(f"{name}: expected a dict with {keys}, got {type(batch).__name__}")
    data = np.asarray(batch[b"data"])
    if data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
        raise DataError(f"{name}: 'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def _decode_binary_batch(raw: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    if len(raw) == 0 or len(raw) % _RECORD_BYTES:
        raise DataError(
            f"{name}: {len(raw)} bytes is not a whole number of {_RECORD_BYTES}-byte CIFAR-10 records "
            "(truncated file?); get a fresh copy of the archive"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _RECORD_BYTES)
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), records[:, 0].astype(np.int64)


def _batch_key(member_name: str) -> tuple[str, str] | None:
    """Map an archive member to (batch, layout), or None for files we do not need."""
    base = os.path.basename(member_name)
    stem, ext = os.path.splitext(base)
    if stem in (*TRAIN_BATCHES, TEST_BATCH):
        return stem, ("binary" if ext == ".bin" else "python")
    return None


def _decode(batches: dict[str, tuple[bytes, str]], origin: str) -> dict[str, np.ndarray]:
    missing = [b for b in (*TRAIN_BATCHES, TEST_BATCH) if b not in batches]
    if missing:
        raise DataError(
            f"{origin}: no CIFAR-10 batch named {', '.join(missing)} found; expected data_batch_1..5 and "
            f"test_batch (.bin or python pickles); {OFFLINE_HELP}"
        )
    parts = {}
    for name, (raw, layout) in batches.items():
        decode = _decode_binary_batch if layout == "binary" else _decode_python_batch
        parts[name] = decode(raw, f"{origin}:{name}")
    x_train = np.concatenate([parts[b][0] for b in TRAIN_BATCHES])
    y_train = np.concatenate([parts[b][1] for b in TRAIN_BATCHES])
    arrays = {
        "x_train": x_train,
        "y_train": y_train,
        "x_test": parts[TEST_BATCH][0],
        "y_test": parts[TEST_BATCH][1],
    }
    validate_arrays(arrays, origin)
    return arrays


def validate_arrays(
    arrays: dict[str, np.ndarray | None],
    origin: str = "arrays",
    num_classes: int = NUM_CLASSES,
    image_shape: tuple[int, int, int] | None = IMAGE_SHAPE,
) -> None:
    """Check shapes, dtypes and label range; raise DataError naming the array at fault.

    The defaults are CIFAR-10's; ``image_shape=None`` accepts any (h, w, 1 or 3) shared by train and test.
    A missing or None test split is allowed (not every data set has one).
    """
    shapes = set()
    for split in ("train", "test"):
        x, y = arrays.get(f"x_{split}"), arrays.get(f"y_{split}")
        if x is None and split == "test":
            continue
        expected = "(N, {}, {}, {})".format(*image_shape) if image_shape else "(N, height, width, 1 or 3)"
        if x.dtype != np.uint8 or x.ndim != 4 or (image_shape and x.shape[1:] != tuple(image_shape)):
            raise DataError(f"{origin}: x_{split} must be uint8 of shape {expected}, got {x.dtype} {x.shape}")
        if x.shape[-1] not in (1, 3):
            raise DataError(f"{origin}: x_{split} must have 1 or 3 channels last, got shape {x.shape}")
        shapes.add(x.shape[1:])
        if y is None or y.ndim != 1 or len(y) != len(x):
            shape = None if y is None else y.shape
            raise DataError(f"{origin}: y_{split} must have one label per image, got {shape} for {len(x)} images")
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise DataError(
                f"{origin}: y_{split} has labels outside 0..{num_classes - 1} (min {y.min()}, max {y.max()}); "
                "labels must count classes from 0"
            )
    if len(shapes) > 1:
        raise DataError(f"{origin}: train and test images differ in shape {sorted(shapes)}; resize them to one size")


def _read_archive(path: Path, member_key=_batch_key) -> tuple[dict[str, tuple[bytes, str]], str]:
    """Read the batches straight out of a tar archive, and the archive's md5.

    Members are read in memory, never extracted; each name still passes tarfile's ``data`` filter,
    so an archive with paths outside its folder is refused rather than trusted.
    """
    md5 = hashlib.md5()
    batches = {}

    class _Hashing(io.RawIOBase):
        """Hash the compressed bytes while tarfile streams them, so the archive is read once."""

        def __init__(self, raw):
            self.raw = raw

        def readable(self):
            return True

        def readinto(self, buffer):
            n = self.raw.readinto(buffer)
            md5.update(memoryview(buffer)[:n])
            return n

    try:
        with open(path, "rb") as raw:
            stream = io.BufferedReader(_Hashing(raw))
            with tarfile.open(fileobj=stream, mode="r|*") as tar:
                for member in tar:
                    key = member_key(member.name)
                    if key is None or not member.isfile():
                        continue
                    tarfile.data_filter(member, "/cifar10")  # raises for absolute paths, '..', links out
                    batches[key[0]] = (tar.extractfile(member).read(), key[1])
            while stream.read(1 << 20):  # hash any trailing padding too
                pass
    except (tarfile.TarError, tarfile.FilterError, EOFError, lzma.LZMAError, zlib.error, OSError) as error:
        raise DataError(
            f"{path}: archive is truncated or corrupt ({type(error).__name__}: {error}); download it again"
        ) from error
    return batches, md5.hexdigest()


def is_tar_archive(path: Path) -> bool:
    """``tarfile.is_tarfile``, but a compressed file cut short is a DataError, not the EOFError it raises."""
    try:
        return tarfile.is_tarfile(path)
    except (EOFError, zlib.error, lzma.LZMAError) as error:
        raise DataError(
            f"{path}: archive is truncated or corrupt ({type(error).__name__}: {error}); download it again"
        ) from error


def _read_folder(path: Path) -> dict[str, tuple[bytes, str]]:
    batches = {}
    for file in sorted(path.rglob("*")):
        key = _batch_key(file.name)
        if key and file.is_file():
            batches[key[0]] = (file.read_bytes(), key[1])
    return batches


# --------------------------------------------------------------------------- cache


@writes_cache_entry("data cache")  # one writer at a time: two renames onto one target collide
def write_cache(target: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write the arrays into a temp folder beside ``target``, then rename: all or nothing."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=target.parent))
    try:
        files = {}
        for name, array in arrays.items():
            np.save(staging / f"{name}.npy", array)
            written = staging / f"{name}.npy"
            files[written.name] = {"bytes": written.stat().st_size, "crc32": _file_crc32(written)}
        (staging / "meta.json").write_text(json.dumps(meta | {"files": files}, indent=2))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def read_cache(
    folder: Path, names=("x_train", "y_train", "x_test", "y_test"), cache_format: int = CACHE_FORMAT
) -> tuple[dict[str, np.ndarray], dict] | None:
    """Memory-map the named arrays and read meta.json; None when absent or of another format, so the caller
    decodes the source again. A damaged entry (a file cut short, a byte changed) is None with a one-line
    warning: sizes are checked on every read, each file's CRC-32 once per process (see ``_verify_files``)."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        return _damaged(folder, f"meta.json: {error}")
    if not isinstance(meta, dict) or not isinstance(meta.get("files", {}), dict):
        return _damaged(folder, "meta.json: not the record cnnlab writes")
    if meta.get("format") != cache_format or "files" not in meta:
        return None  # another layout, or written before entries had checksums
    try:
        _verify_files(folder, meta["files"], names)
        return {n: np.load(folder / f"{n}.npy", mmap_mode="r") for n in names}, meta
    except (OSError, ValueError) as error:
        return _damaged(folder, error)


def _damaged(folder: Path, problem) -> None:
    warnings.warn(f"data cache entry {folder} is damaged ({problem}); decoding the source again", stacklevel=4)


def _file_crc32(path: Path) -> int:
    """CRC-32 of a file through a memory map. It guards against damage, not tampering, and is the cheapest
    such check in the standard library: 0.05-0.1 s for CIFAR-10's 184 MB of arrays, half SHA-256's time
    (benchmarks/cache_check_speed.py)."""
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        return zlib.crc32(mapped)


_VERIFIED_FILES: set[tuple] = set()  # (path, inode, size, mtime) of array files whose CRC-32 matched


def _verify_files(folder: Path, files: dict, names) -> None:
    """Raise ValueError naming the first array file whose size or CRC-32 differs from what was written.

    The CRC is computed once per file and process (a rewritten file has a new inode or mtime), so the lab,
    which loads the data in every part, pays for it once; the size, which catches a file cut short, always.
    """
    for name in names:
        path = folder / f"{name}.npy"
        written, stat = files.get(path.name), path.stat()
        if written is None:
            raise ValueError(f"{path.name}: no checksum recorded")
        if stat.st_size != written["bytes"]:
            raise ValueError(f"{path.name}: {stat.st_size} bytes, {written['bytes']} written")
        stamp = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if stamp not in _VERIFIED_FILES:
            if _file_crc32(path) != written["crc32"]:
                raise ValueError(f"{path.name}: checksum mismatch")
            _VERIFIED_FILES.add(stamp)


def _read_cache(folder: Path) -> dict[str, np.ndarray] | None:
    cached = read_cache(folder)
    return None if cached is None else cached[0]


def _cache_key(path: Path) -> str:
    """Identify a local source by path, size and mtime: hashing 150 MB on every load costs a second."""
    stat = path.stat()
    ident = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return "local-" + hashlib.sha256(ident.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- download


def download(
    url: str | None = None,
    md5: str = OFFICIAL_MD5["cifar-10-python.tar.gz"],
    timeout: float = 30,
    what: str = "CIFAR-10",
    offline_help: str = OFFLINE_HELP,
) -> Path:
    """Fetch an official archive into the cache, verify its md5, and move it in place atomically."""
    url = url or OFFICIAL_URL
    target = cache_dir() / "downloads" / os.path.basename(url)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.md5()
    fd, partial = tempfile.mkstemp(prefix=".download-", dir=target.parent)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, os.fdopen(fd, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=what, leave=False) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if digest.hexdigest() != md5:
            raise DataError(f"download of {url} has md5 {digest.hexdigest()}, expected {md5}; try again")
        os.replace(partial, target)
    except OSError as error:
        raise DataError(f"{what} could not be downloaded from {url} ({error}); {offline_help}") from error
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


# --------------------------------------------------------------------------- public loader


def load_cifar10(source: str | os.PathLike | None = None, *, allow_download: bool = True):
    """Return ``(x_train, y_train), (x_test, y_test)``: uint8 images (N, 32, 32, 3), int64 labels (N,).

    ``source`` (or ``$CNNLAB_CIFAR10``) may be an archive (.tar.gz, .tar.xz; binary or python
    layout) or an extracted folder. Without one, the official archive is downloaded and verified.
    A local archive whose md5 is not the official one loads with a one-line warning.
    """
    source = source or os.environ.get(SOURCE_ENV) or None
    if source is None:
        cached = _read_cache(cache_dir() / "cifar10" / "official")
        if cached is None:
            if not allow_download:
                raise DataError(f"CIFAR-10 is not in the cache and downloads are off; {OFFLINE_HELP}")
            arrays, meta = _decode_local(download(), "official")
            write_cache(cache_dir() / "cifar10" / "official", arrays, meta)
            cached = arrays
        return (cached["x_train"], cached["y_train"]), (cached["x_test"], cached["y_test"])

    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"CIFAR-10 source {path} does not exist; {OFFLINE_HELP}")
    folder = cache_dir() / "cifar10" / _cache_key(path)
    arrays = _read_cache(folder)
    if arrays is None:
        arrays, meta = _decode_local(path, str(path))
        write_cache(folder, arrays, meta)
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


def _decode_local(path: Path, label: str) -> tuple[dict[str, np.ndarray], dict]:
    if path.is_dir():
        batches, md5 = _read_folder(path), None
    elif path.suffix in (".xz", ".gz", ".tgz", ".tar") or is_tar_archive(path):
        batches, md5 = _read_archive(path)
    else:
        raise DataError(f"{path}: neither a folder nor a tar archive; {OFFLINE_HELP}")
    arrays = _decode(batches, str(path))
    if md5 is not None and md5 not in OFFICIAL_MD5.values():
        warnings.warn(
            f"{path.name}: md5 {md5} is not the official CIFAR-10 archive's; loading it anyway "
            "(accuracies measured on it may differ from published ones)",
            stacklevel=3,
        )
    meta = {"format": CACHE_FORMAT, "source": label, "md5": md5, "official": md5 in OFFICIAL_MD5.values()}
    return arrays, meta


def source_description(source: str | os.PathLike | None = None) -> dict:
    """What data a load used: the path and whether it is the official archive (for reports)."""
    source = source or os.environ.get(SOURCE_ENV)
    folder = cache_dir() / "cifar10" / ("official" if not source else _cache_key(Path(source)))
    try:
        return json.loads((folder / "meta.json").read_text())
    except OSError:
        return {"source": str(source) if source else "official download", "md5": None, "official": None}


# --------------------------------------------------------------------------- lab helpers


def scale_images(images: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1], as the lab does (x / 127.5 - 1)."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise DataError(f"scale_images expects uint8 images, got {images.dtype}; they may be scaled already")
    return images.astype(np.float32) / 127.5 - 1.0


def to_categorical(labels: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Integer labels (N,) or (N, 1) -> one-hot float32 (N, num_classes), like Keras."""
    labels = np.asarray(labels).reshape(-1)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"labels must lie in 0..{num_classes - 1}, got min {labels.min()} max {labels.max()}")
    return np.eye(num_classes, dtype=np.float32)[labels.astype(np.int64)]


def class_counts(labels: np.ndarray, num_classes: int = NUM_CLASSES) -> list[int]:
    """How many images each class has, in class order."""
    return np.bincount(np.asarray(labels).reshape(-1), minlength=num_classes).tolist()


@dataclass
class LabData:
    """The lab's protocol: 7,500 train / 2,500 validation images from the first 10,000, 2,000 test.

    Images are float32 NHWC in [-1, 1] (or uint8 with ``dtype="uint8"``); labels are integers (use
    ``to_categorical`` for one-hot). ``class_names`` and ``input_shape`` come from the data set; when an
    older caller leaves them out they are filled in: CIFAR-10's names for 32x32x3 images with labels 0..9,
    else the class numbers as text.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: dict
    class_names: tuple[str, ...] | None = None
    input_shape: tuple[int, int, int] | None = None

    def __post_init__(self):
        self.input_shape = tuple(self.input_shape or self.x_train.shape[1:])
        if self.class_names is None:
            top = max(int(np.max(y)) for y in (self.y_train, self.y_val, self.y_test) if len(y)) + 1
            cifar10 = self.input_shape == IMAGE_SHAPE and top <= NUM_CLASSES
            self.class_names = CLASS_NAMES if cifar10 else tuple(str(i) for i in range(top))
        self.class_names = tuple(self.class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def summary(self) -> str:
        height, width, channels = self.input_shape
        return (
            f"train {self.x_train.shape}, validation {self.x_val.shape}, test {self.x_test.shape}; "
            f"{self.num_classes} classes, {height}x{width}x{channels}; source {self.source.get('source')}"
            + (" (not the official archive)" if self.source.get("official") is False else "")
        )


def load_lab_data(
    source=None,
    n_train_val: int | None = 10_000,
    n_test: int | None = 2_000,
    val_fraction: float = 0.25,
    seed: int = 0,
    dtype: str = "float32",
    **dataset_options,
) -> LabData:
    """Load a data set and apply the lab's subset, split and scaling.

    ``source``: an ``ImageDataset`` or anything ``load_dataset`` takes (None: CIFAR-10), with
    ``dataset_options`` passed on to it. CIFAR-10 gets exactly the lab's split (the first ``n_train_val``
    training images, an unstratified ``train_test_split``, the first ``n_test`` test images), so published
    figures stay valid; other data sets get stratified subsets, and one without a test split gives up a
    stratified 20% as its test set (said in ``source["note"]``). Sizes of None, or larger than the data
    set, mean all of it. ``dtype="uint8"`` keeps the images as they are (4x less memory: the trainer
    scales each batch); ``"float32"`` scales them to [-1, 1] as the lab does.
    """
    from cnnlab.datasets import ImageDataset, load_dataset

    if dtype not in ("float32", "uint8"):
        raise DataError(f"dtype must be 'float32' or 'uint8', got {dtype!r}")
    dataset = source if isinstance(source, ImageDataset) else load_dataset(source, **dataset_options)
    for name, size in (("n_train_val", n_train_val), ("n_test", n_test)):
        if size is not None and size < 1:
            raise DataError(f"{name} must be at least 1 (or None for all images), got {size}")
    split = _lab_split_cifar10 if dataset.origin.get("kind") == "cifar10" else _lab_split_stratified
    (x_train, y_train), (x_val, y_val), (x_test, y_test), note = split(dataset, n_train_val, n_test, val_fraction, seed)
    convert = scale_images if dtype == "float32" else np.asarray
    origin = dict(dataset.origin)
    if note:
        origin["note"] = "; ".join(filter(None, (origin.get("note"), note)))
    return LabData(
        convert(x_train),
        y_train,
        convert(x_val),
        y_val,
        convert(x_test),
        y_test,
        origin,
        dataset.class_names,
        dataset.image_shape,
    )


def _lab_split_cifar10(dataset, n_train_val, n_test, val_fraction, seed):
    """The lab's own split, kept bit for bit: first n_train_val, unstratified split, first n_test."""
    n_train_val = min(n_train_val or len(dataset.x_train), len(dataset.x_train))
    n_test = min(n_test or len(dataset.x_test), len(dataset.x_test))
    x_train, x_val, y_train, y_val = train_test_split(
        np.asarray(dataset.x_train[:n_train_val]),
        np.asarray(dataset.y_train[:n_train_val]),
        test_size=val_fraction,
        random_state=seed,
    )
    test = np.asarray(dataset.x_test[:n_test]), np.asarray(dataset.y_test[:n_test])
    return (x_train, y_train), (x_val, y_val), test, None


def stratified_split(x: np.ndarray, y: np.ndarray, test_size: float | int, seed: int):
    """``train_test_split`` stratified by label; unstratified (with a warning) when a class is too small."""
    try:
        return train_test_split(x, y, test_size=test_size, stratify=y, random_state=seed)
    except ValueError as error:
        warnings.warn(f"split not stratified ({error})", stacklevel=3)
        return train_test_split(x, y, test_size=test_size, random_state=seed)


def _subset(x: np.ndarray, y: np.ndarray, size: int | None, seed: int):
    if size is None or size >= len(x):
        return np.asarray(x), np.asarray(y)
    kept, _, kept_labels, _ = stratified_split(np.asarray(x), np.asarray(y), len(x) - size, seed)
    return kept, kept_labels


def _lab_split_stratified(dataset, n_train_val, n_test, val_fraction, seed):
    note = None
    x, y, x_test, y_test = dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test
    if x_test is None:
        x, x_test, y, y_test = stratified_split(np.asarray(x), np.asarray(y), 0.2, seed)
        note = f"no test split: a stratified 20% ({len(x_test)} images) held out as the test set"
    x, y = _subset(x, y, n_train_val, seed)
    x_test, y_test = _subset(x_test, y_test, n_test, seed)
    x_train, x_val, y_train, y_val = stratified_split(x, y, val_fraction, seed)
    return (x_train, y_train), (x_val, y_val), (x_test, y_test), note
