"""CIFAR-10 and CIFAR-100: the official archives (python or binary layout), a local copy or a download.

Archives that are not the official ones (a rebuilt copy, a tiny test archive) load the same way; their
records carry an origin that says so, and every accuracy measured on them can name the caveat.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import tempfile
import urllib.request
import warnings
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cnnlab.core.errors import DataError
from cnnlab.core.files import cache_dir
from cnnlab.data.archives import is_tar_archive, python_batch_images, read_archive, unpickle_arrays
from cnnlab.data.cache import cache_key, read_cache, write_cache
from cnnlab.data.dataset import SPEC_HELP, ImageDataset, validate_arrays

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


def _decode_python_batch(raw: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    batch = unpickle_arrays(raw, name)
    return python_batch_images(batch, name, b"labels"), np.asarray(batch[b"labels"]).astype(np.int64)


def _decode_binary_batch(raw: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    if len(raw) == 0 or len(raw) % _RECORD_BYTES:
        raise DataError(
            f"{name}: {len(raw)} bytes is not a whole number of {_RECORD_BYTES}-byte CIFAR-10 records "
            "(truncated file?); get a fresh copy of the archive"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _RECORD_BYTES)
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), records[:, 0].astype(np.int64)


def batch_key(member_name: str) -> tuple[str, str] | None:
    """Map an archive member to (batch, layout), or None for files we do not need."""
    base = os.path.basename(member_name)
    stem, ext = os.path.splitext(base)
    if stem in (*TRAIN_BATCHES, TEST_BATCH):
        return stem, ("binary" if ext == ".bin" else "python")
    return None


def _read_folder(path: Path) -> dict[str, tuple[bytes, str]]:
    batches = {}
    for file in sorted(path.rglob("*")):
        key = batch_key(file.name)
        if key and file.is_file():
            batches[key[0]] = (file.read_bytes(), key[1])
    return batches


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
    validate_arrays(arrays, origin, NUM_CLASSES, IMAGE_SHAPE)
    return arrays


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
    folder = cache_dir() / "cifar10" / cache_key(path)
    arrays = _read_cache(folder)
    if arrays is None:
        arrays, meta = _decode_local(path, str(path))
        write_cache(folder, arrays, meta)
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


def _decode_local(path: Path, label: str) -> tuple[dict[str, np.ndarray], dict]:
    if path.is_dir():
        batches, md5 = _read_folder(path), None
    elif path.suffix in (".xz", ".gz", ".tgz", ".tar") or is_tar_archive(path):
        batches, md5 = read_archive(path, batch_key)
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


LOSSY_COST = "about 4-5 accuracy points against the exact pixels"  # measured: see docs/lab.md


def unofficial_copy(source: dict | None) -> str | None:
    """The one rule for CIFAR data that needs a caveat: None for the official archive and for data
    that is not CIFAR, "lossy" for a copy named as a lossy rebuild, "unverified" for any other copy
    (including one whose md5 was never checked)."""
    if not source or source.get("official") or source.get("kind", "cifar10") not in ("cifar10", "cifar100"):
        return None
    return "lossy" if "lossy" in str(source.get("source")).lower() else "unverified"


def accuracy_caveat(source: dict | None) -> str:
    """The note an accuracy measured on ``source`` carries, as a parenthesis to append ('' when none)."""
    copy = unofficial_copy(source)
    name = "CIFAR-100" if source and source.get("kind") == "cifar100" else "CIFAR-10"
    if copy == "lossy" and name == "CIFAR-10":
        return f" (a lossy copy of CIFAR-10: it costs {LOSSY_COST})"
    if copy == "lossy":
        return f" (a lossy copy of {name}: accuracy is lower than the original images give)"
    return f" (a copy of {name} that is not the official archive: accuracy may differ)" if copy else ""


def split_summary(counts: str, input_shape, num_classes: int, source: dict) -> str:
    """The one line a training command prints about its data: the split's ``counts``, the classes, the image
    size and the source, with the accuracy caveat (arrays in memory and streamed splits alike)."""
    height, width, channels = input_shape
    return f"{counts}; {num_classes} classes, {height}x{width}x{channels}; source {source.get('source')}" + (
        accuracy_caveat(source)
    )


def source_description(source: str | os.PathLike | None = None) -> dict:
    """What data a load used: the path and whether it is the official archive (for reports)."""
    source = source or os.environ.get(SOURCE_ENV)
    folder = cache_dir() / "cifar10" / ("official" if not source else cache_key(Path(source)))
    try:
        return json.loads((folder / "meta.json").read_text())
    except OSError:
        return {"source": str(source) if source else "official download", "md5": None, "official": None}


CIFAR100_ENV = "CNNLAB_CIFAR100"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
CIFAR100_HELP = (
    f"pass a local copy with --data PATH or {CIFAR100_ENV}=PATH (the official cifar-100-python.tar.gz or "
    "the folder it unpacks to)"
)


LABEL_MODES = ("fine", "coarse")
_CIFAR100_FORMAT = 1
_CIFAR100_ARRAYS = ("x_train", "y_train_fine", "y_train_coarse", "x_test", "y_test_fine", "y_test_coarse")


def cifar_kind(path: Path) -> str | None:
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
                if member.isfile() and batch_key(base):
                    return "cifar10"
                if member.isfile() and base in ("train", "test", "meta"):
                    return "cifar100"
    except (tarfile.TarError, EOFError, OSError) as error:
        raise DataError(f"{path}: archive is truncated or corrupt ({error}); download it again") from error
    raise DataError(f"{path}: a tar archive without CIFAR-10 or CIFAR-100 batches; {SPEC_HELP}")


def load_cifar(kind: str, path: Path | None, label_mode: str) -> ImageDataset:
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
    }
    origin["note"] = accuracy_caveat(origin).strip(" ()") or None
    return ImageDataset(x_train, y_train, x_test, y_test, CLASS_NAMES, origin)


def _load_cifar100(path: Path | None, label_mode: str) -> ImageDataset:
    """CIFAR-100 from ``path``, $CNNLAB_CIFAR100, the cache or the md5-checked official download."""
    source = path or os.environ.get(CIFAR100_ENV) or None
    if source is not None:
        source = Path(source).expanduser()
        if not source.exists():
            raise DataError(f"CIFAR-100 source {source} does not exist; {CIFAR100_HELP}")
    folder = cache_dir() / "cifar100" / (cache_key(source) if source else "official")
    cached = read_cache(folder, _CIFAR100_ARRAYS, cache_format=_CIFAR100_FORMAT)
    if cached is None:
        archive = source or download(CIFAR100_URL, CIFAR100_MD5, what="CIFAR-100", offline_help=CIFAR100_HELP)
        write_cache(folder, *_decode_cifar100(archive))
        cached = read_cache(folder, _CIFAR100_ARRAYS, cache_format=_CIFAR100_FORMAT)
    arrays, meta = cached
    origin = {
        "kind": "cifar100",
        "path": meta["source"],
        "source": meta["source"],
        "checksum": meta["md5"],
        "md5": meta["md5"],
        "official": meta["official"],
        "label_mode": label_mode,
    }
    origin["note"] = accuracy_caveat(origin).strip(" ()") or None
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
        files, md5 = read_archive(path, member_key=_cifar100_member)
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
        validate_arrays(labelled, f"{path} ({mode} labels)", len(names[mode]), IMAGE_SHAPE)
    official = md5 == CIFAR100_MD5
    if md5 is not None and not official:
        warnings.warn(
            f"{path.name}: md5 {md5} is not the official CIFAR-100 archive's; loading it anyway", stacklevel=4
        )
    meta_out = {"format": _CIFAR100_FORMAT, "source": str(path), "md5": md5, "official": official}
    return arrays, meta_out | {f"{mode}_label_names": names[mode] for mode in LABEL_MODES}


def _read_cache(folder: Path) -> dict[str, np.ndarray] | None:
    cached = read_cache(folder, cache_format=CACHE_FORMAT)
    return None if cached is None else cached[0]
