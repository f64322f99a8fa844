"""ONNX export: the file takes raw uint8 pixels, matches PyTorch, has a dynamic batch axis and says what it is."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime  # the `onnx` extra, part of `dev`: CI must run the parity check, so no skip
import pytest

from cnnlab.data.cifar import CLASS_NAMES
from cnnlab.evaluate.export import INPUT_NAME, PARITY_TOLERANCE, check_images, export_onnx, read_metadata
from cnnlab.experiments.recipes import build_recipe_model
from cnnlab.models.cnn import build_cnn


def _trained_ish(model):
    """Perturb BatchNorm statistics so the network is not at its near-uniform initial output."""
    generator = np.random.default_rng(1)
    for name, buffer in model.network.named_buffers():
        if name.endswith("running_mean"):
            buffer.copy_(buffer.new_tensor(generator.normal(0, 0.5, buffer.shape)))
        elif name.endswith("running_var"):
            buffer.copy_(buffer.new_tensor(generator.uniform(0.2, 2.0, buffer.shape)))
    return model


MODELS = {
    "lab CNN, flatten head": lambda: build_cnn(
        n_conv_layers=4, n_dense_layers=1, use_dropout=True, class_names=CLASS_NAMES, device="cpu"
    ),
    "lab CNN, gap head": lambda: build_cnn(n_conv_layers=3, head="gap", class_names=CLASS_NAMES, device="cpu"),
    "recipe network": lambda: build_recipe_model(
        "fast",
        np.random.default_rng(0).uniform(-1, 1, (256, 32, 32, 3)).astype(np.float32),
        class_names=CLASS_NAMES,
        device="cpu",
    ),
}


@pytest.fixture(scope="module", params=list(MODELS))
def exported(request, tmp_path_factory):
    import torch

    with torch.no_grad():
        model = _trained_ish(MODELS[request.param]())
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    return model, export_onnx(model, path)


def test_parity_with_pytorch(exported):
    model, result = exported
    assert result.images == 64 and result.passed
    assert result.max_abs_difference < PARITY_TOLERANCE and result.same_top_class == 64
    assert result.path.exists() and not list(result.path.parent.glob(".model.onnx.*"))  # no temp file left


@pytest.mark.parametrize("batch", [1, 7])
def test_dynamic_batch_on_raw_pixels(exported, batch):
    model, result = exported
    images = check_images(model, batch, seed=batch)
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    probabilities = session.run(None, {INPUT_NAME: images})[0]
    with model.in_float32():  # the recipe computes in bfloat16 on CPUs with bf16 units; ONNX in float32
        expected = model.predict(images)
    assert probabilities.shape == (batch, 10)
    np.testing.assert_allclose(probabilities.sum(1), 1, atol=1e-5)
    assert np.abs(probabilities - expected).max() < PARITY_TOLERANCE
    assert (probabilities.argmax(1) == expected.argmax(1)).all()
    assert probabilities.std() > 1e-3  # a real signal, not a flat output that would match anything


def test_metadata_states_layout_scaling_and_classes(exported):
    _, result = exported
    meta = read_metadata(result.path)
    assert json.loads(meta["cnnlab.class_names"]) == list(CLASS_NAMES)
    assert json.loads(meta["cnnlab.input_size"]) == [32, 32, 3]
    assert meta["cnnlab.input_layout"].startswith("NHWC uint8")
    assert "127.5" in meta["cnnlab.input_scaling"]
    assert meta["cnnlab.version"]


def test_cli_export_prints_both_figures(tmp_path, capsys):
    from cnnlab.cli import main

    model = build_cnn(n_filters=4, device="cpu")
    model.save(tmp_path / "weights.safetensors")
    assert main(["export", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert f"Wrote {tmp_path / 'model.onnx'}" in printed
    assert "max |probability difference| = " in printed and "same top class for 64/64" in printed
