"""Seeing inside the network: Grad-CAM checked by hand, filter matching, feature maps, top losses, the CLI.

Unit tests use tiny synthetic networks; the CLI test trains a small lab CNN on a few hundred CIFAR-10
images. ResNet50 tests need $CNNLAB_RESNET50_WEIGHTS (fail in CI, skip elsewhere without it).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from cnnlab.cli import main
from cnnlab.convolution import SOBEL_X, SOBEL_Y, gaussian_kernel
from cnnlab.core.errors import ConfigError, DataError
from cnnlab.data.cifar import CLASS_NAMES
from cnnlab.evaluate import explain, filters
from cnnlab.models.cnn import build_cnn


def tiny_network() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 4, 3, padding=1),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(4, 6, 3, padding=1),
            relu2=nn.ReLU(),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            logits=nn.Linear(6, 5),
        )
    )


def random_images(count: int = 3, size: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (count, size, size, 3)).astype(np.float32)


def test_captum_grad_cam_matches_a_hand_computation():
    network, images, targets = tiny_network(), random_images(), np.array([1, 4, 0])
    result = explain.grad_cam(network, images, target=targets, layer="conv2")

    activations = {}
    network.conv2.register_forward_hook(lambda _m, _i, out: activations.__setitem__("conv2", out))
    logits = network(torch.tensor(images).permute(0, 3, 1, 2))
    score = logits[torch.arange(3), torch.tensor(targets)].sum()
    (gradients,) = torch.autograd.grad(score, activations["conv2"])
    weights = gradients.mean((2, 3), keepdim=True)  # one weight per channel: the spatial mean gradient
    by_hand = torch.relu((weights * activations["conv2"]).sum(1)).detach().numpy()

    assert result.raw.shape == (3, 8, 8)
    assert by_hand.max() > 0  # the check would be empty if every map were clipped to zero
    np.testing.assert_allclose(result.raw, by_hand, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(result.target, targets)
    assert result.maps.max() == pytest.approx(1.0) and result.maps.min() >= 0


def test_saliency_is_the_largest_input_gradient_over_channels():
    network, images = tiny_network(), random_images(1)
    result = explain.saliency(network, images, target=2)
    inputs = torch.tensor(images).permute(0, 3, 1, 2).requires_grad_(True)
    network(inputs)[0, 2].backward()
    np.testing.assert_allclose(result.raw[0], inputs.grad[0].abs().amax(0).numpy(), rtol=1e-5)


def planted_conv() -> nn.Conv2d:
    """Filters a trained network could hold: Sobel X and -Sobel Y on all channels, a Gaussian, a
    red-minus-green edge and a flat kernel on the blue channel only."""
    conv = nn.Conv2d(3, 5, 3)
    kernels = [
        np.stack([SOBEL_X] * 3),
        np.stack([-SOBEL_Y] * 3),
        np.stack([gaussian_kernel(3, 1.0)] * 3),
        np.stack([SOBEL_X, -SOBEL_X, np.zeros((3, 3))]),
        np.stack([np.zeros((3, 3)), np.zeros((3, 3)), np.ones((3, 3))]),
    ]
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(np.stack(kernels)))
    return conv


def test_planted_sobel_and_gaussian_are_matched():
    rows = filters.match_filters(planted_conv())
    assert [(r.best, r.category) for r in rows[:3]] == [
        ("sobel 0°", "edge"),
        ("sobel 270°", "edge"),
        ("gaussian", "blur"),
    ]
    assert rows[0].similarity == pytest.approx(1.0) and rows[0].colour_share == pytest.approx(0.0)
    assert rows[3].category == "colour" and rows[3].colour_share == pytest.approx(1.0)
    assert rows[4].category == "colour" and rows[4].colour_share == pytest.approx(2 / 3)
    assert filters.summarize_filters(rows) == {"edge": 2, "blur": 1, "colour": 2, "other": 0}
    assert "| 0 | sobel 0° | 1.00 | 0.00 | edge |" in filters.filter_table(rows)


def test_first_conv_is_found_in_a_lab_cnn_and_filter_grid_is_drawn(tmp_path):
    model = build_cnn(n_conv_layers=2, n_filters=4, device="cpu")
    name, conv = filters.first_conv(model)
    assert name == "conv2d_1" and conv.weight.shape == (4, 3, 3, 3)
    with torch.no_grad():
        conv.weight[0] = torch.tensor(np.stack([SOBEL_Y] * 3))
    assert filters.match_filters(model)[0].best == "sobel 90°"
    filters.filter_grid(model, tmp_path / "filters.png")
    assert (tmp_path / "filters.png").stat().st_size > 5_000


def test_recipe_whitening_filters_are_matched_at_their_2x2_size():
    from cnnlab.models.recipe_net import RecipeNet

    network = RecipeNet((32, 128, 256))
    network.init_whitening(torch.tensor(random_images(64, 16)).permute(0, 3, 1, 2))
    name, conv = filters.first_conv(network)
    rows = filters.match_filters(network)
    assert name == "whiten" and len(rows) == conv.out_channels == 24
    assert {r.best for r in rows} <= set(filters.classical_filters((2, 2)))
    assert "laplacian" not in filters.classical_filters((2, 2))  # no centre pixel at an even size
    assert sum(filters.summarize_filters(rows).values()) == 24


def test_feature_maps_have_the_block_shapes_after_pooling(tmp_path):
    model = build_cnn(n_conv_layers=3, n_filters=4, device="cpu")
    blocks = filters.feature_maps(model, random_images(1, 32)[0], channels=6)
    assert [b.name for b in blocks] == ["max_pooling2d_1", "max_pooling2d_2", "max_pooling2d_3"]
    assert [b.shape for b in blocks] == [(16, 16, 4), (8, 8, 8), (4, 4, 16)]
    assert [b.maps.shape for b in blocks] == [(4, 16, 16), (6, 8, 8), (6, 4, 4)]
    assert all(list(b.mean_activation) == sorted(b.mean_activation, reverse=True) for b in blocks)
    filters.feature_map_figure(random_images(1, 32)[0], blocks, tmp_path / "maps.png")
    assert (tmp_path / "maps.png").exists()


def test_grad_cam_defaults_to_the_last_conv_layer_of_the_lab_cnn():
    model = build_cnn(n_conv_layers=2, n_filters=4, class_names=CLASS_NAMES, device="cpu")
    result = explain.grad_cam(model, random_images(2, 32))
    assert result.layer == "conv2d_2" and result.raw.shape == (2, 16, 16) and result.maps.shape == (2, 32, 32)
    assert result.class_names[3] == "cat"  # the model's own names
    unnamed = explain.grad_cam(build_cnn(n_conv_layers=2, n_filters=4, device="cpu"), random_images(1, 32))
    assert unnamed.class_names[3] == "3"  # a model built without names shows class numbers


class Logits(nn.Module):
    """Returns its input's channel means as logits, so each image's probabilities are set by hand."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1, bias=False)
        nn.init.dirac_(self.conv.weight)

    def forward(self, x):
        return self.conv(x).mean((2, 3))


