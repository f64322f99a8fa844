"""A real Ray head on 127.0.0.1 for the tests that need a cluster (tune's and Ray Train's): started with
`ray start --head` in its own process group under a private HOME, and stopped with that group only."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, suppress
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ray_env(home: Path, **extra: str) -> dict[str, str]:
    """Ray's files under a private HOME; RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps every Ray socket on
    127.0.0.1 (else Ray swaps a loopback address for the machine's own)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, "HOME": str(home), "PYTHONPATH": str(REPO), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **extra}


@contextmanager
def ray_head(home: Path, port: int, **env: str):
    """`ray start --head` on 127.0.0.1 (2 CPUs, an 80 MB object store), in its own process group,
    which is ended on exit: only this test's Ray processes are stopped."""
    ray = Path(sys.executable).with_name("ray")
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # Ray's socket paths must stay short
    log = temp / "head.log"
    command = [str(ray), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
               "--num-cpus", "2", "--object-store-memory", "80000000", "--include-dashboard", "false",
               "--disable-usage-stats", "--temp-dir", str(temp)]  # fmt: skip
    with open(log, "w") as output:
        head = subprocess.Popen(command, env=ray_env(home, **env), stdout=output, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in log.read_text() and time.monotonic() < deadline:
            assert head.poll() is None, log.read_text()[-2000:]
            time.sleep(0.5)
        assert "Ray runtime started" in log.read_text(), log.read_text()[-2000:]
        yield log.read_text()
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            head.wait(timeout=10)
        time.sleep(1)  # gcs_server and raylet stop a moment after `ray start`
        with suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)
