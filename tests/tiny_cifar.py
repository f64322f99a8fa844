"""A small but valid CIFAR-10 archive (official binary layout), built in a test in milliseconds."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np

BATCHES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")


def tiny_cifar_bytes(images_per_batch: int = 4, seed: int = 0) -> bytes:
    """A .tar.gz holding cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin of random images."""
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in BATCHES:
            labels = rng.integers(0, 10, (images_per_batch, 1), dtype=np.uint8)
            pixels = rng.integers(0, 256, (images_per_batch, 3072), dtype=np.uint8)
            raw = np.concatenate([labels, pixels], axis=1).tobytes()
            member = tarfile.TarInfo(f"cifar-10-batches-bin/{name}.bin")
            member.size = len(raw)
            tar.addfile(member, io.BytesIO(raw))
    return buffer.getvalue()


def write_tiny_cifar(path: Path, images_per_batch: int = 4, seed: int = 0) -> Path:
    path.write_bytes(tiny_cifar_bytes(images_per_batch, seed))
    return path
