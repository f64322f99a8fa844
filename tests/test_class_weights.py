"""class_weight for unbalanced training sets: the balanced weights, the weighted training loss (validation
unweighted), resume, every model kind's pass-through, bad values, and the CLI's note and weights line."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_training import KillAtEpoch

from cnnlab.cli import main
from cnnlab.core.errors import ConfigError
from cnnlab.models.cnn import build_cnn
from cnnlab.train.class_weights import balanced_weights, imbalance, resolve_class_weight


def _unbalanced(counts=(24, 6, 2), size=8, seed=0):
    """Random images whose labels follow ``counts`` (shuffled): an unbalanced toy set."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.repeat(np.arange(len(counts)), counts))
    x = rng.uniform(-1, 1, size=(len(y), size, size, 3)).astype(np.float32)
    return x, y


def _small_cnn(classes=3, seed=1):
    return build_cnn(input_shape=(8, 8, 3), num_classes=classes, n_conv_layers=1, n_filters=4, n_dense_layers=0,
                     device="cpu", seed=seed)  # fmt: skip


def test_balanced_weights_are_n_over_k_times_count():
    labels = np.array([0] * 60 + [1] * 20 + [2] * 10)
    weights = balanced_weights(labels, 3)
    np.testing.assert_allclose(weights, [90 / (3 * 60), 90 / (3 * 20), 90 / (3 * 10)])
    from sklearn.utils.class_weight import compute_class_weight

    np.testing.assert_allclose(weights, compute_class_weight("balanced", classes=np.arange(3), y=labels))
    assert np.mean(weights[labels]) == pytest.approx(1.0), "the average image weight stays 1: the loss keeps its scale"


def test_a_dict_fills_missing_classes_with_one_and_an_absent_class_weighs_nothing():
    np.testing.assert_allclose(resolve_class_weight({2: 4.0, np.int64(0): 0.5}, [0, 1, 2], 4), [0.5, 1, 4, 1])
    # class 3 has no image: k counts the 3 classes present, as scikit-learn does
    np.testing.assert_allclose(balanced_weights([0, 0, 1, 2], 4), [4 / 6, 4 / 3, 4 / 3, 1.0])
    assert imbalance([0] * 50 + [1] * 5, ("cat", "dog")) == (10.0, ("cat", 50), ("dog", 5))
    assert imbalance([0, 0, 0], ("cat", "dog")) is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("balance", "'balance' is not understood"),
        ({0: -1.0}, "weights must be finite numbers >= 0"),
        ({1: float("nan")}, "weights must be finite numbers >= 0"),
        ({3: 2.0}, "names class 3, but the classes are the indices 0..2"),
        ({"cat": 2.0}, "names class 'cat'"),
        ({0: 0, 1: 0, 2: 0}, "every class weight 0"),
        ([1.0, 2.0, 3.0], "must be 'balanced' or a dict"),
    ],
)
def test_bad_class_weight_is_a_one_line_config_error(value, message):
    x, y = _unbalanced()
    model = _small_cnn()
    before = {k: v.clone() for k, v in model.network.state_dict().items()}
    with pytest.raises(ConfigError, match=message) as error:
        model.fit(x, y, epochs=1, verbose=0, class_weight=value)
    assert "\n" not in str(error.value)
    assert all(torch.equal(before[k], v) for k, v in model.network.state_dict().items()), "refused before training"


def test_class_weight_changes_the_training_loss_but_not_the_validation_loss():
    x, y = _unbalanced()

    def fit(class_weight):
        model = _small_cnn()
        history = model.fit(x, y, batch_size=8, epochs=2, verbose=0, validation_data=(x, y), class_weight=class_weight)
        return model, history.history

    _, plain = fit(None)
    _, ones = fit({0: 1.0, 1: 1.0, 2: 1.0})
    balanced_model, balanced = fit("balanced")
    np.testing.assert_allclose(ones["loss"], plain["loss"], rtol=1e-5)  # weights of 1 are no weights
    assert abs(balanced["loss"][0] - plain["loss"][0]) > 1e-3
    # validation (and evaluate) stay unweighted: val_loss is the plain loss of the trained model
    assert balanced["val_loss"][-1] == pytest.approx(balanced_model.evaluate(x, y)[0], rel=1e-5)


def test_the_weighted_loss_is_each_images_loss_times_its_class_weight():
    model = _small_cnn()
    model.label_smoothing = 0.1
    logits, labels = torch.randn(6, 3), torch.tensor([0, 0, 0, 1, 2, 2])
    weights = torch.tensor([0.5, 2.0, 3.0])
    each = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1, reduction="none")
    torch.testing.assert_close(model._loss(logits, labels, weights), (each * weights[labels]).mean())
    members = torch.stack([logits, logits.flip(1)])  # an ensemble's (members, N, classes): each member weighed alike
    other = torch.nn.functional.cross_entropy(logits.flip(1), labels, label_smoothing=0.1, reduction="none")
    expected = (torch.cat([each, other]) * weights[labels].repeat(2)).mean()
    torch.testing.assert_close(model._loss(members, labels, weights), expected)


