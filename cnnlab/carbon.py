"""Energy and CO2-equivalent of training (lab part 6), through codecarbon (default) or carbontracker.

Neither library is re-implemented here. cnnlab asks the chosen one for the energy of each epoch,
says for every component whether the library *measured* it (RAPL, NVML, powermetrics) or
*estimated* it (a TDP table, a memory model, or a power the user gave), predicts the whole run
after the first epoch as carbontracker does, and stores the result in the run folder.

Both backends run offline. codecarbon's ``OfflineEmissionsTracker`` takes the country from the user.
carbontracker's ``CarbonTracker`` class would look the computer up by IP address and query live-
intensity services, so cnnlab drives its measuring pieces (components + ``CarbonTrackerThread``)
directly and takes the intensity from carbontracker's own per-country table: no network, no wait.

On virtual machines the libraries' CPU guesses differ several-fold (here 8 W for codecarbon and
60 W for carbontracker on the same 2-vCPU slice), so the CPU power and the grid's carbon intensity
can be given; each override goes through the library's own option for it.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.metadata
import importlib.resources
import importlib.util
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from functools import cache
from pathlib import Path

from tqdm.auto import tqdm

from cnnlab.errors import ConfigError
from cnnlab.files import atomic_write, write_json
from cnnlab.models import SWEEP_MODEL, create_model
from cnnlab.training import Callback

BACKENDS = ("codecarbon", "carbontracker")
DEFAULT_COUNTRY = "SWE"  # the lab's course runs in Sweden; every report says that this is a default
CAR_G_CO2EQ_PER_KM = 106.8
CAR_FACTOR_SOURCE = (
    "EEA: average CO2 of new passenger cars registered in the EU in 2024, 106.8 g/km (the factor carbontracker uses)"
)
MEASURED, ESTIMATED, USER_GIVEN = "measured", "estimated", "estimated (user-given power)"
CARBON_FILE = "carbon.json"


@cache
def _codecarbon_countries() -> dict:
    from codecarbon.input import DataSource

    return DataSource().get_global_energy_mix_data()


@cache
def _carbontracker_countries() -> dict[str, dict]:
    """carbontracker's table of average intensity per country, keyed by 3-letter ISO code."""
    table = importlib.resources.files("carbontracker").joinpath("data", "carbon-intensities.csv")
    with table.open(newline="") as handle:
        return {row["Code"]: row for row in csv.DictReader(handle)}


@dataclass(frozen=True)
class CarbonSettings:
    """Which library tracks, where the electricity comes from, and the user's overrides.

    ``country``: 3-letter ISO code of the grid (default Sweden, where the lab is taught).
    ``cpu_power``: the CPU's power at full load in watts, instead of the library's guess.
    ``carbon_intensity``: grams CO2eq per kWh, instead of the country's yearly average.
    """

    backend: str = "codecarbon"
    country: str = DEFAULT_COUNTRY
    cpu_power: float | None = None
    carbon_intensity: float | None = None

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown carbon backend {self.backend!r}; choose one of {BACKENDS}")
        if self.backend == "carbontracker" and importlib.util.find_spec("carbontracker") is None:
            raise ConfigError(
                "carbontracker is not installed; install the extra with pip install 'cnnlab[carbontracker]' "
                "or use the codecarbon backend"
            )
        if self.cpu_power is not None and not (math.isfinite(self.cpu_power) and self.cpu_power > 0):
            raise ConfigError(
                f"CPU power must be a positive number of watts (the CPU's draw at full load), got {self.cpu_power}"
            )
        if self.carbon_intensity is not None and not (
            math.isfinite(self.carbon_intensity) and self.carbon_intensity >= 0
        ):
            raise ConfigError(
                f"carbon intensity must be a number of g CO2eq per kWh, 0 or more, got {self.carbon_intensity}"
            )
        code = str(self.country).strip().upper()
        if code not in _codecarbon_countries():
            hint = " (a 2-letter code? use the 3-letter one, e.g. SWE for SE)" if len(code) == 2 else ""
            raise ConfigError(
                f"unknown country code {self.country!r}{hint}: give the 3-letter ISO 3166 code of the "
                "country whose grid powers the computer, e.g. SWE, DEU, FRA, USA"
            )
        if self.backend == "carbontracker" and self.carbon_intensity is None and code not in _carbontracker_countries():
            raise ConfigError(
                f"carbontracker has no average carbon intensity for {code}; give one with --carbon-intensity G_PER_KWH"
            )
        object.__setattr__(self, "country", code)

    @property
    def country_name(self) -> str:
        return _codecarbon_countries()[self.country]["country_name"]

    def intensity(self) -> tuple[float, str]:
        """The grid intensity (g CO2eq/kWh) this backend will use, and where the number comes from."""
        if self.carbon_intensity is not None:
            return float(self.carbon_intensity), "user-given"
        if self.backend == "carbontracker":
            row = _carbontracker_countries()[self.country]
            return float(row["Carbon intensity of electricity (gCO2eq/kWh)"]), (
                f"carbontracker's {row['Year']} average for {self.country_name}"
            )
        mix = _codecarbon_countries()[self.country]
        return float(mix["carbon_intensity"]), f"codecarbon's {mix['year']} average for {self.country_name}"


