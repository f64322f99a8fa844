"""`cnnlab carbon-sweep`: lab part 6 made real: what batch size and epoch count cost in energy and CO2eq."""

from __future__ import annotations

import argparse
from pathlib import Path

from cnnlab.cli._carbon import add_carbon_options, carbon_settings
from cnnlab.cli._data import add_data_options
from cnnlab.models.cnn import SWEEP_MODEL

QUICK = {"n_train_val": 2_000, "n_test": 1_000, "epochs": [1, 2]}


def _positive_ints(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of whole numbers, e.g. 20,64"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"need positive whole numbers, got {text!r}")
    return values


def register(subparsers) -> None:
    model = ", ".join(f"{k}={v}" for k, v in SWEEP_MODEL.changes().items())
    parser = subparsers.add_parser(
        "carbon-sweep",
        help="energy and CO2eq of the lab's CNN for several batch sizes and epoch counts (lab part 6)",
        description=f"Keep the lab's CNN fixed ({model}) and train it with every batch size for every epoch "
        "count; print a table of time, energy, CO2eq and test accuracy, and save it as CSV and as a plot. "
        "Each batch size trains once for the largest epoch count; smaller counts are read off the same run.",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("carbon-sweep"),
        help="folder for the table, plot and runs (default: carbon-sweep)",
    )
    parser.add_argument("--batch-sizes", type=_positive_ints, default=[20, 64, 128, 512], metavar="N,N,...",
                        help="batch sizes (default: 20,64,128,512)")  # fmt: skip
    parser.add_argument("--epochs", type=_positive_ints, default=None, metavar="N,N,...",
                        help="epoch counts (default: 5,10; with --quick 1,2)")  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true",
        help=f"{QUICK['n_train_val']:,} train+validation and {QUICK['n_test']:,} test images instead of "
        "10,000 and 2,000, and 1,2 epochs",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed for weights, shuffling and dropout (default: 0)")
    parser.add_argument("--device", default="auto", help="auto (the default), cpu, cuda, cuda:1 or mps")
    add_carbon_options(parser)
    add_data_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cnnlab.cli._data import lab_data_from_args
    from cnnlab.data.cifar import accuracy_caveat
    from cnnlab.experiments.carbon_sweep import carbon_sweep, format_sweep_table, plot_carbon_sweep, write_sweep_csv

    settings = carbon_settings(args)
    sizes = {"n_train_val": QUICK["n_train_val"], "n_test": QUICK["n_test"]} if args.quick else {}
    epochs = args.epochs or (QUICK["epochs"] if args.quick else [5, 10])
    data = lab_data_from_args(args, **sizes, dtype="uint8")
    print(f"Data: {data.summary()}")
    print(f"Classes: {', '.join(data.class_names)}")
    rows = carbon_sweep(data, args.batch_sizes, epochs, settings, seed=args.seed, device=args.device, out_dir=args.out)
    print(format_sweep_table(rows))
    intensity, source = settings.intensity()
    print(f"Grid: {settings.country_name} ({settings.country}), {intensity:.4g} g CO2eq/kWh ({source}); "
          f"backend {settings.backend}; details per run in {args.out}/batch-N/carbon.json")  # fmt: skip
    if accuracy_caveat(data.source):
        print(f"Test accuracy{accuracy_caveat(data.source)}.")
    table = write_sweep_csv(rows, args.out / "carbon_sweep.csv")
    figure = args.out / "carbon_sweep.png"
    plot_carbon_sweep(rows, figure)
    print(f"Table: {table}\nPlot: {figure}")
    return 0
