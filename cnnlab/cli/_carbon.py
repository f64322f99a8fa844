"""Carbon options shared by the commands that train (`train`, `carbon-sweep`, `tune`): flags to settings."""

from __future__ import annotations

import argparse

from cnnlab.carbon.settings import BACKENDS, DEFAULT_COUNTRY, CarbonSettings
from cnnlab.carbon.tracker import CarbonCallback


def add_carbon_options(parser: argparse.ArgumentParser, *, tracking_default: bool | None = None) -> None:
    """The carbon flags; with ``tracking_default`` also --carbon/--no-carbon, on or off by default."""
    group = parser.add_argument_group("carbon footprint")
    if tracking_default is not None:
        group.add_argument(
            "--carbon", action=argparse.BooleanOptionalAction, default=tracking_default,
            help="track energy and CO2eq: a prediction after the first epoch, the actual figures at the end, "
            "carbon.json in the run folder",
        )  # fmt: skip
    group.add_argument(
        "--carbon-backend", choices=BACKENDS, default="codecarbon",
        help="codecarbon (offline; the default) or carbontracker (the lab's tool; pip install "
        "'cnnlab[carbontracker]')",
    )  # fmt: skip
    group.add_argument(
        "--country", default=DEFAULT_COUNTRY, metavar="ISO3",
        help="3-letter ISO code of the country whose grid powers the computer; sets the carbon intensity "
        f"(default: {DEFAULT_COUNTRY}, where the lab is taught)",
    )  # fmt: skip
    group.add_argument(
        "--cpu-power", type=float, metavar="WATTS",
        help="the CPU's power at full load, instead of the library's guess (on virtual machines the "
        "guesses differ several-fold)",
    )  # fmt: skip
    group.add_argument(
        "--carbon-intensity", type=float, metavar="G_PER_KWH",
        help="grams CO2eq per kWh of the grid, instead of the country's yearly average",
    )  # fmt: skip


def carbon_settings(args: argparse.Namespace) -> CarbonSettings:
    """The settings from the parsed flags; bad values raise ConfigError before any work starts."""
    return CarbonSettings(
        backend=args.carbon_backend, country=args.country, cpu_power=args.cpu_power,
        carbon_intensity=args.carbon_intensity,
    )  # fmt: skip


def carbon_callbacks(args: argparse.Namespace) -> list[CarbonCallback]:
    """[CarbonCallback] when --carbon is on, else []: what a command adds to fit's callbacks."""
    return [CarbonCallback(carbon_settings(args))] if args.carbon else []
