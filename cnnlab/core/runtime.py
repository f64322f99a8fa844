"""Where cnnlab runs: threads per process, the device to train on, and what this machine has.

Every command and test sets its threads through ``configure_threads``: PyTorch with more threads than free
cores can run many times slower on a shared machine, so the count is always chosen, never left to torch.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from cnnlab.core.errors import ConfigError

THREADS_ENV = "CNNLAB_THREADS"


def available_cores() -> int:
    """Cores this process may run on (respects taskset/cgroup affinity, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads: the argument, else $CNNLAB_THREADS, else the available cores.

    Also flushes denormal floats to zero on the CPU: tiny activations and gradients otherwise take a
    slow path in x86 arithmetic (measured here: training the recipe net about 10% faster), and values
    below 1e-38 change no result of this package."""
    if threads is None:
        env = os.environ.get(THREADS_ENV, "").strip()
        if env:
            if not env.isdigit() or int(env) < 1:
                raise ConfigError(f"{THREADS_ENV}={env!r} is not a positive whole number; e.g. {THREADS_ENV}=2")
            threads = int(env)
        else:
            threads = available_cores()
    if threads < 1:
        raise ConfigError(f"threads must be at least 1, got {threads}")
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
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
        raise ConfigError(f"device {pref!r} was asked for but CUDA is not available here; use --device cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {pref!r} was asked for but MPS is not available here; use --device cpu or auto")
    return device


# FP32 CUDA cores per streaming multiprocessor, by compute capability (NVIDIA's CUDA C++ guide);
# torch reports only the multiprocessor count.
_CUDA_CORES_PER_SM = {
    (6, 0): 64,
    (6, 1): 128,
    (6, 2): 128,
    (7, 0): 64,
    (7, 2): 64,
    (7, 5): 64,
    (8, 0): 64,
    (8, 6): 128,
    (8, 7): 128,
    (8, 9): 128,
    (9, 0): 128,
    (10, 0): 128,
    (12, 0): 128,
}


@dataclass(frozen=True)
class DeviceInfo:
    """One compute device and the facts the lab asks about (name, memory, cores, ...)."""

    device: str  # what torch.device() takes: "cpu", "cuda:0", "mps"
    name: str
    facts: dict[str, str]


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX): only then is CPU
    autocast to bfloat16 faster than float32; elsewhere it is emulated and slower."""
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, so looked up with a fallback
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def cpu_model_name() -> str:
    """The processor's marketing name from /proc/cpuinfo (Linux), else what platform knows."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    for key in ("model name", "Hardware", "Model", "cpu model"):  # x86, then ARM/other kernels
        for line in lines:
            label, _, value = line.partition(":")
            if label.strip() == key and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def describe_devices() -> list[DeviceInfo]:
    """The CPU, then every CUDA GPU and Apple's MPS device that torch can use here."""
    devices = [
        DeviceInfo(
            "cpu",
            cpu_model_name(),
            {
                "cores available": str(available_cores()),
                "logical cores in machine": str(os.cpu_count() or "unknown"),
                "torch threads used": str(torch.get_num_threads()),
            },
        )
    ]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(index)
            capability = (properties.major, properties.minor)
            facts = {
                "memory": f"{properties.total_memory / 2**30:.1f} GiB",
                "compute capability": f"{properties.major}.{properties.minor}",
                "multiprocessors": str(properties.multi_processor_count),
            }
            if capability in _CUDA_CORES_PER_SM:
                facts["CUDA cores"] = str(properties.multi_processor_count * _CUDA_CORES_PER_SM[capability])
            devices.append(DeviceInfo(f"cuda:{index}", properties.name, facts))
    if torch.backends.mps.is_available():
        devices.append(DeviceInfo("mps", "Apple GPU (Metal Performance Shaders)", {"memory": "shared with the CPU"}))
    return devices
