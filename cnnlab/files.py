"""One helper for each shared file job: the cache folder, atomic writes, JSON and text files.

Everything cnnlab writes goes through ``atomic_write``: a temp file in the target's folder, then a
rename, so a reader (or a killed run) never sees half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from platformdirs import user_cache_dir

CACHE_ENV = "CNNLAB_CACHE"


def cache_dir() -> Path:
    """Where cnnlab keeps decoded data, downloads and converted weights: $CNNLAB_CACHE, else the user cache."""
    return Path(os.environ.get(CACHE_ENV) or user_cache_dir("cnnlab"))


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
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the permissions open() would
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, data) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")
