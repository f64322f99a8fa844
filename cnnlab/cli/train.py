"""`cnnlab train`: build the lab's CNN from flags or a TOML file, train it, and write a run folder."""

from __future__ import annotations

import argparse
import functools
import inspect
import os
import shutil
import time
import tomllib
from contextlib import ExitStack, redirect_stdout
from pathlib import Path

from cnnlab.cli._carbon import add_carbon_options, carbon_callbacks
from cnnlab.cli._class_weight import add_class_weight_option, class_weight_from_args
from cnnlab.cli._data import add_data_options, first_training_images, lab_data_from_args, split_pairs
from cnnlab.cli._models import (
    DEFAULT_RECIPE,
    SMALL_IMAGE,
    add_model_options,
    lab_cnn_settings,
    pick_model,
    resnet50_settings,
    train_resnet50,
)
from cnnlab.cli._report import read_json, report_test_results
from cnnlab.core.errors import CnnlabError, ConfigError
from cnnlab.core.locks import LOCK_NAME, folder_lock

DATA_KEYS = {"data": None, "n_train_val": 10_000, "n_test": 2_000, "val_fraction": 0.25, "split_seed": 0}
# Files that make a folder a run: --overwrite removes the folder's content (a run may have written more).
RUN_FILES = {"config.json", "history.csv", "metrics.json", "weights.safetensors"}
FIT_KEYS = {"batch_size": 20, "epochs": 20, "seed": 0, "early_stopping": 0, "augment": None}


def build_keys() -> dict:
    """build_cnn's keyword arguments and defaults: the TOML keys and flags mirror them one to one."""
    from cnnlab.models.cnn import build_cnn

    skip = {"input_shape", "device", "num_classes", "class_names"}
    return {k: p.default for k, p in inspect.signature(build_cnn).parameters.items() if k not in skip}


HELP = {
    "n_conv_layers": "conv blocks (Conv 3x3 'same' -> BatchNorm -> MaxPool 2x2); filters double per block",
    "n_filters": "filters of the first conv layer",
    "n_dense_layers": "intermediate dense layers (Dense relu -> BatchNorm [-> Dropout])",
    "n_nodes": "nodes of each intermediate dense layer",
    "use_dropout": "dropout after each intermediate dense layer",
    "dropout_rate": "dropout probability",
    "l2": "L2 penalty on conv and dense kernels, as Keras' kernel_regularizer=l2(...)",
    "learning_rate": "optimizer step size",
    "optimizer": "adam, adamw, nadam, sgd (momentum 0.9) or rmsprop",
    "loss": "categorical_crossentropy or sparse_categorical_crossentropy (same computation)",
    "head": "flatten (the lab's), gap (global average pooling) or fcn (1x1 convs): gap/fcn accept other sizes",
    "flatten_side": "flatten head: larger images have the last feature map average-pooled to what an image of "
    "this side gives, so Adam's steps do not grow with the image",
    "seed": "seed for weights, shuffling and dropout: same seed + same machine = same history",
    "batch_size": "images per step",
    "epochs": "passes over the training images",
    "early_stopping": "stop after this many epochs without a better val_loss (0 = off); best weights kept",
    "augment": "on-the-fly augmentation spec, e.g. rotation=15,shift=0.1,flip",
    "n_train_val": "training images used (CIFAR-10: the first N; other sets: a stratified sample), split into "
    "train and validation",
    "n_test": "test images used (CIFAR-10: the first N; other sets: a stratified sample)",
    "val_fraction": "share of the N images held out for validation",
    "split_seed": "seed of the train/validation split",
}


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train the lab's CNN and write a run folder",
        description="Train the lab's CNN on CIFAR-10 (7,500 train / 2,500 validation / 2,000 test images by "
        "default) or on the data --data names (CIFAR-100, a folder of class subfolders, an .npz): the model "
        "takes its classes and image size from the data. Settings come from --config FILE.toml (flat keys named "
        "like the flags, with underscores), and flags override the file. The run folder gets config.json, "
        "history.csv, metrics.json, weights.safetensors (a self-describing model: class names, input size, "
        "preprocessing), a checkpoint per epoch, figures and the test set's per-class accuracy and confusion "
        "matrix.",
    )
    parser.add_argument("--config", type=Path, help="TOML file with settings (flags override it)")
    parser.add_argument("--out", type=Path, help="run folder (default: runs/<date-time>)")
    parser.add_argument("--resume", action="store_true", help="continue the killed run in --out from its last epoch")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="delete what --out holds and train anew (without it, a run there is kept)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 or mps")
    parser.add_argument("--quiet", action="store_true", help="one line per epoch, no progress bar")
    parser.add_argument(
        "--recipe",
        metavar="NAME",
        help="train a recipe (cnnlab.experiments.recipes) instead of the lab's CNN: 'fast', 'fast5' and 'fast2' "
        "(its own networks, sized for 10, 5 and 2 minutes on 2 CPU cores), 'lab' (the lab's model B with the "
        "recipe's training) or 'gpu' (full CIFAR-10 on a GPU); only --seed, --epochs, --batch-size and the data "
        "flags apply",
    )
    defaults = {**build_keys(), **FIT_KEYS, **DATA_KEYS}
    add_data_options(parser, stream=True)  # --data, --image-size, ...: shared with the other training commands
    for key, default in defaults.items():
        if key == "data":
            continue
        kwargs = {"default": None, "help": f"{HELP.get(key, key)} (default: {default})"}
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif default is not None:
            kwargs["type"] = type(default)
        parser.add_argument(_flag(key), dest=key, **kwargs)
    add_model_options(parser)
    add_class_weight_option(parser)
    add_carbon_options(parser, tracking_default=False)
    parser.add_argument(
        "--tensorboard", action="store_true",
        help="write TensorBoard curves to <run folder>/tensorboard: loss, accuracy, val_* and the learning rate "
        "per epoch, 16 training images, the carbon figures at the end (pip install 'cnnlab[tensorboard]')",
    )  # fmt: skip
    _add_ray_options(parser)
    parser.set_defaults(func=run)


