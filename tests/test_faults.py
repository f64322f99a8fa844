"""The fault matrix: inject each fault a user can meet and check the outcome: one line and exit code 2
(or a warning and a redo), the last good files intact, nothing half-written left behind.

Full disks are real: a small tmpfs; a read-only folder is a real read-only bind mount (root ignores
file permissions). Both need mount rights; without them those tests are skipped with the reason.
Checkpoint faults are tested here through `cnnlab train` and `cnnlab predict`, and in test_training.py
through ``fit``; corrupt archives, image folders and .npz files are generated in test_fuzz.py.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from PIL import Image
from tiny_cifar import write_tiny_cifar

from cnnlab.cli import main
from cnnlab.core import files
from cnnlab.core.errors import DataError, FolderLocked, user_os_error
from cnnlab.core.files import atomic_write, write_json
from cnnlab.core.locks import LOCK_NAME, folder_lock
from cnnlab.data import cache, cifar
from cnnlab.lab.context import LabContext
from cnnlab.lab.runner import run_parts
from cnnlab.lab.store import Section, read_stored_part
from cnnlab.models.registry import load_model
from cnnlab.train.callbacks import BackupAndRestore
from cnnlab.train.checkpoint import CHECKPOINT, PREVIOUS_CHECKPOINT, read_checkpoint

REPO = Path(__file__).resolve().parents[1]
HOLD_LOCK = """
import sys, time
from cnnlab.core.locks import folder_lock
with folder_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))


def _one_line_error(capsys, command: str) -> str:
    """The error line (progress lines may come before it), checked to be the only one and traceback-free."""
    printed = capsys.readouterr().err
    errors = [line for line in printed.splitlines() if line.startswith(f"cnnlab {command}: error: ")]
    assert len(errors) == 1 and errors[0] == printed.strip().splitlines()[-1] and "Traceback" not in printed, printed
    return errors[0]


@contextmanager
def _mount(target: Path, *options: str):
    """Mount (tmpfs or a bind) at target for the block; skip the test where mounting is not allowed."""
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", *options, str(target)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"needs mount rights (root where mounts are allowed): {done.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


@pytest.fixture
def full_disk(tmp_path):
    """A real 300 KB file system: writes beyond it fail with ENOSPC, from Python, C++ and Rust alike."""
    with _mount(tmp_path / "small", "-t", "tmpfs", "-o", "size=300k", "tmpfs") as folder:
        yield folder


@pytest.fixture
def read_only_folder(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    (source / "kept.txt").write_text("good")
    with _mount(tmp_path / "read-only", "--bind", "-o", "ro", str(source)) as folder:
        yield folder


def _files(folder: Path) -> dict[str, bytes]:
    """A folder's files and their bytes, less the lock file a writer leaves."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != LOCK_NAME
    }


# --------------------------------------------------------------------------- errors: one line or a traceback


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.ENOSPC, "no space left"),
        (errno.EDQUOT, "quota"),
        (errno.EACCES, "permission denied"),
        (errno.EPERM, "not permitted"),
        (errno.EROFS, "read-only"),
        (errno.ENOTDIR, "a file is in the way"),
        (errno.EEXIST, "a file is in the way"),
        (errno.ENOENT, "no such file"),
    ],
)
def test_user_fixable_os_errors_name_the_path_and_the_fix(code, words):
    message = user_os_error(OSError(code, os.strerror(code), "/some/where"))
    assert message.startswith("/some/where: ") and words in message and " — " in message


def test_other_errors_keep_their_traceback(monkeypatch):
    assert user_os_error(OSError(errno.EIO, "I/O error", "/x")) is None
    assert user_os_error(ValueError("a bug")) is None
    import cnnlab.cli.tune as tune_command

    def buggy(args):
        raise ValueError("a bug, not the user's doing")

    monkeypatch.setattr(tune_command, "run", buggy)
    with pytest.raises(ValueError, match="a bug"):  # not turned into a one-line error
        main(["tune"])


# --------------------------------------------------------------------------- locks: two writers


@pytest.fixture
def held_folder(tmp_path):
    """A folder whose lock another process holds, and that process's PID."""
    folder = tmp_path / "busy"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(folder)], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        yield folder, holder
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--epochs", "1"],
        ["lab", "--tiny", "--only", "convolution"],
        ["tune", "--trials", "1"],
    ],
)
def test_a_second_writer_stops_at_once_naming_the_holder(held_folder, capsys, argv):
    folder, holder = held_folder
    before = _files(folder)
    assert main([*argv, "--out", str(folder)]) == 2
    error = _one_line_error(capsys, argv[0])
    assert f"{folder} is in use by PID {holder.pid} on " in error and "python" in error and "since" in error
    assert _files(folder) == before


