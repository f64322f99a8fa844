"""Hypothesis-generated corrupt inputs for every data loader: CIFAR-10 and CIFAR-100 archives (with and without
a telling file name), image folders and .npz files. Whatever the damage, a load ends in one of two ways:

- a DataError or ConfigError of one line, and no cache entry (no partial folder, nothing for the failed load);
- a data set, with any unreadable image skipped and named in a warning, cached as one verified entry.

Any other exception is a crash with a traceback, and fails the test.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from tiny_cifar import tiny_cifar100_bytes, tiny_cifar_bytes

from cnnlab.core.errors import ConfigError, DataError
from cnnlab.core.locks import LOCK_NAME
from cnnlab.data.cifar import load_cifar10
from cnnlab.data.load import load_dataset

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CIFAR10 = tiny_cifar_bytes(images_per_batch=2)
CIFAR100 = tiny_cifar100_bytes(images_per_split=3)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))  # examples set it themselves; this restores it


def damaged(valid: bytes) -> st.SearchStrategy[bytes]:
    """Corrupt copies of ``valid``: up to four bytes flipped, then maybe cut short; or other bytes altogether."""
    flips = st.lists(st.tuples(st.integers(0, len(valid) - 1), st.integers(1, 255)), max_size=4)
    cut = st.one_of(st.none(), st.integers(0, len(valid) - 1))
    return st.one_of(st.builds(_flip_and_cut, st.just(valid), flips, cut), st.binary(max_size=len(valid)))


def _flip_and_cut(valid: bytes, flips: list[tuple[int, int]], cut: int | None) -> bytes:
    raw = bytearray(valid)
    for position, xor in flips:
        raw[position] ^= xor
    return bytes(raw[:cut] if cut is not None else raw)


def _cache_entries(cache: Path) -> list[str]:
    """Every entry of every cache (cifar10/, cifar100/, folders/), partial ones included; lock files are not."""
    if not cache.exists():
        return []
    return sorted(
        f"{kind.name}/{entry.name}" for kind in cache.iterdir() for entry in kind.iterdir() if entry.name != LOCK_NAME
    )


def _load(load, path: Path, cache: Path, **options):
    """Load with a fresh cache; return the data set (or None after a one-line refusal) and the warnings."""
    os.environ["CNNLAB_CACHE"] = str(cache)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return load(path, **options), [str(w.message) for w in caught]
        except (DataError, ConfigError) as error:
            assert "\n" not in str(error) and str(error)
            assert _cache_entries(cache) == [], "a failed load left a cache entry"
            return None, [str(w.message) for w in caught]


def _assert_one_entry(cache: Path, kind: str) -> None:
    entries = _cache_entries(cache)
    assert len(entries) == 1 and entries[0].startswith(f"{kind}/") and ".partial" not in entries[0], entries


# --------------------------------------------------------------------------- CIFAR archives


@FUZZ
@given(
    raw=damaged(CIFAR10),
    name=st.sampled_from(["cifar.tar.gz", "cifar-10.data", "cifar"]),  # no known suffix: is_tarfile decides
    load=st.sampled_from([load_cifar10, load_dataset]),
)
def test_a_corrupt_cifar10_archive_is_one_line_and_leaves_no_cache_entry(raw, name, load):
    with tempfile.TemporaryDirectory() as folder:
        archive, cache = Path(folder) / name, Path(folder) / "cache"
        archive.write_bytes(raw)
        loaded, _ = _load(load, archive, cache)
        if loaded is not None:  # damage the decoder cannot see (pixels, padding, the gzip trailer)
            x_train = loaded[0][0] if load is load_cifar10 else loaded.x_train
            assert x_train.shape == (10, 32, 32, 3)
            _assert_one_entry(cache, "cifar10")


def test_a_cut_archive_without_a_known_suffix_is_one_line(tmp_path):
    """tarfile.is_tarfile raises EOFError on a compressed stream cut short: that is a DataError too."""
    archive = tmp_path / "cifar-10.data"
    archive.write_bytes(CIFAR10[:100])
    for load in (load_cifar10, load_dataset):
        with pytest.raises(DataError, match=r"cifar-10\.data: archive is truncated or corrupt \(EOFError"):
            load(archive)
    assert _cache_entries(tmp_path / "cache") == []


@FUZZ
@given(raw=damaged(CIFAR100), name=st.sampled_from(["cifar-100-python.tar.gz", "cifar-100"]))
def test_a_corrupt_cifar100_archive_is_one_line_and_leaves_no_cache_entry(raw, name):
    with tempfile.TemporaryDirectory() as folder:
        archive, cache = Path(folder) / name, Path(folder) / "cache"
        archive.write_bytes(raw)
        loaded, _ = _load(load_dataset, archive, cache)
        if loaded is not None:
            assert loaded.x_train.shape == (3, 32, 32, 3) and loaded.num_classes == 100
            _assert_one_entry(cache, "cifar100")


# --------------------------------------------------------------------------- image folders


def _image_bytes(image_format: str, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format)
    return buffer.getvalue()


# Two classes of three tiny images in four formats: (relative path, valid bytes).
FOLDER_FILES = [
    (f"{label}/{index}.{suffix}", _image_bytes(image_format, seed=len(label) * 10 + index))
    for label in ("cat", "dog")
    for index, (suffix, image_format) in enumerate([("png", "PNG"), ("jpg", "JPEG"), ("gif", "GIF")])
]


@st.composite
def damaged_folders(draw) -> dict[str, bytes]:
    """The folder's files, one to all of them damaged."""
    hit = draw(st.sets(st.integers(0, len(FOLDER_FILES) - 1), min_size=1))
    return {path: draw(damaged(raw)) if index in hit else raw for index, (path, raw) in enumerate(FOLDER_FILES)}


