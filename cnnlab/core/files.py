"""One helper for each shared file job: the cache folder, atomic writes, JSON, text and CSV files, checksums.

Everything cnnlab writes goes through ``atomic_write``: a temp file in the target's folder, then a
rename, so a reader (or a killed run) never sees half a file.

"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from platformdirs import user_cache_dir

CACHE_ENV = "CNNLAB_CACHE"


def cache_dir() -> Path:
    """Where cnnlab keeps decoded data, downloads and converted weights: $CNNLAB_CACHE, else the user cache."""
    return Path(os.environ.get(CACHE_ENV) or user_cache_dir("cnnlab"))


_SHA256: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file, remembered per path, size and modification time: a file checked before each use
    (weights, shards) is read once per version."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA256:
        with path.open("rb") as stream:
            _SHA256[key] = hashlib.file_digest(stream, "sha256").hexdigest()
    return _SHA256[key]


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` on a temp file in the same folder, then rename it to ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        _write_naming(path, tmp, write)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the permissions open() would
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


DISK_FULL_BYTES = 1 << 20  # under this much free space, a failed write is taken for a full disk


def _write_naming(path: Path, tmp: str, write: Callable[[str], None]) -> None:
    """Run ``write(tmp)``; an OSError names ``path`` (not the temp file, nor nothing, as a failed
    write() does), and a full disk is an OSError(ENOSPC) even when the writer hid it: torch.save's
    C++ writer raises RuntimeError("... unexpected pos ...") and safetensors its own error."""
    try:
        write(tmp)
    except OSError as error:
        if error.filename in (None, tmp):
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise
    except Exception as error:
        if shutil.disk_usage(path.parent).free < DISK_FULL_BYTES:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from error
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, data) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping], columns: Sequence[str] | None = None) -> Path:
    """Rows as a CSV file with a header (columns default to the first row's keys; keys outside them are
    left out, missing ones and None are empty cells); no rows and no columns make an empty file."""
    path = Path(path)
    columns = list(columns if columns is not None else (rows[0] if rows else ()))

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            if columns:
                writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, write)
    return path
