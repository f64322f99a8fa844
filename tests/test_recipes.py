"""The recipe: network shapes and size, whitening, schedule, EMA, augmentation, TTA, CLI and lab part."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from cnnlab.cli import main
from cnnlab.core.errors import ConfigError
from cnnlab.data.crop_flip import CropFlip
from cnnlab.evaluate.tta import tta_logits, tta_views
from cnnlab.experiments.recipes import RECIPES, Recipe, build_lab_model, build_recipe_model, fit_recipe, get_recipe
from cnnlab.models.cnn import RECIPE_LAB_MODEL, build_cnn
from cnnlab.models.recipe_net import RecipeNet
from cnnlab.models.registry import load_model
from cnnlab.train.callbacks import Callback, WeightEMA
from cnnlab.train.model import Model
from cnnlab.train.schedules import OneCycle, one_cycle


def _images(n=16, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, size=(n, 32, 32, 3)).astype(np.float32)


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x, y = _images(n, seed), rng.integers(0, 10, size=n)
    return SimpleNamespace(x_train=x, y_train=y, x_val=x[:8], y_val=y[:8], x_test=x[:8], y_test=y[:8])


def _expected_trainable(widths, classes=10):
    """Whitening bias (24); per group two bias-free 3x3 convs and two BatchNorm biases; the head."""
    total, channels = 24, 24
    for width in widths:
        total += 9 * channels * width + 9 * width * width + 2 * width
        channels = width
    return total + channels * classes


@pytest.mark.parametrize("widths", [(8, 16, 32), RECIPES["fast"].widths])
def test_network_output_shape_and_parameter_count(widths):
    network = RecipeNet(widths)
    assert network(torch.zeros(5, 3, 32, 32)).shape == (5, 10)
    trainable = sum(p.numel() for p in network.parameters() if p.requires_grad)
    assert trainable == _expected_trainable(widths)
    assert not network.whiten.weight.requires_grad


def test_whitening_decorrelates_patches():
    torch.manual_seed(0)
    base = torch.randn(64, 1, 32, 32)
    images = torch.cat([base, 0.5 * base + 0.1 * torch.randn_like(base), torch.randn_like(base)], 1)
    network = RecipeNet((8, 8, 8))
    network.init_whitening(images, eps=1e-8)
    out = network.whiten(images).detach()
    features = out[:, :12].permute(0, 2, 3, 1).reshape(-1, 12)
    assert torch.allclose(features.mean(0), torch.zeros(12), atol=1e-3)
    assert torch.allclose(torch.cov(features.T), torch.eye(12), atol=0.05)
    assert torch.allclose(out[:, 12:], -out[:, :12], atol=1e-5)  # each direction also as its negative


def test_one_cycle_rises_then_falls_to_zero():
    assert one_cycle(0.0, 0.2) == pytest.approx(0.1)
    assert one_cycle(0.1, 0.2) == pytest.approx(0.55)
    assert one_cycle(0.2, 0.2) == pytest.approx(1.0)
    assert one_cycle(0.6, 0.2) == pytest.approx(0.5)
    assert one_cycle(1.0, 0.2) == 0.0


class _LearningRates(Callback):
    def on_train_begin(self, logs=None):
        self.seen = []

    def on_train_batch_begin(self, step, logs=None):
        self.seen.append(self.model.optimizer.param_groups[0]["lr"])


def test_schedule_drives_the_learning_rate_of_fit():
    model = build_recipe_model(Recipe(widths=(8, 8, 8), learning_rate=0.4), _images(40), device="cpu")
    lrs = _LearningRates()
    model.fit(_images(40), np.arange(40) % 10, batch_size=10, epochs=5, verbose=0, callbacks=[OneCycle(0.2), lrs])
    steps = np.array(lrs.seen)
    assert len(steps) == 20
    assert steps[0] == pytest.approx(0.04)  # warm-up starts at a tenth of the peak
    assert steps.max() == pytest.approx(0.4)
    assert steps.argmax() == 4  # the peak after 20% of the steps
    assert steps[-1] == pytest.approx(0.4 / 16) and np.all(np.diff(steps[4:]) < 0)


def test_weight_ema_averages_and_installs_the_average():
    network = nn.Linear(2, 1, bias=False)
    ema = WeightEMA(decay=0.9)
    ema.model = SimpleNamespace(network=network)
    ema.on_train_begin()
    with torch.no_grad():
        network.weight.fill_(1.0)
        ema.on_train_batch_end(0)  # the first update copies
        network.weight.fill_(3.0)
        ema.on_train_batch_end(1)  # warm-up decay after 2 updates: 3 / 12
        network.weight.fill_(5.0)
    ema.on_train_end()
    assert torch.allclose(network.weight, torch.full((1, 2), 0.25 * 1.0 + 0.75 * 3.0))


def test_weight_ema_decay_warms_up_to_the_given_value():
    ema = WeightEMA(decay=0.98)
    ema.model = SimpleNamespace(network=nn.Linear(2, 1))
    ema.on_train_begin()
    decays = []
    for step in range(1000):
        ema.on_train_batch_end(step)
        decays.append(ema.current_decay())
    assert decays[0] == pytest.approx(2 / 11) and decays[-1] == 0.98
    assert np.all(np.diff(decays) >= 0)


def test_weight_ema_every_few_steps_keeps_the_same_memory_in_steps():
    network = nn.Linear(1, 1, bias=False)
    ema = WeightEMA(decay=0.9, every=5)
    ema.model = SimpleNamespace(network=network)
    ema.on_train_begin()
    averages = []
    for step in range(400):
        with torch.no_grad():
            network.weight.fill_(float(step))
        ema.on_train_batch_end(step)
        averages.append(ema.average.module.weight.item())
    assert ema.updates == 80  # steps 0, 5, 10, ...
    assert averages[:5] == [0.0] * 5 and averages[5] > 0  # unchanged between updates
    assert ema.current_decay() == pytest.approx(0.9**5)
    # A steady ramp: an EMA lags by decay / (1 - decay) steps, here 9, whether it updates each step or each 5th.
    assert 395 - averages[395] == pytest.approx(0.9 / 0.1 * 1, abs=2.5)
    with pytest.raises(ConfigError, match="every"):
        WeightEMA(every=0)


def test_crop_flip_shifts_and_mirrors_each_image_on_its_own():
    images = torch.from_numpy(_images(64)).permute(0, 3, 1, 2)
    assert torch.equal(CropFlip(0, flip=False)(images), images)
    flipped = CropFlip(0, seed=1)(images)
    mirrored = [torch.equal(flipped[i], images[i].flip(2)) for i in range(64)]
    assert all(mirrored[i] or torch.equal(flipped[i], images[i]) for i in range(64))
    assert 10 < sum(mirrored) < 54
    shifted = CropFlip(2, flip=False, seed=0)(images)
    assert shifted.is_contiguous(memory_format=torch.channels_last)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2), mode="reflect")
    offsets = set()
    for i in range(64):
        matches = [(dy, dx) for dy in range(5) for dx in range(5)
                   if torch.equal(shifted[i], padded[i, :, dy : dy + 32, dx : dx + 32])]  # fmt: skip
        assert matches, f"image {i} is not a reflect-padded crop"
        offsets.add(matches[0])
    assert len(offsets) > 10
    assert torch.equal(CropFlip(2, seed=3)(images), CropFlip(2, seed=3)(images))


class _LeftMinusRight(nn.Module):
    """Logits that change sign when the image is mirrored: only flip averaging cancels them."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        half = x.shape[3] // 2
        score = self.scale * (x[..., :half].mean((1, 2, 3)) - x[..., half:].mean((1, 2, 3)))
        return torch.stack([score, -score], 1)


