"""Errors a user can act on. Their messages name the problem and the fix; the CLI prints them
as one line without a traceback. ``user_os_error`` says which operating-system errors are of that
kind too (a full disk, a read-only folder) and what to do about each.
"""

from __future__ import annotations

import errno


class CnnlabError(Exception):
    """Base class: bad input or a missing resource, with the fix in the message."""


class DataError(CnnlabError, ValueError):
    """A dataset, archive, array or image that cannot be used as it is."""


class ConfigError(CnnlabError, ValueError):
    """A model, training or search configuration that cannot work."""


class TrainingDiverged(CnnlabError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class FolderLocked(CnnlabError):
    """Another process is writing the same folder (see cnnlab.core.locks)."""


# What went wrong, and what the user can do, for the errors a user causes or can fix. Any other
# OSError (a bad file descriptor, an I/O error of a failing disk) is a bug or a broken machine and
# keeps its traceback.
_FIXABLE_ERRNOS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on the device", "free some space or write somewhere else"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or write somewhere else"),
    errno.EACCES: ("permission denied", "choose a folder you may write to, or fix its permissions"),
    errno.EPERM: ("operation not permitted", "choose a folder you may write to, or fix its permissions"),
    errno.EROFS: ("the file system is read-only", "write somewhere else (a writable --out folder or $CNNLAB_CACHE)"),
    errno.ENOTDIR: ("a file is in the way where a folder should be", "move that file away or choose another path"),
    errno.EEXIST: ("a file is in the way where a folder should be", "move that file away or choose another path"),
    errno.EISDIR: ("a folder is in the way where a file should be", "move that folder away or choose another path"),
    errno.ENOENT: ("no such file or folder", "check the path; create the parent folder first if it is missing"),
}


def user_os_error(error: BaseException) -> str | None:
    """``"<path>: <what> — <fix>"`` for an OSError the user can fix, else None (a bug: keep the traceback)."""
    if not isinstance(error, OSError) or error.errno not in _FIXABLE_ERRNOS:
        return None
    what, fix = _FIXABLE_ERRNOS[error.errno]
    path = error.filename if error.filename is not None else "(unknown path)"
    if error.filename2 is not None:
        path = f"{path} -> {error.filename2}"
    return f"{path}: {what} — {fix}"