@dataclass
class EpochEnergy:
    seconds: float
    energy_kwh: float
    co2eq_g: float


@dataclass
class PowerSource:
    """One component the library tracks, and how: measured, or estimated from what."""

    name: str
    method: str
    detail: str


class _CodeCarbonMeter:
    """codecarbon's offline tracker, one task per epoch; this process's share of CPU and memory."""

    def __init__(self, settings: CarbonSettings):
        import codecarbon
        from codecarbon import OfflineEmissionsTracker

        # Importing codecarbon sets its logger to INFO; its start-up notes are summarised by cnnlab instead.
        logging.getLogger("codecarbon").setLevel(logging.ERROR)
        options = {}
        if settings.cpu_power is not None:
            options["force_cpu_power"] = settings.cpu_power
        if settings.carbon_intensity is not None:
            options["force_carbon_intensity_g_co2e_kwh"] = settings.carbon_intensity
        self.settings, self.version, self.pue = settings, codecarbon.__version__, 1.0
        self.tracker = OfflineEmissionsTracker(
            country_iso_code=settings.country,
            output_methods=[],  # no emissions.csv: cnnlab writes carbon.json into the run folder
            tracking_mode="process",  # a shared machine: count this training, not the neighbours
            log_level="error",
            **options,
        )

    def start(self) -> None:
        self.tracker.get_detected_hardware()  # probe the hardware now, not inside the first epoch

    def begin_epoch(self) -> None:
        self.tracker.start_task()

    def end_epoch(self) -> EpochEnergy:
        data = self.tracker.stop_task()
        if data is None:
            raise RuntimeError("codecarbon returned no measurement for the epoch")
        self.pue = data.pue
        return EpochEnergy(data.duration, data.energy_consumed, data.emissions * 1000)

    def sources(self) -> list[PowerSource]:
        from codecarbon.external.hardware import CPU, GPU, AppleSiliconChip
        from codecarbon.external.ram import RAM

        found = []
        for hardware in self.tracker._hardware:  # codecarbon has no public accessor for its methods
            if isinstance(hardware, CPU):
                found.append(self._cpu_source(hardware))
            elif isinstance(hardware, GPU):
                found.append(PowerSource("GPU", MEASURED, "NVML / AMD SMI power readings"))
            elif isinstance(hardware, AppleSiliconChip):
                found.append(PowerSource(hardware.chip_part, MEASURED, "powermetrics"))
            elif isinstance(hardware, RAM):
                found.append(
                    PowerSource("RAM", ESTIMATED, "codecarbon's memory model (5 W per DIMM, at least 10 W on x86)")
                )
            else:
                found.append(PowerSource(type(hardware).__name__, ESTIMATED, repr(hardware)))
        return found

    def _cpu_source(self, cpu) -> PowerSource:
        if cpu._mode in ("intel_rapl", "windows_emi", "intel_power_gadget"):
            return PowerSource("CPU", MEASURED, f"{cpu._mode} energy counters (whole CPU package)")
        given = self.settings.cpu_power is not None
        origin = "the user-given" if given else "codecarbon's table value of"
        share = "x this process's share of CPU time" if cpu._mode == "cpu_load" else f"({cpu._mode} mode)"
        return PowerSource("CPU", USER_GIVEN if given else ESTIMATED, f"{origin} {cpu._tdp:g} W at full load {share}")

    def close(self) -> None:
        if self.tracker._active_task:  # an epoch that never ended (an error inside it)
            self.tracker.stop_task()


