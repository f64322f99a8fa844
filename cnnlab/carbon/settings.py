"""How energy becomes CO2: the backend, the country (its grid's carbon intensity) and the car comparison."""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.resources
import importlib.util
import math
from dataclasses import dataclass
from functools import cache

from cnnlab.core.errors import ConfigError

BACKENDS = ("codecarbon", "carbontracker")
DEFAULT_COUNTRY = "SWE"  # the lab's course runs in Sweden; every report says that this is a default
CAR_G_CO2EQ_PER_KM = 106.8
CAR_FACTOR_SOURCE = (
    "EEA: average CO2 of new passenger cars registered in the EU in 2024, 106.8 g/km (the factor carbontracker uses)"
)


MEASURED, ESTIMATED, USER_GIVEN = "measured", "estimated", "estimated (user-given power)"


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