def test_top_losses_come_highest_first_with_their_classes(tmp_path):
    means = np.array([[2, 0, 0], [0, 0, 3], [1, 1, 0], [0, 4, 0]], dtype=np.float32)
    images = np.broadcast_to(means[:, None, None, :], (4, 2, 2, 3)).copy()
    labels = np.array([0, 0, 1, 1])
    rows = explain.top_losses(Logits(), images, labels, k=3)
    probabilities = torch.softmax(torch.tensor(means), 1).numpy()
    expected = -np.log(probabilities[np.arange(4), labels])
    assert [r.index for r in rows] == list(np.argsort(-expected)[:3]) == [1, 2, 0]
    assert rows[0].loss == pytest.approx(expected[1], rel=1e-5)
    assert (rows[0].true, rows[0].predicted) == (0, 2)
    assert rows[0].probability == pytest.approx(probabilities[1, 2], rel=1e-5)
    explain.top_losses_figure(images, rows, ["a", "b", "c"], tmp_path / "losses.png")
    assert (tmp_path / "losses.png").exists()


def test_most_confused_counts_class_pairs():
    y_true = [0, 0, 0, 1, 1, 2, 2, 2]
    y_pred = [1, 1, 0, 0, 1, 1, 0, 2]
    assert explain.most_confused(y_true, y_pred, ["a", "b", "c"], k=2) == [("a", "b", 2), ("b", "a", 1)]


