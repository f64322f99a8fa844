"""Streamed image folders (cnnlab.data.stream): a folder over the memory limit trains from disk, and with the same
folder, seed and settings a streamed run is the in-memory run: same split, same pixels, same history."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from PIL import Image
from test_training import KillAtEpoch, _csv_rows

from cnnlab.cli import main
from cnnlab.core.errors import DataError
from cnnlab.data.augment import parse_augment_spec
from cnnlab.data.load import load_dataset
from cnnlab.data.split import load_lab_data
from cnnlab.data.stream import StreamedDataset
from cnnlab.evaluate.predict import evaluate_model
from cnnlab.models.cnn import build_cnn

SIZE = (12, 16)  # height, width
CLASSES = {"ant": 14, "bee": 10, "cat": 8}  # unbalanced, so balanced class weights differ from none


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CNNLAB_MEMORY_LIMIT", raising=False)


def _folder(root, split: bool = False):
    """Class folders of small PNG and JPEG images whose colour tells the class; ``split`` puts them in train/
    and test/ (a quarter of each class in test/)."""
    rng = np.random.default_rng(0)
    for label, (name, count) in enumerate(CLASSES.items()):
        for i in range(count):
            part = ("test" if i % 4 == 0 else "train") if split else ""
            folder = root / part / name
            folder.mkdir(parents=True, exist_ok=True)
            pixels = np.clip(rng.normal(60 + 60 * label, 40, (*SIZE, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:02d}.{'png' if i % 2 else 'jpg'}", quality=95)
    return root


def _model(data, seed=0):
    return build_cnn(input_shape=data.input_shape, class_names=data.class_names, device="cpu", seed=seed,
                     n_conv_layers=1, n_filters=4, n_dense_layers=1, n_nodes=8)  # fmt: skip


def _both(root, workers=0, **options):
    """The lab split of a folder decoded into memory, and of the same folder streamed."""
    lab = {"n_train_val": 20, "n_test": None, "seed": 2}
    in_memory = load_lab_data(load_dataset(root, stream=False, **options), dtype="uint8", **lab)
    dataset = load_dataset(root, stream=True, **options)
    dataset.num_workers = workers
    return in_memory, load_lab_data(dataset, **lab)


def _fit(model, data, **options):
    if getattr(data, "streamed", False):
        return model.fit(data.train, None, validation_data=data.validation, verbose=0, **options)
    return model.fit(data.x_train, data.y_train, validation_data=(data.x_val, data.y_val), verbose=0, **options)


def _assert_same_history(first, second):
    assert first.epoch == second.epoch
    for key, values in first.history.items():
        np.testing.assert_allclose(second.history[key], values, rtol=1e-5, atol=1e-6, err_msg=key)


def test_a_folder_over_the_memory_limit_streams_with_a_note_and_trains(tmp_path, monkeypatch):
    root = _folder(tmp_path / "photos")
    monkeypatch.setenv("CNNLAB_MEMORY_LIMIT", "10000")  # bytes: 32 images of 12x16x3 need 18,432
    with pytest.warns(UserWarning, match=r"32 images at 12x16 need 0\.00 GB, over the limit of 0\.00 GB "
                      r"\(CNNLAB_MEMORY_LIMIT\): streaming them from disk"):  # fmt: skip
        dataset = load_dataset(root, validation_split=0.25)
    assert isinstance(dataset, StreamedDataset)
    assert dataset.origin["streamed"] and "streaming them from disk" in dataset.origin["note"]
    assert dataset.image_shape == (*SIZE, 3) and dataset.class_names == tuple(CLASSES)
    assert (dataset.train.samples, dataset.test.samples) == (24, 8)
    dataset.num_workers = 2
    data = load_lab_data(dataset, seed=1)
    history = _fit(_model(data), data, batch_size=8, epochs=2)
    assert history.epoch == [0, 1] and np.isfinite(history.history["val_loss"]).all()
    with pytest.raises(DataError, match="over the limit"):  # stream=False keeps the refusal
        load_dataset(root, stream=False)


@pytest.mark.parametrize("split", [False, True], ids=["one-folder-validation-split", "train-test-folders"])
def test_streamed_and_in_memory_splits_hold_the_same_images_and_train_the_same(tmp_path, split):
    options = {} if split else {"validation_split": 0.25, "seed": 3}
    in_memory, streamed = _both(_folder(tmp_path / "photos", split), **options)
    for name, feed in (("train", streamed.train), ("val", streamed.validation), ("test", streamed.test)):
        images, labels = feed.load(range(feed.samples))
        np.testing.assert_array_equal(labels, getattr(in_memory, f"y_{name}"), err_msg=name)
        np.testing.assert_array_equal(images, getattr(in_memory, f"x_{name}"), err_msg=name)
    assert streamed.input_shape == in_memory.input_shape and streamed.class_names == in_memory.class_names
    assert streamed.source["split"] == in_memory.source["split"]
    assert streamed.source["checksum"] == in_memory.source["checksum"]
    _assert_same_history(
        _fit(_model(in_memory), in_memory, batch_size=6, epochs=2),
        _fit(_model(streamed), streamed, batch_size=6, epochs=2),
    )


def test_augmentation_and_balanced_class_weights_on_a_streamed_split(tmp_path):
    in_memory, streamed = _both(_folder(tmp_path / "photos"), workers=2)
    runs = []
    for data in (in_memory, streamed):
        augment = parse_augment_spec("flip,shift=0.1", seed=0)
        runs.append(_fit(_model(data), data, batch_size=6, epochs=2, augment=augment, class_weight="balanced"))
    _assert_same_history(*runs)
    assert runs[1].params["class_weight"] == runs[0].params["class_weight"]
    assert len(set(runs[1].params["class_weight"])) > 1  # the classes are unbalanced: the weights differ


def test_a_killed_streamed_run_resumes_to_the_same_history(tmp_path):
    _, data = _both(_folder(tmp_path / "photos"))
    straight = _fit(_model(data), data, batch_size=6, epochs=3)
    with pytest.raises(KeyboardInterrupt):
        _fit(_model(data), data, batch_size=6, epochs=3, run_dir=tmp_path / "run", callbacks=[KillAtEpoch(1)])
    resumed = _fit(_model(data), data, batch_size=6, epochs=3, run_dir=tmp_path / "run", resume=True)
    assert resumed.epoch == [0, 1, 2]
    _assert_same_history(straight, resumed)


def test_an_unreadable_file_is_skipped_with_one_warning_and_strict_raises(tmp_path):
    root = _folder(tmp_path / "photos")
    (root / "bee" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    dataset = load_dataset(root, stream=True)
    dataset.num_workers = 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(dataset.train.batches(8))
    assert sum(len(labels) for _, labels in batches) == dataset.train.samples - 1 == 32
    assert [str(w.message) for w in caught] == [
        f"{root}: skipped 1 unreadable image(s) (e.g. bee/broken.png); fix or remove them, "
        "or pass strict=True (--strict) to stop at the first"
    ]
    assert [path.name for path, _ in dataset.train.skipped] == ["broken.png"]
    strict = load_dataset(root, stream=True, strict=True)
    strict.num_workers = 0
    with pytest.raises(DataError, match=r"broken\.png.*strict mode"):
        list(strict.train.batches(8))


def test_evaluate_and_predict_on_a_feed_equal_them_on_arrays(tmp_path):
    in_memory, streamed = _both(_folder(tmp_path / "photos", split=True))
    model = _model(in_memory)
    _fit(model, in_memory, batch_size=6, epochs=1)
    np.testing.assert_allclose(model.predict(streamed.test), model.predict(in_memory.x_test), rtol=1e-5)
    np.testing.assert_allclose(model.evaluate(streamed.test), model.evaluate(in_memory.x_test, in_memory.y_test),
                               rtol=1e-5)  # fmt: skip
    on_feed, on_arrays = evaluate_model(model, streamed.test), evaluate_model(model, in_memory.x_test, in_memory.y_test)
    assert on_feed.accuracy == on_arrays.accuracy and on_feed.loss == pytest.approx(on_arrays.loss, rel=1e-5)
    np.testing.assert_array_equal(on_feed.confusion, on_arrays.confusion)


def test_cnnlab_train_stream_writes_a_run_and_cnnlab_evaluate_streams_too(tmp_path, monkeypatch, capsys):
    root = _folder(tmp_path / "photos")
    out = tmp_path / "run"
    assert main(["train", "--data", str(root), "--stream", "--epochs", "1", "--batch-size", "8", "--n-filters", "4",
                 "--quiet", "--out", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "streamed from disk" in printed
    assert [row["epoch"] for row in _csv_rows(out / "history.csv")] == ["1"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data_source"]["streamed"] and 0 <= metrics["test_accuracy"] <= 1
    assert (out / "samples.png").stat().st_size > 0
    scores = []
    for limit in ("10000", None):  # over the limit the folder is streamed; the held-out test images are the same
        if limit:
            monkeypatch.setenv("CNNLAB_MEMORY_LIMIT", limit)
        else:
            monkeypatch.delenv("CNNLAB_MEMORY_LIMIT")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert main(["evaluate", str(out), "--data", str(root), "--out", str(tmp_path / f"eval-{limit}")]) == 0
        scores.append(json.loads((tmp_path / f"eval-{limit}" / "evaluation.json").read_text()))
    assert "held out" in scores[0]["note"] and scores[0]["images"] == metrics["data_source"]["split"]["test_images"]
    assert scores[0]["confusion_matrix"] == scores[1]["confusion_matrix"]
    assert scores[0]["loss"] == pytest.approx(scores[1]["loss"], rel=1e-5)


def test_cnnlab_train_recipe_streamed_equals_in_memory_and_resnet50_is_refused(tmp_path, capsys):
    root = _folder(tmp_path / "photos")
    runs = []
    for flags in (["--stream"], []):
        out = tmp_path / f"run{len(runs)}"
        assert main(["train", "--data", str(root), *flags, "--recipe", "fast2", "--epochs", "1", "--quiet",
                     "--out", str(out)]) == 0  # fmt: skip
        runs.append(json.loads((out / "metrics.json").read_text()))
    assert runs[0]["data_source"]["streamed"] and "streamed" not in runs[1]["data_source"]
    for key in ("loss", "val_loss", "test_loss", "test_accuracy"):
        assert runs[0][key] == pytest.approx(runs[1][key], rel=1e-4), key
    capsys.readouterr()
    code = main(["train", "--data", str(root), "--stream", "--model", "resnet50", "--out", str(tmp_path / "r50")])
    refusal = "streamed data: --model resnet50 is not supported yet; use --model cnn or --recipe"
    assert code == 2 and refusal in capsys.readouterr().err


def test_streamed_photos_default_to_the_recipe_even_with_resnet50_weights(monkeypatch):
    """The default model for large images is ResNet50 when its weights are at hand, but it takes no streamed data
    yet: a streamed set gets the recipe, and the reason says so (rather than a refusal of a choice never made)."""
    import argparse
    import types

    from cnnlab.cli._models import pick_model

    monkeypatch.setattr("cnnlab.models.resnet50_classifier.weights_available", lambda path=None: True)
    args = argparse.Namespace(model=None, recipe=None, weights=None)
    photos = types.SimpleNamespace(input_shape=(64, 64, 3), source={"kind": "folder"})
    assert pick_model(args, photos)[0] == "resnet50"
    kind, why = pick_model(args, types.SimpleNamespace(**vars(photos), streamed=True))
    assert kind == "recipe" and "streamed from disk, which ResNet50 does not take yet" in why
