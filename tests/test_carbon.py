"""Carbon tracking: both backends offline and quiet, overrides through the libraries' own options,
bad input refused, and tracking failures that never stop training."""

from __future__ import annotations

import csv
import json
import math
import socket
from dataclasses import asdict

import numpy as np
import pytest

from cnnlab.carbon.meters import EpochEnergy, PowerSource, overall_method
from cnnlab.carbon.settings import CAR_G_CO2EQ_PER_KM, ESTIMATED, MEASURED, USER_GIVEN, CarbonSettings
from cnnlab.carbon.tracker import CarbonCallback, predict
from cnnlab.cli import main
from cnnlab.core.errors import ConfigError
from cnnlab.core.runtime import configure_threads
from cnnlab.data.split import LabData
from cnnlab.experiments import carbon_sweep as sweep
from cnnlab.experiments.carbon_sweep import carbon_sweep, format_sweep_table, plot_carbon_sweep, write_sweep_csv
from cnnlab.models.cnn import build_cnn


@pytest.fixture(scope="module", autouse=True)
def _torch_threads_as_configured():
    configure_threads()  # $CNNLAB_THREADS: more threads than free cores make torch spin-wait


def _images(n: int = 384, size: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (n, size, size, 3)).astype(np.float32), rng.integers(0, 10, n)


def _fit(callback, run_dir, epochs: int = 3, resume: bool = False):
    x, y = _images()
    model = build_cnn(input_shape=x.shape[1:], n_filters=8, device="cpu")
    return model.fit(
        x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=[callback], run_dir=run_dir, resume=resume
    )


def _json(path):
    return json.loads(path.read_text())


