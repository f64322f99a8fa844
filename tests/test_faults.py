"""The fault matrix: inject each fault a user can meet and check the outcome: one line and exit code 2
(or a warning and a redo), the last good files intact, nothing half-written left behind.

Full disks are real: a 300 KB tmpfs; a read-only folder is a real read-only bind mount (root ignores
file permissions). Both need mount rights; without them those tests are skipped with the reason.
Checkpoint faults (truncated checkpoint, fallback to the one before) are tested with training.py.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_cifar import tiny_cifar_bytes, write_tiny_cifar

from cnnlab import data as cifar
from cnnlab.cli import main
from cnnlab.errors import DataError, FolderLocked, user_os_error
from cnnlab.files import atomic_write, write_json
from cnnlab.lab import LabContext, Section, read_stored_part, run_parts
from cnnlab.locks import LOCK_NAME, folder_lock

REPO = Path(__file__).resolve().parents[1]
HOLD_LOCK = """
import sys, time
from cnnlab.locks import folder_lock
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
    from cnnlab.locks import cache_lock

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
    assert "missing.tar.gz does not exist" in _one_line_error(capsys, "train")
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
    import cnnlab.lab

    out = full_disk / "report"
    monkeypatch.setattr(
        cnnlab.lab, "discover_parts", lambda: [("small", _fake_part(100)), ("big", _fake_part(400_000))]
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
    from cnnlab.pretrained import ResNet50, save_weights

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


@pytest.mark.parametrize("damage", ["truncate", "header"])
def test_a_damaged_data_cache_is_decoded_again(tmp_path, damage):
    archive = write_tiny_cifar(tmp_path / "cifar.tar.gz")
    (x_train, y_train), _ = cifar.load_cifar10(archive)
    expected = np.array(x_train)
    entry = cifar.cache_dir() / "cifar10" / cifar._cache_key(archive)
    npy = entry / "x_train.npy"
    raw = npy.read_bytes()
    npy.write_bytes(raw[: len(raw) // 2] if damage == "truncate" else b"garbage!" + raw[8:])
    (x_again, _), _ = cifar.load_cifar10(archive)
    np.testing.assert_array_equal(x_again, expected)
    assert npy.read_bytes() == raw  # the entry was written again


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
    from cnnlab.tuning import set_aside_study

    database = tmp_path / "study.db"
    database.write_bytes(b"damaged")
    kept = set_aside_study(f"sqlite:///{database}")
    assert not database.exists() and kept.read_bytes() == b"damaged" and kept.name.endswith(".old")


# --------------------------------------------------------------------------- fuzzed CIFAR-10 archives

VALID_ARCHIVE = tiny_cifar_bytes(images_per_batch=2)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cut=st.one_of(st.none(), st.integers(0, len(VALID_ARCHIVE) - 1)),
    flips=st.lists(st.tuples(st.integers(0, len(VALID_ARCHIVE) - 1), st.integers(1, 255)), max_size=4),
)
def test_a_corrupt_cifar_archive_is_a_data_error_and_leaves_no_cache_entry(cut, flips):
    raw = bytearray(VALID_ARCHIVE)
    for position, xor in flips:
        raw[position] ^= xor
    raw = raw[:cut] if cut is not None else raw
    with tempfile.TemporaryDirectory() as folder:
        archive, cache = Path(folder) / "cifar.tar.gz", Path(folder) / "cache"
        archive.write_bytes(bytes(raw))
        os.environ["CNNLAB_CACHE"] = str(cache)  # the autouse fixture restores it after the test
        try:
            (x_train, _), _ = cifar.load_cifar10(archive)
        except DataError as error:
            assert "\n" not in str(error)
            entries = list((cache / "cifar10").iterdir()) if (cache / "cifar10").exists() else []
            assert [p.name for p in entries if p.name != LOCK_NAME] == []
        else:
            assert x_train.shape == (10, 32, 32, 3)  # damage the decoder cannot see (pixels, padding)
