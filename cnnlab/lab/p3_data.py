"""Part 3: load CIFAR-10 (or the data set --data names), take the lab's subset, split it and look at some images."""

from __future__ import annotations

from cnnlab.data.arrays import class_counts
from cnnlab.data.cifar import accuracy_caveat
from cnnlab.lab.context import LabContext
from cnnlab.lab.store import Section, Table
from cnnlab.plots import sample_grid

ESTIMATED_SECONDS = {"full": 5, "quick": 5, "tiny": 5}


def run(ctx: LabContext) -> Section:
    data = ctx.lab_data()
    source = data.source
    counts = class_counts(list(data.y_train) + list(data.y_val), data.num_classes)
    n_train_val = len(data.x_train) + len(data.x_val)
    val_share = len(data.x_val) / n_train_val
    sample_grid(data.x_train, data.y_train, path=ctx.path("figures", "samples.png"), class_names=data.class_names)
    if ctx.is_cifar10():
        origin = f"CIFAR-10 from `{source.get('source')}`" + accuracy_caveat(source)
        protocol = f"The first {n_train_val:,} training images are split"
    else:  # the lab's protocol is CIFAR-10's; another data set gets stratified samples of the same sizes
        origin = (
            f"{ctx.data_name()} ({data.num_classes} classes: {_listed(data.class_names)}), not CIFAR-10: the lab "
            "was written for CIFAR-10's 10 classes and 32x32 images, so its protocol (the first N images) and the "
            "answers that speak of CIFAR-10 are replaced by what this data set shows"
            + (f"; {source['note']}" if source.get("note") else "")
        )
        protocol = f"A stratified sample of {n_train_val:,} training images is split"
    height, width, channels = data.input_shape
    return Section(
        key="data",
        title="Part 3: Dataset",
        intro=f"{origin}. {protocol} {1 - val_share:.0%}/{val_share:.0%} into training and validation "
        f"(scikit-learn's seeded train_test_split); {len(data.x_test):,} test images are the test set. Images are "
        f"{height}x{width} with {channels} channel{'s' * (channels > 1)}, kept as uint8 and scaled from 0..255 to "
        "[-1, 1] batch by batch; labels are class indices (one-hot where a loss wants it).",
        figures=[("figures/samples.png", "Random training images with their class")],
        tables=[
            Table(
                "Split sizes",
                ["set", "images", "shape"],
                [
                    ["training", len(data.x_train), str(data.x_train.shape)],
                    ["validation", len(data.x_val), str(data.x_val.shape)],
                    ["test", len(data.x_test), str(data.x_test.shape)],
                ],
            ),
            Table(
                f"Images per class in the {n_train_val:,} training and validation images",
                ["class", "name", "images"],
                [[i, name, n] for i, (name, n) in enumerate(zip(data.class_names, counts, strict=True))],
            ),
        ],
        facts={
            "class_counts": counts,
            "class_names": list(data.class_names),
            "source": source,
            "n_train": len(data.x_train),
            "n_val": len(data.x_val),
            "n_test": len(data.x_test),
        },
    )


def _listed(names, shown: int = 12) -> str:
    """The class names, the first ``shown`` of them when there are many (CIFAR-100 has 100)."""
    return ", ".join(names[:shown]) + (f", ... ({len(names) - shown} more)" if len(names) > shown else "")
