"""The decoded-array cache: all-or-nothing entries of .npy files with sizes and CRC-32s, memory-mapped on read.

Decoding CIFAR-10 or a folder of JPEGs takes seconds to minutes; the cache makes the second run instant,
and a damaged entry is decoded again rather than trusted.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import tempfile
import warnings
import zlib
from pathlib import Path

import numpy as np

from cnnlab.core.locks import writes_cache_entry


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
    folder: Path, names: tuple[str, ...] = ("x_train", "y_train", "x_test", "y_test"), *, cache_format: int
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


def cache_key(path: Path) -> str:
    """Identify a local source by path, size and mtime: hashing 150 MB on every load costs a second."""
    stat = path.stat()
    ident = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return "local-" + hashlib.sha256(ident.encode()).hexdigest()[:16]
