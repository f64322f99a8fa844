"""kill -9 campaign: SIGKILL `cnnlab train` and `cnnlab lab` at random moments, rerun, count what survived.

    CNNLAB_CIFAR10=... python benchmarks/fault_campaign.py [--train-kills 20] [--lab-kills 10] [--during-fit]

Training: one uninterrupted reference run first (its wall time bounds the kill moments), then N runs,
each killed with SIGKILL at a random moment and finished with `--resume` (or `--overwrite` when it died
before its first checkpoint: "restarted"). A run counts as resumed when its final history.csv equals
the reference's (same seed, same machine: the same numbers); anything else is lost.

Lab: `cnnlab lab --quick --only <parts>`, killed at M random moments and run again. It counts as resumed
when the rerun exits 0, every part is stored and passes its checksum, the report exists, every part
stored before the kill was reused byte for byte, and every training run's history equals the reference
run's (so a training killed midway went on from its checkpoint as if never stopped).

Runs one process at a time with $CNNLAB_THREADS threads (default 1); a few minutes for the defaults of 5 and 3,
about 15 minutes for 20 training kills and 20 for 10 lab kills of the cheap parts on a busy 2-core machine.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAIN_ARGS = ["--epochs", "5", "--n-train-val", "5000", "--n-test", "100", "--batch-size", "20", "--n-filters", "8",
              "--quiet"]  # fmt: skip


def cnnlab(*args: str) -> list[str]:
    return [sys.executable, "-m", "cnnlab.cli", *args]


def environment(cache: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "CNNLAB_THREADS": os.environ.get("CNNLAB_THREADS", "1"),
            "CNNLAB_CACHE": str(cache)}  # fmt: skip


def run(command: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)


def kill_at(command: list[str], env: dict, seconds: float) -> float | None:
    """Start ``command`` and SIGKILL it after ``seconds``; if it finished first, how long it took."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        process.wait(timeout=seconds)
        return time.perf_counter() - started
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
        return None


def kill_moments(
    kills: int, wall: float, command_for, env: dict, rng: random.Random, check, start: float = 0.0
) -> dict[str, int]:
    """Kill runs until ``kills`` were killed mid-run (at most 3x as many tries) at moments drawn between
    ``start`` and ``wall`` seconds; ``check(index, moment)`` reruns a killed one and says "resumed" (went
    on from what was saved), "restarted" (killed before anything was saved) or "lost" (did not end as if
    never killed). A run that finishes before its kill moment shortens the window for the next ones."""
    counts = {"killed": 0, "finished before the kill": 0, "resumed": 0, "restarted": 0, "lost": 0}
    for index in range(3 * kills):
        if counts["killed"] == kills:
            break
        low = max(start, 0.05 * wall)
        moment = low + rng.uniform(0.0, 0.95) * (wall - low)
        finished_after = kill_at(command_for(index), env, moment)
        if finished_after is not None:
            counts["finished before the kill"] += 1
            wall = min(wall, finished_after)
            continue
        counts["killed"] += 1
        counts[check(index, moment)] += 1
        print(f"  kill {counts['killed']}/{kills} at {moment:.1f} s; {counts}")
    return counts


def history(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def same_history(a: list[dict], b: list[dict]) -> bool:
    if len(a) != len(b) or any(row.keys() != other.keys() for row, other in zip(a, b, strict=True)):
        return False
    return all(
        abs(float(row[k]) - float(other[k])) <= 1e-5 * max(1.0, abs(float(row[k])))
        for row, other in zip(a, b, strict=True)
        for k in row
    )


def timed_reference(command: list[str], env: dict, marker: Path) -> tuple[float, float]:
    """Run ``command`` to the end; return its wall time and when ``marker`` appeared."""
    started, appeared = time.perf_counter(), None
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=errors, text=True)
        while process.poll() is None:
            if appeared is None and marker.exists():
                appeared = time.perf_counter() - started
            time.sleep(0.05)
        if process.returncode != 0:
            errors.seek(0)
            sys.exit(f"the reference run failed:\n{errors.read()[-2000:]}")
    wall = time.perf_counter() - started
    return wall, wall if appeared is None else appeared


def train_campaign(kills: int, data: str, work: Path, env: dict, rng: random.Random, during_fit: bool) -> dict:
    reference = work / "reference"
    command = cnnlab("train", "--out", str(reference), "--data", data, *TRAIN_ARGS)
    wall, fit_began = timed_reference(command, env, reference / "config.json")  # written as fit begins
    expected = history(reference)
    print(f"train: reference run {wall:.0f} s (fit began at {fit_began:.0f} s), {len(expected)} epochs")

    def command_for(index: int) -> list[str]:
        return cnnlab("train", "--out", str(work / f"train-{index}"), "--data", data, *TRAIN_ARGS)

    def check(index: int, moment: float) -> str:
        out = work / f"train-{index}"
        checkpointed = out.is_dir() and any(p.name.startswith("checkpoint") for p in out.iterdir())
        rerun = run([*command_for(index), "--resume" if checkpointed else "--overwrite"], env)
        if rerun.returncode == 0 and same_history(history(out), expected):
            return "resumed" if checkpointed else "restarted"
        print(f"  kill at {moment:.1f} s lost the run {out}: {rerun.stderr.strip()[-500:]}")
        return "lost"

    return kill_moments(kills, wall, command_for, env, rng, check, start=fit_began if during_fit else 0.0)


