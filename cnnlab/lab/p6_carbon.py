"""Part 6: Carbon footprint.

The energy and CO2-equivalent of every training run of this lab (tracked while it trained), and the
lab's experiment: one fixed architecture trained with several batch sizes and epoch counts.
"""

from __future__ import annotations

import json
import math

from cnnlab.carbon.settings import CarbonSettings
from cnnlab.carbon.tracker import CARBON_FILE
from cnnlab.data.cifar import accuracy_caveat
from cnnlab.experiments.carbon_sweep import carbon_sweep, plot_carbon_sweep
from cnnlab.lab.context import LabContext
from cnnlab.lab.store import Section, Table
from cnnlab.models.cnn import SWEEP_MODEL

ESTIMATED_SECONDS = {"full": 125, "quick": 20, "tiny": 15}
SWEEP_DIR = "carbon-sweep"
# The lab's thought experiment (question 30).
SERVICE_PARAMETERS = 100_000_000
SERVICE_USERS = 5_000_000


def _lab_runs(ctx: LabContext) -> list[list]:
    """One row per training run of this lab that recorded its energy (runs/KEY/carbon.json)."""
    rows = []
    for path in sorted((ctx.out / "runs").glob(f"*/{CARBON_FILE}")):
        record = json.loads(path.read_text())
        total = record.get("total")
        if record.get("status") != "complete" or not total:
            continue
        rows.append(
            [
                path.parent.name,
                len(record.get("epochs", [])),
                f"{total['seconds']:.0f}",
                f"{total['energy_kwh']:.2e}",
                f"{total['co2eq_g']:.3g}",
                record.get("method") or "",
            ]
        )
    return rows


def _setting(ctx: LabContext) -> dict | None:
    """The backend, grid and intensity the sweep's tracker used (from one of its run folders)."""
    for path in sorted((ctx.out / "runs" / SWEEP_DIR).glob(f"*/{CARBON_FILE}")):
        return json.loads(path.read_text())
    return None


def run(ctx: LabContext) -> Section:
    data = ctx.lab_data()
    caveat = accuracy_caveat(data.source)
    batch_sizes = ctx.setting((20, 64, 128, 512), (32, 128, 512), tiny=(64, 256))
    epoch_counts = ctx.setting((5, 10), (1, 2), tiny=(1, 2))
    rows = carbon_sweep(
        data, batch_sizes, epoch_counts, CarbonSettings(), device=ctx.device, out_dir=ctx.out / "runs" / SWEEP_DIR
    )
    plot_carbon_sweep(rows, ctx.path("figures", "carbon_sweep.png"))
    setting = _setting(ctx) or {}
    measured = [row for row in rows if row.energy_kwh is not None]
    run_rows = _lab_runs(ctx)

    sweep_table = Table(
        "Batch size and epochs against time, energy and CO2eq (architecture fixed)",
        ["batch", "epochs", "steps/epoch", "test acc", "time s", "energy kWh", "g CO2eq", "car km", "method"],
        [
            [
                r.batch_size,
                r.epochs,
                math.ceil(len(data.x_train) / r.batch_size),
                f"{r.test_accuracy:.3f}",
                *(
                    ["", "", "", "", r.status]
                    if r.energy_kwh is None
                    else [f"{r.seconds:.1f}", f"{r.energy_kwh:.2e}", f"{r.co2eq_g:.3g}", f"{r.car_km:.2e}", r.method]
                ),
            ]
            for r in sorted(rows, key=lambda r: (r.epochs, r.batch_size))
        ],
    )
    tables = [sweep_table]
    if run_rows:
        tables.append(
            Table(
                "Every training run of this lab report",
                ["run", "epochs", "time s", "energy kWh", "g CO2eq", "method"],
                run_rows,
            )
        )
    if not measured:
        answers = [
            (
                "28-30. Carbon footprint",
                f"Energy tracking failed in every run ({rows[0].status}), so there is nothing to compare.",
            )
        ]
    else:
        answers = _answers(data, measured, setting, caveat)
    intensity = setting.get("carbon_intensity_g_per_kwh")
    return Section(
        key="carbon",
        title="Part 6: Carbon footprint",
        intro="Energy is tracked per epoch with "
        + (
            f"{setting.get('backend')} {setting.get('backend_version') or ''} on the grid of "
            f"{setting.get('country_name')} ({setting.get('country')}"
            + (", the default: this lab is taught in Sweden" if setting.get("country_is_default") else "")
            + f") at {intensity:.4g} g CO2eq/kWh ({setting.get('carbon_intensity_source')}). "
            + "; ".join(f"{c['name']}: {c['method']}, {c['detail']}" for c in setting.get("components", []))
            + ". "
            if setting
            else "the configured backend. "
        )
        + f"The sweep trains the lab's fixed model ({_model_text()}) with each batch size for "
        f"{max(epoch_counts)} epochs; the {min(epoch_counts)}-epoch rows are the same runs after epoch "
        f"{min(epoch_counts)}{caveat}.",
        figures=[("figures/carbon_sweep.png", "Test accuracy against the energy of each training setting")],
        tables=tables,
        answers=answers,
        facts={
            "sweep": [row.__dict__ for row in rows],
            "runs": run_rows,
            "setting": {k: setting.get(k) for k in ("backend", "country", "carbon_intensity_g_per_kwh", "method")},
        },
    )


