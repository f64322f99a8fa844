"""The two ways to run trials: Optuna in this process, or Ray Tune on the free cores or a Ray cluster."""

from __future__ import annotations

import io
import logging
import os
import socket
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial
from tqdm.auto import tqdm

from cnnlab.carbon.settings import CarbonSettings
from cnnlab.core.errors import CnnlabError, ConfigError
from cnnlab.core.runtime import THREADS_ENV, available_cores, configure_threads
from cnnlab.data.split import LabData
from cnnlab.experiments.tune.objective import OUTCOME_KEYS, record_outcome, train_trial
from cnnlab.experiments.tune.space import PARAMETERS, RAY_TRIAL_KEY, DefineByRun, SearchSpace
from cnnlab.experiments.tune.study import TuneSettings, make_sampler


def run_optuna(study: optuna.Study, space: SearchSpace, data: LabData, settings: TuneSettings, count: int) -> None:
    def objective(trial: optuna.Trial):
        config = space.suggest(trial)

        def report(metrics: dict) -> bool:
            trial.report(metrics["val_accuracy"], metrics["epochs_run"])
            return trial.should_prune()

        pruning = None if settings.multi_objective else report
        outcome = train_trial(config, data, settings.epochs, settings.seed, pruning, settings.device, settings.carbon)
        record_outcome(trial, config, outcome)
        if outcome.stopped_early:
            raise optuna.TrialPruned(outcome.note or f"stopped after epoch {outcome.epochs_run}")
        if settings.multi_objective:
            if outcome.energy_kwh is None:
                raise CnnlabError(f"trial {trial.number}: {outcome.note}; objective 'accuracy+energy' needs it")
            return outcome.val_accuracy, outcome.energy_kwh
        return outcome.val_accuracy

    with tqdm(total=count, desc="trials", unit="trial", dynamic_ncols=True) as bar:

        def progress(study: optuna.Study, trial: FrozenTrial) -> None:
            bar.update()
            accuracy = trial.user_attrs.get("val_accuracy")
            bar.set_postfix_str(
                f"#{trial.number} {trial.state.name.lower()}"
                + (f" val_accuracy {accuracy:.4f}" if accuracy is not None else "")
            )

        study.optimize(objective, n_trials=count, callbacks=[progress])


def _in_order(config: dict[str, Any]) -> dict[str, Any]:
    """A Ray trial's configuration without the trial number, its settings in PARAMETERS order."""
    return {name: config[name] for name in PARAMETERS if name in config}


def threads_per_trial() -> int:
    """Threads each Ray trial gives PyTorch: $CNNLAB_THREADS, else 1 (many one-thread trials beat
    few many-thread ones on these small models, and oversubscribed cores make torch crawl)."""
    return int(os.environ.get(THREADS_ENV) or 1)


def free_cores() -> int:
    """Cores not already busy: the cores this process may use minus the 1-minute load average."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    return max(1, available_cores() - round(load))


def _ray_trial(config: dict, data: LabData, epochs: int, seed: int, threads: int, carbon: CarbonSettings) -> None:
    """A Ray Tune function trainable: the shared objective, reporting each epoch to Tune (ASHA)."""
    from ray import tune

    configure_threads(threads)
    config = _in_order(config)

    def report(metrics: dict) -> bool:
        tune.report(metrics)
        return False  # ASHA stops trials from Tune's side

    train_trial(config, data, epochs, seed, report, device="cpu", carbon=carbon)


RAY_TOKEN_FILE = Path("~/.ray/auth_token")  # where `ray start` and `ray get-auth-token --generate` keep it


def use_ray_token_if_available() -> bool:
    """Turn on Ray's token authentication for this driver when a token is at hand; True if on.

    Ray (2.5x+) makes `ray start --head` use token authentication whenever a token exists, but a driver
    given an explicit --address never turns it on by itself, so it is refused with "Failed to connect".
    A token is taken from where Ray looks: $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token;
    a cluster without authentication accepts a driver that sends one. $RAY_AUTH_MODE, when set, decides.
    """
    if "RAY_AUTH_MODE" in os.environ:
        return os.environ["RAY_AUTH_MODE"].lower() == "token"
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or RAY_TOKEN_FILE).expanduser()
    if not (os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file()):
        return False
    os.environ["RAY_AUTH_MODE"] = "token"
    try:  # Ray caches its configuration when imported: make it read the environment again, as Ray itself does
        from ray._raylet import Config

        Config.initialize("")
    except ImportError:  # a Ray without token authentication
        pass
    return True


def _check_reachable(address: str) -> None:
    """Fail in one line, in seconds, when nothing listens at the cluster's address (Ray retries for a minute)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address {address!r} is not HOST:PORT (e.g. 127.0.0.1:6379 or ray://head:10001)")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as error:
        raise CnnlabError(
            f"no Ray cluster answers at {address} ({error.strerror or error}); start one on the head machine "
            f"with `ray start --head --port {port}`, or check the address and the firewall"
        ) from error


