"""MuonSGD: orthogonalised steps for conv filters, SGD for the rest; cutout; the schedule per group."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from cnnlab.core.errors import ConfigError
from cnnlab.data.crop_flip import CropFlip
from cnnlab.evaluate.tta import member_accuracies
from cnnlab.experiments.recipes import Recipe, build_recipe_model, fit_recipe
from cnnlab.models.registry import load_model
from cnnlab.train.optim import MuonSGD, orthogonalize
from cnnlab.train.schedules import OneCycle


@pytest.mark.parametrize("shape", [(16, 144), (144, 16)])
def test_orthogonalize_brings_singular_values_near_one(shape):
    generator = torch.Generator().manual_seed(0)
    u, _, v = torch.linalg.svd(torch.randn(*shape, generator=generator), full_matrices=False)
    matrix = u @ torch.diag(torch.logspace(-1.5, 0.5, min(shape))) @ v  # condition number 100
    after = torch.linalg.svdvals(orthogonalize(matrix, steps=5))
    assert after.min() > 0.5 and after.max() < 1.5
    assert orthogonalize(matrix).shape == matrix.shape


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 36, 2))


def test_muon_sgd_splits_filters_from_the_rest_and_steps_each_its_way():
    network = _net()
    optimizer = MuonSGD(network, lr=0.1, filter_lr=0.2, weight_decay=1e-3)
    filters, others = optimizer.param_groups
    assert filters["muon"] and filters["params"] == [network[0].weight] and filters["lr"] == 0.2
    assert not others["muon"] and len(others["params"]) == 4  # BN weight and bias, linear weight and bias
    head_before = network[3].weight.detach().clone()
    network(torch.randn(4, 3, 8, 8)).sum().backward()
    optimizer.step()
    # Filters: renormalised to sqrt(out channels), then one orthogonalised step of size lr.
    weight = network[0].weight.detach()
    assert weight.norm() == pytest.approx(8**0.5, rel=0.35)
    # Head: plain Nesterov SGD with weight decay (first step: lr * (1 + momentum) * grad).
    grad = network[3].weight.grad + 1e-3 * head_before
    assert torch.allclose(network[3].weight.detach(), head_before - 0.1 * 1.9 * grad, atol=1e-6)


def test_one_cycle_scales_every_group_from_its_own_peak():
    model = build_recipe_model(Recipe(widths=(8, 8, 8), optimizer="muon", filter_lr=0.3), _images(40), device="cpu")
    seen = []

    class Record(OneCycle.__mro__[1]):  # a plain Callback
        def on_train_batch_begin(self, step, logs=None):
            seen.append([group["lr"] for group in self.model.optimizer.param_groups])

    model.fit(_images(40), np.arange(40) % 10, batch_size=10, epochs=5, verbose=0, callbacks=[OneCycle(0.2), Record()])
    rates = np.array(seen)
    assert rates[0] == pytest.approx([0.03, 0.02])  # a tenth of each group's peak
    assert rates.max(0) == pytest.approx([0.3, 0.2])
    assert rates[:, 0] / rates[:, 1] == pytest.approx(np.full(len(rates), 1.5))


def _images(n, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, size=(n, 32, 32, 3)).astype(np.float32)


def test_recipe_with_muon_trains_checkpoints_and_reloads(tmp_path):
    recipe = Recipe(widths=(8, 8, 16), batch_size=16, epochs=2, optimizer="muon", cutout=8)
    x, y = _images(64), np.arange(64) % 10
    model = build_recipe_model(recipe, x, device="cpu")
    assert isinstance(model.optimizer, MuonSGD)
    history = fit_recipe(model, SimpleNamespace(x_train=x, y_train=y), recipe, verbose=0, run_dir=tmp_path / "run")
    assert np.isfinite(history.history["loss"]).all()
    loaded = load_model(tmp_path / "run", device="cpu")
    assert loaded.config.filter_lr == recipe.filter_lr and loaded.optimizer_name == "muon"


def test_cutout_zeroes_one_square_per_image():
    images = torch.ones(32, 3, 16, 16)
    cut = CropFlip(0, flip=False, seed=0, cutout=5)(images)
    zeros = (cut == 0).all(1)  # (N, H, W): all channels zeroed together
    assert (zeros.sum((1, 2)) == 25).all()
    rows, cols = zeros.any(2), zeros.any(1)
    assert (rows.sum(1) == 5).all() and (cols.sum(1) == 5).all()
    assert len({tuple(r.nonzero()[0].tolist()) for r in rows}) > 3  # squares in different places
    assert torch.equal(CropFlip(0, flip=False, seed=0)(images), images)
    with pytest.raises(ConfigError, match="cutout"):
        CropFlip(2, cutout=-1)


def test_ensemble_members_learn_as_if_alone_and_vote_by_mean_logits(tmp_path):
    from cnnlab.models.recipe_net import RecipeEnsemble, RecipeNet

    x, y = _images(32), np.arange(32) % 10
    recipe = Recipe(widths=(8, 8, 16), batch_size=16, epochs=1, members=2, ema_decay=0)
    model = build_recipe_model(recipe, x, device="cpu")
    assert isinstance(model.network, RecipeEnsemble) and len(model.network.members) == 2
    one, two = model.network.members
    assert not torch.equal(one.head.weight, two.head.weight)  # different initial weights
    assert torch.equal(one.whiten.weight, two.whiten.weight) and torch.equal(one.whiten.bias, two.whiten.bias)
    images = torch.from_numpy(x[:16]).permute(0, 3, 1, 2)
    alone = RecipeNet((8, 8, 16))
    alone.load_state_dict(one.state_dict())
    alone.train(), model.network.train()
    smoothing = model.label_smoothing
    torch.nn.functional.cross_entropy(alone(images), torch.from_numpy(y[:16]), label_smoothing=smoothing).backward()
    model._loss(model.network(images), torch.from_numpy(y[:16])).backward()
    assert torch.allclose(one.head.weight.grad, alone.head.weight.grad, atol=1e-6)
    model.network.eval()
    with torch.no_grad():
        assert torch.allclose(model.network(images), (one(images) + two(images)) / 2, atol=1e-6)
    fit_recipe(model, SimpleNamespace(x_train=x, y_train=y), recipe, verbose=0, run_dir=tmp_path / "run")
    loaded = load_model(tmp_path / "run", device="cpu")
    assert loaded.config.members == 2 and isinstance(loaded.network, RecipeEnsemble)
    alone = member_accuracies(loaded, x, y)
    assert len(alone) == 2 and all(0 <= a <= 1 for a in alone)
    assert len(member_accuracies(build_recipe_model(Recipe(widths=(8, 8, 16)), x, device="cpu"), x, y)) == 1
