"""`cnnlab evaluate` on the data a model was trained on: the held-out test images are scored again, and training
images are never passed off as a test score without saying so."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from cnnlab.cli import main

PER_CLASS = 10


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))


def _class_folders(root, per_class: int = PER_CLASS):
    """Two classes a tiny CNN can tell apart: dark and bright 16x16 noise."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(("dark", "light")):
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            pixels = rng.integers(0, 128, (16, 16, 3)) + 127 * label
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{index}.png")
    return root


def _cli(*argv) -> str:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(list(map(str, argv))) == 0, printed.getvalue()
    return printed.getvalue()


def _train(data, out) -> str:
    return _cli("train", "--model", "cnn", "--data", data, "--epochs", "1", "--batch-size", "4", "--quiet",
                "--n-conv-layers", "2", "--n-filters", "4", "--n-nodes", "8", "--out", out)  # fmt: skip


def _evaluate(model, data, out) -> tuple[str, dict]:
    printed = _cli("evaluate", model, "--data", data, "--out", out)
    return printed, json.loads((out / "evaluation.json").read_text(encoding="utf-8"))


def test_the_training_folder_scores_the_held_out_test_images(tmp_path):
    data = _class_folders(tmp_path / "photos")
    run = tmp_path / "run"
    assert "a stratified 20% (4 images) held out as the test set" in _train(data, run)
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["data_source"]["split"]["held_out_test"] == 0.2
    printed, evaluation = _evaluate(run, data, tmp_path / "e1")
    assert "Note: the data the model was trained on, which has no test split: scoring the 20%" in printed
    assert "(4 of 20 images, split seed 0)" in printed and "4 images: loss" in printed
    # The same four images: evaluate repeats the test score train wrote.
    assert evaluation["images"] == 4
    assert evaluation["accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert evaluation["loss"] == pytest.approx(metrics["test_loss"], rel=1e-4)
    # A copy elsewhere is the same data (checksums of names and sizes); the model file alone finds its run.
    shutil.copytree(data, tmp_path / "copy")
    printed, evaluation = _evaluate(run / "weights.safetensors", tmp_path / "copy", tmp_path / "e2")
    assert "scoring the 20%" in printed and evaluation["images"] == 4
    # The folder changed since training: all its images are scored, with the caveat.
    _class_folders(tmp_path / "more", per_class=1)
    shutil.copy(tmp_path / "more" / "dark" / "0.png", data / "dark" / "new.png")
    printed, evaluation = _evaluate(run, data, tmp_path / "e3")
    assert evaluation["images"] == 21
    assert "changed since (its checksum differs)" in printed and "this accuracy is not a test score" in printed


def test_the_train_split_of_a_split_folder_is_named_as_training_images(tmp_path):
    root = tmp_path / "split"
    _class_folders(root / "train")
    _class_folders(root / "val", per_class=3)
    (root / "prepare.py").write_text("# made the split")
    with pytest.warns(UserWarning, match=r"split layout train/ \+ val/; ignored prepare.py"):
        _train(root, tmp_path / "run")
    printed, evaluation = _evaluate(tmp_path / "run", root / "train", tmp_path / "e1")
    assert "Note: all 20 of these images were used in training: this accuracy is not a test score" in printed
    assert evaluation["images"] == 20
    with pytest.warns(UserWarning, match="ignored prepare.py"):
        printed, evaluation = _evaluate(tmp_path / "run", root, tmp_path / "e2")
    assert "Note:" not in printed and evaluation["images"] == 6 and evaluation["note"] is None


def test_a_run_without_a_split_record_says_most_images_were_trained_on(tmp_path):
    data = _class_folders(tmp_path / "photos")
    run = tmp_path / "run"
    _train(data, run)
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    del metrics["data_source"]["split"]  # as a run of an older cnnlab wrote it
    (run / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    printed, evaluation = _evaluate(run, data, tmp_path / "e")
    assert "its test split cannot be found again (no split recorded)" in printed
    assert "most of these 20 images were used in training" in printed and evaluation["images"] == 20
