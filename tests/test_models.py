"""Model configs and the registry: the lab's CNN (Keras-identical counts, every head), every registered
kind trained, saved and loaded, and one-line errors for files that are not cnnlab models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cnnlab.core.errors import ConfigError, DataError
from cnnlab.models.cnn import LAB_MODELS, MEMORY_MODEL, SWEEP_MODEL, CNNConfig, build_cnn
from cnnlab.models.registry import create_model, list_models, load_model


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


def test_flatten_head_pools_large_maps_to_a_cifar_sized_grid():
    """CIFAR's 32 px keeps the lab's network (and its parameter counts); a 170x256 photo's 42x64 map is
    pooled 5x5 to 8x12, so the dense layer takes 3,072 inputs instead of 86,016."""
    cifar = build_cnn(device="cpu")
    assert "average_pooling2d" not in dict(cifar.network.named_children())
    photo = build_cnn(input_shape=(170, 256, 3), num_classes=2, device="cpu")
    assert photo.network.average_pooling2d.kernel_size == 5
    assert photo.network.dense_logits.in_features == 32 * 8 * 12
    plain = build_cnn(input_shape=(170, 256, 3), num_classes=2, flatten_side=None, device="cpu")
    assert plain.network.dense_logits.in_features == 32 * 42 * 64
    assert CNNConfig.from_dict({"input_shape": [170, 256, 3]}).flatten_side is None  # files written before it


def test_save_and_load_model_roundtrip(tmp_path):
    model = build_cnn(n_dense_layers=1, n_nodes=20, device="cpu", seed=4)
    x = np.random.default_rng(0).uniform(-1, 1, (3, 32, 32, 3)).astype(np.float32)
    model.save(tmp_path / "m.safetensors")
    again = load_model(tmp_path / "m.safetensors", device="cpu")
    np.testing.assert_allclose(again.predict(x), model.predict(x), rtol=1e-6)
    assert again.config.n_nodes == 20 and again.config == model.config


# ---------------------------------------------------------------------------------------------- configs
def test_config_takes_classes_from_class_names_and_round_trips():
    config = CNNConfig(class_names=["cat", "dog", "ünïcode bird"], n_filters=4)
    assert config.num_classes == 3 and config.class_names == ("cat", "dog", "ünïcode bird")
    assert CNNConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.changes() == {"num_classes": 3, "class_names": config.class_names, "n_filters": 4}
    with pytest.raises(ConfigError, match="num_classes=4 but 3 class_names"):
        CNNConfig(num_classes=4, class_names=("a", "b", "c"))
    with pytest.raises(ConfigError, match="unknown cnn settings"):
        CNNConfig.from_dict({"n_filter": 3})
    model = build_cnn(class_names=("a", "b"), device="cpu")
    assert (
        model.num_classes == 2
        and model.class_names == ("a", "b")
        and model.predict(np.zeros((1, 32, 32, 3))).shape == (1, 2)
    )


def test_presets_are_the_lab_models():
    assert set(LAB_MODELS) == set("ABCDE")
    assert create_model(LAB_MODELS["C"], "cpu").count_params().total == 124_760
    assert LAB_MODELS["C"] == MEMORY_MODEL and SWEEP_MODEL.n_nodes == 32 and SWEEP_MODEL.use_dropout


# ---------------------------------------------------------------------------------------------- every registered model
def _config(kind, input_shape, num_classes):
    """A small config of each registered kind; the transfer head's input is a feature vector (1x1xF)."""
    from cnnlab.models.recipe_net import RecipeNetConfig
    from cnnlab.models.transfer_head import TransferHeadConfig

    names = tuple(f"class {i}" for i in range(num_classes))
    kind, _, head = kind.partition(":")
    if kind == "cnn":
        return CNNConfig(
            input_shape=input_shape,
            class_names=names,
            n_conv_layers=2,
            n_filters=4,
            n_dense_layers=1,
            n_nodes=8,
            head=head,
        )
    if kind == "recipe":
        members = int(head or 1)  # "recipe:2" is a RecipeEnsemble of two networks
        return RecipeNetConfig(input_shape=input_shape, class_names=names, widths=(4, 8, 8), members=members)
    if kind == "resnet50":  # random weights: the ImageNet ones change nothing in this plumbing
        from cnnlab.models.resnet50_classifier import ResNet50Config

        return ResNet50Config(input_shape=input_shape, class_names=names, pretrained=False, image_size=32)
    return TransferHeadConfig(input_shape=(1, 1, input_shape[0] * input_shape[2]), class_names=names)


