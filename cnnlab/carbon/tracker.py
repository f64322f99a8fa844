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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path

from cnnlab.carbon.meters import EpochEnergy, make_meter, overall_method
from cnnlab.carbon.settings import CAR_FACTOR_SOURCE, CAR_G_CO2EQ_PER_KM, DEFAULT_COUNTRY, CarbonSettings
from cnnlab.core.files import write_json
from cnnlab.train.callbacks import Callback

CARBON_FILE = "carbon.json"


def carbon_amounts(seconds: float, energy_kwh: float, co2eq_g: float) -> dict:
    return {
        "seconds": seconds,
        "energy_kwh": energy_kwh,
        "co2eq_g": co2eq_g,
        "car_km": co2eq_g / CAR_G_CO2EQ_PER_KM,
    }


def predict(epochs: Sequence[EpochEnergy], total_epochs: int) -> dict:
    """The whole run from the epochs measured so far: their mean per epoch times the epoch count."""
    scale = total_epochs / len(epochs)
    sums = energy_sums(epochs)
    return {"epochs": total_epochs, "after_epochs": len(epochs), **carbon_amounts(*(v * scale for v in sums))}


def energy_sums(epochs: Sequence[EpochEnergy]) -> tuple[float, float, float]:
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

    def _start(self) -> None:
        self._meter = make_meter(self.settings)
        self.report.backend_version = self._meter.version
        self._meter.start()

    def _record_epoch(self, epoch: int) -> None:
        measured = self._meter.end_epoch()
        self._measured.append(measured)
        self.report.epochs.append({"epoch": epoch + 1, **carbon_amounts(**asdict(measured))})
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
        self.report.total = carbon_amounts(*energy_sums(self._measured))
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