def resolve_settings(args: argparse.Namespace) -> dict:
    """Defaults, then the TOML file, then the flags the user typed."""
    defaults = {**build_keys(), **FIT_KEYS, **DATA_KEYS}
    settings = dict(defaults)
    if args.config:
        try:
            from_file = tomllib.loads(Path(args.config).read_text())
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise ConfigError(f"cannot read config {args.config}: {error}") from error
        unknown = sorted(set(from_file) - set(defaults))
        if unknown:
            raise ConfigError(f"{args.config}: unknown keys {unknown}; valid keys: {sorted(defaults)}")
        settings.update(from_file)
    settings.update({k: v for k, v in vars(args).items() if k in defaults and v is not None})
    return settings


def run(args: argparse.Namespace, callbacks=()) -> int:
    """Train as the flags say: in this process, as one of the processes torchrun started, or on Ray Train
    workers (--workers). ``callbacks`` go to fit besides the command's own."""
    from cnnlab.train.distributed import init_from_env, leave

    if args.resume and args.overwrite:
        raise ConfigError("--resume continues the run in --out and --overwrite replaces it: choose one")
    settings = resolve_settings(args)
    if args.workers is not None:
        return _run_on_ray(args, settings, list(callbacks))
    if args.address or args.use_gpu or args.max_failures or args.ray_token_file:
        raise ConfigError("--address, --use-gpu, --max-failures and --ray-token-file go with --workers N (Ray Train)")
    device = init_from_env(args.device, args.threads)  # None unless torchrun started several processes
    if device is not None:
        finished = False
        try:
            code = _run_as_rank(argparse.Namespace(**{**vars(args), "device": device}), settings, callbacks)
            finished = True
            return code
        finally:
            leave(finished)
    out = _run_folder(args)
    with folder_lock(out, what="run folder"):
        _guard_existing_run(out, args)
        return _train(args, settings, out, callbacks)


