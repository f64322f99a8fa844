"""Every training command on the user's own images: a folder of class subfolders built here from real
CIFAR-10 images (40x40 PNG and JPEG, class names with a space and a non-ASCII letter), and a small archive
in the official CIFAR-100 layout. Each command must take the classes and the image size from the data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_datasets import _cifar100_files, _tar

from cnnlab.cli import main

# Folder name -> the CIFAR-10 class whose images it holds. Sorted, the folder's classes are café, red car, zebra.
FOLDER_CLASSES = {"red car": 1, "café": 3, "zebra": 7}
CLASS_NAMES = sorted(FOLDER_CLASSES)
PER_CLASS = 40
SIDE = 40  # saved at 40x40, trained at --image-size 32


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, cifar10_archive, session_cache) -> Path:
    """120 real CIFAR-10 images upscaled to 40x40, half PNG and half JPEG, in three class folders."""
    from cnnlab.data.cifar import load_cifar10

    (x_train, y_train), _ = load_cifar10(cifar10_archive)
    root = tmp_path_factory.mktemp("own-images") / "photos"
    for name, label in FOLDER_CLASSES.items():
        folder = root / name
        folder.mkdir(parents=True)
        for i, index in enumerate(np.flatnonzero(y_train == label)[:PER_CLASS]):
            image = Image.fromarray(np.asarray(x_train[index])).resize((SIDE, SIDE), Image.Resampling.BICUBIC)
            image.save(folder / f"{i:03d}.{'png' if i % 2 else 'jpg'}")
    return root


@pytest.fixture(scope="module")
def folder_run(image_folder, tmp_path_factory) -> tuple[Path, str]:
    """`cnnlab train --data FOLDER --image-size 32 --epochs 1`: the run folder and what it printed."""
    import contextlib
    import io

    run = tmp_path_factory.mktemp("runs") / "own"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["train", "--data", str(image_folder), "--image-size", "32", "--epochs", "1", "--quiet",
                     "--out", str(run)])  # fmt: skip
    assert code == 0, printed.getvalue()
    return run, printed.getvalue()


def test_train_on_a_folder_shows_its_classes_and_writes_a_self_describing_model(folder_run):
    from cnnlab.models.registry import load_model

    run, printed = folder_run
    assert f"Classes: {', '.join(CLASS_NAMES)}" in printed
    assert "3 classes, 32x32x3" in printed
    assert all(re.search(rf"^\s+{re.escape(name)}\s+[\d.]+\s+\(\d+ images\)$", printed, re.M) for name in CLASS_NAMES)
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["class_names"] == CLASS_NAMES
    assert set(metrics["per_class_accuracy"]) == set(CLASS_NAMES)
    model = load_model(run)
    assert model.class_names == tuple(CLASS_NAMES)
    assert model.input_shape == (32, 32, 3)
    assert model.predict(np.zeros((2, 32, 32, 3), np.uint8)).shape == (2, 3)
    assert (run / "confusion_matrix.png").stat().st_size > 0
    table = (run / "per_class_accuracy.csv").read_text(encoding="utf-8").splitlines()
    assert [line.split(",")[0] for line in table[1:]] == CLASS_NAMES


def test_predict_and_evaluate_with_the_folder_model(folder_run, image_folder, tmp_path, capsys):
    run, _ = folder_run
    photo = image_folder / "zebra" / "001.png"
    assert main(["predict", str(run), str(photo), "--top", "1"]) == 0
    top_line = capsys.readouterr().out.splitlines()[2]
    assert any(name in top_line for name in CLASS_NAMES)
    assert main(["evaluate", str(run), "--data", str(image_folder), "--out", str(tmp_path / "evaluation")]) == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in CLASS_NAMES)
    assert json.loads((tmp_path / "evaluation" / "evaluation.json").read_text(encoding="utf-8"))["class_names"]


def test_tune_on_a_folder(image_folder, tmp_path, capsys):
    out = tmp_path / "tune"
    code = main(["tune", "--data", str(image_folder), "--image-size", "32", "--trials", "1", "--epochs", "1",
                 "--out", str(out), "--pruner", "none"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert f"Classes: {', '.join(CLASS_NAMES)}" in printed
    assert f"--data {image_folder}" in (out / "best.toml").read_text(encoding="utf-8")


def test_transfer_on_a_folder_saves_a_whole_model(image_folder, tmp_path, capsys, monkeypatch):
    """An untrained ResNet50 stands in for the ImageNet weights: the wiring, not the accuracy, is tested."""
    from cnnlab.models import resnet50, resnet50_classifier
    from cnnlab.models.registry import load_model

    monkeypatch.setattr(resnet50_classifier, "imagenet_backbone", lambda _config: (resnet50.ResNet50(), "w", "0" * 64))
    out = tmp_path / "transfer"
    code = main(["transfer", "--data", str(image_folder), "--image-size", "32", "--size", "32", "--train", "30",
                 "--test", "12", "--epochs", "2", "--quiet", "--out", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert f"classes     {', '.join(CLASS_NAMES)}" in printed
    assert "30 train, 12 test, 32x32 px resized to a shorter side of 32 px" in printed
    model = load_model(out / "weights.safetensors")
    assert model.class_names == tuple(CLASS_NAMES) and model.config.kind == "resnet50"
    assert model.predict(np.zeros((2, 32, 32, 3), np.uint8)).shape == (2, len(CLASS_NAMES))  # photos in
    assert json.loads((out / "transfer.json").read_text(encoding="utf-8"))["class_names"] == CLASS_NAMES


def test_carbon_sweep_on_a_folder(image_folder, tmp_path, capsys):
    out = tmp_path / "sweep"
    code = main(["carbon-sweep", "--data", str(image_folder), "--image-size", "32", "--quick", "--batch-sizes", "64",
                 "--epochs", "1", "--cpu-power", "10", "--out", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert f"Classes: {', '.join(CLASS_NAMES)}" in printed
    assert (out / "carbon_sweep.csv").exists()


def test_lab_on_a_folder_uses_its_classes(image_folder, tmp_path):
    out = tmp_path / "lab"
    code = main(["lab", "--tiny", "--no-carbon", "--data", str(image_folder), "--image-size", "32", "--out", str(out),
                 "--only", "data", "cnn", "generalization"])  # fmt: skip
    assert code == 0
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "not CIFAR-10" in report
    for name in CLASS_NAMES:
        assert f"| {name} |" in report  # the class counts and per-class accuracy tables
    assert "airplane" not in report
    assert "guessing would score 33%" in report


CIFAR100_WARNINGS = (
    "ignore:.*not the official CIFAR-100:UserWarning",  # the archive is built here
    "ignore:split not stratified:UserWarning",  # 100 classes in 100 images: one image per class
)


@pytest.fixture
def cifar100_copy(tmp_path, monkeypatch, session_cache) -> Path:
    path = tmp_path / "cifar-100-python.tar.gz"
    _tar(path, _cifar100_files(n_train=100, n_test=40))
    monkeypatch.setenv("CNNLAB_CIFAR100", str(path))
    return path


@pytest.mark.filterwarnings(*CIFAR100_WARNINGS)
def test_train_on_cifar100_from_a_local_copy(cifar100_copy, tmp_path, capsys):
    from cnnlab.models.registry import load_model

    run = tmp_path / "c100"
    code = main(["train", "--data", "cifar100", "--epochs", "1", "--n-train-val", "60", "--n-test", "20", "--quiet",
                 "--out", str(run)])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "100 classes, 32x32x3" in printed
    assert "Test accuracy per class" not in printed  # 100 rows go to the run folder, not the terminal
    model = load_model(run)
    assert model.num_classes == 100 and model.class_names[:2] == ("fine_0", "fine_1")
    assert len((run / "per_class_accuracy.csv").read_text().splitlines()) == 101


@pytest.mark.filterwarnings(*CIFAR100_WARNINGS)
def test_a_10_class_model_on_a_100_class_set_is_one_line(cifar100_copy, cifar10_archive, tmp_path, capsys):
    run = tmp_path / "c10"
    assert main(["train", "--data", str(cifar10_archive), "--epochs", "1", "--n-train-val", "60", "--n-test", "20",
                 "--quiet", "--out", str(run)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", "cifar100", "--out", str(tmp_path / "evaluation")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "are not the model's" in error and "fine_0" in error and "airplane" in error
