"""Generalization (lab part 5): rotated test images, mistakes, confusion matrix, other sizes, robustness table."""

from __future__ import annotations

import numpy as np
import pytest

from cnnlab.core.errors import ConfigError, DataError
from cnnlab.core.runtime import configure_threads
from cnnlab.core.tables import markdown_table
from cnnlab.data.arrays import to_categorical
from cnnlab.data.cifar import CLASS_NAMES
from cnnlab.data.split import load_lab_data
from cnnlab.evaluate.generalization import (
    evaluate_rotated,
    evaluate_sizes,
    myrotate,
    resize_images,
    rotation_robustness_table,
)
from cnnlab.evaluate.metrics import confusion_matrix, misclassified, per_class_accuracy
from cnnlab.models.cnn import build_cnn
from cnnlab.plots import confusion_matrix_figure, misclassified_gallery, rotation_preview


@pytest.fixture(scope="module", autouse=True)
def _torch_threads_as_configured():
    configure_threads()  # $CNNLAB_THREADS: more threads than free cores make torch spin-wait


def _quadrant_data(n=400, size=16, seed=0):
    """Four classes told apart by which quadrant is bright: a rotation moves the evidence elsewhere."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    images = rng.normal(-0.5, 0.1, (n, size, size, 3)).astype(np.float32)
    half = size // 2
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 2)
        images[i, row * half : (row + 1) * half, col * half : (col + 1) * half] += 1.2
    return images.clip(-1, 1), labels


def test_myrotate_turns_counter_clockwise_like_np_rot90():
    image = np.arange(4, dtype=np.float32).reshape(1, 2, 2, 1)  # [[0, 1], [2, 3]]
    turned = myrotate(image)
    np.testing.assert_array_equal(turned[0, :, :, 0], [[1, 3], [0, 2]])  # the top-right corner moves to top-left
    assert turned.flags.c_contiguous
    np.testing.assert_array_equal(myrotate(image, 4), image)
    with pytest.raises(DataError, match="batch of images"):
        myrotate(image[0])


def test_rotated_evaluation_reports_the_drop():
    x, y = _quadrant_data()
    model = build_cnn((16, 16, 3), n_conv_layers=2, n_filters=8, num_classes=4, learning_rate=0.003, device="cpu")
    model.fit(x[:300], y[:300], batch_size=32, epochs=3, verbose=0)
    result = evaluate_rotated(model, x[300:], y[300:])
    assert set(result) == {"original", "rotated", "drop"}
    assert result["original"] > 0.9, result
    assert result["rotated"] < 0.5, "a quarter turn moves every quadrant, so the learned rule must fail"
    assert result["drop"] == pytest.approx(result["original"] - result["rotated"])


def _band_data(n=400, size=16, seed=0):
    """Class 1 has a bright band along the top edge, class 0 none: "a band along an edge" does not change
    under quarter turns, but plain training sees the band at the top only."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    images = rng.normal(-0.6, 0.15, (n, size, size, 3)).astype(np.float32)
    images[labels == 1, 1:5] += 1.3
    return images.clip(-1, 1), labels


def test_rot90_augmented_training_recovers_rotated_accuracy():
    x, y = _band_data()

    def build():
        return build_cnn((16, 16, 3), n_conv_layers=2, n_filters=8, num_classes=2, learning_rate=0.002, device="cpu")

    # Small batches: enough steps for BatchNorm's slow (Keras momentum 0.99) running statistics.
    rows = rotation_robustness_table(build, x[:300], y[:300], x[300:], y[300:], epochs=4, batch_size=8)
    assert [row["training"] for row in rows] == ["plain", "rot90"]
    assert list(rows[0]) == ["training", "test accuracy", "rotated 90°", "rotated 90/180/270° (mean)", "drop (90°)"]
    plain, robust = rows
    assert plain["test accuracy"] > 0.9 and robust["test accuracy"] > 0.9, rows
    assert robust["rotated 90/180/270° (mean)"] > 0.9, rows
    assert robust["rotated 90/180/270° (mean)"] > plain["rotated 90/180/270° (mean)"] + 0.1, rows
    assert plain["drop (90°)"] == pytest.approx(plain["test accuracy"] - plain["rotated 90°"])
    lines = markdown_table(rows).splitlines()
    assert lines[0] == "| training | test accuracy | rotated 90° | rotated 90/180/270° (mean) | drop (90°) |"
    assert lines[1] == "|---|---|---|---|---|"
    assert lines[3].startswith(f"| rot90 | {robust['test accuracy']:.4f} |")