def _run_folder(args: argparse.Namespace) -> Path:
    """--out, or a new runs/<date-time> folder: created here, with a suffix if that second is taken."""
    if args.out is not None:
        if args.out.exists() and not args.out.is_dir():
            raise ConfigError(f"--out {args.out} is a file, not a folder; give a folder for the run (new or existing)")
        if args.resume and not args.out.is_dir():
            raise ConfigError(f"--resume: {args.out} does not exist; give the run folder of the killed run with --out")
        return args.out
    stamp = time.strftime("%Y%m%d-%H%M%S")
    Path("runs").mkdir(exist_ok=True)
    for attempt in range(1, 1000):
        candidate = Path("runs") / (stamp if attempt == 1 else f"{stamp}-{attempt}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise ConfigError(f"runs/{stamp}-* are all taken; give a folder with --out")


def _guard_existing_run(out: Path, args: argparse.Namespace) -> None:
    """Never overwrite a run by accident: a run in ``out`` needs --resume (continue it) or --overwrite."""
    found = sorted(path.name for path in out.iterdir() if path.name in RUN_FILES or path.name.startswith("checkpoint"))
    if args.resume:
        if not any(name.startswith("checkpoint") for name in found):
            raise ConfigError(f"--resume: no checkpoint in {out}; give the run folder of the killed run with --out")
    elif found and not args.overwrite:
        state = "a finished run" if "metrics.json" in found and "weights.safetensors" in found else "a run"
        raise ConfigError(
            f"{out} holds {state} ({', '.join(found[:4])}); continue it with --resume, replace it with --overwrite, "
            "or choose another --out"
        )
    elif found:
        for path in out.iterdir():
            if path.is_dir():
                shutil.rmtree(path)
            elif path.name != LOCK_NAME:
                path.unlink()


def _load_data(args: argparse.Namespace, settings: dict):
    """The lab split of the data the flags and the TOML file name, kept uint8 (the trainer scales each batch).

    With --model resnet50 on data that is not a folder (CIFAR, .npz), --image-size is the size the network
    resizes to on the device, so the images stay small in memory."""
    folder = settings["data"] is not None and Path(settings["data"]).expanduser().is_dir()
    args.network_image_size = None
    if args.model == "resnet50" and args.image_size and not folder:
        args.network_image_size, args.image_size = args.image_size, None
    elif args.model == "resnet50" and args.image_size:
        args.network_image_size = args.image_size
    options = argparse.Namespace(**{**vars(args), "data": settings["data"], "split_seed": settings["split_seed"]})
    return lab_data_from_args(
        options,
        n_train_val=settings["n_train_val"],
        n_test=settings["n_test"],
        val_fraction=settings["val_fraction"],
        seed=settings["split_seed"],
        dtype="uint8",
    )


def _train(args: argparse.Namespace, settings: dict, out: Path, callbacks=()) -> int:
    from cnnlab.models.cnn import build_cnn
    from cnnlab.train.callbacks import EarlyStopping
    from cnnlab.train.distributed import is_main_process
    from cnnlab.train.tensorboard import TensorBoard

    callbacks = [*carbon_callbacks(args), *callbacks]  # bad carbon settings fail here, before any data is loaded
    tensorboard = TensorBoard(out / "tensorboard") if args.tensorboard else None  # so does a missing package
    if args.recipe and args.model not in (None, "recipe"):
        raise ConfigError(f"--recipe {args.recipe} trains the recipe's network; drop --model {args.model}")
    recipe = _recipe(args, settings, args.recipe) if args.recipe else None
    given = _given(args, settings)
    if args.model == "resnet50":  # refuse the lab CNN's flags before any data is loaded
        resnet50_settings(args, settings, given)
    data = _load_data(args, settings)
    if tensorboard:
        tensorboard.sample_images = first_training_images(data, 16)[0]
        callbacks.append(tensorboard)
        print(f"TensorBoard: {tensorboard.log_dir} (tensorboard --logdir {tensorboard.log_dir})")
    kind, why = pick_model(args, data, cnn_flags=lab_cnn_settings(given))
    if kind == "resnet50" and getattr(data, "streamed", False):
        raise ConfigError("streamed data: --model resnet50 is not supported yet; use --model cnn or --recipe")
    if kind == "resnet50":
        settings = resnet50_settings(args, settings, given, small_images=max(data.input_shape[:2]) <= SMALL_IMAGE)
    print(f"Model: {kind} ({why})")
    print(f"Data: {data.summary()}")
    print(f"Classes: {', '.join(data.class_names)}")
    if data.source.get("note"):
        print(f"Note: {data.source['note']}")
    class_weight = class_weight_from_args(args, data)
    if kind == "recipe":
        recipe = recipe or _recipe(args, settings, DEFAULT_RECIPE)
        return _run_recipe(args, recipe, settings, data, out, callbacks, class_weight)
    if kind == "resnet50":
        return _run_resnet50(args, settings, data, out, callbacks, class_weight)
    build_args = {k: settings[k] for k in build_keys()}
    model = build_cnn(input_shape=data.input_shape, class_names=data.class_names, device=args.device, **build_args)
    model.summary()
    augment = None
    if settings["augment"]:
        from cnnlab.data.augment import parse_augment_spec

        augment = parse_augment_spec(settings["augment"], seed=settings["seed"])
    callbacks += [EarlyStopping(patience=settings["early_stopping"])] if settings["early_stopping"] else []
    train, validation, test = split_pairs(data)
    history = model.fit(
        *train,
        batch_size=settings["batch_size"],
        epochs=settings["epochs"],
        validation_data=validation,
        callbacks=callbacks,
        seed=settings["seed"],
        run_dir=out,
        resume=args.resume,
        verbose=2 if args.quiet else 1,
        augment=augment,
        class_weight=class_weight,
    )
    if not is_main_process():  # of several processes, rank 0 alone tests and reports
        return 0
    from cnnlab.evaluate.predict import evaluate_model

    return report_test_results(out, data, history, evaluate_model(model, *test))


RECIPE_KEYS = {"seed", "epochs", "batch_size", *DATA_KEYS}


def _given(args: argparse.Namespace, settings: dict) -> set[str]:
    """The settings the user gave, by flag or in the TOML file."""
    given = {k for k, v in vars(args).items() if v is not None and k in settings}
    if args.config:
        given |= set(tomllib.loads(Path(args.config).read_text()))
    return given


def _recipe(args: argparse.Namespace, settings: dict, name: str):
    """The named recipe with the user's --epochs/--batch-size; other model or training flags are refused."""
    from dataclasses import replace

    from cnnlab.experiments.recipes import get_recipe

    given = _given(args, settings)
    refused = sorted(given - RECIPE_KEYS)
    if refused:
        raise ConfigError(
            f"recipe {name} brings its own network and training settings; drop "
            + ", ".join(_flag(k) for k in refused)
            + " (only --seed, --epochs, --batch-size and the data flags apply)"
        )
    return replace(get_recipe(name), **{k: settings[k] for k in ("epochs", "batch_size") if k in given})


def _run_recipe(args: argparse.Namespace, recipe, settings: dict, data, out: Path, callbacks: list,
                class_weight=None) -> int:  # fmt: skip
    """Train the recipe's network with its schedule, augmentation and EMA; test with its TTA."""
    import torch

    from cnnlab.evaluate.predict import Evaluation
    from cnnlab.evaluate.tta import evaluate_tta, tta_outputs
    from cnnlab.experiments.recipes import build_model, fit_recipe
    from cnnlab.train.distributed import is_main_process

    seed = settings["seed"]
    train, validation, test = split_pairs(data)
    model = build_model(recipe, train[0], seed, args.device, class_names=data.class_names)
    model.summary()
    history = fit_recipe(model, data, recipe, seed, callbacks=callbacks, verbose=2 if args.quiet else 1, run_dir=out,
                         resume=args.resume, class_weight=class_weight)  # fmt: skip
    if not is_main_process():
        return 0
    val = evaluate_tta(model, *validation, recipe.tta)
    logits, labels = tta_outputs(model, *test, recipe.tta)
    test = Evaluation.from_probabilities(torch.softmax(logits, 1).cpu().numpy(), labels, data.class_names)
    print(f"Validation accuracy (TTA): {val['accuracy']:.4f}")
    extra = {"model": "recipe", "recipe": args.recipe or DEFAULT_RECIPE, "tta": recipe.tta}
    extra.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
    return report_test_results(out, data, history, test, extra)


def _run_resnet50(args: argparse.Namespace, settings: dict, data, out: Path, callbacks: list, class_weight=None) -> int:
    """Fine-tune ResNet50 (cnnlab.experiments.fine_tune); test with flip TTA, as the recipes do."""
    import torch

    from cnnlab.evaluate.predict import Evaluation
    from cnnlab.evaluate.tta import tta_logits
    from cnnlab.experiments.fine_tune import FLIP_TTA
    from cnnlab.train.distributed import is_main_process

    model, history = train_resnet50(args, settings, data, out, callbacks, class_weight)
    if not is_main_process():
        return 0
    probabilities = torch.softmax(tta_logits(model, data.x_test, FLIP_TTA), 1).cpu().numpy()
    test = Evaluation.from_probabilities(probabilities, data.y_test, data.class_names)
    extra = {"model": "resnet50", "tta": FLIP_TTA, "freeze_epochs": settings["freeze_epochs"]}
    return report_test_results(out, data, history, test, extra)


# ----------------------------------------------------------------- several processes: torchrun and Ray Train


def _add_ray_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "several processes",
        "torchrun --nproc_per_node=N -m cnnlab train --out DIR ... trains as N processes (gloo on CPUs, NCCL "
        "with one GPU each); --workers N runs them as Ray Train workers instead. --batch-size is the global batch.",
    )
    group.add_argument(
        "--workers", type=int, metavar="N", help="train on N Ray Train workers (pip install 'cnnlab[ray]')"
    )
    group.add_argument("--address", help="with --workers: the Ray cluster to join, HEAD:PORT of `ray start --head`")
    group.add_argument("--use-gpu", action="store_true", help="with --workers: one GPU per worker (NCCL)")
    group.add_argument(
        "--max-failures", type=int, default=0, metavar="N",
        help="with --workers: restart the workers up to N times after one dies; they resume from the last epoch",
    )  # fmt: skip
    group.add_argument(
        "--ray-token-file", type=Path, help="file holding the Ray cluster's token (default: Ray's, ~/.ray/auth_token)"
    )