def use_ray_token_file(path: Path) -> None:
    """Have Ray read the cluster's token from ``path`` (the commands' --ray-token-file)."""
    if not path.is_file():
        raise ConfigError(f"--ray-token-file {path} does not exist; on the head: ray get-auth-token")
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(path.resolve())  # where Ray reads a token from


def start_ray(ray, address: str | None, local_cpus: int, threads: int, log_to_driver: bool = False) -> None:
    """Start Ray here, or join the cluster at ``address``; a cluster that refuses this driver is one line.
    ``log_to_driver``: show what the workers print here (trials print nothing useful: off for tuning)."""
    token = False
    if address:
        _check_reachable(address)
        token = use_ray_token_if_available()
    try:
        ray.init(
            address=address,
            num_cpus=None if address else local_cpus,
            include_dashboard=False,
            log_to_driver=log_to_driver,
            logging_level=logging.ERROR,
            runtime_env={"env_vars": {THREADS_ENV: str(threads)}},
        )
    except (ConnectionError, ray.exceptions.AuthenticationError) as error:
        if not address:
            raise
        sent = "the token it was given" if token else "no token (none found)"
        raise CnnlabError(
            f"the Ray cluster at {address} answers but did not accept this driver, which sent {sent} "
            f"({str(error).strip().splitlines()[-1]}); if the cluster uses token authentication, put its token "
            "(`ray get-auth-token` on the head) in $RAY_AUTH_TOKEN or pass --ray-token-file FILE; also check that "
            "this machine runs the same Ray version as the cluster"
        ) from error


def _file_results(tune, storage: optuna.storages.BaseStorage, study_name: str, count: int):
    """A Tune callback that copies each result into the study's trial (as Optuna's engine does) and
    counts finished trials on a progress bar. Tune pickles its callbacks, so the bar is made once it starts."""

    class FileResults(tune.Callback):
        def __init__(self):
            self.storage, self.study_id = storage, storage.get_study_id_from_name(study_name)

        def setup(self, **info):
            self.bar = tqdm(total=count, desc="ray trials", unit="trial", dynamic_ncols=True)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            number = trial.config[RAY_TRIAL_KEY]
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)
            self.storage.set_trial_user_attr(trial_id, "config", _in_order(trial.config))
            for key in OUTCOME_KEYS:
                if key in result:
                    self.storage.set_trial_user_attr(trial_id, key, result[key])

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.bar.update()

        def on_trial_error(self, iteration, trials, trial, **info):
            self.bar.update()

        def on_experiment_end(self, trials, **info):
            self.bar.close()

    return FileResults()


def run_ray(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    space: SearchSpace,
    data: LabData,
    settings: TuneSettings,
    count: int,
    out: Path,
) -> list[str]:
    """Run ``count`` trials with Ray Tune; returns the error of each trial that failed."""
    try:
        import ray
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler
        from ray.tune.search.optuna import OptunaSearch
    except ImportError as error:
        raise ConfigError(
            f"engine 'ray' needs Ray Tune ({error}); install it with: pip install 'cnnlab[ray]'"
        ) from error

    threads = threads_per_trial()
    started_here = not ray.is_initialized()
    if started_here:
        local_slots = settings.max_concurrent or max(1, free_cores() // threads)
        start_ray(ray, settings.address, local_slots * threads, threads)
    try:
        concurrency = settings.max_concurrent or max(1, int(ray.cluster_resources().get("CPU", 1)) // threads)
        metric, mode = ("val_accuracy", "max") if not settings.multi_objective else (
            ["val_accuracy", "energy_kwh"], ["max", "min"])  # fmt: skip
        searcher = OptunaSearch(
            DefineByRun(space),
            metric=metric,
            mode=mode,
            sampler=make_sampler(settings.seed, len(study.trials)),
            study_name=study.study_name,
            storage=storage,
        )
        # ASHA stops trials on accuracy alone; a Pareto front needs every trial trained in full.
        scheduler = None if settings.multi_objective else ASHAScheduler(
            metric="val_accuracy", mode="max", max_t=settings.epochs, grace_period=1, reduction_factor=3)  # fmt: skip

        trainable = tune.with_resources(
            tune.with_parameters(
                _ray_trial,
                data=data,
                epochs=settings.epochs,
                seed=settings.seed,
                threads=threads,
                carbon=settings.carbon,
            ),
            {"cpu": threads},
        )
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=count,
                max_concurrent_trials=concurrency,
                reuse_actors=True,  # a new trial in a warm process skips importing torch and codecarbon again
            ),
            run_config=tune.RunConfig(
                name=study.study_name,
                storage_path=str((out / "ray").resolve()),
                verbose=0,
                callbacks=[_file_results(tune, storage, study.study_name, count)],
            ),
        )
        with redirect_stdout(io.StringIO()):  # Tune prints a banner even at verbose=0
            results = tuner.fit()
        return [str(error).strip().splitlines()[-1] for error in results.errors]
    finally:
        if started_here:
            ray.shutdown()
