"""Pick the compute device and the CPU thread count.

The thread count is a setting on purpose: PyTorch with more threads than free cores spin-waits and
can run many times slower, so cnnlab uses the cores this process may run on, or ``CNNLAB_THREADS``.
"""

from __future__ import annotations

import os

import torch

THREADS_ENV = "CNNLAB_THREADS"


def available_cores() -> int:
    """Cores this process may run on (respects taskset/cgroup affinity, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads: the argument, else $CNNLAB_THREADS, else the available cores."""
    if threads is None:
        env = os.environ.get(THREADS_ENV, "").strip()
        if env:
            if not env.isdigit() or int(env) < 1:
                raise ValueError(f"{THREADS_ENV}={env!r} is not a positive whole number; e.g. {THREADS_ENV}=2")
            threads = int(env)
        else:
            threads = available_cores()
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def pick_device(preference: str | torch.device | None = "auto") -> torch.device:
    """Return CUDA if present, else Apple MPS, else CPU; or the device the user names."""
    if isinstance(preference, torch.device):
        return preference
    pref = (preference or "auto").lower()
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(pref)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {pref!r} was asked for but CUDA is not available here; use --device cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"device {pref!r} was asked for but MPS is not available here; use --device cpu or auto")
    return device