def test_the_lock_of_a_killed_process_is_taken_over(held_folder):
    folder, holder = held_folder
    holder.kill()
    holder.wait()
    with folder_lock(folder) as locked:  # the OS dropped the dead process's lock
        record = json.loads((locked / LOCK_NAME).read_text())
        assert record["pid"] == os.getpid()


def test_a_stale_record_is_not_trusted(tmp_path):
    """A record left by a dead process does not stop anyone; a held lock is what counts."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / LOCK_NAME).write_text(json.dumps({"pid": 999_999_999, "host": "vm", "command": "cnnlab train"}))
    with folder_lock(folder):
        pass


def test_the_caches_wait_their_turn(held_folder):
    from cnnlab.core.locks import cache_lock

    folder, holder = held_folder
    with pytest.raises(FolderLocked, match="after waiting"), folder_lock(folder, what="data cache", wait=0.3):
        pass
    holder.kill()
    holder.wait()
    with cache_lock(folder):
        pass


# --------------------------------------------------------------------------- run folders are never overwritten


@pytest.mark.parametrize(
    ("present", "state"),
    [
        (("config.json", "history.csv", "checkpoint.pt", "metrics.json", "weights.safetensors"), "a finished run"),
        (("config.json", "history.csv", "checkpoint.pt"), "a run"),
    ],
)
def test_rerunning_a_run_folder_without_resume_refuses(tmp_path, capsys, present, state):
    out = tmp_path / "run"
    out.mkdir()
    for name in present:
        (out / name).write_text(f"the earlier run's {name}")
    before = _files(out)
    assert main(["train", "--out", str(out), "--epochs", "1"]) == 2
    error = _one_line_error(capsys, "train")
    assert f"{out} holds {state}" in error and "--resume" in error and "--overwrite" in error
    assert _files(out) == before


def test_overwrite_replaces_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    (out / "checkpoints").mkdir()
    # The data is missing, so training stops right after the guard: the old run is gone, nothing new yet.
    assert main(["train", "--out", str(out), "--overwrite", "--data", str(tmp_path / "missing.tar.gz")]) == 2
    assert "missing.tar.gz: no such file or folder" in _one_line_error(capsys, "train")
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]


def test_resume_needs_a_checkpoint_and_excludes_overwrite(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path), "--resume"]) == 2
    assert "no checkpoint in" in _one_line_error(capsys, "train")
    assert main(["train", "--out", str(tmp_path / "typo"), "--resume"]) == 2
    assert "typo does not exist" in _one_line_error(capsys, "train") and not (tmp_path / "typo").exists()
    assert main(["train", "--out", str(tmp_path), "--resume", "--overwrite"]) == 2
    assert "choose one" in _one_line_error(capsys, "train")


@pytest.mark.parametrize("command", [["train"], ["lab", "--tiny"], ["tune"]])
def test_out_naming_a_file_is_one_line(tmp_path, capsys, command):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    assert main([*command, "--out", str(a_file)]) == 2
    assert f"--out {a_file} is a file, not a folder" in _one_line_error(capsys, command[0])
    assert a_file.read_text() == "mine"


def test_default_run_folders_never_collide(tmp_path, monkeypatch):
    from cnnlab.cli.train import _run_folder

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("time.strftime", lambda fmt, *a: "20250101-120000")  # the same second, twice
    args = type("Args", (), {"out": None})()
    first, second = _run_folder(args), _run_folder(args)
    assert first != second and first.is_dir() and second.is_dir()
    assert second.name == "20250101-120000-2"


# --------------------------------------------------------------------------- full disk and read-only folders


def _fake_part(size: int):
    def part(ctx: LabContext) -> Section:
        return Section(key="x", title="a part", intro="x" * size)

    return part


def test_full_disk_during_a_lab_part_is_one_line_and_keeps_the_finished_parts(full_disk, monkeypatch, capsys):
    import cnnlab.lab.runner

    out = full_disk / "report"
    monkeypatch.setattr(
        cnnlab.lab.runner, "discover_parts", lambda: [("small", _fake_part(100)), ("big", _fake_part(400_000))]
    )
    assert main(["lab", "--tiny", "--out", str(out)]) == 2
    error = _one_line_error(capsys, "lab")
    assert f"{out / 'parts' / 'big.json'}: no space left on the device" in error
    assert read_stored_part(out / "parts" / "small.json")["section"]["intro"] == "x" * 100
    assert sorted(p.name for p in (out / "parts").iterdir()) == ["small.json"]  # no temp file left


def test_full_disk_in_the_data_cache_leaves_no_entry(full_disk, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CNNLAB_CACHE", str(full_disk))
    archive = write_tiny_cifar(tmp_path / "cifar.tar.gz", images_per_batch=20)  # 120 images: 370 KB decoded
    assert main(["train", "--data", str(archive), "--out", str(tmp_path / "run")]) == 2
    error = _one_line_error(capsys, "train")
    assert "no space left on the device" in error and str(full_disk / "cifar10") in error
    assert [p.name for p in (full_disk / "cifar10").iterdir()] == [LOCK_NAME]  # no entry, no partial folder


def test_full_disk_in_the_weights_cache_keeps_the_file_there(full_disk):
    from cnnlab.models.resnet50 import ResNet50
    from cnnlab.models.resnet50_weights import save_weights

    target = full_disk / "resnet50" / "resnet50-cached.safetensors"
    target.parent.mkdir()
    target.write_bytes(b"the last good file")
    with pytest.raises(OSError) as caught:
        save_weights(ResNet50(), target)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert user_os_error(caught.value).startswith(f"{target}: no space left")
    assert _files(target.parent) == {target.name: b"the last good file"}


def test_torch_save_on_a_full_disk_is_an_os_error(full_disk):
    """torch.save hides the errno in a RuntimeError ("unexpected pos"); atomic_write gives it back."""
    target = full_disk / "checkpoint.pt"
    write_json(full_disk / "history.json", {"epochs": 1})
    with pytest.raises(OSError) as caught:
        atomic_write(target, lambda tmp: torch.save({"w": torch.zeros(200_000)}, tmp))
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert sorted(p.name for p in full_disk.iterdir()) == ["history.json"]


@pytest.mark.parametrize("command", [["train", "--epochs", "1"], ["lab", "--tiny", "--only", "convolution"]])
def test_a_read_only_output_folder_is_one_line(read_only_folder, capsys, command):
    assert main([*command, "--out", str(read_only_folder / "out")]) == 2
    error = _one_line_error(capsys, command[0])
    assert f"{read_only_folder / 'out'}: the file system is read-only" in error
    assert _files(read_only_folder) == {"kept.txt": b"good"}


# --------------------------------------------------------------------------- damaged files are verified when read


@pytest.mark.parametrize(
    ("damage", "problem"),
    [("truncate", r"x_train\.npy: \d+ bytes, \d+ written"), ("header", "x_train.npy: checksum mismatch"),
     ("pixel", "x_train.npy: checksum mismatch")],
)  # fmt: skip
def test_a_damaged_data_cache_is_decoded_again_with_a_warning(tmp_path, damage, problem):
    archive = write_tiny_cifar(tmp_path / "cifar.tar.gz")
    (x_train, y_train), _ = cifar.load_cifar10(archive)
    expected = np.array(x_train)
    entry = files.cache_dir() / "cifar10" / cache.cache_key(archive)
    npy = entry / "x_train.npy"
    raw = npy.read_bytes()
    damaged = {
        "truncate": raw[: len(raw) // 2],
        "header": b"garbage!" + raw[8:],
        "pixel": raw[:-1] + bytes([raw[-1] ^ 0x01]),  # one bit of the last pixel: a valid .npy still
    }[damage]
    npy.write_bytes(damaged)
    with pytest.warns(UserWarning, match=f"data cache entry {entry} is damaged \\({problem}\\); decoding the source"):
        (x_again, _), _ = cifar.load_cifar10(archive)
    np.testing.assert_array_equal(x_again, expected)
    assert npy.read_bytes() == raw  # the entry was written again


def test_the_cache_checksum_is_computed_once_per_process(tmp_path, monkeypatch):
    """Sizes are checked on every load; the CRC-32 (0.1 s for CIFAR-10) once per file and process."""
    archive = write_tiny_cifar(tmp_path / "cifar.tar.gz")
    cifar.load_cifar10(archive)  # decodes and writes the entry
    computed = []
    crc32 = cache._file_crc32
    monkeypatch.setattr(cache, "_file_crc32", lambda path: computed.append(path.name) or crc32(path))
    cifar.load_cifar10(archive)
    assert sorted(computed) == ["x_test.npy", "x_train.npy", "y_test.npy", "y_train.npy"]
    cifar.load_cifar10(archive)
    assert len(computed) == 4


def _lab_with_counter(out: Path, runs: list[str]):
    def part(ctx: LabContext) -> Section:
        runs.append("ran")
        return Section(key="counted", title="Counted", intro="measured")

    ctx = LabContext(out=out, tiny=True, device="cpu", carbon=False)
    return lambda: run_parts(ctx, [("counted", part)], live=False)


@pytest.mark.parametrize("damage", ["truncate", "flip", "not utf-8"])
def test_a_damaged_lab_part_warns_and_runs_again(tmp_path, capsys, damage):
    runs: list[str] = []
    run_lab = _lab_with_counter(tmp_path, runs)
    run_lab()
    stored = tmp_path / "parts" / "counted.json"
    text = stored.read_bytes()
    damaged = {
        "truncate": text[: len(text) // 2],
        "flip": text.replace(b"measured", b"measurad"),  # still valid JSON: the checksum catches it
        "not utf-8": b"\xff\xfe" + text,
    }[damage]
    stored.write_bytes(damaged)
    sections = run_lab()
    assert runs == ["ran", "ran"] and sections[0].intro == "measured"
    assert f"warning: the stored result {stored} is damaged" in capsys.readouterr().err
    assert read_stored_part(stored)["section"]["intro"] == "measured"
    run_lab()
    assert runs == ["ran", "ran"]  # the rewritten result is trusted again


@pytest.mark.parametrize("damage", ["truncate", "overwrite"])
def test_a_damaged_study_database_is_one_line(tmp_path, capsys, damage):
    out = tmp_path / "study"
    out.mkdir()
    database = out / "study.db"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=f"sqlite:///{database}", study_name="cnnlab-tune")
    for value in (0.1, 0.2, 0.3):
        study.enqueue_trial({"x": value})
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=3)
    raw = database.read_bytes()
    database.write_bytes(raw[: len(raw) // 3] if damage == "truncate" else raw[:4096] + os.urandom(len(raw) - 4096))
    archive = write_tiny_cifar(tmp_path / "cifar.tar.gz", images_per_batch=12)
    argv = ["tune", "--out", str(out), "--data", str(archive), "--subset", "40", "--test-size", "10"]
    assert main(argv) == 2
    error = _one_line_error(capsys, "tune")
    assert f"{database}: the study database is damaged" in error and "--fresh" in error
    assert database.stat().st_size == len(raw) or damage == "truncate"  # left as it was, for the user to look at


def test_fresh_sets_the_study_aside(tmp_path):
    from cnnlab.experiments.tune.study import set_aside_study

    database = tmp_path / "study.db"
    database.write_bytes(b"damaged")
    kept = set_aside_study(f"sqlite:///{database}")
    assert not database.exists() and kept.read_bytes() == b"damaged" and kept.name.endswith(".old")


# --------------------------------------------------------------------------- checkpoints and weights, through the CLI


def _train_argv(archive: Path, out: Path) -> list[str]:
    return ["train", "--out", str(out), "--data", str(archive), "--n-train-val", "40", "--n-test", "12",
            "--epochs", "3", "--batch-size", "20", "--n-filters", "4", "--quiet"]  # fmt: skip


def _assert_same_history(run: Path, reference: Path) -> None:
    """history.csv equal to the reference run's: same epochs and columns, numbers to float32 precision."""
    (columns, *rows), (expected_columns, *expected) = (
        list(csv.reader((folder / "history.csv").open(newline=""))) for folder in (run, reference)
    )
    assert columns == expected_columns and len(rows) == len(expected) == 3
    np.testing.assert_allclose(np.array(rows, float), np.array(expected, float), rtol=1e-5)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A small archive and the uninterrupted 3-epoch run that killed and damaged runs must end equal to."""
    folder = tmp_path_factory.mktemp("tiny-run")
    archive = write_tiny_cifar(folder / "cifar.tar.gz", images_per_batch=12)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CNNLAB_CACHE", str(folder / "cache"))
        assert main(_train_argv(archive, folder / "reference")) == 0
    return archive, folder / "reference"


def _stop_after_epoch(monkeypatch, epochs: int) -> None:
    """Stop ``fit`` right after the checkpoint of epoch ``epochs`` is written, as a kill there would."""
    write = BackupAndRestore.on_epoch_end

    def write_then_stop(self, epoch, logs=None):
        write(self, epoch, logs)
        if epoch + 1 == epochs:
            raise KeyboardInterrupt

    monkeypatch.setattr(BackupAndRestore, "on_epoch_end", write_then_stop)


def test_resume_with_a_truncated_latest_checkpoint_falls_back_to_the_previous(tiny_run, tmp_path, monkeypatch, capsys):
    archive, reference = tiny_run
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        _stop_after_epoch(patch, 2)
        assert main(_train_argv(archive, out)) == 130  # interrupted after epoch 2's checkpoint
    latest = out / CHECKPOINT
    header, size = 48, latest.stat().st_size  # cnnlab's header: magic, payload size, sha256
    latest.write_bytes(latest.read_bytes()[:1000])
    capsys.readouterr()
    assert main([*_train_argv(archive, out), "--resume"]) == 0
    printed = capsys.readouterr().err
    assert [line for line in printed.splitlines() if line.startswith("warning:")] == [
        f"warning: {latest} is unusable ({1000 - header} bytes of {size - header}: truncated); "
        f"resuming from {PREVIOUS_CHECKPOINT} (epoch 1)"
    ]
    assert "Traceback" not in printed
    _assert_same_history(out, reference)


def test_resume_with_both_checkpoints_truncated_is_one_line(tiny_run, tmp_path, capsys):
    archive, reference = tiny_run
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
        (out / name).write_bytes((out / name).read_bytes()[:500])
    before = _files(out)
    assert main([*_train_argv(archive, out), "--resume"]) == 2
    error = _one_line_error(capsys, "train")
    assert f"cannot resume {out}: {CHECKPOINT} is unusable" in error and f"so is {PREVIOUS_CHECKPOINT}" in error
    assert _files(out) == before


def test_full_disk_during_a_checkpoint_keeps_the_previous_one_resumable(tiny_run, tmp_path, capsys):
    """A tmpfs that holds two checkpoints but not the temp file of a third: epoch 2's write fails."""
    archive, reference = tiny_run
    pages = -(-(reference / CHECKPOINT).stat().st_size // 4096)
    with _mount(tmp_path / "disk", "-t", "tmpfs", "-o", f"size={(2 * pages + pages // 2 + 6) * 4}k", "tmpfs") as disk:
        out = disk / "run"
        assert main(_train_argv(archive, out)) == 2
        error = _one_line_error(capsys, "train")
        assert f"{out}{os.sep}checkpoint" in error and "no space left on the device" in error
        assert read_checkpoint(out, "cpu")["epochs_done"] == 1  # the last good checkpoint, intact
        assert not [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != LOCK_NAME]  # no temp file
        subprocess.run(["mount", "-o", "remount,size=20m", str(disk)], check=True)  # the user frees space
        assert main([*_train_argv(archive, out), "--resume"]) == 0
        _assert_same_history(out, reference)


def test_truncated_weights_are_one_line_for_predict_and_load_model(tiny_run, tmp_path, capsys):
    _, reference = tiny_run
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    weights = run / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    image = tmp_path / "cat.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    assert main(["predict", str(run), str(image)]) == 2
    assert str(weights) in _one_line_error(capsys, "predict")
    with pytest.raises(DataError) as caught:
        load_model(weights)
    assert str(weights) in str(caught.value) and "\n" not in str(caught.value)
