"""Small but valid CIFAR-10 and CIFAR-100 archives (official layouts), built in a test in milliseconds."""

from __future__ import annotations

import io
import pickle
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


def tiny_cifar100_bytes(images_per_split: int = 4, seed: int = 0) -> bytes:
    """A .tar.gz in CIFAR-100's python layout: cifar-100-python/{train,test,meta} pickles of random images."""
    rng = np.random.default_rng(seed)

    def batch() -> bytes:
        fine = rng.integers(0, 100, images_per_split)
        pixels = rng.integers(0, 256, (images_per_split, 3072), dtype=np.uint8)
        return pickle.dumps({b"data": pixels, b"fine_labels": fine.tolist(), b"coarse_labels": (fine // 5).tolist()})

    meta = {
        b"fine_label_names": [f"fine_{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse_{i}".encode() for i in range(20)],
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, raw in (("meta", pickle.dumps(meta)), ("train", batch()), ("test", batch())):
            member = tarfile.TarInfo(f"cifar-100-python/{name}")
            member.size = len(raw)
            tar.addfile(member, io.BytesIO(raw))
    return buffer.getvalue()