def test_tta_averages_logits_over_flips_and_shifts():
    model = Model(_LeftMinusRight(), (32, 32, 3), device="cpu", num_classes=2)
    x = _images(6)
    plain = tta_logits(model, x, level=0)
    assert plain.abs().max() > 0.01
    assert torch.allclose(tta_logits(model, x, level=1), torch.zeros(6, 2), atol=1e-6)
    views = tta_views(torch.from_numpy(x).permute(0, 3, 1, 2), level=2)
    assert len(views) == 6 and all(view.shape == (6, 3, 32, 32) for view in views)


def test_recipe_settings_are_checked():
    with pytest.raises(ConfigError, match="widths"):
        Recipe(widths=(8, 16))
    with pytest.raises(ConfigError, match="choose one of"):
        get_recipe("fastest")
    with pytest.raises(ConfigError, match="network"):
        Recipe(network="resnet")
    with pytest.raises(ConfigError, match="ema_every"):
        Recipe(ema_every=0)
    with pytest.raises(ConfigError, match="members"):
        Recipe(members=0)
    with pytest.raises(ConfigError, match="members"):
        replace(RECIPES["lab"], members=2)


def test_lab_model_keeps_its_architecture():
    model = build_lab_model("lab", device="cpu")
    lab = build_cnn(**RECIPE_LAB_MODEL.build_kwargs(), device="cpu")
    assert model.count_params() == lab.count_params()
    assert [type(m) for m in model.network.modules()] == [type(m) for m in lab.network.modules()]
    assert model.label_smoothing == RECIPES["lab"].label_smoothing
    assert model.optimizer_name == RECIPES["lab"].optimizer


