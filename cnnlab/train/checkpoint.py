"""Verified checkpoints: a header with the payload's size and sha256, written atomically, the last two kept.

A checkpoint cut short by a kill or a full disk fails its check and the previous one is used, so a resumed
run never starts from damaged state.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import sys
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from cnnlab.core.errors import DataError
from cnnlab.core.files import atomic_write

if TYPE_CHECKING:
    pass


CHECKPOINT = "checkpoint.pt"
PREVIOUS_CHECKPOINT = "checkpoint.previous.pt"
_MAGIC = b"CNNLABCK"
_HEADER = struct.Struct("<8sQ32s")  # magic, payload size, sha256 of the payload


def write_checkpoint(path: Path, state: dict) -> None:
    """torch.save ``state`` behind a header holding its size and sha256, so a torn or corrupted file
    is recognised when read. The file it replaces becomes the previous checkpoint first, if intact
    (a corrupt latest must not overwrite the good previous one)."""
    buffer = BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    header = _HEADER.pack(_MAGIC, len(payload), hashlib.sha256(payload).digest())
    try:
        _verified_payload(path)
    except (OSError, ValueError):
        pass  # nothing intact to keep
    else:  # a copy, not a rename: the latest name never disappears, even if killed here
        atomic_write(path.with_name(PREVIOUS_CHECKPOINT), lambda tmp: shutil.copyfile(path, tmp))

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            handle.write(header + payload)

    atomic_write(path, write)


def _verified_payload(path: Path) -> bytes:
    """The torch.save bytes of a checkpoint after checking its header; ValueError says what is wrong."""
    data = path.read_bytes()
    if len(data) < _HEADER.size:
        raise ValueError(f"{len(data)} bytes, shorter than its header")
    magic, size, digest = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise ValueError("not a cnnlab checkpoint (no header; written by an older cnnlab?)")
    payload = data[_HEADER.size :]
    if len(payload) != size:
        raise ValueError(f"{len(payload)} bytes of {size}: truncated")
    if hashlib.sha256(payload).digest() != digest:
        raise ValueError("checksum mismatch: the file is corrupt")
    return payload


def _read_verified(path: Path, device) -> dict:
    """The state in a checkpoint; ValueError says why the file is unusable."""
    return torch.load(BytesIO(_verified_payload(path)), map_location=device, weights_only=True)


def read_checkpoint(folder: Path, device) -> dict:
    """The newest checkpoint that reads back intact; a bad latest falls back to the previous one with
    a one-line warning, and two bad ones are a DataError."""
    latest, previous = folder / CHECKPOINT, folder / PREVIOUS_CHECKPOINT
    try:
        return _read_verified(latest, device)
    except (OSError, ValueError) as error:
        latest_problem = error.strerror if isinstance(error, OSError) else str(error)
    try:
        state = _read_verified(previous, device)
    except (OSError, ValueError) as error:
        problem = error.strerror if isinstance(error, OSError) else str(error)
        raise DataError(
            f"cannot resume {folder}: {latest.name} is unusable ({latest_problem}) and so is {previous.name} "
            f"({problem}); start a new run folder, or rerun without --resume after removing both"
        ) from None
    print(
        f"warning: {latest} is unusable ({latest_problem}); resuming from {previous.name} "
        f"(epoch {state['epochs_done']})",
        file=sys.stderr,
        flush=True,
    )
    return state