@FUZZ
@given(files=damaged_folders(), image_size=st.sampled_from([None, (5, 5)]), strict=st.booleans())
def test_corrupt_images_are_skipped_with_a_warning_or_refused_in_one_line(files, image_size, strict):
    with tempfile.TemporaryDirectory() as folder:
        root, cache = Path(folder) / "images", Path(folder) / "cache"
        for relative, raw in files.items():
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            (root / relative).write_bytes(raw)
        options = {"image_size": image_size, "strict": strict, "progress": False}
        loaded, messages = _load(load_dataset, root, cache, **options)
        if loaded is None:
            return
        skipped = loaded.origin["skipped"]
        assert len(loaded.x_train) + skipped == len(files) and not (strict and skipped)
        assert not skipped or any(f"skipped {skipped} unreadable image(s)" in m for m in messages), messages
        if image_size is not None:
            assert loaded.image_shape == (5, 5, 3)
        _assert_one_entry(cache, "folders")


# --------------------------------------------------------------------------- .npz


def _npz_bytes() -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        x_train=rng.integers(0, 256, (4, 3, 3, 3), dtype=np.uint8),
        y_train=np.array([0, 1, 0, 1]),
        x_test=rng.integers(0, 256, (2, 3, 3, 3), dtype=np.uint8),
        y_test=np.array([1, 0]),
        class_names=np.array(["cat", "dog"]),
    )
    return buffer.getvalue()


NPZ = _npz_bytes()


@FUZZ
@given(raw=damaged(NPZ))
def test_a_corrupt_npz_is_one_line(raw):
    with tempfile.TemporaryDirectory() as folder:
        path, cache = Path(folder) / "arrays.npz", Path(folder) / "cache"
        path.write_bytes(raw)
        loaded, _ = _load(load_dataset, path, cache)
        if loaded is not None:
            assert loaded.x_train.dtype == np.uint8 and len(loaded.x_train) == len(loaded.y_train)
        assert _cache_entries(cache) == []  # .npz files are read as they are, never cached


@FUZZ
@given(
    labels=st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=6),
    images=st.integers(0, 6),
    named=st.booleans(),
)
def test_an_npz_with_damaged_labels_is_one_line(labels, images, named):
    """Values a zip's CRC cannot catch (the file was saved that way): any label, any count of images."""
    arrays = {"x_train": np.zeros((images, 3, 3, 3), np.uint8), "y_train": np.array(labels, dtype=np.int64)}
    if named:
        arrays["class_names"] = np.array(["cat", "dog"])
    with tempfile.TemporaryDirectory() as folder:
        path, cache = Path(folder) / "arrays.npz", Path(folder) / "cache"
        np.savez(path, **arrays)
        loaded, _ = _load(load_dataset, path, cache)
        if loaded is not None:
            assert len(loaded.x_train) == len(labels) and min(labels) >= 0 and max(labels) < loaded.num_classes