def run_histories(out: Path) -> dict[str, list[dict[str, str]]]:
    """The epoch history of every training run a lab folder holds, by run name."""
    return {path.parent.name: history(path.parent) for path in out.glob("runs/*/history.csv")}


def stored_parts(out: Path) -> dict[str, bytes]:
    folder = out / "parts"
    return {p.name: p.read_bytes() for p in folder.glob("*.json")} if folder.is_dir() else {}


def lab_campaign(kills: int, data: str, parts: list[str], work: Path, env: dict, rng: random.Random) -> dict:
    from cnnlab.lab.store import CorruptPart, read_stored_part

    arguments = ["--quick", "--no-carbon", "--data", data, "--only", *parts]
    started = time.perf_counter()
    done = run(cnnlab("lab", "--out", str(work / "lab-reference"), *arguments), env)
    if done.returncode != 0:
        sys.exit(f"the reference lab run failed:\n{done.stderr[-2000:]}")
    wall = time.perf_counter() - started
    expected = run_histories(work / "lab-reference")
    print(f"lab: reference run {wall:.0f} s, parts {parts}, training runs {sorted(expected)}")

    def command_for(index: int) -> list[str]:
        return cnnlab("lab", "--out", str(work / f"lab-{index}"), *arguments)

    def check(index: int, moment: float) -> str:
        out = work / f"lab-{index}"
        before = stored_parts(out)
        checkpointed = any(out.glob("runs/*/checkpoint*.pt"))  # a training run killed midway resumes from it
        rerun = run(command_for(index), env)
        after = stored_parts(out)
        try:
            verified = all(read_stored_part(out / "parts" / name) for name in after)
        except CorruptPart:
            verified = False
        kept = all(after.get(name) == raw for name, raw in before.items())
        histories = run_histories(out)
        trained_alike = histories.keys() == expected.keys() and all(
            same_history(rows, expected[name]) for name, rows in histories.items()
        )
        if rerun.returncode == 0 and verified and kept and trained_alike and (out / "report.html").is_file():
            return "resumed" if before or checkpointed else "restarted"
        print(f"  kill at {moment:.1f} s lost {out}: {rerun.stderr.strip()[-500:]}")
        return "lost"

    return kill_moments(kills, wall, command_for, env, rng, check)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-kills", type=int, default=5)
    parser.add_argument("--lab-kills", type=int, default=3)
    parser.add_argument(
        "--lab-parts", nargs="+", default=["data", "device"], help="parts to run and kill (default: two cheap ones)"
    )
    parser.add_argument("--data", default=os.environ.get("CNNLAB_CIFAR10"), help="CIFAR-10 archive ($CNNLAB_CIFAR10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument(
        "--during-fit",
        action="store_true",
        help="kill training only once fit has begun (after loading data and building the model), so that "
        "most kills test --resume (one in epoch 1 still restarts); by default any moment, start-up included",
    )
    args = parser.parse_args()
    if not args.data:
        sys.exit("give a CIFAR-10 archive with --data or $CNNLAB_CIFAR10")
    sys.path.insert(0, str(REPO))
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="cnnlab-faults-") as folder:
        work = Path(folder)
        env = environment(work / "cache")
        warm = [sys.executable, "-c", "import sys; from cnnlab import load_cifar10; load_cifar10(sys.argv[1])"]
        run([*warm, args.data], env)  # decode once into the cache, so the reference run's time is a later run's
        train = (
            train_campaign(args.train_kills, args.data, work, env, rng, args.during_fit) if args.train_kills else None
        )
        lab = lab_campaign(args.lab_kills, args.data, args.lab_parts, work, env, rng) if args.lab_kills else None
    print("\n| campaign | kill -9 moments | resumed | restarted (killed before anything was saved) | lost |")
    print("|---|---|---|---|---|")
    for name, counts in (("cnnlab train", train), ("cnnlab lab --quick", lab)):
        if counts:
            print(f"| {name} | {counts['killed']} | {counts['resumed']} | {counts['restarted']} | {counts['lost']} |")
    for name, counts in (("train", train), ("lab", lab)):
        if counts:
            print(f"{name}: kill -9 at {counts['killed']} moments: {counts['resumed']} resumed, "
                  f"{counts['restarted']} restarted, {counts['lost']} lost")  # fmt: skip


if __name__ == "__main__":
    main()
