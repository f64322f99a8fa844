"""Hyperparameter search: the TOML space and its errors, the shared objective, an Optuna study that
survives a crash and continues, the accuracy+energy Pareto front, plots, and a 2-trial Ray Tune run."""

from __future__ import annotations

import csv
import secrets
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import optuna
import pytest
from ray_head import free_port, ray_env, ray_head

from cnnlab.cli import build_parser, main
from cnnlab.core.errors import ConfigError
from cnnlab.core.runtime import configure_threads
from cnnlab.data.augment import parse_augment_spec
from cnnlab.data.split import LabData
from cnnlab.experiments.tune import engines, objective
from cnnlab.experiments.tune.objective import train_trial
from cnnlab.experiments.tune.results import format_table, train_config, write_plots, write_toml
from cnnlab.experiments.tune.search import tune
from cnnlab.experiments.tune.space import DEFAULT_SPACE, augment_spec, load_space, parse_space
from cnnlab.experiments.tune.study import TuneSettings

EXAMPLE_SPACE = Path(__file__).resolve().parents[1] / "examples" / "space.toml"
# Small and fast: one or two conv blocks of 4 filters; the search varies depth and learning rate.
TINY_SPACE = {
    "n_conv_layers": {"low": 1, "high": 2},
    "n_filters": 4,
    "learning_rate": {"low": 1e-3, "high": 3e-2, "log": True},
}


def _learnable(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose red channel brightness gives the class away, so accuracy can rise above chance."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = rng.normal(0, 0.3, (n, 32, 32, 3)).astype(np.float32)
    images[..., 0] += labels[:, None, None] / 5 - 0.9
    return np.clip(images, -1, 1), labels


@pytest.fixture(scope="module", autouse=True)
def _threads():
    configure_threads()  # $CNNLAB_THREADS: more threads than free cores make torch spin-wait


@pytest.fixture(scope="module")
def tiny_data() -> LabData:
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (_learnable(n, s) for n, s in ((96, 0), (48, 1), (48, 2)))
    return LabData(x_train, y_train, x_val, y_val, x_test, y_test, {"source": "synthetic"})


# ----------------------------------------------------------------------------------- search space


def test_example_space_loads_with_conditional_settings():
    space = load_space(EXAMPLE_SPACE)
    assert space.fixed == {"head": "flatten"}
    assert {"learning_rate", "dropout_rate", "n_nodes", "augment_strength"} <= set(space.distributions)
    assert space.distributions["learning_rate"].log
    assert space.distributions["n_nodes"].step == 32


def test_the_default_space_is_the_example_file():
    assert load_space() == load_space(EXAMPLE_SPACE) == parse_space(DEFAULT_SPACE)
    assert build_parser().parse_args(["tune"]).space is None  # --space may be left out


def test_suggest_leaves_out_settings_that_would_have_no_effect():
    space = load_space(EXAMPLE_SPACE)
    choices = {"n_conv_layers": 2, "n_filters": 8, "n_dense_layers": 0, "use_dropout": False, "batch_size": 32,
               "learning_rate": 0.01, "optimizer": "adam", "augment_strength": 0.5}  # fmt: skip
    config = space.suggest(optuna.trial.FixedTrial(choices))
    assert "dropout_rate" not in config and "n_nodes" not in config
    assert config["head"] == "flatten" and config["n_conv_layers"] == 2
    with_both = space.suggest(
        optuna.trial.FixedTrial(
            {**choices, "n_dense_layers": 1, "n_nodes": 64, "use_dropout": True, "dropout_rate": 0.3}
        )
    )
    assert with_both["n_nodes"] == 64 and with_both["dropout_rate"] == 0.3


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"n_filter": {"low": 8, "high": 16}}, "unknown parameter 'n_filter'; did you mean 'n_filters'"),
        ({"epochs": {"low": 1, "high": 5}}, "epochs is not searched here"),
        ({"n_filters": {"low": 32, "high": 8}}, "low (32) is above high (8)"),
        ({"optimizer": {"choices": []}}, "choices is empty"),
        ({"l2": {"low": 0, "high": 0.01, "log": True}}, "a log range needs low > 0"),
        ({"n_conv_layers": {"low": 2, "high": 6}}, "high 6 cannot work; it must be 1 to 5"),
        ({"n_filters": {"low": 8.5, "high": 16}}, "low 8.5 is not a whole number"),
        ({"n_filters": {"low": True, "high": 16}}, "is not a whole number"),
        ({"optimizer": {"choices": ["adam", "lbfgs"]}}, "choice 'lbfgs' cannot work; it must be one of adam"),
        ({"optimizer": {"low": 1, "high": 2}}, "takes choices = [...] or a value, not a range"),
        ({"n_filters": {"low": 8, "high": 16, "choices": [8]}}, "give choices or a range"),
        ({"n_filters": {"low": 8, "hgh": 16}}, "hgh unknown"),
        ({"n_filters": {"low": 8, "high": 20, "step": 8}}, "not a multiple of step"),
        ({"learning_rate": {"low": 1e-4, "high": 1e-1, "log": True, "step": 0.01}}, "log = true or step, not both"),
        ({"n_filters": [8, 16]}, "write { choices = [8, 16] }"),
        ({"n_filters": {"choices": [8, 8]}}, "repeat a value"),
        ({"dropout_rate": {"low": 0.1, "high": 0.5}, "n_filters": {"low": 8, "high": 16}}, "dropout_rate would never"),
        ({"n_nodes": {"low": 16, "high": 64}, "n_dense_layers": 0}, "n_nodes would never be used"),
        ({"n_filters": 16, "optimizer": "adam"}, "nothing to search"),
        ({"augment_strength": {"low": 0.0, "high": 1.5}}, "high 1.5 cannot work"),
    ],
)
def test_invalid_spaces_are_refused_with_the_reason(spec, message):
    with pytest.raises(ConfigError) as caught:
        parse_space(spec, "space.toml")
    assert message in str(caught.value)
    assert str(caught.value).startswith("space.toml")


