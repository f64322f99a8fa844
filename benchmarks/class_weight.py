"""What ``--class-weight balanced`` does on an unbalanced set: per-class test accuracy with and without it.

    CNNLAB_CIFAR10=... CNNLAB_THREADS=1 python benchmarks/class_weight.py [--epochs 20] [--seed 0]

The training set is three CIFAR-10 classes at 10:1:10 (airplane 1,000, dog 100, cat 1,000 of the first
training images; dog, the minority, sits next to its look-alike cat), saved as an image folder
(``train/`` and ``test/`` with a PNG folder per class, as users lay out their photos); the test set is
the classes' 3,000 test images, balanced. ``cnnlab train`` trains the lab's CNN on it twice, as a user
would: plainly and with ``--class-weight balanced``, same seed and budget. Per-class accuracy is each
class's recall; the minority's recall and the mean per-class (balanced) accuracy show the effect.
With the shared lossy CIFAR-10 copy all accuracies sit about 4-5 points below those of the exact pixels.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np

CLASSES = {"airplane": (0, 1000), "dog": (5, 100), "cat": (3, 1000)}  # name: (CIFAR-10 label, training images)
MINORITY = "dog"


def unbalanced_folder(root: Path) -> None:
    """The 10:1 training set and the balanced test set of CLASSES as PNG files in train/ and test/ class folders."""
    from PIL import Image

    from cnnlab.data.cifar import load_cifar10

    (x_train, y_train), (x_test, y_test) = load_cifar10(allow_download=False)
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        for name, (label, count) in CLASSES.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            indices = np.flatnonzero(y == label)
            for index in indices[:count] if split == "train" else indices:
                Image.fromarray(x[index]).save(folder / f"{index}.png")


def train(data: Path, out: Path, epochs: int, seed: int, extra: list[str]) -> tuple[dict, list[str], float]:
    """One `cnnlab train` run: (its metrics.json, its class-weight lines, seconds)."""
    from cnnlab.cli import main

    printed = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(printed):
        code = main(["train", "--data", str(data), "--n-test", "3000", "--epochs", str(epochs), "--seed", str(seed),
                     "--quiet", "--out", str(out), *extra])  # fmt: skip
    seconds = time.perf_counter() - started
    if code:
        raise SystemExit(printed.getvalue())
    wanted = ("Note: classes are unbalanced", "Class weights")
    lines = [line for line in printed.getvalue().splitlines() if line.startswith(wanted)]
    return json.loads((out / "metrics.json").read_text()), lines, seconds


def table(runs: dict[str, tuple[dict, list[str], float]]) -> str:
    names = list(CLASSES)
    header = f"{'':<24}" + "".join(f"{name:>12}" for name in runs)
    rows = [header]
    for name in names:
        label = f"{name} ({CLASSES[name][1]})" + (" *" if name == MINORITY else "")
        rows.append(f"{label:<24}" + "".join(f"{m['per_class_accuracy'][name]:>12.3f}" for m, _, _ in runs.values()))
    summaries = {
        "test accuracy": lambda m: m["test_accuracy"],
        "balanced accuracy": lambda m: float(np.mean([m["per_class_accuracy"][n] for n in names])),
        f"{MINORITY} recall *": lambda m: m["per_class_accuracy"][MINORITY],
        "val_loss (unweighted)": lambda m: m["val_loss"],
    }
    for what, value in summaries.items():
        rows.append(f"{what:<24}" + "".join(f"{value(m):>12.3f}" for m, _, _ in runs.values()))
    rows.append(f"{'seconds':<24}" + "".join(f"{s:>12.1f}" for _, _, s in runs.values()))
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from cnnlab.core.runtime import configure_threads

    configure_threads()
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "unbalanced"
        unbalanced_folder(data)
        runs = {
            "plain": train(data, Path(folder) / "plain", args.epochs, args.seed, []),
            "balanced": train(data, Path(folder) / "balanced", args.epochs, args.seed, ["--class-weight", "balanced"]),
        }
    for _, lines, _ in runs.values():
        print("\n".join(lines))
    print(f"\nLab CNN (cnnlab train defaults), {args.epochs} epochs, seed {args.seed}; per-class test accuracy "
          "(= recall) on 1,000 test images per class; (images per class before the 25% validation split), * the "
          "minority class")  # fmt: skip
    print(table(runs))
    print("Accuracies from the shared lossy CIFAR-10 copy sit about 4-5 points below those of the exact pixels.")


if __name__ == "__main__":
    main()
