"""Use a trained model end to end: train a tiny CNN on real CIFAR-10 images, then `cnnlab predict` real
photos and PNGs written from CIFAR-10, `cnnlab evaluate` the test split, and every bad input on the way."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file

from cnnlab.cli import main
from cnnlab.data.arrays import scale_images
from cnnlab.data.cifar import CLASS_NAMES, load_cifar10
from cnnlab.evaluate.predict import check_class_names, predict_images
from cnnlab.models.cnn import build_cnn

TRAIN_IMAGES = 300


@pytest.fixture(scope="module")
def cifar10(cifar10_archive, session_cache):
    return load_cifar10(cifar10_archive)


@pytest.fixture(scope="module")
def run_folder(cifar10, tmp_path_factory):
    """A run folder of a small CNN trained for one epoch on a few hundred real images."""
    (x_train, y_train), _ = cifar10
    model = build_cnn(n_conv_layers=2, n_filters=8, class_names=CLASS_NAMES, device="cpu")
    run = tmp_path_factory.mktemp("run")
    model.fit(scale_images(x_train[:TRAIN_IMAGES]), y_train[:TRAIN_IMAGES], epochs=1, verbose=0, run_dir=run)
    return run


@pytest.fixture(scope="module")
def cifar_pngs(cifar10, tmp_path_factory):
    """Eight CIFAR-10 test images written as PNG files, and their labels."""
    _, (x_test, y_test) = cifar10
    folder = tmp_path_factory.mktemp("pngs")
    for i in range(8):
        Image.fromarray(x_test[i]).save(folder / f"test_{i}_{CLASS_NAMES[y_test[i]]}.png")
    return folder, x_test[:8], y_test[:8]


def test_predict_images_matches_the_model_on_the_same_pixels(run_folder, cifar_pngs):
    from cnnlab.models.registry import load_model

    folder, images, _ = cifar_pngs
    model = load_model(run_folder, device="cpu")
    result = predict_images(model, [folder], top=3)
    assert [p.path.name for p in result.predictions] == sorted(p.name for p in folder.iterdir())
    assert not result.skipped
    expected = model.predict(scale_images(images))
    for prediction, row in zip(result.predictions, expected, strict=True):
        np.testing.assert_allclose(prediction.probabilities, row, atol=1e-6)  # 32x32 PNGs: no resize, lossless
        assert prediction.top[0][1] == CLASS_NAMES[int(row.argmax())]
        assert len(prediction.top) == 3 and prediction.top[0][2] >= prediction.top[1][2]


def test_cli_predict_real_photos_table_and_figure(run_folder, photos_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["predict", str(run_folder), str(photos_dir), "--top", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    photos = sorted(p for p in photos_dir.iterdir() if p.suffix in (".png", ".jpg"))
    assert all(str(photo) in printed for photo in photos)
    assert printed.count("probability") == len(photos)
    assert (out / "predictions.png").stat().st_size > 10_000


def test_cli_predict_json_and_a_truncated_photo(run_folder, photos_dir, tmp_path, capsys):
    good = sorted(photos_dir.glob("*.jpg"))[:2]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(good[0].read_bytes()[:600])
    argv = ["predict", str(run_folder), str(good[0]), str(broken), str(good[1]), "--json", "--out", str(tmp_path)]
    assert main(argv) == 1
    captured = capsys.readouterr()
    results = json.loads(captured.out)
    assert [p["path"] for p in results["predictions"]] == [str(good[0]), str(good[1])]
    assert all(len(p["top"]) == 5 and p["top"][0]["class"] in CLASS_NAMES for p in results["predictions"])
    assert sum(item["probability"] for item in results["predictions"][0]["top"]) <= 1 + 1e-6
    assert results["skipped"][0]["path"] == str(broken)
    assert f"skipped {broken}" in captured.err


def test_a_photo_over_the_pixel_limit_is_skipped(run_folder, photos_dir, tmp_path, capsys):
    huge = tmp_path / "huge.png"
    Image.new("1", (9000, 9000)).save(huge)  # 81 megapixels, a few kB on disk
    photo = sorted(photos_dir.glob("*.png"))[0]
    assert main(["predict", str(run_folder), str(huge), str(photo)]) == 1
    captured = capsys.readouterr()
    assert str(photo) in captured.out and "over the limit" in captured.err and str(huge) in captured.err


def test_cli_predict_folder_without_images(run_folder, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("no pictures here")
    assert main(["predict", str(run_folder), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds no images" in err and str(tmp_path) in err


def test_grayscale_model_gets_colour_photos_converted(photos_dir, tmp_path):
    model = build_cnn(input_shape=(32, 32, 1), n_filters=4, class_names=CLASS_NAMES, device="cpu")
    result = predict_images(model, sorted(photos_dir.glob("*.jpg"))[:2], top=1)
    assert [p.image.shape for p in result.predictions] == [(32, 32, 1)] * 2
    assert any("grayscale" in note for note in result.notes)
    from cnnlab.evaluate.imagenet import plot_predictions

    assert plot_predictions(result.predictions, tmp_path / "gray.png").exists()


def test_cli_evaluate_on_the_cifar10_test_split(run_folder, cifar10_archive, tmp_path, capsys):
    out = tmp_path / "evaluation"
    assert main(["evaluate", str(run_folder), "--data", str(cifar10_archive), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "10000 images: loss" in printed and all(name in printed for name in CLASS_NAMES)
    saved = json.loads((out / "evaluation.json").read_text())
    assert 0.15 < saved["accuracy"] < 0.6  # one epoch on 300 images: above chance, far from trained
    assert np.asarray(saved["confusion_matrix"]).sum() == 10_000
    assert (out / "confusion_matrix.png").stat().st_size > 10_000 and (out / "mistakes.png").stat().st_size > 10_000


def test_class_names_that_differ_are_refused_in_one_line():
    with pytest.raises(ValueError, match=r"data's classes \(cat, dog\) are not the model's \(airplane"):
        check_class_names(CLASS_NAMES, ("cat", "dog"))


# ------------------------------------------------------------------ bad model files: one line, exit status 2
# The corrupt, truncated and older-cnnlab cases rely on load_model's checks from the `model` branch.
@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    """Default output folders (runs/...) land in the test's folder, never in the checkout."""
    monkeypatch.chdir(tmp_path)


