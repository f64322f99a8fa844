"""Energy meters: codecarbon and carbontracker behind one small interface (start, per-epoch energy, sources).

Each backend measures what this machine allows (RAPL, NVML) and estimates the rest; ``sources`` says which.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import importlib.util
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

from cnnlab.carbon.settings import ESTIMATED, MEASURED, USER_GIVEN, CarbonSettings


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


def make_meter(settings: CarbonSettings):
    return (_CodeCarbonMeter if settings.backend == "codecarbon" else _CarbonTrackerMeter)(settings)


def overall_method(sources: Sequence[PowerSource]) -> str:
    """One word for the whole run: measured, partly measured, or estimated (and from whose power)."""
    methods = {source.method for source in sources}
    if methods == {MEASURED}:
        return MEASURED
    if MEASURED in methods:
        return "partly measured"
    return USER_GIVEN if USER_GIVEN in methods else ESTIMATED