def test_misclassified_lists_the_most_confident_mistakes_first():
    probabilities = np.array(
        [
            [0.9, 0.1, 0.0],  # right
            [0.2, 0.7, 0.1],  # wrong (true 0), confidence 0.7
            [0.1, 0.1, 0.8],  # right
            [0.05, 0.0, 0.95],  # wrong (true 1), confidence 0.95
        ]
    )
    y_true = np.array([0, 0, 2, 1])
    for labels in (y_true, to_categorical(y_true, 3), y_true[:, None]):
        mistakes = misclassified(labels, probabilities)
        np.testing.assert_array_equal(mistakes.indices, [3, 1])
        np.testing.assert_array_equal(mistakes.true, [1, 0])
        np.testing.assert_array_equal(mistakes.predicted, [2, 1])
        np.testing.assert_allclose(mistakes.confidence, [0.95, 0.7])
    with pytest.raises(DataError, match="probabilities must be"):
        misclassified(y_true, probabilities[:3])


def test_confusion_matrix_and_per_class_accuracy():
    y_true = np.array([0, 0, 0, 1, 1, 3])
    y_pred = np.array([0, 1, 0, 1, 0, 3])
    matrix = confusion_matrix(y_true, y_pred, 10)
    assert matrix.shape == (10, 10) and matrix.sum() == 6
    assert matrix[0, 0] == 2 and matrix[0, 1] == 1 and matrix[1, 0] == 1 and matrix[3, 3] == 1
    assert confusion_matrix(y_true, y_pred).shape == (4, 4)  # no count given: the largest label decides
    assert confusion_matrix(y_true, to_categorical(y_pred, 7)).shape == (7, 7)  # probabilities' width decides
    accuracy = per_class_accuracy(y_true, to_categorical(y_pred), CLASS_NAMES)  # probabilities work as predictions
    assert list(accuracy) == list(CLASS_NAMES)
    assert accuracy["airplane"] == pytest.approx(2 / 3)
    assert accuracy["automobile"] == 0.5 and accuracy["cat"] == 1.0
    assert np.isnan(accuracy["bird"])  # no bird in the set
    assert list(per_class_accuracy(y_true, y_pred)) == ["0", "1", "2", "3"]  # no names: class numbers
    with pytest.raises(DataError, match="3 class names given for 4 classes"):
        per_class_accuracy(y_true, y_pred, ["a", "b", "c"])


def test_figures_for_mistakes_rotation_and_confusion(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (12, 32, 32, 3)).astype(np.float32)
    probabilities = rng.dirichlet(np.ones(10), 12)
    mistakes = misclassified(np.zeros(12, int), probabilities)
    gallery = misclassified_gallery(images, mistakes, count=6, path=tmp_path / "mistakes.png", class_names=CLASS_NAMES)
    first = mistakes.indices[0]
    expected = f"true: airplane\npred: {CLASS_NAMES[probabilities[first].argmax()]} ({probabilities[first].max():.1%})"
    assert gallery.axes[0].get_title() == expected
    rotation_preview(images, myrotate(images), count=5, path=tmp_path / "rotated.png")
    matrix = confusion_matrix(np.arange(12) % 10, probabilities)
    confusion_matrix_figure(matrix, path=tmp_path / "confusion.png", title="test")
    many = confusion_matrix(np.arange(300) % 100, np.arange(300) % 100, 100)
    figure = confusion_matrix_figure(many, [f"class {i}" for i in range(100)], path=tmp_path / "confusion100.png")
    assert figure.get_size_inches()[0] >= 30 and not figure.axes[0].texts  # grows, colours only
    for name in ("mistakes.png", "rotated.png", "confusion.png", "confusion100.png"):
        assert (tmp_path / name).stat().st_size > 5_000
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resize_images():
    images = np.full((2, 32, 32, 3), 0.25, np.float32)
    for size in (24, 48, (20, 40)):
        resized = resize_images(images, size)
        expected = (size, size) if isinstance(size, int) else size
        assert resized.shape == (2, *expected, 3)
        np.testing.assert_allclose(resized, 0.25, atol=1e-6)
    stripes = np.zeros((1, 32, 32, 1), np.float32)
    stripes[:, :, ::2] = 1
    # Antialiasing averages the one-pixel stripes when shrinking instead of picking some of them.
    assert np.ptp(resize_images(stripes, 16)[:, 1:-1, 1:-1]) < 0.01
    with pytest.raises(ConfigError, match="positive"):
        resize_images(images, 0)