TORCHRUN_JOB = ".torchrun-job"  # in the run folder: which torchrun job trains it (cnnlab.train.distributed)


def _run_as_rank(args: argparse.Namespace, settings: dict, callbacks) -> int:
    """One of the processes torchrun started: rank 0 locks and checks --out and decides whether to resume (yes
    when torchrun restarted this job's workers), and tells the others; every rank trains, rank 0 alone writes."""
    from cnnlab.train.distributed import from_rank0, is_main_process, torchrun_job

    if args.out is None:
        raise ConfigError("under torchrun every process writes the same run folder: give it with --out")
    with ExitStack() as stack:
        problem = None
        if is_main_process():
            try:
                stack.enter_context(folder_lock(_run_folder(args), what="run folder"))
                _resume_restarted_job(args)
                _guard_existing_run(args.out, args)
                (args.out / TORCHRUN_JOB).write_text(torchrun_job() or "")
            except (CnnlabError, OSError) as error:
                problem = error
        failed, args.resume = from_rank0((problem is not None, args.resume))
        if problem is not None:
            raise problem
        if failed:
            raise SystemExit(2)  # rank 0 says why
        return _train_as_rank(args, settings, args.out, callbacks)


def _resume_restarted_job(args: argparse.Namespace) -> None:
    """torchrun restarted this job's workers (--max-restarts): continue from the run folder's last checkpoint
    when the folder says this job wrote it (an older run's checkpoints still need --resume)."""
    from cnnlab.train.distributed import restart_count, torchrun_job

    job, marker = torchrun_job(), args.out / TORCHRUN_JOB
    if not restart_count() or job is None or not marker.is_file() or marker.read_text() != job:
        return
    args.resume = any(args.out.glob("checkpoint*.pt"))
    args.overwrite = not args.resume  # killed before its first checkpoint: this job's files, started again
    state = "resuming from its last checkpoint" if args.resume else "no checkpoint yet, so starting it again"
    print(f"torchrun restart {restart_count()} of this job in {args.out}: {state}", flush=True)