def test_unreadable_or_malformed_space_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read search space"):
        load_space(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("n_filters = { low = 8, high = \n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_space(broken)


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="unknown engine 'dask'"):
        TuneSettings(engine="dask")
    with pytest.raises(ConfigError, match="needs engine 'ray'"):
        TuneSettings(address="ray://head:10001")
    with pytest.raises(ConfigError, match="trials >= 1"):
        TuneSettings(trials=0)


# ----------------------------------------------------------------------------------- best configuration


def test_best_config_is_a_train_config(tmp_path):
    config = {"n_conv_layers": 3, "n_filters": 16, "use_dropout": True, "dropout_rate": 0.25,
              "learning_rate": 0.0012, "optimizer": "adam", "batch_size": 64, "augment_strength": 0.5}  # fmt: skip
    settings = train_config(config, epochs=3, seed=7)
    assert settings["augment"] == "rotation=10,shift=0.075,flip" and "augment_strength" not in settings
    parse_augment_spec(settings["augment"])  # the spec is one `cnnlab train` understands
    path = write_toml(settings, tmp_path / "best.toml", "best of a test\nsecond line")
    assert tomllib.loads(path.read_text()) == settings
    args = build_parser().parse_args(["train", "--config", str(path)])
    from cnnlab.cli.train import resolve_settings

    resolved = resolve_settings(args)  # refuses any key cnnlab train does not know
    assert {k: resolved[k] for k in settings} == settings
    assert augment_spec(0.0) is None


# ----------------------------------------------------------------------------------- the objective


def test_objective_stops_when_the_engine_says_so_but_never_after_the_last_epoch(tiny_data):
    config = {"n_conv_layers": 1, "n_filters": 4}
    stopped = train_trial(config, tiny_data, epochs=3, report=lambda metrics: True)
    assert stopped.epochs_run == 1 and stopped.stopped_early
    assert stopped.energy_kwh > 0 and stopped.co2eq_g > 0
    seen = []
    full = train_trial(config, tiny_data, epochs=2, report=lambda metrics: seen.append(metrics) or False)
    assert [m["epochs_run"] for m in seen] == [1, 2] and not full.stopped_early
    assert seen[1]["energy_kwh"] >= seen[0]["energy_kwh"]  # energy so far, cumulative


def test_a_diverging_trial_ends_with_a_note(tiny_data):
    outcome = train_trial({"n_conv_layers": 1, "n_filters": 4, "learning_rate": 1e12, "optimizer": "sgd"}, tiny_data, 3)
    assert outcome.note == "diverged" and outcome.stopped_early


# ----------------------------------------------------------------------------------- Optuna engine


def _finished(out: Path, name: str = "cnnlab-tune") -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")
    return [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]


def test_study_survives_a_crash_and_continues_to_the_requested_total(tmp_path, tiny_data, monkeypatch):
    space, out = parse_space(TINY_SPACE), tmp_path / "search"
    first = tune(space, tiny_data, out, TuneSettings(trials=2, epochs=1, pruner="none"))
    assert (first.finished_before, first.new_trials, len(_finished(out))) == (0, 2, 2)

    calls = []
    real_trial = objective.train_trial

    def crash_on_second_trial(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real_trial(*args, **kwargs)

    monkeypatch.setattr(engines, "train_trial", crash_on_second_trial)
    with pytest.raises(RuntimeError, match="simulated crash"):
        tune(space, tiny_data, out, TuneSettings(trials=4, epochs=1, pruner="none"))
    assert len(_finished(out)) == 3  # the trial before the crash is kept
    monkeypatch.setattr(engines, "train_trial", real_trial)

    resumed = tune(space, tiny_data, out, TuneSettings(trials=4, epochs=1, pruner="none"))
    assert (resumed.finished_before, resumed.new_trials) == (3, 1)
    finished = _finished(out)
    assert len(finished) == 4 and len({(t.params["n_conv_layers"], t.params["learning_rate"]) for t in finished}) == 4
    states = [row["state"] for row in resumed.rows]
    assert states.count("fail") == 1 and len(states) == 5

    with open(out / "trials.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 5 and {"val_accuracy", "epochs_run", "seconds", "energy_kwh", "learning_rate"} <= set(table[0])
    best = tomllib.loads((out / "best.toml").read_text())
    assert best["epochs"] == 1 and best["n_filters"] == 4 and best == resumed.best["config"]
    assert resumed.best["val_accuracy"] == max(t.values[0] for t in finished if t.values)
    assert 0 <= resumed.best["test_accuracy"] <= 1
    assert abs(resumed.best["retrained_val_accuracy"] - resumed.best["val_accuracy"]) < 0.02  # same seed, same run
    assert (out / "history.png").stat().st_size > 0 and (out / "importances.png").stat().st_size > 0
    assert "learning_rate" in format_table(resumed.rows)

    with pytest.raises(ConfigError, match="epochs 1 -> 2"):
        tune(space, tiny_data, out, TuneSettings(trials=4, epochs=2))


def test_accuracy_and_energy_give_a_pareto_front(tmp_path, tiny_data):
    result = tune(
        parse_space(TINY_SPACE), tiny_data, tmp_path, TuneSettings(trials=3, epochs=1, objective="accuracy+energy")
    )
    assert all(row["energy_kwh"] > 0 for row in result.rows)
    front = result.pareto
    assert front and [r["val_accuracy"] for r in front] == sorted((r["val_accuracy"] for r in front), reverse=True)
    for row in front:  # nobody on the front is beaten on both counts
        assert not any(
            o["val_accuracy"] >= row["val_accuracy"] and o["energy_kwh"] < row["energy_kwh"] for o in result.rows
        )
    assert result.best["trial"] == front[0]["trial"]
    assert (tmp_path / "pareto.png").exists() and (tmp_path / "pareto.csv").exists()


def test_importances_need_two_completed_trials_and_become_a_note(tmp_path):
    study = optuna.create_study(direction="maximize")
    distribution = {"learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)}
    study.add_trial(optuna.trial.create_trial(params={"learning_rate": 0.01}, distributions=distribution, value=0.3))
    files, notes = write_plots(study, tmp_path)
    assert "history" in files and "importances" not in files
    assert any("need at least 2 completed trials" in note for note in notes)
    study.add_trial(optuna.trial.create_trial(params={"learning_rate": 0.001}, distributions=distribution, value=0.4))
    files, notes = write_plots(study, tmp_path)
    assert files["importances"].exists() and not notes


# ----------------------------------------------------------------------------------- command line


def test_cli_reports_a_bad_space_in_one_line(tmp_path, capsys):
    space = tmp_path / "space.toml"
    space.write_text("n_conv_layers = { low = 1, high = 7 }\n")
    assert main(["tune", "--space", str(space), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("cnnlab tune: error:") and "7 cannot work" in error and "\n" not in error


@pytest.mark.slow
def test_cli_searches_real_images(tmp_path, cifar10_archive, session_cache, capsys):
    space = tmp_path / "space.toml"
    space.write_text(
        'n_conv_layers = { low = 1, high = 2 }\nn_filters = 8\noptimizer = { choices = ["adam", "sgd"] }\n'
    )
    code = main(["tune", "--space", str(space), "--data", str(cifar10_archive), "--trials", "2", "--epochs", "1",
                 "--subset", "400", "--test-size", "200", "--out", str(tmp_path / "out")])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "test_accuracy" in printed and "val_accuracy" in printed
    best = tomllib.loads((tmp_path / "out" / "best.toml").read_text())
    assert best["n_filters"] == 8 and best["optimizer"] in ("adam", "sgd")


# ----------------------------------------------------------------------------------- Ray Tune engine


@pytest.mark.slow
def test_ray_tune_runs_two_trials_into_the_study(tmp_path, tiny_data):
    pytest.importorskip("ray.tune", reason="Ray Tune is the optional extra cnnlab[ray]")
    result = tune(parse_space(TINY_SPACE), tiny_data, tmp_path, TuneSettings(trials=2, epochs=2, engine="ray"))
    finished = _finished(tmp_path)
    assert len(finished) == 2 and result.new_trials == 2
    for trial in finished:  # each result was filed under its Optuna trial
        assert trial.user_attrs["config"]["n_filters"] == 4 and 1 <= trial.user_attrs["epochs_run"] <= 2
        assert trial.user_attrs["energy_kwh"] > 0
    assert result.best["config"]["n_filters"] == 4 and 0 <= result.best["test_accuracy"] <= 1
    assert (tmp_path / "ray").is_dir()


# ----------------------------------------------------------------------------------- a real Ray cluster

def _tune_on(address: str, home: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    from tiny_cifar import write_tiny_cifar

    tmp_path.mkdir(exist_ok=True)
    archive = write_tiny_cifar(tmp_path / "tiny.tar.gz", images_per_batch=12)
    space = tmp_path / "space.toml"
    space.write_text(
        "n_conv_layers = { low = 1, high = 2 }\nn_filters = 4\nlearning_rate = { low = 1e-3, high = 0.03 }\n"
    )
    command = [sys.executable, "-m", "cnnlab.cli", "--threads", "1", "tune", "--engine", "ray", "--address", address,
               "--space", str(space), "--trials", "2", "--epochs", "1", "--subset", "48", "--test-size", "12",
               "--data", str(archive), "--out", str(tmp_path / "out")]  # fmt: skip
    return subprocess.run(command, env=ray_env(home, CNNLAB_CACHE=str(tmp_path / "cache"), **env),
                          capture_output=True, text=True, timeout=240)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("auth", ["token", "disabled"])
def test_tune_joins_a_ray_cluster_started_with_ray_start(tmp_path, auth):
    """The issue's case: `ray start --head` turns token authentication on once a token exists (as after
    any local ray.init), and `cnnlab tune --address` must bring the token; off must work too."""
    pytest.importorskip("ray.tune", reason="Ray Tune is the optional extra cnnlab[ray]")
    home, port = tmp_path / "home", free_port()
    (home / ".ray").mkdir(parents=True)
    if auth == "token":
        (home / ".ray" / "auth_token").write_text(secrets.token_hex(32))  # where `ray start` keeps its token
    with ray_head(home, port, **({"RAY_AUTH_MODE": "disabled"} if auth == "disabled" else {})) as head_log:
        assert ("Token authentication is enabled" in head_log) == (auth == "token")
        if auth == "token":
            refused = _tune_on(
                f"127.0.0.1:{port}", home, tmp_path / "wrong", RAY_AUTH_TOKEN="0" * 64, RAY_NUM_REDIS_GET_RETRIES="3"
            )  # Ray retries 20 s
            assert refused.returncode == 2, refused.stderr[-3000:]
            error = refused.stderr.strip().splitlines()[-1]
            assert error.startswith("cnnlab tune: error: the Ray cluster at 127.0.0.1:") and "$RAY_AUTH_TOKEN" in error
        done = _tune_on(f"127.0.0.1:{port}", home, tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    assert len(_finished(tmp_path / "out")) == 2
    assert "Best: trial" in done.stdout


def test_an_unreachable_ray_cluster_is_one_line(tmp_path, capsys, tiny_data, monkeypatch):
    pytest.importorskip("ray.tune", reason="Ray Tune is the optional extra cnnlab[ray]")
    monkeypatch.setattr("cnnlab.data.split.load_lab_data", lambda *args, **kwargs: tiny_data)
    port = free_port()  # nothing listens there
    assert main(["tune", "--engine", "ray", "--address", f"127.0.0.1:{port}", "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"cnnlab tune: error: no Ray cluster answers at 127.0.0.1:{port}") and "\n" not in error
    assert "ray start --head" in error