def _epochs(count: int) -> str:
    return f"{count} epoch{'s' * (count != 1)}"


def _model_text() -> str:
    model = SWEEP_MODEL
    return (
        f"{model.n_conv_layers} conv, {model.n_filters} filters, dense {model.n_nodes}, dropout, "
        f"{model.optimizer} at learning rate {model.learning_rate}"
    )


def _answers(data, measured, setting: dict, caveat: str) -> list[tuple[str, str]]:
    by_setting = {(row.batch_size, row.epochs): row for row in measured}
    batches = sorted({row.batch_size for row in measured})
    epochs = sorted({row.epochs for row in measured})
    small, large, few, many = batches[0], batches[-1], epochs[0], epochs[-1]
    epoch_ratio = by_setting[small, many].energy_kwh / by_setting[small, few].energy_kwh
    batch_ratio = by_setting[small, many].energy_kwh / by_setting[large, many].energy_kwh
    seconds_small = by_setting[small, many].seconds / many
    seconds_large = by_setting[large, many].seconds / many
    steps_small, steps_large = (math.ceil(len(data.x_train) / b) for b in (small, large))
    cheapest = min(measured, key=lambda row: row.energy_kwh)
    most_accurate = max(measured, key=lambda row: row.test_accuracy)
    power = by_setting[small, many].energy_kwh * 3.6e6 / by_setting[small, many].seconds  # J / s
    weights_mb = SERVICE_PARAMETERS * 4 / 1e6
    gflop_per_request = 2 * SERVICE_PARAMETERS / 1e9
    return [
        (
            "28. With the architecture fixed, which training settings change the carbon footprint?",
            f"The number of epochs and the batch size, because they set how long the computer works. At batch {small}, "
            f"{many} epochs took {epoch_ratio:.1f}x the energy of {few} ({by_setting[small, many].energy_kwh:.2e} "
            f"against {by_setting[small, few].energy_kwh:.2e} kWh)"
            + (": energy grows in proportion to the epochs. " if abs(epoch_ratio / (many / few) - 1) < 0.25 else ". ")
            + f"Over {many} epochs, batch {small} took {batch_ratio:.1f}x the energy of batch {large}. (Also: the "
            "image size and count, the device, and where and when the electricity is made.)",
        ),
        (
            "29. Why can the batch size change the carbon footprint so much?",
            f"An epoch is {steps_small} steps at batch {small} but {steps_large} at batch {large}. Every step pays "
            "fixed costs (launching each layer's kernels, the optimizer update, Python), and a small batch leaves "
            "most of a GPU's parallel units idle. Energy is power times time, and here an epoch took "
            f"{seconds_small:.1f} s at batch {small} and {seconds_large:.1f} s at batch {large} at about {power:.0f} W"
            + (
                ": the small batch cost more time and so more energy. "
                if seconds_small > 1.1 * seconds_large
                else ": on this machine the small batch was not slower, because a few CPU cores are kept busy even by "
                "small batches; on a GPU the difference is large. "
            )
            + f"The cheapest setting was batch {cheapest.batch_size} for {_epochs(cheapest.epochs)} "
            f"({cheapest.energy_kwh:.2e} kWh, test accuracy {cheapest.test_accuracy:.1%}); the most accurate batch "
            f"{most_accurate.batch_size} for {_epochs(most_accurate.epochs)} ({most_accurate.energy_kwh:.2e} kWh, "
            f"{most_accurate.test_accuracy:.1%}){caveat}. Large batches take fewer steps per epoch and may need more "
            "epochs, or a higher learning rate, to learn as much.",
        ),
        (
            "30. A model with 100 million parameters serves 5 million users: how can its footprint be reduced?",
            f"Serving dominates: training happens once, but each request runs the model, about {gflop_per_request:.1f} "
            f"GFLOP per forward pass (2 per parameter) and {weights_mb:.0f} MB of float32 weights read, times "
            f"{SERVICE_USERS:,} users times their requests. So make each request cheaper: distil it into a smaller "
            "model, prune it, quantize it to 8-bit integers (a quarter of the memory traffic), batch requests on "
            "the server so the hardware runs full, cache answers to repeated requests, run on efficient "
            "accelerators, and run in data centres with low-carbon electricity (the grid intensity multiplies "
            f"everything: this report assumed {setting.get('carbon_intensity_g_per_kwh', float('nan')):.4g} "
            "g CO2eq/kWh). Retrain rarely, and fine-tune rather than train from scratch.",
        ),
    ]
