"""Device description, the conv-layer throughput benchmark, its answer sentence and `cnnlab device`."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cnnlab.cli import main
from cnnlab.core.errors import ConfigError
from cnnlab.core.runtime import available_cores, configure_threads, cpu_model_name, describe_devices
from cnnlab.experiments.device_bench import Throughput, batch_speedup_answer, measure_conv_throughput, plot_throughput

TINY = {"repeats": 1, "image_size": 8, "min_sample_seconds": 0.001, "progress": False}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    configure_threads()


def test_configure_threads_flushes_denormal_floats():
    configure_threads(1)
    assert (torch.tensor([1e-39]) * 1.0).item() == 0.0  # a denormal float32 is read as zero


def test_cpu_is_described_first_with_cores_and_threads():
    cpu = describe_devices()[0]
    assert cpu.device == "cpu"
    assert cpu.name == cpu_model_name() and cpu.name.strip()
    assert cpu.facts["cores available"] == str(available_cores())
    assert cpu.facts["torch threads used"] == str(torch.get_num_threads())


def test_cpu_model_name_comes_from_proc_cpuinfo():
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo on this system")
    assert cpu_model_name() in cpuinfo.read_text()


def test_cuda_devices_report_memory_capability_and_cores(monkeypatch):
    rtx_3090 = SimpleNamespace(
        name="NVIDIA GeForce RTX 3090", total_memory=24 * 2**30, major=8, minor=6, multi_processor_count=82
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: rtx_3090)
    gpu = describe_devices()[1]
    assert (gpu.device, gpu.name) == ("cuda:0", "NVIDIA GeForce RTX 3090")
    assert gpu.facts == {
        "memory": "24.0 GiB",
        "compute capability": "8.6",
        "multiprocessors": "82",
        "CUDA cores": "10496",  # NVIDIA's published figure for the RTX 3090
    }


def test_throughput_is_measured_for_each_batch_size():
    results = measure_conv_throughput(["cpu"], [1, 4], **TINY)
    assert [(r.device, r.batch_size) for r in results] == [("cpu", 1), ("cpu", 4)]
    for result in results:
        assert 0 < result.seconds_per_batch < 5
        assert result.images_per_second == pytest.approx(result.batch_size / result.seconds_per_batch)


@pytest.mark.parametrize(
    "settings",
    [{"batch_sizes": [0, 3]}, {"batch_sizes": []}, {"repeats": 0}, {"image_size": 2}],
)
def test_throughput_rejects_bad_settings(settings):
    arguments = {"batch_sizes": [1], **TINY, **settings}
    with pytest.raises(ConfigError):
        measure_conv_throughput(["cpu"], **arguments)


def _measured(device: str, images_per_second: dict[int, float]) -> list[Throughput]:
    return [Throughput(device, batch, batch / speed) for batch, speed in images_per_second.items()]


def test_answer_compares_gpu_speed_up_at_smallest_and_largest_batch():
    cpu = _measured("cpu", {3: 3000, 1000: 4000})
    gpu = _measured("cuda", {3: 6000, 1000: 400_000})
    answer = batch_speedup_answer(cpu + gpu)
    assert answer.startswith("No: cuda runs 2.0x the CPU's speed for a batch of 3 and 100.0x for a batch of 1000")
    assert "400,000 vs 4,000 images/s" in answer
    even = batch_speedup_answer(cpu + _measured("cuda", {3: 30_000, 1000: 40_000}))
    assert even.startswith("Roughly yes: cuda runs 10.0x")


def test_answer_without_a_gpu_reports_the_cpu_batch_effect():
    answer = batch_speedup_answer(_measured("cpu", {1: 1000, 32: 4000}))
    assert "No GPU was measured" in answer
    assert "4.00x the 1,000 images/s of a batch of 1" in answer
    with pytest.raises(ConfigError, match="two batch sizes"):
        batch_speedup_answer(_measured("cpu", {1: 1000}))


def test_plot_is_a_png(tmp_path):
    path = plot_throughput(_measured("cpu", {1: 10, 3: 20}) + _measured("cuda:0", {1: 5, 3: 50}), tmp_path / "t.png")
    assert path.read_bytes().startswith(b"\x89PNG")
    assert [p.name for p in tmp_path.iterdir()] == ["t.png"]


def test_cli_prints_devices_table_and_answer(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["device", "--repeats", "1", "--batch-sizes", "1,2", "--image-size", "8", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"cpu: {cpu_model_name()} (cores available {available_cores()}")
    table = [line.split() for line in printed.splitlines() if line.startswith("cpu ")]
    assert [row[1] for row in table] == ["1", "2"]
    assert "No GPU was measured" in printed or "CPU's speed" in printed
    record = json.loads((out / "throughput.json").read_text())
    assert [m["batch_size"] for m in record["measurements"] if m["device"] == "cpu"] == [1, 2]
    assert (out / "throughput.png").read_bytes().startswith(b"\x89PNG")


def test_cli_rejects_bad_batch_sizes(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["device", "--batch-sizes", "1,x"])
    assert exit_info.value.code == 2
    assert "comma-separated list of whole numbers" in capsys.readouterr().err
