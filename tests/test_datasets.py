"""load_dataset: a real image folder, CIFAR-100 in its official layout, .npz files, the cache, and bad input."""

from __future__ import annotations

import argparse
import io
import os
import pickle
import tarfile
import warnings

import numpy as np
import pytest
from PIL import Image

import cnnlab.data.dataset
import cnnlab.data.folders
import cnnlab.data.images
from cnnlab.cli._data import add_data_options, dataset_from_args, lab_data_from_args, parse_image_size
from cnnlab.core.errors import ConfigError, DataError
from cnnlab.data.cifar import CLASS_NAMES, load_cifar10
from cnnlab.data.dataset import ImageDataset
from cnnlab.data.load import load_dataset
from cnnlab.data.split import load_lab_data

CLASSES = ("air plane", "chat noir", "oiseau bleu", "Ölgemälde")  # spaces and non-ASCII letters


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("CNNLAB_CACHE", str(cache))
    return cache


def _no_partial_writes(cache) -> bool:
    return not any(cache.rglob(".partial-*")) and not any((cache / "folders").rglob("*.npy"))


@pytest.fixture(scope="module")
def cifar_test_images(cifar10_archive, tmp_path_factory):
    """The first 120 CIFAR-10 test images and labels from the shared archive (decoded into a module cache)."""
    previous = os.environ.get("CNNLAB_CACHE")
    os.environ["CNNLAB_CACHE"] = str(tmp_path_factory.mktemp("cifar-cache"))
    try:
        _, (x_test, y_test) = load_cifar10(cifar10_archive)
        return np.array(x_test[:120]), np.array(y_test[:120])
    finally:
        if previous is None:
            del os.environ["CNNLAB_CACHE"]
        else:
            os.environ["CNNLAB_CACHE"] = previous


@pytest.fixture
def real_folder(tmp_path, cifar_test_images, photos_dir):
    """Three classes of CIFAR-10 images (PNG and JPEG, some saved at other sizes) and a class of real photos."""
    x, y = cifar_test_images
    root = tmp_path / "my images"
    for index, (image, label) in enumerate(zip(x[:90], y[:90], strict=True)):
        folder = root / CLASSES[index % 3]
        folder.mkdir(parents=True, exist_ok=True)
        picture = Image.fromarray(image)
        if index % 10 == 9:
            picture = picture.resize((48, 40))
        picture.save(folder / f"{index:03d}_{label}.{'jpg' if index % 3 == 1 else 'png'}")
    (root / CLASSES[3]).mkdir()
    for photo in sorted(photos_dir.iterdir()):
        Image.open(photo).convert("RGB").resize((64, 48)).save(root / CLASSES[3] / f"{photo.stem}.jpg")
    return root


def test_real_folder_loads_with_sorted_class_names_shapes_and_labels(real_folder, cifar_test_images, photos_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean folder loads without a single warning
        dataset = load_dataset(real_folder, image_size=32)
    assert dataset.class_names == tuple(sorted(CLASSES)) and dataset.num_classes == 4
    assert dataset.image_shape == (32, 32, 3) and dataset.x_train.dtype == np.uint8
    assert dataset.x_test is None and dataset.origin["kind"] == "folder"
    counts = np.bincount(dataset.y_train, minlength=4).tolist()
    photos = len(list(photos_dir.iterdir()))
    assert counts == [30, 30, 30, photos]
    # A PNG saved at 32 x 32 comes back bit for bit, with the label of its folder.
    x, _ = cifar_test_images
    first_png = dataset.class_names.index("air plane")
    np.testing.assert_array_equal(dataset.x_train[np.flatnonzero(dataset.y_train == first_png)[0]], x[0])


def test_lab_split_of_a_folder_is_stratified_with_a_held_out_test_share(real_folder, photos_dir):
    data = load_lab_data(real_folder, image_size=(24, 28), dtype="uint8", val_fraction=0.25)
    assert data.class_names == tuple(sorted(CLASSES)) and data.input_shape == (24, 28, 3)
    assert data.x_train.dtype == np.uint8 and data.x_train.shape[1:] == (24, 28, 3)
    assert len(data.x_train) + len(data.x_val) + len(data.x_test) == 90 + len(list(photos_dir.iterdir()))
    assert set(np.unique(data.y_test)) == {0, 1, 2, 3} and "stratified 20%" in data.source["note"]
    scaled = load_lab_data(real_folder, image_size=(24, 28))
    assert scaled.x_train.dtype == np.float32 and scaled.x_train.min() >= -1 and scaled.x_train.max() <= 1


def test_second_load_reads_the_cache_without_decoding(real_folder, monkeypatch):
    calls = []
    decode = cnnlab.data.images.load_images

    def counting(*args, **kwargs):
        calls.append(len(args[0]))
        return decode(*args, **kwargs)

    monkeypatch.setattr(cnnlab.data.folders, "load_images", counting)
    first = load_dataset(real_folder, image_size=32)
    second = load_dataset(real_folder, image_size=32)
    assert len(calls) == 1
    np.testing.assert_array_equal(first.x_train, second.x_train)
    load_dataset(real_folder, image_size=16)  # other settings: decoded again
    assert len(calls) == 2
    touched = next((real_folder / "air plane").iterdir())
    os.utime(touched, ns=(1, 1))  # a changed file (new mtime) changes the key
    load_dataset(real_folder, image_size=32)
    assert len(calls) == 3


def test_default_size_is_the_most_common_one(real_folder):
    assert load_dataset(real_folder).image_shape == (32, 32, 3)


def test_train_and_val_subfolders_and_a_stratified_validation_split(tmp_path):
    for split, count in (("train", 6), ("val", 2)):
        for name in ("a", "b"):
            _images(tmp_path / "tv" / split / name, count)
    dataset = load_dataset(tmp_path / "tv")
    assert dataset.class_names == ("a", "b") and len(dataset.x_train) == 12 and len(dataset.x_test) == 4
    with pytest.raises(ConfigError, match="has train/ and test/ folders; leave out --validation-split"):
        load_dataset(tmp_path / "tv", validation_split=0.2)
    for name in ("a", "b"):
        _images(tmp_path / "one" / name, 10)
    split = load_dataset(tmp_path / "one", validation_split=0.2, seed=1)
    assert np.bincount(split.y_test).tolist() == [2, 2] and np.bincount(split.y_train).tolist() == [8, 8]
    with pytest.raises(ConfigError, match="between 0 and 1"):
        load_dataset(tmp_path / "one", validation_split=1.5)


def _images(folder, count: int, size=(12, 10), suffix="png"):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(count)
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"{index}.{suffix}")


