"""Reading archives of arrays safely: tar members, a folder of batch files, and pickles that may only hold arrays.

CIFAR-10 and CIFAR-100 ship as pickles; an unpickler that accepts only numpy arrays and plain containers
keeps a downloaded archive from running code.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import pickle
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cnnlab.core.errors import DataError


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


def python_batch_images(batch, name: str, *label_keys: bytes) -> np.ndarray:
    """The NHWC uint8 images of a CIFAR-10/100 python batch (a dict with b"data" and the label keys)."""
    if not isinstance(batch, dict) or any(key not in batch for key in (b"data", *label_keys)):
        keys = ", ".join(repr(key.decode()) for key in (b"data", *label_keys))
        raise DataError(f"{name}: expected a dict with {keys}, got {type(batch).__name__}")
    data = np.asarray(batch[b"data"])
    if data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
        raise DataError(f"{name}: 'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def read_archive(
    path: Path, member_key: Callable[[str], tuple[str, str] | None]
) -> tuple[dict[str, tuple[bytes, str]], str]:
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
