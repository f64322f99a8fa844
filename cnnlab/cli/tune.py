"""`cnnlab tune`: search the CNN's hyperparameters with Optuna or Ray Tune (lab part 8)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cnnlab.cli._data import add_data_options, lab_data_from_args

EPILOG = """\
search space (TOML, flat keys; without --space, the lab's: examples/space.toml):
  n_filters = 32                                    fixed for every trial
  n_conv_layers = { low = 1, high = 4 }             whole-number range
  learning_rate = { low = 1e-4, high = 1e-1, log = true }   log-scale range (low > 0)
  n_nodes = { low = 32, high = 256, step = 32 }     range on a grid
  optimizer = { choices = ["adam", "sgd"] }         categorical
searchable: n_conv_layers n_filters n_dense_layers n_nodes use_dropout dropout_rate l2 learning_rate
optimizer head batch_size augment_strength (0..1, mapped to rotation/shift/flip).

engines:
  optuna  in this process; the study lives in SQLite (--storage), so rerunning with the same
          --study-name continues it until it holds --trials finished trials. Weak trials are
          pruned on their per-epoch validation accuracy (--pruner).
  ray     Ray Tune with ASHA early stopping and Optuna's sampler, into the same study. Starting Ray
          costs about 5 s and 650 MB; trials run one per free core (cores minus the load average),
          each with $CNNLAB_THREADS threads (default 1), because torch crawls on busy cores. Give
          --address HEAD:PORT to run the same search on a cluster started with `ray start --head`
          (cnnlab must be installed on its nodes). A cluster with token authentication (Ray's
          default once a token exists) needs its token: $RAY_AUTH_TOKEN, --ray-token-file FILE,
          or ~/.ray/auth_token (where `ray start` keeps it) are used when present.

outputs in --out: study.db, trials.csv, best.toml (for cnnlab train --config), summary.json,
history.png, importances.png, and with --objective accuracy+energy pareto.csv and pareto.png.
The test set is used once, for the best configuration only."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "tune",
        help="search hyperparameters (Optuna or Ray Tune) and write the best config",
        description="Search the lab CNN's hyperparameters on CIFAR-10 or the data --data names, maximizing "
        "validation accuracy (optionally minimizing energy too), then retrain the best configuration and test it once.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--space", type=Path, help="search space TOML file (default: the lab's, examples/space.toml)")
    parser.add_argument("--trials", type=int, default=20, help="finished trials the study should hold (default: 20)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per trial (default: 3)")
    parser.add_argument(
        "--subset",
        type=int,
        default=10_000,
        help="N training images (CIFAR-10: the first N; other sets: a stratified sample), split 3:1 into "
        "train/validation",
    )
    parser.add_argument("--test-size", type=int, default=2_000, help="N test images (default: 2000)")
    parser.add_argument("--out", type=Path, default=Path("runs/tune"), help="output folder (default: runs/tune)")
    parser.add_argument("--engine", choices=("optuna", "ray"), default="optuna", help="search engine")
    parser.add_argument(
        "--objective",
        choices=("accuracy", "accuracy+energy"),
        default="accuracy",
        help="maximize validation accuracy, or also minimize training energy (codecarbon via cnnlab.carbon)",
    )
    parser.add_argument(
        "--pruner", choices=("median", "hyperband", "none"), default="median", help="Optuna engine's pruner"
    )
    parser.add_argument("--study-name", default="cnnlab-tune", help="study to create or continue")
    parser.add_argument("--storage", help="SQLAlchemy URL or SQLite file path (default: OUT/study.db)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, the weights and the sampler")
    parser.add_argument("--address", help="Ray cluster to join (--engine ray): HEAD:PORT of `ray start --head`")
    parser.add_argument(
        "--ray-token-file", type=Path, help="file holding the Ray cluster's token (default: Ray's, ~/.ray/auth_token)"
    )
    parser.add_argument("--fresh", action="store_true", help="set the SQLite study aside (renamed) and start anew")
    parser.add_argument("--max-concurrent", type=int, help="Ray trials at once (default: free cores / threads)")
    parser.add_argument("--device", default="auto", help="Optuna engine's device: auto, cpu, cuda or mps")
    parser.add_argument("--country", default="SWE", help="3-letter ISO code of the grid, for CO2eq (default: SWE)")
    parser.add_argument("--cpu-power", type=float, help="CPU watts at full load, instead of codecarbon's guess")
    add_data_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cnnlab.core.errors import ConfigError
    from cnnlab.core.locks import folder_lock

    if args.out.exists() and not args.out.is_dir():
        raise ConfigError(f"--out {args.out} is a file, not a folder; give a folder for the study (new or existing)")
    if args.ray_token_file is not None:
        from cnnlab.experiments.tune.engines import use_ray_token_file

        use_ray_token_file(args.ray_token_file)
    with folder_lock(args.out, what="tuning study folder"):  # before the data: a second search stops at once
        return _search(args)


def _search(args: argparse.Namespace) -> int:
    from cnnlab.carbon.settings import CarbonSettings
    from cnnlab.data.cifar import accuracy_caveat
    from cnnlab.experiments.tune.results import format_table
    from cnnlab.experiments.tune.search import tune
    from cnnlab.experiments.tune.space import load_space
    from cnnlab.experiments.tune.study import TuneSettings

    space = load_space(args.space)
    settings = TuneSettings(
        trials=args.trials,
        epochs=args.epochs,
        seed=args.seed,
        engine=args.engine,
        objective=args.objective,
        pruner=args.pruner,
        study_name=args.study_name,
        storage=args.storage,
        address=args.address,
        max_concurrent=args.max_concurrent,
        device=args.device,
        carbon=CarbonSettings(country=args.country, cpu_power=args.cpu_power),
    )
    data = lab_data_from_args(args, n_train_val=args.subset, n_test=args.test_size, seed=args.seed, dtype="uint8")
    print(f"Data: {data.summary()}")
    print(f"Classes: {', '.join(data.class_names)}")
    result = tune(space, data, args.out, settings, log=print, fresh=args.fresh)
    print(format_table(result.rows))
    if result.pareto:
        print("\nPareto front (no other trial is both more accurate and more frugal):")
        print(format_table(result.pareto, only_varying=False))
    best = result.best
    lossy = accuracy_caveat(data.source)
    print(
        f"\nBest: trial {best['trial']}, val_accuracy {best['val_accuracy']:.4f}; retrained once and tested: "
        f"test_accuracy {best['test_accuracy']:.4f}{lossy}"
    )
    for note in result.notes:
        print(f"Note: {note}")
    for name, path in result.files.items():
        print(f"{name}: {path}")
    return 0