class _CarbonTrackerMeter:
    """carbontracker's components and measuring thread, without its geo-IP and live-intensity lookups."""

    def __init__(self, settings: CarbonSettings):
        from carbontracker import constants
        from carbontracker.components import component

        simulated = {}
        if settings.cpu_power is not None:  # carbontracker's own option for a CPU of known power
            simulated = {"sim_cpu": "CPU of user-given power", "sim_cpu_tdp": settings.cpu_power}
        self.settings, self.version = settings, importlib.metadata.version("carbontracker")
        self.pue = constants.PUE_2023  # carbontracker multiplies its energy by a data-centre average
        self.intensity = settings.intensity()[0]
        self.logger = _carbontracker_logger()
        self.components = component.create_components(
            "all", pids=[os.getpid()], devices_by_pid=False, logger=self.logger, **simulated
        )
        self.thread = None
        self.failure: BaseException | None = None

    def start(self) -> None:
        from carbontracker.tracker import CarbonTrackerThread

        # Power is sampled every 0.2 s, not carbontracker's 1 s: an epoch with no sample gets a copy of the
        # previous epoch's energy, and on a GPU the lab's epochs last about a second.
        self.thread = CarbonTrackerThread(
            components=self.components, logger=self.logger, ignore_errors=True, delete=self._stopped_by_error,
            update_interval=0.2,
        )  # fmt: skip

    def _stopped_by_error(self) -> None:
        # carbontracker calls this from inside its `except` block, so the exception is at hand.
        self.failure = sys.exc_info()[1] or RuntimeError("carbontracker stopped monitoring")

    def _raise_failure(self) -> None:
        if self.failure is not None:
            raise RuntimeError(f"carbontracker stopped: {type(self.failure).__name__}: {self.failure}")

    def begin_epoch(self) -> None:
        self._raise_failure()
        self.thread.epoch_start()

    def end_epoch(self) -> EpochEnergy:
        self.thread.epoch_end()
        self._raise_failure()
        energy = float(self.thread.total_energy_per_epoch()[-1])
        return EpochEnergy(self.thread.epoch_times[-1], energy, energy * self.intensity)

    def sources(self) -> list[PowerSource]:
        from carbontracker.components.cpu.generic import GenericCPU
        from carbontracker.components.cpu.sim_cpu import SimulatedCPUHandler

        how = {"IntelCPU": "RAPL energy counters", "NvidiaGPU": "NVML power readings"}
        found = []
        for component in self.thread.components if self.thread else self.components:
            handler, name = component.handler, component.name.upper()
            if isinstance(handler, SimulatedCPUHandler):
                detail = f"the user-given {self.settings.cpu_power:g} W x the 50% load carbontracker assumes"
                found.append(PowerSource(name, USER_GIVEN, detail))
            elif isinstance(handler, GenericCPU):
                detail = f"{handler.tdp:g} W: carbontracker's TDP for {handler.cpu_brand!r} x the 50% load it assumes"
                found.append(PowerSource(name, ESTIMATED, detail))
            else:
                kind = type(handler).__name__
                found.append(PowerSource(name, MEASURED, how.get(kind, kind)))
        return found

    def close(self) -> None:
        if self.thread is not None:
            self.thread.stop()


@cache
def _carbontracker_logger():
    """One carbontracker logger for the process (each new one adds console handlers), errors only:
    cnnlab reports what carbontracker assumed itself."""
    from carbontracker import loggerutil
    from carbontracker.components.cpu import generic

    logger = loggerutil.Logger(log_dir=None, verbose=0, logger_id="cnnlab")
    for chatty in (logger, generic.logger):
        chatty.logger_err.setLevel(logging.ERROR)
    return logger


def _make_meter(settings: CarbonSettings):
    return (_CodeCarbonMeter if settings.backend == "codecarbon" else _CarbonTrackerMeter)(settings)