def test_unknown_layer_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown layer 'conv9'; .*conv1, conv2$"):
        explain.grad_cam(tiny_network(), random_images(1), layer="conv9")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: explain.explain(tiny_network(), random_images(1), "lime"), "unknown method 'lime'"),
        (lambda: explain.explain(tiny_network(), random_images(1), "saliency", layer="conv1"), "Grad-CAM only"),
        (lambda: explain.grad_cam(tiny_network(), random_images(1), target=7), r"target classes must be 0\.\.4"),
    ],
)
def test_bad_arguments_are_one_line_config_errors(call, message):
    with pytest.raises(ConfigError, match=message) as error:
        call()
    assert "\n" not in str(error.value)


def test_images_of_the_wrong_size_for_a_flatten_model_are_refused():
    model = build_cnn(n_conv_layers=2, n_filters=4, device="cpu")
    with pytest.raises(DataError, match="Flatten layer needs 32x32"):
        explain.grad_cam(model, random_images(1, 40))


# ---------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def run_folder(cifar10_archive, session_cache, tmp_path_factory) -> Path:
    """A lab CNN trained for one epoch on 300 CIFAR-10 images, saved as a run folder."""
    from cnnlab.data.split import load_lab_data

    data = load_lab_data(cifar10_archive, n_train_val=400, n_test=100)
    model = build_cnn(n_conv_layers=2, n_filters=8, device="cpu")
    run = tmp_path_factory.mktemp("run")
    model.fit(data.x_train[:300], data.y_train[:300], batch_size=32, epochs=1, verbose=0, run_dir=run)
    return run


def test_explain_cli_on_a_run_folder_resizes_photos_and_draws_the_figure(run_folder, photos_dir, tmp_path, capsys):
    photos = [photos_dir / "chelsea.png", photos_dir / "dog.jpg"]
    assert main(["explain", str(run_folder), *map(str, photos), "--top", "2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "chelsea.png: " in out and "dog.jpg: " in out
    assert "resized from" in out and "to 32x32 (its Flatten layer needs it)" in out
    assert "Grad-CAM" not in out and "at layer conv2d_2" in out
    assert (tmp_path / "gradcam.png").stat().st_size > 5_000

    assert (
        main(
            [
                "explain",
                str(run_folder / "weights.safetensors"),
                str(photos[0]),
                "--method",
                "saliency",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert (tmp_path / "saliency.png").exists()


def test_explain_cli_bad_inputs_are_one_line_errors(run_folder, photos_dir, tmp_path, capsys):
    photo = str(photos_dir / "chelsea.png")
    not_safetensors = tmp_path / "photo.safetensors"
    not_safetensors.write_bytes((photos_dir / "chelsea.png").read_bytes()[:200])
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(2)}, foreign)
    cases = {
        ("--layer", "dense_9"): "unknown layer 'dense_9'; this network's layers are: conv2d_1, ",
        ("--method", "lime"): "unknown method 'lime'; choose one of gradcam, saliency",
    }
    for options, message in cases.items():
        assert main(["explain", str(run_folder), photo, *options, "--out", str(tmp_path)]) == 2
        assert message in capsys.readouterr().err
    for model, message in [
        (not_safetensors, "is not a readable safetensors file"),
        (foreign, "is not a cnnlab model"),
        (tmp_path, "does not exist; give a model file"),
    ]:
        assert main(["explain", str(model), photo, "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


# ---------------------------------------------------------------------------------------------- ResNet50
def test_explain_cli_on_resnet50_maps_the_cat(weights_path, session_cache, photos_dir, tmp_path, capsys):
    code = main(
        [
            "explain",
            "resnet50",
            str(photos_dir / "chelsea.png"),
            "--weights",
            str(weights_path),
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "cat" in out.splitlines()[0] and "at layer blocks.conv5_block3" in out
    assert (tmp_path / "gradcam.png").stat().st_size > 20_000


def test_classify_explain_writes_a_grad_cam_per_photo(weights_path, session_cache, photos_dir, tmp_path, capsys):
    photos = [photos_dir / "chelsea.png", photos_dir / "coffee.png"]
    arguments = ["classify", *map(str, photos), "--weights", str(weights_path), "--out", str(tmp_path), "--explain"]
    assert main(arguments) == 0
    out = capsys.readouterr().out
    for name in ("chelsea_png", "coffee_png"):
        figure = tmp_path / f"gradcam_{name}.png"
        assert f"Grad-CAM: {figure}" in out
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 20_000
