"""Part 3: load CIFAR-10, take the lab's subset, split it and look at some images."""

from __future__ import annotations

from cnnlab.data import CLASS_NAMES, class_counts
from cnnlab.lab import LabContext, Section, Table
from cnnlab.plots import sample_grid

ESTIMATED_SECONDS = {"full": 5, "quick": 5, "tiny": 5}


def run(ctx: LabContext) -> Section:
    data = ctx.lab_data()
    source = data.source
    counts = class_counts(list(data.y_train) + list(data.y_val))
    n_train_val = len(data.x_train) + len(data.x_val)
    val_share = len(data.x_val) / n_train_val
    sample_grid(data.x_train, data.y_train, path=ctx.path("figures", "samples.png"))
    official = source.get("official")
    origin = f"`{source.get('source')}`" + (
        "" if official else " — not the official archive (its md5 differs): accuracies below may differ from "
        "ones measured on the original data"
    )
    return Section(
        key="data",
        title="Part 3: Dataset",
        intro=f"CIFAR-10 from {origin}. The first {n_train_val:,} training images are split "
        f"{1 - val_share:.0%}/{val_share:.0%} into training and validation (scikit-learn's seeded "
        f"train_test_split); the first {len(data.x_test):,} test images are the test set. "
        "Pixels are scaled from 0..255 to [-1, 1]; labels are class indices (one-hot where a loss wants it).",
        figures=[("figures/samples.png", "Random training images with their class")],
        tables=[
            Table("Split sizes", ["set", "images", "shape"], [
                ["training", len(data.x_train), str(data.x_train.shape)],
                ["validation", len(data.x_val), str(data.x_val.shape)],
                ["test", len(data.x_test), str(data.x_test.shape)],
            ]),
            Table(f"Images per class in the first {n_train_val:,}", ["class", "name", "images"],
                  [[i, CLASS_NAMES[i], n] for i, n in enumerate(counts)]),
        ],
        facts={"class_counts": counts, "source": source, "n_train": len(data.x_train), "n_val": len(data.x_val),
               "n_test": len(data.x_test)},
    )