def _assert_one_line_error(argv, path, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err, err


@pytest.mark.parametrize("command", ["predict", "export", "evaluate"])
def test_a_file_that_is_not_a_model(command, photos_dir, tmp_path, capsys):
    fake = tmp_path / "weights.safetensors"
    shutil.copyfile(sorted(photos_dir.glob("*.png"))[0], fake)
    extra = {"predict": [str(photos_dir)], "export": [], "evaluate": []}[command]
    _assert_one_line_error([command, str(fake), *extra], fake, capsys)


def test_a_truncated_model_file(run_folder, photos_dir, tmp_path, capsys):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes((run_folder / "weights.safetensors").read_bytes()[:5000])
    _assert_one_line_error(["predict", str(cut), str(photos_dir)], cut, capsys)


def test_a_model_file_without_metadata(tmp_path, photos_dir, capsys):
    bare = tmp_path / "bare.safetensors"
    model = build_cnn(n_filters=4, device="cpu")
    save_file({k: v.contiguous() for k, v in model.network.state_dict().items()}, str(bare))
    _assert_one_line_error(["predict", str(bare), str(photos_dir)], bare, capsys)


def test_a_model_file_from_an_older_cnnlab(tmp_path, photos_dir, capsys):
    """The build config alone, as cnnlab wrote before models carried class names and preprocessing."""
    old = tmp_path / "old.safetensors"
    model = build_cnn(n_filters=4, device="cpu")
    state = {k: v.contiguous() for k, v in model.network.state_dict().items()}
    save_file(state, str(old), metadata={"config": json.dumps({"n_filters": 4})})
    _assert_one_line_error(["predict", str(old), str(photos_dir)], old, capsys)


def test_a_run_folder_without_weights(tmp_path, photos_dir, capsys):
    _assert_one_line_error(["predict", str(tmp_path), str(photos_dir)], tmp_path, capsys)