MODEL_KINDS = ["cnn:flatten", "cnn:gap", "cnn:fcn", "recipe", "recipe:2", "resnet50", "transfer_head"]


def test_every_registered_kind_is_tested():
    assert {kind.partition(":")[0] for kind in MODEL_KINDS} == set(list_models())


@pytest.mark.parametrize("kind", MODEL_KINDS)
@pytest.mark.parametrize("num_classes", [3, 42])
@pytest.mark.parametrize("input_shape", [(28, 28, 1), (64, 64, 3)])
def test_every_model_trains_saves_and_loads(tmp_path, kind, num_classes, input_shape):
    model = create_model(_config(kind, input_shape, num_classes), device="cpu")
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (8, *model.input_shape)).astype(np.float32)
    y = np.arange(8) % num_classes
    probs = model.predict(x)
    assert probs.shape == (8, num_classes)
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
    before = [p.detach().clone() for p in model.network.parameters() if p.requires_grad]
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    after = [p for p in model.network.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True)), "one step changes the weights"
    model.save(tmp_path / "model.safetensors")
    loaded = load_model(tmp_path / "model.safetensors", device="cpu")
    assert type(loaded.network) is type(model.network) and loaded.config == model.config
    assert loaded.class_names == model.class_names and loaded.input_shape == model.input_shape
    assert loaded.preprocessing == model.preprocessing
    assert np.array_equal(loaded.predict(x), model.predict(x))


# ---------------------------------------------------------------------------------------------- bad model files
def _saved(tmp_path):
    model = build_cnn(n_filters=4, device="cpu")
    model.save(tmp_path / "m.safetensors")
    return tmp_path / "m.safetensors"


def test_load_model_from_a_run_folder(tmp_path):
    model = build_cnn(n_filters=4, device="cpu")
    x, y = np.zeros((4, 32, 32, 3), np.uint8), np.arange(4)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, run_dir=tmp_path)
    assert np.array_equal(load_model(tmp_path, device="cpu").predict(x), model.predict(x))


def test_truncated_model_file_is_one_line_data_error(tmp_path):
    path = _saved(tmp_path)
    path.write_bytes(path.read_bytes()[:-500])
    with pytest.raises(DataError, match="truncated, corrupt") as error:
        load_model(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_other_files_are_not_cnnlab_models(tmp_path):
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(DataError, match="plain.safetensors is not a cnnlab model"):
        load_model(plain)
    text = tmp_path / "notes.safetensors"
    text.write_text("hello, not a model")
    with pytest.raises(DataError, match="notes.safetensors is not a readable safetensors file"):
        load_model(text)
    with pytest.raises(DataError, match="does not exist"):
        load_model(tmp_path / "missing.safetensors")


def test_file_from_an_older_cnnlab_names_the_missing_keys(tmp_path):
    from safetensors.torch import save_file

    model = build_cnn(n_filters=4, device="cpu")
    old = tmp_path / "old.safetensors"
    state = {k: v.contiguous() for k, v in model.network.state_dict().items()}
    save_file(state, str(old), metadata={"config": json.dumps(model.config.to_dict())})
    with pytest.raises(ConfigError, match=r"older cnnlab: its metadata lacks format_version, kind, .*retrain"):
        load_model(old)
