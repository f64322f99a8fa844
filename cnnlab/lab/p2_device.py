"""Part 2: Get a graphics card.

The devices here, a conv layer's speed per batch size, and what a CNN layer computes. The throughput is
measured on this machine; the memory a training run needs is computed from the lab's model (its
parameters and the activations of one forward pass); the conv-layer facts are checked by running a
PyTorch Conv2d against scipy.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import signal

from cnnlab.convolution import SOBEL_X, compare_with_cnn_layer, conv_layer_response
from cnnlab.core.runtime import describe_devices
from cnnlab.experiments.device_bench import (
    BENCHMARK_BATCH_SIZES,
    BENCHMARK_LAYER,
    batch_speedup_answer,
    measure_conv_throughput,
    plot_throughput,
)
from cnnlab.lab.context import LabContext
from cnnlab.lab.store import Section, Table
from cnnlab.models.cnn import MEMORY_MODEL
from cnnlab.models.registry import create_model
from cnnlab.train.inputs import nchw
from cnnlab.train.summary import count_params

ESTIMATED_SECONDS = {"full": 10, "quick": 5, "tiny": 5}
# NVIDIA's RTX 3090 (GA102, compute capability 8.6): 82 streaming multiprocessors of 128 FP32 CUDA cores
# each, and 24 GB of GDDR6X memory (NVIDIA's product page).
RTX_3090 = {"multiprocessors": 82, "cores_per_multiprocessor": 128, "memory_gb": 24}
# MEMORY_MODEL (cnnlab.models), part 4's deepest model (run C), trained with batch 20: question 11's model.
MEMORY_BATCH = 20
BYTES = 4  # float32


def _training_memory(batch_size: int) -> dict[str, float]:
    """Bytes a training step of MEMORY_MODEL keeps on the device, by kind (float32, Adam)."""
    model = create_model(MEMORY_MODEL, device="cpu")
    network = model.network
    outputs: list[int] = []
    hooks = [
        child.register_forward_hook(lambda _m, _i, out: outputs.append(out.numel())) for child in network.children()
    ]
    try:
        network.eval()
        with torch.no_grad():
            network(nchw(torch.zeros(batch_size, *MEMORY_MODEL.input_shape)))
    finally:
        for hook in hooks:
            hook.remove()
    trainable = count_params(network).trainable
    return {
        "weights": trainable * BYTES,
        "gradients": trainable * BYTES,
        "Adam's state (two averages per weight)": 2 * trainable * BYTES,
        "activations kept for back-propagation": sum(outputs) * BYTES,
        "the input batch": batch_size * 32 * 32 * 3 * BYTES,
    }


def _colour_filter_check() -> dict:
    """A 7x7x3 filter on a 32x32x3 image through Conv2d, and the same as three 2-D filters summed."""
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (32, 32, 3))
    kernel = rng.normal(size=(7, 7, 3))
    layer = conv_layer_response(image, kernel)
    # Conv2d correlates: scipy's convolution with the kernel flipped, channel by channel, then summed.
    summed = sum(signal.convolve2d(image[:, :, c], kernel[::-1, ::-1, c], mode="valid") for c in range(3))
    return {
        "image": image.shape,
        "kernel": kernel.shape,
        "output": layer.shape,
        "difference": float(np.abs(layer[:, :, 0] - summed).max()),
    }


def run(ctx: LabContext) -> Section:
    devices = describe_devices()
    batch_sizes = ctx.setting(BENCHMARK_BATCH_SIZES, (1, 3, 32, 256), tiny=(1, 3))
    measurements = measure_conv_throughput(
        batch_sizes=batch_sizes, repeats=ctx.setting(3, 2, tiny=1), image_size=ctx.setting(32, 32, tiny=8)
    )
    labels = {info.device: f"{info.device}: {info.name}" for info in devices}
    plot_throughput(
        measurements, ctx.path("figures", "throughput.png"), image_size=ctx.setting(32, 32, tiny=8), labels=labels
    )
    gpus = [info for info in devices if info.device != "cpu"]
    colour = _colour_filter_check()
    rng = np.random.default_rng(1)
    comparison = compare_with_cnn_layer(rng.uniform(0, 255, (24, 24)), SOBEL_X)
    memory = _training_memory(MEMORY_BATCH)
    answers = _answers(colour, comparison, memory, gpus, measurements)
    device_rows = [[info.device, info.name, ", ".join(f"{k} {v}" for k, v in info.facts.items())] for info in devices]
    speed_rows = [
        [m.device, m.batch_size, f"{m.images_per_second:,.0f}", f"{m.seconds_per_batch * 1000:.2f}"]
        for m in measurements
    ]
    return Section(
        key="device",
        title="Part 2: Get a graphics card",
        intro=f"The compute devices of this machine, and the speed of one {BENCHMARK_LAYER} at several batch "
        "sizes on each (median of repeated timings).",
        figures=[("figures/throughput.png", "Images per second against batch size, per device")],
        tables=[
            Table("Devices", ["device", "name", "facts"], device_rows),
            Table("Conv-layer throughput", ["device", "batch", "images/s", "ms per batch"], speed_rows),
            Table(
                f"Training memory of part 4's 4-conv model at batch {MEMORY_BATCH} (float32, Adam)",
                ["what", "MB"],
                [[k, f"{v / 2**20:.3f}"] for k, v in memory.items()],
            ),
        ],
        answers=answers,
        facts={
            "devices": [info.device for info in devices],
            "throughput": {f"{m.device}@{m.batch_size}": m.images_per_second for m in measurements},
            "training_memory_bytes": memory,
            "conv_vs_scipy": {"as_is": comparison.difference_as_is, "flipped": comparison.difference_flipped},
        },
    )


def _answers(colour: dict, comparison, memory: dict, gpus: list, measurements) -> list[tuple[str, str]]:
    """Questions 7-12, written from this run's measurements."""
    total_memory = sum(memory.values())
    cores = RTX_3090["multiprocessors"] * RTX_3090["cores_per_multiprocessor"]
    here = (
        "; ".join(f"{g.name}: {g.facts.get('CUDA cores', '?')} CUDA cores, {g.facts.get('memory', '?')}" for g in gpus)
        if gpus
        else "no GPU, so the lab runs on the CPU"
    )
    biggest = max(memory, key=memory.get)

    return [
        (
            "7. Why are the filters for a colour image 7 x 7 x 3 and not 7 x 7?",
            f"Because a CNN filter spans every input channel: a {_x(colour['kernel'])} filter on a "
            f"{_x(colour['image'])} image gives one {_x(colour['output'])} output map, equal (to "
            f"{colour['difference']:.1e}) to filtering red, green and blue with their own 7 x 7 slices and adding "
            "the three results. A 7 x 7 filter would see one channel and ignore the colour.",
        ),
        (
            "8. What does a Conv2D layer compute; is it signal.convolve2d's convolution?",
            f"Not quite. {comparison.summary()} It also sums over all input channels, adds a bias, applies many "
            "filters at once (one output channel each), may use strides and padding, and its weights are learned "
            "by back-propagation instead of being designed by hand. Since the weights are learned, the missing "
            "flip makes no difference to what the network can do.",
        ),
        (
            "9. How many CUDA cores does an NVIDIA RTX 3090 have?",
            f"{cores:,}: {RTX_3090['multiprocessors']} streaming multiprocessors x "
            f"{RTX_3090['cores_per_multiprocessor']} FP32 cores (compute capability 8.6). This machine: {here}.",
        ),
        (
            "10. How much memory does the graphics card have?",
            f"The RTX 3090 has {RTX_3090['memory_gb']} GB (GDDR6X). This machine: {here}.",
        ),
        (
            "11. What is stored in GPU memory while training a CNN?",
            "The weights, their gradients, the optimizer's state (Adam keeps two running averages per weight), the "
            "current batch, and every layer's output from the forward pass, kept for back-propagation. For part 4's "
            f"4-conv model at batch {MEMORY_BATCH} that is {_mb(total_memory)} in all, the largest share being "
            f"the {biggest} ({_mb(memory[biggest])}); see the table. Activations grow with the batch size, weights "
            "do not, which is why the batch size is what runs out of memory first on big images.",
        ),
        (
            "12. Is a GPU equally faster than the CPU for a batch of 1,000 images as for 3?",
            batch_speedup_answer(measurements),
        ),
    ]


def _x(shape: tuple[int, ...]) -> str:
    return " x ".join(str(size) for size in shape)


def _mb(size: float) -> str:
    return f"{size / 2**20:.2f} MB"
