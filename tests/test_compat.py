"""Files written by cnnlab 0.1 (before the layered package) still load, resume and read the same.

tests/fixtures/v0_1 was written once by the 0.1 code (three tiny models with their predictions, a run
folder stopped after 1 of 2 epochs, a cache entry, a two-trial Optuna study): a move that changes a
file format, a registry name or the checkpoint's contents fails here.
"""

from __future__ import annotations

import csv
import gzip
import shutil
from pathlib import Path

import numpy as np
import optuna
import pytest

from cnnlab.data.cache import read_cache
from cnnlab.experiments.tune.results import trial_rows
from cnnlab.models.registry import create_model, load_model

FIXTURES = Path(__file__).parent / "fixtures" / "v0_1"


@pytest.mark.parametrize("kind", ["cnn", "recipe", "transfer_head"])
def test_a_saved_model_of_every_kind_loads_and_predicts_as_before(kind):
    expected = np.load(FIXTURES / "expected.npz")
    model = load_model(FIXTURES / f"{kind}.safetensors", device="cpu")
    assert model.class_names == ("cat", "dog", "fish")
    np.testing.assert_allclose(model.predict(expected[f"{kind}_x"]), expected[f"{kind}_probs"], rtol=1e-5, atol=1e-6)


def test_a_run_folder_stopped_by_the_old_code_resumes_to_the_same_history(tmp_path):
    run = shutil.copytree(FIXTURES / "run", tmp_path / "run")
    x, y = np.load(FIXTURES / "expected.npz")["cnn_x"], np.arange(6) % 3
    first_epoch = [float(row["loss"]) for row in csv.DictReader((run / "history.csv").open())]
    config = load_model(run, device="cpu").config
    resumed = create_model(config, device="cpu").fit(
        x, y, batch_size=3, epochs=2, verbose=0, run_dir=run, resume=True, seed=0
    )
    uninterrupted = create_model(config, device="cpu").fit(x, y, batch_size=3, epochs=2, verbose=0, seed=0)
    assert resumed.history["loss"][0] == pytest.approx(first_epoch[0], rel=1e-12)
    assert resumed.history["loss"] == pytest.approx(uninterrupted.history["loss"], rel=1e-5)


def test_a_cache_entry_written_by_the_old_code_reads_back():
    arrays, meta = read_cache(FIXTURES / "cache" / "entry", ("x_train", "y_train"), cache_format=1)
    assert meta["origin"] == "fixture"
    np.testing.assert_array_equal(arrays["x_train"], np.load(FIXTURES / "expected.npz")["cnn_x"])
    np.testing.assert_array_equal(arrays["y_train"], np.arange(6) % 3)


def test_a_tuning_study_written_by_the_old_code_reads_back(tmp_path):
    database = tmp_path / "study.db"
    with gzip.open(FIXTURES / "study.db.gz", "rb") as packed, database.open("wb") as plain:
        shutil.copyfileobj(packed, plain)
    (summary,) = optuna.get_all_study_summaries(f"sqlite:///{database}")
    study = optuna.load_study(study_name=summary.study_name, storage=f"sqlite:///{database}")
    rows = trial_rows(study, epochs=1)
    assert [row["state"] for row in rows] == ["complete", "complete"]
    assert all(0 <= row["val_accuracy"] <= 1 and row["n_filters"] == 4 for row in rows)