def _train_as_rank(args: argparse.Namespace, settings: dict, out: Path, callbacks) -> int:
    """Train as one rank of several: rank 0 prints and writes the run folder, the others train silently."""
    from cnnlab.train.distributed import is_main_process

    if is_main_process():
        return _train(args, settings, out, callbacks)
    with open(os.devnull, "w") as sink, redirect_stdout(sink):
        return _train(args, settings, out, callbacks)


def _run_on_ray(args: argparse.Namespace, settings: dict, callbacks: list) -> int:
    """--workers N: this command's training on N Ray Train workers, here or on the cluster at --address. This
    process holds the run folder's lock while they train, and prints the result."""
    from cnnlab.experiments.ray_train import RayWorkers, train_on_ray
    from cnnlab.experiments.tune.engines import use_ray_token_file

    if args.workers < 1 or args.max_failures < 0:
        raise ConfigError(f"need --workers >= 1 and --max-failures >= 0, got {args.workers} and {args.max_failures}")
    if args.ray_token_file is not None:
        use_ray_token_file(args.ray_token_file)
    workers = RayWorkers(args.workers, args.address, args.use_gpu, args.threads, args.max_failures)
    out = _run_folder(args).resolve()
    with folder_lock(out, what="run folder"):
        _guard_existing_run(out, args)
        print(workers.describe(), flush=True)
        result = train_on_ray(functools.partial(_train_in_worker, args, settings, out, callbacks), out, workers)
    shown = " - ".join(f"{k}: {v:.4f}" for k, v in result.metrics.items() if k != "epoch" and isinstance(v, float))
    print(f"Ray Train finished after epoch {result.metrics.get('epoch')}: {shown}")
    print(f"Ray's last checkpoint: {result.checkpoint.path if result.checkpoint else 'none'}")
    test = read_json(out / "metrics.json").get("test_accuracy")  # where rank 0 ran on this machine
    if test is not None:
        print(f"Test accuracy: {test:.4f}")
    print(f"Run folder (written by rank 0, on its machine): {out}")
    return 0


def _train_in_worker(args: argparse.Namespace, settings: dict, out: Path, callbacks: list, resume: bool, device: str,
                     ray_callbacks: list) -> int:  # fmt: skip
    """What each Ray worker runs (cnnlab.experiments.ray_train): this command's training as one rank."""
    args = argparse.Namespace(**{**vars(args), "resume": args.resume or resume, "device": device, "quiet": True})
    return _train_as_rank(args, settings, out, [*callbacks, *ray_callbacks])
