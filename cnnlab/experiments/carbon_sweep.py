"""The lab's carbon experiment: one model trained at several batch sizes and epoch counts, with its energy."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from cnnlab.carbon.meters import EpochEnergy
from cnnlab.carbon.settings import CarbonSettings
from cnnlab.carbon.tracker import CarbonCallback, carbon_amounts, energy_sums
from cnnlab.core.errors import ConfigError
from cnnlab.core.files import write_csv, write_json
from cnnlab.core.tables import text_table
from cnnlab.models.cnn import SWEEP_MODEL
from cnnlab.models.registry import create_model
from cnnlab.train.callbacks import Callback


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
        amounts = carbon_amounts(*energy_sums(spent))
        if status != "complete":
            amounts = dict.fromkeys(amounts)  # a failed run's partial energy is not a measurement
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
    columns = ("batch", "epochs", "test acc", "time s", "energy kWh", "g CO2eq", "car km", "method")
    cells = []
    for row in sorted(rows, key=lambda r: (r.epochs, r.batch_size)):
        measured = row.energy_kwh is not None
        amounts = (f"{row.seconds:.1f}", f"{row.energy_kwh:.3g}", f"{row.co2eq_g:.3g}", f"{row.car_km:.3g}")
        cells.append((row.batch_size, row.epochs, f"{row.test_accuracy:.4f}",
                      *(amounts if measured else ("",) * 4), row.method if measured else row.status))  # fmt: skip
    return text_table(cells, columns, left=("method",))


def write_sweep_csv(rows: Sequence[SweepRow], path: str | os.PathLike) -> Path:
    return write_csv(path, [asdict(row) for row in rows], list(SweepRow.__dataclass_fields__))


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