def test_a_class_of_weight_zero_does_not_train():
    x, y = _unbalanced()
    only_zeros = y == 0
    model = _small_cnn()
    before = [p.detach().clone() for p in model.network.parameters()]
    history = model.fit(x[only_zeros], y[only_zeros], batch_size=8, epochs=1, verbose=0, class_weight={0: 0.0})
    assert history.history["loss"] == [0.0]
    assert all(torch.equal(a, b) for a, b in zip(before, model.network.parameters(), strict=True))


def test_a_resumed_weighted_run_equals_an_uninterrupted_one_and_other_weights_are_refused(tmp_path):
    x, y = _unbalanced()

    def fit(run, class_weight="balanced", **options):
        model = _small_cnn()
        history = model.fit(x, y, batch_size=8, epochs=3, verbose=0, validation_data=(x, y), run_dir=run,
                            class_weight=class_weight, **options)  # fmt: skip
        return model, history

    straight, straight_history = fit(tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path / "killed", callbacks=[KillAtEpoch(1)])
    resumed, resumed_history = fit(tmp_path / "killed", resume=True)
    assert resumed_history.history == straight_history.history
    for key, value in straight.network.state_dict().items():
        assert torch.equal(resumed.network.state_dict()[key], value), key
    config = json.loads((tmp_path / "straight" / "config.json").read_text())
    np.testing.assert_allclose(config["fit"]["class_weight"], balanced_weights(y, 3))
    with pytest.raises(ConfigError, match="trained with class weights .* resume with the same --class-weight"):
        fit(tmp_path / "straight", class_weight=None, resume=True)


def test_recipes_and_fine_tuning_pass_class_weight_on(monkeypatch):
    """fit_recipe and fine_tune (the head on features, then the network) hand class_weight to Model.fit."""
    from types import SimpleNamespace

    from cnnlab.experiments.fine_tune import fine_tune
    from cnnlab.experiments.recipes import fit_recipe
    from cnnlab.train.model import Model

    seen = []
    monkeypatch.setattr(Model, "fit", lambda self, *args, **kw: seen.append(("Model.fit", kw["class_weight"])))
    data = SimpleNamespace(x_train=np.zeros((4, 8, 8, 3), np.uint8), y_train=np.array([0, 0, 0, 1]))
    fit_recipe(_small_cnn(2), data, "lab", class_weight="balanced", verbose=0)
    pretrained = SimpleNamespace(
        set_trainable=lambda stage: None, config=SimpleNamespace(train_from="conv1"), input_shape=(32, 32, 3),
        features=lambda x, progress: torch.zeros(len(x), 4), network=SimpleNamespace(head=torch.nn.Linear(4, 2)),
        label_smoothing=0.0, num_classes=2, device=torch.device("cpu"),
        fit=lambda *args, **kw: seen.append(("phase 2", kw["class_weight"])),
    )  # fmt: skip
    fine_tune(pretrained, data.x_train, data.y_train, epochs=2, freeze_epochs=1, class_weight={1: 3.0}, verbose=0,
              seed=0)  # fmt: skip
    assert seen == [("Model.fit", "balanced"), ("Model.fit", {1: 3.0}), ("phase 2", {1: 3.0})]


@pytest.fixture(scope="module")
def unbalanced_folder(tmp_path_factory):
    """50 cat and 10 dog images of 16x16 px: after the held-out test and validation splits, 30 vs 6."""
    root = tmp_path_factory.mktemp("own-pets") / "pets"
    rng = np.random.default_rng(0)
    for name, count, shade in (("cat", 50, 60), ("dog", 10, 190)):
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = np.clip(rng.normal(shade, 40, size=(16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:02d}.png")
    return root


def _train(folder, out, *extra):
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["train", "--data", str(folder), "--epochs", "1", "--quiet", "--n-conv-layers", "1",
                     "--n-filters", "4", "--n-dense-layers", "0", "--out", str(out), *extra])  # fmt: skip
    assert code == 0, printed.getvalue()
    return printed.getvalue()


def test_train_notes_unbalanced_classes_and_prints_the_balanced_weights(unbalanced_folder, tmp_path):
    printed = _train(unbalanced_folder, tmp_path / "plain")
    note = [line for line in printed.splitlines() if "classes are unbalanced" in line]
    assert note == [
        "Note: classes are unbalanced (5.0:1, cat 30 vs dog 6): --class-weight balanced weighs the loss by "
        "inverse class frequency"
    ]
    printed = _train(unbalanced_folder, tmp_path / "weighted", "--class-weight", "balanced")
    assert "Note: classes are unbalanced" not in printed
    assert "Class weights, balanced = n / (classes * count) (training classes 5.0:1, cat 30 vs dog 6): " \
        "cat 0.600, dog 3.000" in printed  # fmt: skip
    config = json.loads((tmp_path / "weighted" / "config.json").read_text())
    assert config["fit"]["class_weight"] == [0.6, 3.0]


def test_a_misspelt_class_weight_flag_is_refused(unbalanced_folder, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--data", str(unbalanced_folder), "--class-weight", "balance"])
    assert "invalid choice: 'balance'" in capsys.readouterr().err