def test_fit_recipe_and_reload(tmp_path):
    recipe = Recipe(widths=(8, 8, 16), batch_size=16, epochs=2, ema_decay=0.9)
    data = _data()
    model = build_recipe_model(recipe, data.x_train, device="cpu")
    history = fit_recipe(model, data, recipe, verbose=0, run_dir=tmp_path / "run")
    assert len(history.history["loss"]) == 2
    loaded = load_model(tmp_path / "run", device="cpu")
    assert loaded.config == model.config and type(loaded.network) is RecipeNet
    assert torch.equal(tta_logits(loaded, data.x_test), tta_logits(model, data.x_test))


def test_recipe_takes_uint8_images_as_the_scaled_floats():
    """Whitening, training and TTA on uint8 images give the numbers of the same images scaled first."""
    from cnnlab.data.arrays import scale_images

    recipe = Recipe(widths=(8, 8, 16), batch_size=16, epochs=1, ema_decay=0.9)
    raw = np.random.default_rng(3).integers(0, 256, size=(48, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(48) % 10
    results = []
    for images in (raw, scale_images(raw)):
        data = SimpleNamespace(x_train=images, y_train=labels)
        model = build_recipe_model(recipe, images, device="cpu")
        history = fit_recipe(model, data, recipe, verbose=0)
        results.append((history.history, tta_logits(model, images)))
    assert results[0][0] == results[1][0]
    assert torch.equal(results[0][1], results[1][1])


def test_cli_refuses_lab_flags_with_a_recipe(tmp_path, capsys):
    assert main(["train", "--recipe", "fast", "--n-conv-layers", "3", "--out", str(tmp_path)]) == 2
    assert "--n-conv-layers" in capsys.readouterr().err
    assert main(["train", "--recipe", "fastest", "--out", str(tmp_path)]) == 2
    assert "choose one of" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_recipe_fast_learns_in_one_epoch_on_real_images(cifar10_archive, session_cache, tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--recipe", "fast", "--epochs", "1", "--batch-size", "16", "--n-train-val", "800",
            "--n-test", "300", "--data", str(cifar10_archive), "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["recipe"] == "fast" and metrics["epochs_run"] == 1
    assert metrics["test_accuracy"] > 0.16, f"chance is 10%, got {metrics['test_accuracy']:.3f}"
    assert (out / "results.png").exists()


@pytest.mark.slow
def test_lab_part_in_tiny_mode(cifar10_archive, session_cache, tmp_path):
    from cnnlab.lab.context import LabContext
    from cnnlab.lab.p9_best import run

    ctx = LabContext(out=tmp_path, tiny=True, data_source=cifar10_archive, device="cpu", carbon=False)
    section = run(ctx)
    members = RECIPES["fast5"].members  # part 9's from-scratch recipe
    # the comparison with ResNet50, model B's results, the recipe's ingredients; question 35 answered last
    assert section.key == "best" and len(section.tables) == 3 and len(section.answers) == 4 + (members > 1)
    assert section.answers[-1][0].startswith("35. ")
    assert all((tmp_path / path).exists() for path, _ in section.figures)
    assert len(section.facts["recipe_member_accuracies"]) == members
    assert 0 <= section.facts["scratch"]["val"] <= 1
    again = run(ctx)  # finished runs are loaded, not trained again
    assert again.facts["recipe_test_accuracy_tta"] == section.facts["recipe_test_accuracy_tta"]