def overall_method(sources: Sequence[PowerSource]) -> str:
    """One word for the whole run: measured, partly measured, or estimated (and from whose power)."""
    methods = {source.method for source in sources}
    if methods == {MEASURED}:
        return MEASURED
    if MEASURED in methods:
        return "partly measured"
    return USER_GIVEN if USER_GIVEN in methods else ESTIMATED


def _amounts(seconds: float, energy_kwh: float, co2eq_g: float) -> dict:
    return {
        "seconds": seconds,
        "energy_kwh": energy_kwh,
        "co2eq_g": co2eq_g,
        "car_km": co2eq_g / CAR_G_CO2EQ_PER_KM,
    }


def predict(epochs: Sequence[EpochEnergy], total_epochs: int) -> dict:
    """The whole run from the epochs measured so far: their mean per epoch times the epoch count."""
    scale = total_epochs / len(epochs)
    sums = _sums(epochs)
    return {"epochs": total_epochs, "after_epochs": len(epochs), **_amounts(*(v * scale for v in sums))}


def _sums(epochs: Sequence[EpochEnergy]) -> tuple[float, float, float]:
    return tuple(sum(getattr(e, key) for e in epochs) for key in ("seconds", "energy_kwh", "co2eq_g"))


@dataclass
class CarbonReport:
    """What carbon.json holds: the setting, how each component was tracked, per-epoch figures,
    the prediction after the first epoch and the totals (None until training ends, or on failure)."""

    backend: str
    country: str
    country_name: str
    country_is_default: bool
    carbon_intensity_g_per_kwh: float
    carbon_intensity_source: str
    status: str = "running"
    error: str | None = None
    backend_version: str | None = None
    pue: float | None = None
    method: str | None = None
    components: list[dict] = field(default_factory=list)
    epochs_planned: int | None = None
    epochs: list[dict] = field(default_factory=list)
    prediction: dict | None = None
    total: dict | None = None
    car_g_co2eq_per_km: float = CAR_G_CO2EQ_PER_KM
    car_factor_source: str = CAR_FACTOR_SOURCE

    def metrics(self) -> dict:
        """The flat fields a run's metrics.json gets."""
        fields = {
            "carbon_status": self.status,
            "carbon_backend": self.backend,
            "carbon_method": self.method,
            "carbon_country": self.country,
            "carbon_intensity_g_per_kwh": self.carbon_intensity_g_per_kwh,
            **{f"carbon_{k}": v for k, v in (self.total or {}).items()},
        }
        if self.error:
            fields["carbon_error"] = self.error
        return fields


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


def format_amounts(label: str, amounts: dict) -> str:
    return (
        f"{label}: time {_clock(amounts['seconds'])}, energy {amounts['energy_kwh']:.3g} kWh, "
        f"{amounts['co2eq_g']:.3g} g CO2eq = {amounts['car_km']:.3g} km by car"
    )


def describe_setting(report: CarbonReport) -> str:
    """Backend, grid, intensity and, per component, measured or estimated from what."""
    default = ", the default: set --country" if report.country_is_default else ""
    lines = [
        f"Carbon ({report.backend} {report.backend_version or ''}): grid {report.country_name} "
        f"({report.country}{default}) at {report.carbon_intensity_g_per_kwh:.4g} g CO2eq/kWh "
        f"({report.carbon_intensity_source}); PUE {report.pue:.2f}; car {CAR_G_CO2EQ_PER_KM} g CO2eq/km (EEA 2024)"
    ]
    lines += [f"  {c['name']}: {c['method']}, {c['detail']}" for c in report.components]
    return "\n".join(lines)


