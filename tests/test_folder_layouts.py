"""Image folders as people lay them out (train/ + val/ beside logs and scripts, split names used as classes), and
Keras' image_dataset_from_directory options class_names, pad_to_aspect_ratio and color_mode="grayscale"."""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import pytest
from PIL import Image

from cnnlab.cli._data import add_data_options, dataset_from_args
from cnnlab.core.errors import ConfigError, DataError
from cnnlab.data.images import resize_image
from cnnlab.data.load import load_dataset


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))


def _images(folder, count: int, size=(12, 10), colour=None):
    """``count`` PNGs; ``colour`` (r, g, b) makes them plain, else random."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(count)
    for index in range(count):
        pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8) if colour is None else np.full((*size, 3), colour)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{index}.png")


def _split_folder(root, test_name="val"):
    for split, count in (("train", 4), (test_name, 2)):
        for name in ("cat", "dog"):
            _images(root / split / name, count)
    return root


# --------------------------------------------------------------------------- layouts


def test_split_layout_beside_logs_scripts_and_caches_names_them_in_one_warning(tmp_path):
    root = _split_folder(tmp_path / "d")
    for junk in ("logs", "__pycache__", ".ipynb_checkpoints", ".hidden"):
        (root / junk).mkdir()
    (root / "logs" / "run.txt").write_text("loss 0.3")
    (root / "__pycache__" / "prepare.cpython-312.pyc").write_bytes(b"\0")
    (root / "prepare.py").write_text("print('hi')")
    _images(root / "extra", 1)
    with pytest.warns(UserWarning) as caught:
        dataset = load_dataset(root)
    assert dataset.class_names == ("cat", "dog")
    assert len(dataset.x_train) == 8 and len(dataset.x_test) == 4
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert "split layout train/ + val/; ignored .hidden/, .ipynb_checkpoints/, __pycache__/" in messages[0]
    assert "extra/ (holds images), logs/, prepare.py" in messages[0]


def test_clean_split_layout_and_test_over_val_when_both(tmp_path):
    root = _split_folder(tmp_path / "clean", "validation")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_dataset(root).x_test) == 4
    three = _split_folder(tmp_path / "three", "test")
    _images(three / "val" / "cat", 1)
    with pytest.warns(UserWarning, match=r"split layout train/ \+ test/; ignored val/ \(holds images\)"):
        assert len(load_dataset(three).x_test) == 4


def test_flat_train_and_val_folders_are_classes_with_a_warning(tmp_path):
    for name in ("train", "val"):
        _images(tmp_path / "d" / name, 3)
    with pytest.warns(UserWarning, match=r"class folder\(s\) train, val look like split folders.*one level down"):
        dataset = load_dataset(tmp_path / "d")
    assert dataset.class_names == ("train", "val")


def test_train_alone_names_the_folder_to_pass(tmp_path):
    for name in ("cat", "dog"):
        _images(tmp_path / "d" / "train" / name, 2)
    warned = pytest.warns(UserWarning, match=f"look like split folders.*{tmp_path / 'd' / 'train'}")
    with warned, pytest.raises(DataError, match=r"only one class \(train\)"):
        load_dataset(tmp_path / "d")


def test_one_folder_layout_skips_caches_and_hidden_folders(tmp_path):
    for name in ("a", "b"):
        _images(tmp_path / "d" / name, 2)
    (tmp_path / "d" / "__pycache__").mkdir()
    _images(tmp_path / "d" / ".ipynb_checkpoints", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_dataset(tmp_path / "d").class_names == ("a", "b")


# --------------------------------------------------------------------------- Keras' options


def _three_classes(root):
    for index, name in enumerate(("a", "b", "c")):
        _images(root / name, 2 + index, colour=(40 * index, 0, 0))
    return root


def test_class_names_fix_the_order_of_the_labels(tmp_path):
    root = _three_classes(tmp_path / "d")
    dataset = load_dataset(root, class_names=["c", "a", "b"], image_size=4)
    assert dataset.class_names == ("c", "a", "b")
    assert np.bincount(dataset.y_train).tolist() == [4, 2, 3]
    # Each label's images are that folder's: red 80 for c, 0 for a, 40 for b.
    for label, red in enumerate((80, 0, 40)):
        assert (dataset.x_train[dataset.y_train == label][..., 0] == red).all()


def test_class_names_pick_a_subset_and_refuse_a_missing_or_repeated_name(tmp_path):
    root = _three_classes(tmp_path / "d")
    subset = load_dataset(root, class_names=("b", "c"), image_size=4)
    assert subset.class_names == ("b", "c") and len(subset.x_train) == 7
    with pytest.raises(DataError, match=r"class_names has z, but there is no such class folder \(folders: a, b, c\)"):
        load_dataset(root, class_names=["a", "z"])
    with pytest.raises(ConfigError, match="lists a more than once"):
        load_dataset(root, class_names=["a", "a", "b"])
    with pytest.raises(ConfigError, match="a list of folder names"):
        load_dataset(root, class_names="a,b")


def test_pad_to_aspect_ratio_keeps_the_shape_and_pads_with_black(tmp_path):
    for name in ("a", "b"):
        _images(tmp_path / "d" / name, 2, size=(10, 20), colour=(200, 200, 200))  # wide: 10 high, 20 wide
    dataset = load_dataset(tmp_path / "d", image_size=(20, 20), pad_to_aspect_ratio=True)
    assert dataset.x_train.shape == (4, 20, 20, 3)
    image = dataset.x_train[0]
    assert (image[:4] == 0).all() and (image[-4:] == 0).all()  # black bands above and below
    assert (image[6:14] == 200).all()  # the photo, unsquashed, in the middle
    stretched = load_dataset(tmp_path / "d", image_size=(20, 20))
    assert (stretched.x_train == 200).all()
    with pytest.raises(ConfigError, match="exclude each other"):
        load_dataset(tmp_path / "d", crop_to_aspect_ratio=True, pad_to_aspect_ratio=True)


def test_pad_resize_of_a_tall_image_adds_bands_left_and_right():
    tall = Image.new("RGB", (5, 10), (255, 255, 255))
    padded = np.asarray(resize_image(tall, (8, 8), "pad"))
    assert padded.shape == (8, 8, 3)
    assert (padded[:, 0] == 0).all() and (padded[:, -1] == 0).all() and (padded[:, 3:5] == 255).all()


def test_grayscale_asked_for_converts_colour_without_a_warning(tmp_path):
    for name in ("a", "b"):
        _images(tmp_path / "d" / name, 2)
    Image.new("L", (10, 12), 128).save(tmp_path / "d" / "a" / "grey.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset = load_dataset(tmp_path / "d", color_mode="grayscale")
    assert dataset.image_shape == (12, 10, 1) and dataset.origin["converted"] == {}
    with pytest.warns(UserWarning, match="grey copied to R, G and B"):  # grey into RGB is still news
        load_dataset(tmp_path / "d")


def test_cli_flags_for_class_names_and_padding(tmp_path):
    root = _three_classes(tmp_path / "d")
    parser = argparse.ArgumentParser()
    add_data_options(parser)
    args = parser.parse_args(["--data", str(root), "--class-names", "c, a", "--pad-to-aspect-ratio"])
    dataset = dataset_from_args(args)
    assert dataset.class_names == ("c", "a") and dataset.origin["load"]["resize"] == "pad"
    with pytest.raises(SystemExit):
        parser.parse_args(["--class-names", "a,,b"])