# --------------------------------------------------------------------------- bad folders


def test_one_class_or_no_images_is_refused(tmp_path, private_cache):
    _images(tmp_path / "solo" / "cats", 3)
    with pytest.raises(DataError, match=r"only one class \(cats\); a classifier needs at least two"):
        load_dataset(tmp_path / "solo")
    (tmp_path / "none" / "cats").mkdir(parents=True)
    with pytest.raises(DataError, match="no images in class subfolders"):
        load_dataset(tmp_path / "none")
    assert _no_partial_writes(private_cache)


def test_empty_class_folder_is_named_and_left_out(tmp_path):
    for name in ("a", "b"):
        _images(tmp_path / "d" / name, 3)
    (tmp_path / "d" / "empty one").mkdir()
    with pytest.warns(UserWarning, match="empty one hold no images and are left out"):
        dataset = load_dataset(tmp_path / "d")
    assert dataset.class_names == ("a", "b")


def test_corrupt_images_are_skipped_named_and_refused_when_strict(tmp_path, private_cache):
    for name in ("a", "b"):
        _images(tmp_path / "d" / name, 4, suffix="jpg")
    good = (tmp_path / "d" / "a" / "0.jpg").read_bytes()
    (tmp_path / "d" / "a" / "cut.jpg").write_bytes(good[: len(good) // 3])
    (tmp_path / "d" / "b" / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable image\(s\) \(e.g. a/cut.jpg, b/cut.png\)"):
        dataset = load_dataset(tmp_path / "d")
    assert len(dataset.x_train) == 8 and dataset.origin["skipped"] == 2
    with pytest.raises(DataError, match="cut.jpg.*strict"):
        load_dataset(tmp_path / "d", strict=True)
    assert not any(private_cache.rglob(".partial-*"))


def test_odd_modes_are_converted_and_counted(tmp_path):
    for name in ("a", "b"):
        _images(tmp_path / "d" / name, 2)
    pixels = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    Image.fromarray(pixels[..., 0]).save(tmp_path / "d" / "a" / "grey.png")
    Image.fromarray(np.dstack([pixels, pixels[..., :1]])).save(tmp_path / "d" / "a" / "rgba.png")
    Image.fromarray(pixels[..., 0].astype(np.uint16) * 257).save(tmp_path / "d" / "b" / "sixteen.png")
    Image.fromarray(pixels).convert("CMYK").save(tmp_path / "d" / "b" / "cmyk.jpg")
    Image.fromarray(pixels).convert("P").save(tmp_path / "d" / "b" / "palette.png")
    with pytest.warns(UserWarning, match=r"converted 5 image\(s\)"):
        dataset = load_dataset(tmp_path / "d")
    assert sum(dataset.origin["converted"].values()) == 5 and len(dataset.x_train) == 9
    with pytest.warns(UserWarning, match="converted"):
        grey = load_dataset(tmp_path / "d", color_mode="grayscale")
    assert grey.image_shape == (12, 10, 1)


def test_image_over_the_pixel_limit_is_skipped(tmp_path):
    for name in ("a", "b"):
        _images(tmp_path / "d" / name, 2)
    _images(tmp_path / "d" / "a" / "big", 1, size=(200, 200))
    with pytest.warns(UserWarning, match="skipped 1"):
        dataset = load_dataset(tmp_path / "d", image_size=12, max_pixels=10_000)
    assert len(dataset.x_train) == 4


def test_non_image_files_are_ignored_and_counted(tmp_path):
    for name in ("a", "b"):
        _images(tmp_path / "d" / name, 2)
    (tmp_path / "d" / "a" / "notes.txt").write_text("hello")
    (tmp_path / "d" / "README.md").write_text("my data set")
    with pytest.warns(UserWarning, match=r"ignored 2 non-image file\(s\)"):
        dataset = load_dataset(tmp_path / "d")
    assert dataset.origin["ignored_files"] == 2 and len(dataset.x_train) == 4


def test_symlink_loop_is_followed_once(tmp_path):
    for name in ("a", "b"):
        _images(tmp_path / "d" / name, 2)
    (tmp_path / "d" / "a" / "loop").symlink_to(tmp_path / "d" / "a", target_is_directory=True)
    with pytest.warns(UserWarning, match="symlink loop"):
        dataset = load_dataset(tmp_path / "d")
    assert len(dataset.x_train) == 4


def test_train_and_test_with_different_classes_name_the_difference(tmp_path, private_cache):
    _images(tmp_path / "d" / "train" / "cat", 2)
    _images(tmp_path / "d" / "train" / "dog", 2)
    _images(tmp_path / "d" / "test" / "cat", 1)
    _images(tmp_path / "d" / "test" / "bird", 1)
    with pytest.raises(DataError, match="only in train: dog; only in test: bird"):
        load_dataset(tmp_path / "d")
    assert _no_partial_writes(private_cache)


def test_memory_limit_refuses_before_decoding_and_names_a_size(tmp_path, monkeypatch, private_cache):
    for name in ("a", "b"):
        _images(tmp_path / "d" / name, 5)
    monkeypatch.setenv("CNNLAB_MEMORY_LIMIT", "3000")  # bytes: 10 images x 3 channels fit 10 x 10
    monkeypatch.setattr(cnnlab.data.folders, "load_images", None)  # decoding would fail loudly
    with pytest.raises(DataError, match=r"over the limit of 0.00 GB; use --image-size 10 or smaller"):
        load_dataset(tmp_path / "d", image_size=64, stream=False)  # by default such a folder is streamed
    monkeypatch.setenv("CNNLAB_MEMORY_LIMIT", "lots")
    with pytest.raises(ConfigError, match="neither bytes nor GB"):
        load_dataset(tmp_path / "d", image_size=64)
    monkeypatch.setenv("CNNLAB_MEMORY_LIMIT", "0.5GB")
    assert cnnlab.data.dataset.memory_limit() == 500_000_000
    assert _no_partial_writes(private_cache)


def test_missing_path_and_unknown_file_explain_the_forms(tmp_path):
    with pytest.raises(DataError, match="no such file or folder; --data takes cifar10, cifar100"):
        load_dataset(tmp_path / "absent")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="not an image folder, .npz or CIFAR archive"):
        load_dataset(tmp_path / "notes.txt")


# --------------------------------------------------------------------------- CIFAR-100


def _cifar100_files(n_train: int = 40, n_test: int = 20) -> dict[str, bytes]:
    """A small archive in the official python layout: train, test and meta pickles."""
    rng = np.random.default_rng(0)

    def batch(n):
        fine = np.arange(n) % 100
        return pickle.dumps(
            {
                b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                b"fine_labels": fine.tolist(),
                b"coarse_labels": (fine // 5).tolist(),
                b"filenames": [b"x.png"] * n,
            }
        )

    meta = {
        b"fine_label_names": [f"fine_{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse_{i}".encode() for i in range(20)],
    }
    return {
        "cifar-100-python/meta": pickle.dumps(meta),
        "cifar-100-python/train": batch(n_train),
        "cifar-100-python/test": batch(n_test),
    }


def _tar(path, files: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def test_cifar100_archive_loads_with_fine_and_coarse_labels(tmp_path, monkeypatch):
    archive = _tar(tmp_path / "cifar-100-python.tar.gz", _cifar100_files())
    with pytest.warns(UserWarning, match="not the official CIFAR-100"):
        fine = load_dataset(archive)
    assert fine.num_classes == 100 and fine.class_names[7] == "fine_7" and fine.image_shape == (32, 32, 3)
    assert fine.x_train.shape == (40, 32, 32, 3) and fine.y_train[:3].tolist() == [0, 1, 2]
    assert fine.origin["kind"] == "cifar100" and fine.origin["official"] is False
    monkeypatch.setenv("CNNLAB_CIFAR100", str(archive))
    coarse = load_dataset("cifar100", label_mode="coarse")
    assert coarse.num_classes == 20 and coarse.y_train[:11].tolist() == [0] * 5 + [1] * 5 + [2]
    np.testing.assert_array_equal(coarse.x_test, fine.x_test)
    data = load_lab_data(archive, n_train_val=None, n_test=None, label_mode="coarse")
    assert data.class_names == coarse.class_names and len(data.x_test) == 20
    with pytest.raises(ConfigError, match="--image-size applies to image folders only"):
        load_dataset(archive, image_size=64)


def test_corrupt_cifar100_archive_is_refused_and_nothing_cached(tmp_path, private_cache):
    archive = _tar(tmp_path / "cifar-100-python.tar.gz", _cifar100_files(400, 100))
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_dataset(archive)
    files = _cifar100_files()
    files["cifar-100-python/meta"] = pickle.dumps({b"fine_label_names": []})
    with pytest.raises(DataError, match="meta has no coarse_label_names"):
        load_dataset(_tar(tmp_path / "nometa.tar.gz", files))
    assert not any(private_cache.rglob("*.npy"))


def test_cifar10_spec_keeps_the_lab_data(cifar10_archive, session_cache):
    dataset = load_dataset(cifar10_archive)
    assert dataset.class_names == CLASS_NAMES and dataset.origin["kind"] == "cifar10"
    assert dataset.origin["official"] is False and "lossy" in dataset.origin["note"]
    assert len(dataset.x_train) == 50_000


# --------------------------------------------------------------------------- .npz


def test_npz_with_and_without_test_split(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)  # grey, no channel axis
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(30) % 3, class_names=np.array(["a", "b", "c"]))
    dataset = load_dataset(tmp_path / "d.npz")
    assert dataset.image_shape == (28, 28, 1) and dataset.class_names == ("a", "b", "c") and dataset.x_test is None
    split = load_dataset(tmp_path / "d.npz", validation_split=0.2)
    assert np.bincount(split.y_test).tolist() == [2, 2, 2] and len(split.x_train) == 24
    np.savez(tmp_path / "e.npz", x_train=x, y_train=np.arange(30) % 3, x_test=x[:6], y_test=np.arange(6)[:, None] % 3)
    assert load_dataset(tmp_path / "e.npz").y_test.tolist() == [0, 1, 2, 0, 1, 2]


_X = np.zeros((30, 8, 8, 3), np.uint8)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"y_train": np.arange(30) % 3}, "needs arrays x_train and y_train"),
        ({"x_train": _X, "y_train": np.arange(29) % 3}, "y_train must have one label per image"),
        ({"x_train": _X, "y_train": np.arange(30) % 5}, r"labels outside 0..2"),
        ({"x_train": _X, "y_train": np.arange(30) % 3, "x_test": _X[:2]}, "come together"),
        ({"x_train": _X, "y_train": np.arange(30) * 0.5}, "integer class numbers"),
        ({"x_train": _X.astype(np.float32), "y_train": np.arange(30) % 3}, "must be uint8 images 0-255"),
    ],
)
def test_bad_npz_names_the_array(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays, class_names=np.array(["a", "b", "c"]))
    with pytest.raises(DataError, match=message):
        load_dataset(tmp_path / "bad.npz")