def test_resize_images_keeps_uint8_images_uint8_and_rounds():
    """A model scales uint8 batches itself: resized uint8 images must stay uint8, not become floats in 0..255."""
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    for size in (16, 48):
        resized = resize_images(pixels, size)
        as_floats = resize_images(pixels.astype(np.float32), size)
        assert resized.dtype == np.uint8 and resized.shape == (2, size, size, 3)
        np.testing.assert_array_equal(resized, np.clip(np.rint(as_floats), 0, 255))


@pytest.mark.parametrize("head", ["gap", "fcn"])
def test_model_trained_on_32_predicts_other_sizes(head):
    x, y = _quadrant_data(200, size=32)
    model = build_cnn(head=head, n_conv_layers=2, n_filters=8, n_dense_layers=1, num_classes=4, device="cpu")
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    for size in (24, 48, 64):
        probabilities = model.predict(resize_images(x[:5], size))
        assert probabilities.shape == (5, 4)
        np.testing.assert_allclose(probabilities.sum(1), 1, rtol=1e-5)
    accuracies = evaluate_sizes(model, x[:50], y[:50])
    assert list(accuracies) == [24, 32, 48, 64]
    assert all(0 <= value <= 1 for value in accuracies.values())
    assert accuracies[32] == pytest.approx(model.evaluate(x[:50], y[:50])[1])


def test_flatten_model_refuses_other_sizes_and_says_why():
    x, y = _quadrant_data(20, size=32)
    model = build_cnn(n_conv_layers=2, n_filters=4, num_classes=4, device="cpu")
    with pytest.raises(DataError, match="Flatten layer feeds a Dense layer.*head='gap'"):
        evaluate_sizes(model, x, y)
    assert evaluate_sizes(model, x, y, sizes=(32,))[32] >= 0


@pytest.fixture(scope="module")
def lab_data(cifar10_archive, session_cache):
    return load_lab_data(cifar10_archive, n_train_val=2_700, n_test=1_000)


@pytest.mark.slow
def test_real_cifar_accuracy_drops_for_rotated_images(lab_data):
    model = build_cnn(n_conv_layers=2, n_filters=16, learning_rate=0.001, device="cpu")
    model.fit(lab_data.x_train[:2000], lab_data.y_train[:2000], batch_size=20, epochs=1, verbose=0)
    result = evaluate_rotated(model, lab_data.x_test, lab_data.y_test)
    assert result["original"] > 0.25, result
    assert result["drop"] > 0.03, f"CIFAR-10 photos are taken upright; turning them should hurt: {result}"
    probabilities = model.predict(lab_data.x_test)
    mistakes = misclassified(lab_data.y_test, probabilities)
    assert len(mistakes) == round((1 - result["original"]) * len(lab_data.y_test))
    assert np.all(mistakes.true != mistakes.predicted)
    accuracy = per_class_accuracy(lab_data.y_test, probabilities, lab_data.class_names)
    assert min(accuracy.values()) < result["original"] < max(accuracy.values())
