"""What a training command prints and writes about a trained model: metrics.json, figures, per-class accuracy."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI imports its heavy modules when a command runs, not when it is parsed
    from cnnlab.evaluate.predict import Evaluation


def report_test_results(out: Path, data, history, test: Evaluation, extra=None) -> int:
    """Add the test results to metrics.json, draw the figures (class names on titles and axes), write the
    per-class accuracy table and print where everything is. The test loss is the cross-entropy of the
    predicted probabilities, as ``cnnlab evaluate`` reports it (no label smoothing or weight penalty)."""
    from cnnlab.cli._data import first_training_images
    from cnnlab.core.files import write_json
    from cnnlab.data.cifar import accuracy_caveat
    from cnnlab.plots import confusion_matrix_figure, plot_results, sample_grid

    test_loss, test_accuracy, per_class = test.loss, test.accuracy, test.per_class
    metrics_path = out / "metrics.json"
    metrics = {
        **read_json(metrics_path),
        **(extra or {}),
        "test_loss": test_loss,
        "test_accuracy": test_accuracy,
        "class_names": list(data.class_names),
        "input_shape": list(data.input_shape),
        "per_class_accuracy": {name: None if math.isnan(v) else v for name, v in per_class.items()},
        "data_source": data.source,
    }
    write_json(metrics_path, metrics)
    plot_results(history, out / "results.png", title=f"test accuracy {test_accuracy:.4f}")
    sample_grid(*first_training_images(data, 18), path=out / "samples.png", class_names=data.class_names)
    matrix = test.confusion
    confusion_matrix_figure(
        matrix, data.class_names, out / "confusion_matrix.png", title=f"test set, accuracy {test_accuracy:.1%}"
    )
    table = write_per_class(out / "per_class_accuracy.csv", per_class, matrix.sum(1))
    if data.num_classes <= MAX_CLASSES_PRINTED:
        print("Test accuracy per class:\n" + table)
    print(f"Test loss: {test_loss:.4f}  Test accuracy: {test_accuracy:.4f}{accuracy_caveat(data.source)}")
    print(f"Run folder: {out}")
    print(f"Figures: {out / 'results.png'}, {out / 'samples.png'}, {out / 'confusion_matrix.png'}")
    print(f"Per-class accuracy: {out / 'per_class_accuracy.csv'}")
    return 0


MAX_CLASSES_PRINTED = 20  # more classes: the table is only written to the run folder


def write_per_class(path: Path, per_class: dict[str, float], counts) -> str:
    """The per-class table as CSV in the run folder; returns it as aligned text for the terminal."""
    from cnnlab.core.files import write_csv

    rows = [
        {"class": name, "test_images": int(n), "accuracy": "" if math.isnan(v) else f"{v:.4f}"}
        for (name, v), n in zip(per_class.items(), counts, strict=True)
    ]
    write_csv(path, rows, ["class", "test_images", "accuracy"])
    width = max(len(name) for name in per_class)
    return "\n".join(
        f"  {name:<{width}}  {'-' if math.isnan(v) else f'{v:.4f}'}  ({int(n)} images)"
        for (name, v), n in zip(per_class.items(), counts, strict=True)
    )


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}