def test_image_dataset_checks_its_arrays():
    with pytest.raises(DataError, match="at least two classes"):
        ImageDataset(np.zeros((2, 4, 4, 3), np.uint8), np.zeros(2, np.int64), class_names=("only",))
    unnamed = ImageDataset(np.zeros((3, 4, 4, 1), np.uint8), np.array([0, 2, 1]))
    assert unnamed.class_names == ("0", "1", "2") and unnamed.image_shape == (4, 4, 1) and unnamed.num_classes == 3
    with pytest.raises(DataError, match="1 or 3 channels"):
        ImageDataset(np.zeros((2, 4, 4, 2), np.uint8), np.zeros(2, np.int64), class_names=("a", "b"))


# --------------------------------------------------------------------------- command line options


def test_cli_options_load_a_folder(tmp_path):
    for name in ("a", "b"):
        _images(tmp_path / "d" / name, 10)
    parser = argparse.ArgumentParser()
    add_data_options(parser)
    args = parser.parse_args(["--data", str(tmp_path / "d"), "--image-size", "8x6", "--color-mode", "grayscale"])
    assert dataset_from_args(args).image_shape == (8, 6, 1)
    data = lab_data_from_args(args, n_train_val=None, dtype="uint8")
    assert data.class_names == ("a", "b") and data.input_shape == (8, 6, 1)
    assert parse_image_size("64") == (64, 64)
    with pytest.raises(SystemExit):
        parser.parse_args(["--image-size", "big"])
