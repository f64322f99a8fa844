"""The lab's CNN: Keras-identical parameter counts, summary, refusals, and every head."""

from __future__ import annotations

import numpy as np
import pytest

from cnnlab.errors import ConfigError, DataError
from cnnlab.models import build_cnn


@pytest.mark.parametrize(
    ("config", "total", "trainable", "non_trainable"),
    [
        (dict(n_conv_layers=2, n_filters=16, n_dense_layers=0), 25_770, 25_674, 96),
        (dict(n_conv_layers=4, n_filters=16, n_dense_layers=1, n_nodes=50), 124_760, 124_180, 580),
        (dict(n_conv_layers=4, n_filters=16, n_dense_layers=1, n_nodes=50, use_dropout=True), 124_760, 124_180, 580),
        (dict(n_conv_layers=2, n_filters=16, n_dense_layers=1, n_nodes=50), 108_440, 108_244, 196),
    ],
)
def test_parameter_counts_match_keras(config, total, trainable, non_trainable):
    counts = build_cnn(device="cpu", **config).count_params()
    assert (counts.total, counts.trainable, counts.non_trainable) == (total, trainable, non_trainable)


def test_summary_is_a_keras_table():
    model = build_cnn(n_conv_layers=4, n_filters=16, n_dense_layers=1, n_nodes=50, device="cpu")
    text = model.summary(print_fn=None)
    assert "(None, 2, 2, 128)" in text and "73,856" in text
    assert "Total params: 124,760" in text
    assert "Trainable params: 124,180" in text and "Non-trainable params: 580" in text


def test_too_deep_for_the_image_is_refused_with_reason():
    with pytest.raises(ConfigError, match=r"6 conv layers halve a 32x32 image.*at most 5"):
        build_cnn(n_conv_layers=6)
    build_cnn(n_conv_layers=5, device="cpu")  # 32 -> 1x1 still works


@pytest.mark.parametrize(
    "bad",
    [
        dict(optimizer="adagrad"),
        dict(loss="mse"),
        dict(head="spp"),
        dict(learning_rate=0),
        dict(dropout_rate=1.0),
        dict(n_filters=0),
        dict(input_shape=(32, 32)),
    ],
)
def test_bad_configs(bad):
    with pytest.raises(ConfigError):
        build_cnn(device="cpu", **bad)


@pytest.mark.parametrize("head", ["gap", "fcn"])
@pytest.mark.parametrize("size", [24, 48, 64])
def test_gap_and_fcn_heads_accept_other_sizes(head, size):
    model = build_cnn(head=head, n_dense_layers=1, device="cpu")
    probs = model.predict(np.zeros((2, size, size, 3), np.float32))
    assert probs.shape == (2, 10)
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)


def test_flatten_model_explains_other_sizes():
    model = build_cnn(device="cpu")
    with pytest.raises(DataError, match="head='gap'"):
        model.predict(np.zeros((1, 48, 48, 3), np.float32))


def test_save_and_load_model_roundtrip(tmp_path):
    from cnnlab.models import load_model

    model = build_cnn(n_dense_layers=1, n_nodes=20, device="cpu", seed=4)
    x = np.random.default_rng(0).uniform(-1, 1, (3, 32, 32, 3)).astype(np.float32)
    model.save(tmp_path / "m.safetensors")
    again = load_model(tmp_path / "m.safetensors", device="cpu")
    np.testing.assert_allclose(again.predict(x), model.predict(x), rtol=1e-6)
    assert again.config.n_nodes == 20 and again.config == model.config
