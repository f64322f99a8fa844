"""One writer per folder: an advisory lock on every folder cnnlab writes.

A run folder, the lab's output folder and a tuning study are locked for as long as the command
runs, so a second `cnnlab train --out same/` stops at once with one line naming the process that
holds the folder, instead of mixing two runs' files. The caches are locked only around a write, so
a reader never waits long and two writers never interleave a rename.

The lock is filelock's (an OS lock, ``flock`` on Unix): it vanishes with its process, so the lock
of a killed process is taken over by the next writer without any clean-up. The lock file also
records who holds it (PID, host, command, start time) for the message a second writer prints; that
record is read only after the lock was found held, and a PID that no longer runs on this host is
reported as such rather than trusted.

"""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from cnnlab.core.errors import FolderLocked

LOCK_NAME = ".cnnlab.lock"
CACHE_WAIT_SECONDS = 600.0  # a cache write (decoding CIFAR-10, converting weights) takes well under this


# Errors of a write that names no file: inside a locked folder, the folder is the best path to name.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


# numpy's np.save reports a write() that came up short ("307200 requested and 302976 written") without an
# errno; on a local file that happens when the disk is full.
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")


def holder_record() -> dict:
    """Who this process is, as written into the lock file it holds."""
    program = os.path.basename(sys.argv[0])
    if program in ("", "-c", "__main__.py"):  # python -c / python -m: say which Python
        program = f"{os.path.basename(sys.executable)} {program}".strip()
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": " ".join([program, *sys.argv[1:]])[:300],
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _write_record(fd: int) -> None:
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder_record()) + "\n").encode(), 0)
    except OSError:  # the record only improves a message; the lock itself is held
        pass


def describe_holder(lock_file: Path) -> str:
    """The holder of a lock found held, from its record; a record that cannot be true is said to be so."""
    try:
        record = json.loads(lock_file.read_text())
        pid, host = int(record["pid"]), str(record["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (it has not recorded itself yet)"
    who = f"PID {pid} on {host} ({record.get('command', '?')}, since {record.get('started', '?')})"
    if host == socket.gethostname() and not _alive(pid):
        return f"another process (the record names {who}, which no longer runs)"
    return who


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, under another account
        return True
    return True


def _name_the_folder(error: OSError, folder: Path) -> OSError:
    """A failed write() names no file; say which folder it was writing."""
    if error.errno is None and _SHORT_WRITE.search(str(error)):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))
    if error.filename is None and error.errno in _WRITE_ERRNOS:
        return OSError(error.errno, error.strerror, str(folder))
    return error


@contextmanager
def folder_lock(path: str | os.PathLike, what: str = "run folder", wait: float = 0.0) -> Iterator[Path]:
    """Hold the lock of folder ``path`` (created if missing) while the block runs.

    With ``wait=0`` a folder another process holds raises FolderLocked at once, naming the holder;
    otherwise wait up to ``wait`` seconds for it. The same process may nest locks on one folder.
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    lock_file = folder / LOCK_NAME
    lock = FileLock(lock_file, timeout=wait, is_singleton=True, thread_local=False, on_acquired=_write_record)
    try:
        lock.acquire()
    except Timeout:
        waited = f" after waiting {wait:.0f} s" if wait else ""
        raise FolderLocked(
            f"{what} {folder} is in use by {describe_holder(lock_file)}{waited}; wait for it to finish, "
            "stop it, or choose another folder"
        ) from None
    try:
        yield folder
    except OSError as error:
        named = _name_the_folder(error, folder)
        if named is error:
            raise
        raise named from error
    finally:
        lock.release()


def cache_lock(folder: str | os.PathLike, what: str = "cache folder"):
    """Lock a cache folder around one write: a second writer waits its turn instead of failing."""
    return folder_lock(folder, what=what, wait=CACHE_WAIT_SECONDS)


def writes_cache_entry(what: str):
    """Decorate a function whose first argument is the cache entry it writes (a file or a folder):
    it runs holding the cache lock of the entry's parent folder."""

    def decorate(write):
        @functools.wraps(write)
        def locked(target, *args, **kwargs):
            with cache_lock(Path(target).parent, what=what):
                return write(target, *args, **kwargs)

        return locked

    return decorate