@pytest.fixture
def no_network(monkeypatch):
    """Refuse every connection and name lookup, and record the attempts."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"country": "XYZ"}, "unknown country code 'XYZ'"),
        ({"country": "SE"}, "use the 3-letter one"),
        ({"cpu_power": -5.0}, "CPU power must be a positive number of watts"),
        ({"cpu_power": 0.0}, "CPU power must be a positive"),
        ({"cpu_power": math.nan}, "CPU power must be a positive"),
        ({"carbon_intensity": -1.0}, "carbon intensity must be a number of g CO2eq per kWh, 0 or more"),
        ({"carbon_intensity": math.inf}, "carbon intensity must be"),
        ({"backend": "wattmeter"}, "unknown carbon backend 'wattmeter'"),
    ],
)
def test_settings_refuse_bad_input(settings, message):
    with pytest.raises(ConfigError, match=message):
        CarbonSettings(**settings)


def test_settings_take_the_country_average_or_the_users_intensity():
    germany = CarbonSettings(country="deu")
    assert germany.country == "DEU" and germany.country_name == "Germany"
    value, source = germany.intensity()
    assert value > 100 and source.startswith("codecarbon's") and "Germany" in source
    value, source = CarbonSettings(backend="carbontracker", country="SWE").intensity()
    assert 0 < value < 100 and source.startswith("carbontracker's")
    assert CarbonSettings(carbon_intensity=0.0).intensity() == (0.0, "user-given")


def test_prediction_is_the_mean_epoch_times_the_epoch_count():
    measured = [EpochEnergy(2.0, 1e-3, 0.1), EpochEnergy(4.0, 3e-3, 0.3)]
    prediction = predict(measured, 10)
    assert prediction["epochs"] == 10 and prediction["after_epochs"] == 2
    assert prediction["seconds"] == pytest.approx(30.0)
    assert prediction["energy_kwh"] == pytest.approx(0.02)
    assert prediction["co2eq_g"] == pytest.approx(2.0)
    assert prediction["car_km"] == pytest.approx(2.0 / CAR_G_CO2EQ_PER_KM)


def test_overall_method_names_the_weakest_source():
    measured, estimated = PowerSource("GPU", MEASURED, ""), PowerSource("RAM", ESTIMATED, "")
    given = PowerSource("CPU", USER_GIVEN, "")
    assert overall_method([measured]) == MEASURED
    assert overall_method([measured, estimated]) == "partly measured"
    assert overall_method([estimated, given]) == USER_GIVEN
    assert overall_method([estimated]) == ESTIMATED


def test_codecarbon_tracks_a_fit_offline_quietly_and_writes_no_csv(tmp_path, monkeypatch, no_network, capfd):
    monkeypatch.chdir(tmp_path)
    callback = CarbonCallback(CarbonSettings(cpu_power=20.0, carbon_intensity=100.0))
    history = _fit(callback, tmp_path / "run")
    report = callback.report
    assert len(history.epoch) == 3 and report.status == "complete" and report.error is None
    assert [e["epoch"] for e in report.epochs] == [1, 2, 3]
    total = report.total
    assert total["energy_kwh"] > 0 and total["seconds"] > 0
    assert total["co2eq_g"] == pytest.approx(total["energy_kwh"] * 100.0)  # codecarbon applied the forced intensity
    assert total["car_km"] == pytest.approx(total["co2eq_g"] / CAR_G_CO2EQ_PER_KM)
    assert report.prediction["epochs"] == 3 and report.prediction["energy_kwh"] > 0
    cpu = next(c for c in report.components if c["name"] == "CPU")
    assert cpu["method"] == USER_GIVEN and "20 W" in cpu["detail"]
    assert report.method == USER_GIVEN  # codecarbon's RAM model is an estimate too

    assert _json(tmp_path / "run" / "carbon.json") == json.loads(json.dumps(asdict(report)))
    metrics = _json(tmp_path / "run" / "metrics.json")
    assert metrics["carbon_status"] == "complete" and metrics["carbon_backend"] == "codecarbon"
    assert metrics["carbon_energy_kwh"] == pytest.approx(total["energy_kwh"])
    assert metrics["carbon_intensity_g_per_kwh"] == 100.0 and "loss" in metrics
    assert sorted(p.name for p in tmp_path.rglob("*.csv")) == ["history.csv"]  # no emissions.csv anywhere
    assert no_network == []

    out, err = capfd.readouterr()
    assert "predicted for 3 epoch(s) after 1" in out and "actual for 3 epoch(s)" in out
    assert "Sweden (SWE, the default: set --country)" in out
    assert "codecarbon" not in err  # its log stays quiet


def test_carbontracker_uses_the_given_power_and_never_touches_the_network(tmp_path, no_network):
    callback = CarbonCallback(CarbonSettings(backend="carbontracker", cpu_power=10.0), verbose=False)
    _fit(callback, tmp_path / "run")
    report = callback.report
    assert report.status == "complete" and report.pue == pytest.approx(1.58)
    assert report.components == [
        {"name": "CPU", "method": USER_GIVEN, "detail": "the user-given 10 W x the 50% load carbontracker assumes"}
    ]
    first = report.epochs[0]  # carbontracker samples as an epoch starts, so the first one always has power
    assert first["energy_kwh"] == pytest.approx(10.0 * 0.5 * first["seconds"] * report.pue / 3.6e6, rel=1e-6)
    intensity, source = CarbonSettings(backend="carbontracker").intensity()
    assert report.carbon_intensity_g_per_kwh == intensity and report.carbon_intensity_source == source
    assert report.total["co2eq_g"] == pytest.approx(report.total["energy_kwh"] * intensity)
    assert no_network == []  # no geo-IP lookup, no live-intensity service


def test_carbontracker_says_what_it_assumed_without_a_given_power(tmp_path, no_network):
    callback = CarbonCallback(CarbonSettings(backend="carbontracker"), verbose=False)
    _fit(callback, tmp_path / "run", epochs=1)
    report = callback.report
    assert report.status == "complete" and report.components
    for component in report.components:
        assert component["method"] in (MEASURED, ESTIMATED)
        if component["method"] == ESTIMATED:  # no RAPL/NVML here: a TDP from its table, at 50% load
            assert "carbontracker's TDP" in component["detail"] and " W" in component["detail"]
    assert no_network == []


@pytest.mark.parametrize("failing", ["get_detected_hardware", "start_task", "stop_task"])
def test_a_tracker_failure_never_stops_training(tmp_path, monkeypatch, capsys, failing):
    from codecarbon import OfflineEmissionsTracker

    def broken(*args, **kwargs):
        raise RuntimeError("no power meter")

    monkeypatch.setattr(OfflineEmissionsTracker, failing, broken)
    callback = CarbonCallback(CarbonSettings())
    history = _fit(callback, tmp_path / "run")
    assert len(history.epoch) == 3 and (tmp_path / "run" / "weights.safetensors").exists()
    report = callback.report
    assert report.status == "failed" and report.error == "RuntimeError: no power meter" and report.total is None
    assert _json(tmp_path / "run" / "carbon.json")["status"] == "failed"
    metrics = _json(tmp_path / "run" / "metrics.json")
    assert metrics["carbon_status"] == "failed" and metrics["carbon_error"] == "RuntimeError: no power meter"
    assert "carbon_energy_kwh" not in metrics
    assert "Carbon tracking failed (RuntimeError: no power meter); training goes on" in capsys.readouterr().out


def test_a_failure_inside_carbontrackers_thread_is_reported_not_fatal(tmp_path, monkeypatch):
    from carbontracker.components.component import Component

    def sensor_gone(self, epoch):
        raise RuntimeError("sensor gone")

    monkeypatch.setattr(Component, "collect_power_usage", sensor_gone)
    callback = CarbonCallback(CarbonSettings(backend="carbontracker", cpu_power=10.0), verbose=False)
    history = _fit(callback, tmp_path / "run")
    assert len(history.epoch) == 3  # carbontracker would otherwise end the process
    assert callback.report.status == "failed" and "sensor gone" in callback.report.error


def test_a_resumed_run_predicts_the_remaining_epochs(tmp_path):
    _fit(CarbonCallback(verbose=False), tmp_path / "run", epochs=2)
    callback = CarbonCallback(verbose=False)
    _fit(callback, tmp_path / "run", epochs=4, resume=True)
    assert callback.report.epochs_planned == 2
    assert [e["epoch"] for e in callback.report.epochs] == [3, 4]


def test_carbon_sweep_rows_table_csv_and_plot(tmp_path, monkeypatch):
    x, y = _images(160)
    data = LabData(x[:96], y[:96], x[96:128], y[96:128], x[128:], y[128:], source={})
    settings = CarbonSettings(cpu_power=10.0, carbon_intensity=50.0)
    rows = carbon_sweep(data, (16, 48), (2, 1), settings, device="cpu", out_dir=tmp_path, progress=False)
    assert [(r.batch_size, r.epochs) for r in rows] == [(16, 1), (16, 2), (48, 1), (48, 2)]
    for one, two in (rows[:2], rows[2:]):
        assert two.energy_kwh > one.energy_kwh > 0 and two.seconds > one.seconds
    for row in rows:
        assert row.status == "complete" and row.method == USER_GIVEN and 0 <= row.test_accuracy <= 1
        assert row.co2eq_g == pytest.approx(row.energy_kwh * 50.0)
    assert _json(tmp_path / "batch-16" / "carbon.json")["status"] == "complete"

    table = format_sweep_table(rows).splitlines()
    assert len(table) == 5 and "energy kWh" in table[0]
    with open(write_sweep_csv(rows, tmp_path / "sweep.csv"), newline="") as handle:
        assert [int(r["batch_size"]) for r in csv.DictReader(handle)] == [16, 16, 48, 48]
    plot_carbon_sweep(rows, tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A rerun (after a kill) reuses the batch sizes that finished and trains only the others.
    (tmp_path / "batch-48" / "sweep_rows.json").unlink()
    trained = []
    monkeypatch.setattr(sweep, "_sweep_one", lambda data, batch, *args: trained.append(batch) or rows[2:])
    assert carbon_sweep(data, (16, 48), (2, 1), settings, device="cpu", out_dir=tmp_path, progress=False) == rows
    assert trained == [48]
    carbon_sweep(data, (16,), (3,), settings, device="cpu", out_dir=tmp_path, progress=False)
    assert trained == [48, 16]  # other epochs: not the stored run


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["carbon-sweep", "--country", "ZZZ"], "unknown country code 'ZZZ'"),
        (["carbon-sweep", "--carbon-intensity", "-3"], "carbon intensity must be"),
        (["train", "--carbon", "--cpu-power", "-3"], "CPU power must be a positive number of watts"),
    ],
)
def test_cli_refuses_bad_carbon_input_before_loading_data(tmp_path, capsys, argv, message):
    assert main([*argv, "--out", str(tmp_path / "out"), "--data", str(tmp_path / "missing.tar.gz")]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_cli_carbon_sweep_on_real_data(cifar10_archive, session_cache, tmp_path, capsys):
    argv = ["carbon-sweep", "--quick", "--batch-sizes", "64,512", "--epochs", "1", "--data", str(cifar10_archive)]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "energy kWh" in out and "Sweden (SWE)" in out
    with open(tmp_path / "carbon_sweep.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["batch_size"] for r in rows] == ["64", "512"] and all(float(r["energy_kwh"]) > 0 for r in rows)
    assert (tmp_path / "carbon_sweep.png").exists()