class CarbonCallback(Callback):
    """Track a fit's energy and CO2eq: a prediction after the first epoch, the actual figures at the
    end, both in ``self.report``, in carbon.json and in metrics.json of the run folder.

    A tracking failure never stops training: the report then says ``status: failed`` and why.
    """

    def __init__(self, settings: CarbonSettings | None = None, *, verbose: bool = True,
                 print_fn: Callable[[str], None] = print):  # fmt: skip
        self.settings = settings or CarbonSettings()
        self.verbose, self.print_fn = verbose, print_fn
        self.report: CarbonReport | None = None
        self._meter = None
        self._measured: list[EpochEnergy] = []
        self._first_epoch: int | None = None
        self._announcement: list[str] = []  # printed when the next epoch begins, after fit's epoch line

    # ------------------------------------------------------------------ fit hooks
    def on_train_begin(self, logs=None):
        intensity, source = self.settings.intensity()
        self.report = CarbonReport(
            backend=self.settings.backend,
            country=self.settings.country,
            country_name=self.settings.country_name,
            country_is_default=self.settings.country == DEFAULT_COUNTRY,
            carbon_intensity_g_per_kwh=intensity,
            carbon_intensity_source=source,
        )
        self._measured, self._first_epoch, self._announcement = [], None, []
        self._guard(self._start)

    def on_epoch_begin(self, epoch, logs=None):
        self._flush_announcement()
        if self._first_epoch is None:
            self._first_epoch = epoch
            self.report.epochs_planned = getattr(self, "params", {}).get("epochs", epoch + 1) - epoch
        if self._meter is not None:
            self._guard(self._meter.begin_epoch)

    def on_epoch_end(self, epoch, logs=None):
        if self._meter is not None:
            self._guard(lambda: self._record_epoch(epoch))

    def on_train_end(self, logs=None):
        self._announcement = self._announcement[:1]  # after a single epoch the prediction is the actual
        self._flush_announcement()
        if self._meter is not None:
            self._guard(self._finish)

    def run_metrics(self) -> dict:
        return self.report.metrics() if self.report else {}

    # ------------------------------------------------------------------ steps
    def _start(self) -> None:
        self._meter = _make_meter(self.settings)
        self.report.backend_version = self._meter.version
        self._meter.start()

    def _record_epoch(self, epoch: int) -> None:
        measured = self._meter.end_epoch()
        self._measured.append(measured)
        self.report.epochs.append({"epoch": epoch + 1, **_amounts(**asdict(measured))})
        if len(self._measured) == 1:
            self._describe()
            self.report.prediction = predict(self._measured, self.report.epochs_planned)
            label = f"predicted for {self.report.epochs_planned} epoch(s) after 1"
            self._announcement = [describe_setting(self.report), "  " + format_amounts(label, self.report.prediction)]
        self._save()

    def _flush_announcement(self) -> None:
        if self.verbose and self._announcement:
            self.print_fn("\n".join(self._announcement))
        self._announcement = []

    def _describe(self) -> None:
        sources = self._meter.sources()
        self.report.components = [asdict(source) for source in sources]
        self.report.method = overall_method(sources)
        self.report.pue = self._meter.pue

    def _finish(self) -> None:
        self._meter.close()
        self._meter = None
        self.report.total = _amounts(*_sums(self._measured))
        self.report.status = "complete"
        if self.verbose:
            n = len(self._measured)
            self.print_fn(
                f"Carbon ({self.report.method or 'nothing measured'}): "
                + format_amounts(f"actual for {n} epoch(s)", self.report.total)
            )
        self._save()

    def _guard(self, step: Callable[[], None]) -> None:
        """Run one tracking step; on any error record it, stop tracking and let training go on."""
        try:
            step()
        except Exception as error:  # a tracker's failure must never end the training run
            self.report.status, self.report.error = "failed", f"{type(error).__name__}: {error}"
            self.report.total = None
            if self.verbose:
                self.print_fn(f"Carbon tracking failed ({self.report.error}); training goes on without it")
            meter, self._meter = self._meter, None
            if meter is not None:
                with contextlib.suppress(Exception):  # already failing: the first error is the one to report
                    meter.close()
            self._save()

    def _save(self) -> None:
        if getattr(self, "run_dir", None):
            write_json(Path(self.run_dir) / CARBON_FILE, asdict(self.report))


# ---------------------------------------------------------------------- the lab's experiment
@dataclass
class SweepRow:
    """One training setting of the sweep and what it cost."""

    batch_size: int
    epochs: int
    test_accuracy: float
    seconds: float | None
    energy_kwh: float | None
    co2eq_g: float | None
    car_km: float | None
    method: str | None
    status: str


class _TestAccuracyAt(Callback):
    """Evaluate on the test images at the chosen epochs, and move a progress bar each epoch."""

    def __init__(self, epochs: set[int], x_test, y_test, bar):
        self.epochs, self.x_test, self.y_test, self.bar = epochs, x_test, y_test, bar
        self.accuracy: dict[int, float] = {}

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 in self.epochs:
            self.accuracy[epoch + 1] = self.model.evaluate(self.x_test, self.y_test)[1]
        self.bar.update()


def carbon_sweep(
    data,
    batch_sizes: Sequence[int] = (20, 64, 128, 512),
    epochs_list: Sequence[int] = (5, 10),
    settings: CarbonSettings | None = None,
    *,
    seed: int = 0,
    device: str = "auto",
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> list[SweepRow]:
    """Train the lab's fixed CNN (``SWEEP_MODEL``) for every batch size and epoch count; return what
    each cost in energy and CO2eq and the test accuracy it reached.

    Each batch size trains once, for the largest epoch count: a run of 10 epochs passes through
    exactly the state of a 5-epoch run (same seed, same steps), so the 5-epoch row takes the energy
    of the first 5 epochs and the test accuracy after epoch 5. Test evaluation is not tracked.
    ``data`` is a LabData (x/y train, val, test; uint8 or floats): the model takes its classes and image
    size. With ``out_dir`` each batch size gets a run folder,
    and a rerun reuses the batch sizes that finished there.
    """
    settings = settings or CarbonSettings()
    if not batch_sizes or not epochs_list or min(batch_sizes) < 1 or min(epochs_list) < 1:
        raise ConfigError(
            f"need positive batch sizes and epoch counts, got {list(batch_sizes)} and {list(epochs_list)}"
        )
    epochs_list = sorted(set(epochs_list))
    # What a stored row must match to be reused: the same data (classes, sizes) and the same schedule.
    setting = {"epochs": epochs_list, "seed": seed, "samples": len(data.x_train), "classes": list(data.class_names)}
    rows = []
    with tqdm(total=len(batch_sizes) * epochs_list[-1], desc="carbon sweep", unit="epoch",
              disable=None if progress else True) as bar:  # fmt: skip
        for batch_size in batch_sizes:
            run_dir = Path(out_dir) / f"batch-{batch_size}" if out_dir else None
            finished = _finished_sweep_rows(run_dir, setting)
            if finished is None:
                finished = _sweep_one(data, batch_size, setting, settings, device, run_dir, bar)
            else:
                bar.update(epochs_list[-1])
            rows.extend(finished)
    return rows


SWEEP_ROWS_FILE = "sweep_rows.json"


def _sweep_one(data, batch_size, setting, settings, device, run_dir, bar) -> list[SweepRow]:
    """Train one batch size for the largest epoch count; with a run folder, store its rows there so
    that a rerun of a killed sweep skips the batch sizes that finished."""
    epochs_list, seed = setting["epochs"], setting["seed"]
    config = SWEEP_MODEL.replace(
        input_shape=data.input_shape, class_names=tuple(data.class_names), num_classes=None, seed=seed
    )
    model = create_model(config, device)
    tracker = CarbonCallback(settings, verbose=False)
    tests = _TestAccuracyAt(set(epochs_list), data.x_test, data.y_test, bar)
    model.fit(
        data.x_train, data.y_train, batch_size=batch_size, epochs=epochs_list[-1], verbose=0,
        validation_data=(data.x_val, data.y_val), callbacks=[tracker, tests], seed=seed, run_dir=run_dir,
    )  # fmt: skip
    report = tracker.report
    status = f"failed: {report.error}" if report.error else report.status
    rows = []
    for epochs in epochs_list:
        spent = [EpochEnergy(e["seconds"], e["energy_kwh"], e["co2eq_g"]) for e in report.epochs[:epochs]]
        amounts = _amounts(*_sums(spent)) if status == "complete" else dict.fromkeys(_amounts(0, 0, 0))
        rows.append(SweepRow(batch_size, epochs, tests.accuracy[epochs], method=report.method, status=status,
                             **amounts))  # fmt: skip
    if run_dir is not None and status == "complete":
        write_json(run_dir / SWEEP_ROWS_FILE, {**setting, "rows": [asdict(r) for r in rows]})
    return rows


def _finished_sweep_rows(run_dir: Path | None, setting: dict) -> list[SweepRow] | None:
    """The rows a finished run with the same ``setting`` (epochs, seed, training images) stored there;
    None when the batch size must be trained."""
    if run_dir is None:
        return None
    try:
        stored = json.loads((run_dir / SWEEP_ROWS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if any(stored.get(key) != value for key, value in setting.items()):
        return None
    return [SweepRow(**row) for row in stored["rows"]]


SWEEP_COLUMNS = ("batch_size", "epochs", "test_accuracy", "seconds", "energy_kwh", "co2eq_g", "car_km", "method")


def format_sweep_table(rows: Sequence[SweepRow]) -> str:
    """A plain-text table, one row per setting, cheapest first within each epoch count."""
    names = ("batch", "epochs", "test acc", "time s", "energy kWh", "g CO2eq", "car km")
    widths = (6, 6, 8, 8, 11, 9, 9)
    lines = [" ".join(f"{name:>{width}}" for name, width in zip(names, widths, strict=True)) + "  method"]
    for row in sorted(rows, key=lambda r: (r.epochs, r.batch_size)):
        if row.energy_kwh is None:
            lines.append(f"{row.batch_size:>6} {row.epochs:>6} {row.test_accuracy:>8.4f}  {row.status}")
            continue
        lines.append(
            f"{row.batch_size:>6} {row.epochs:>6} {row.test_accuracy:>8.4f} {row.seconds:>8.1f} "
            f"{row.energy_kwh:>11.3g} {row.co2eq_g:>9.3g} {row.car_km:>9.3g}  {row.method}"
        )
    return "\n".join(lines)


def write_sweep_csv(rows: Sequence[SweepRow], path: str | os.PathLike) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=[f for f in SweepRow.__dataclass_fields__])
            writer.writeheader()
            writer.writerows(asdict(row) for row in rows)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, write)
    return path


def plot_carbon_sweep(rows: Sequence[SweepRow], path: str | os.PathLike | None = None, *, title: str | None = None):
    """Test accuracy against energy (bottom axis) and CO2eq (top axis), one colour per batch size and
    one marker per epoch count, so the cheap and the accurate settings stand out."""
    import matplotlib.pyplot as plt

    from cnnlab.plots import save_figure

    measured = [row for row in rows if row.energy_kwh is not None]
    fig, axis = plt.subplots(figsize=(8, 5))
    batch_sizes = sorted({row.batch_size for row in measured})
    epoch_counts = sorted({row.epochs for row in measured})
    colours = plt.get_cmap("viridis")([i / max(1, len(batch_sizes) - 1) for i in range(len(batch_sizes))])
    markers = "osD^v<>p*h"
    for row in measured:
        axis.scatter(row.energy_kwh * 1000, row.test_accuracy, s=60,
                     color=colours[batch_sizes.index(row.batch_size)],
                     marker=markers[epoch_counts.index(row.epochs) % len(markers)])  # fmt: skip
        axis.annotate(f"{row.batch_size}/{row.epochs}", (row.energy_kwh * 1000, row.test_accuracy),
                      textcoords="offset points", xytext=(5, 4), fontsize=8)  # fmt: skip
    for size, colour in zip(batch_sizes, colours, strict=True):
        axis.scatter([], [], color=colour, marker="o", label=f"batch {size}")
    for i, epochs in enumerate(epoch_counts):
        label = f"{epochs} epoch" + ("s" if epochs > 1 else "")
        axis.scatter([], [], color="grey", marker=markers[i % len(markers)], label=label)
    axis.set_xlabel("energy (Wh)")
    axis.set_ylabel("test accuracy")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="best")
    grams_per_kwh = [row.co2eq_g / row.energy_kwh for row in measured if row.energy_kwh]
    if grams_per_kwh:  # one grid intensity for the whole sweep: CO2eq is energy on another scale
        factor = sum(grams_per_kwh) / len(grams_per_kwh)
        top = axis.secondary_xaxis("top", functions=(lambda wh: wh * factor, lambda mg: mg / factor))
        top.set_xlabel(f"mg CO2eq (at {factor:.4g} g/kWh)")
    axis.set_title(title or "Lab CNN: cost of training settings (labels: batch size / epochs)", fontsize=10)
    if path is not None:
        save_figure(fig, path)
    return fig
