"""How close training gets to this CPU's own peak: measured peak GFLOP/s against achieved GFLOP/s.

    python benchmarks/roofline.py [--threads 2] [--steps 30]

1. Peak: the best GFLOP/s of a matrix product (square, 256..2048) and of a 3x3 convolution
   (channels_last, the recipe network's layer shapes, several batch sizes), over thread counts 1..N,
   in float32 and, on CPUs with bfloat16 units (cnnlab.core.runtime.cpu_has_bf16), in bfloat16 too.
2. Work: floating-point operations of one training step (forward and backward) of the lab's model A,
   model B and the recipe network, counted by torch.utils.flop_counter.FlopCounterMode (convolutions
   and matrix products; BatchNorm, activations and the optimizer count as zero, as in most FLOP
   counts, so the share below is of useful work).
3. Achieved: the same steps timed through ``Model.fit`` (random images: speed does not depend on
   the pixels), as GFLOP/s and as a share of the measured conv peak of the precision the training
   computes in (bfloat16 for a recipe with ``cpu_bf16`` on such a CPU, float32 otherwise).
4. Where the rest goes: torch.profiler's self time per operator group (conv, matmul, BatchNorm,
   pooling, activations and other element-wise ops, data movement, optimizer) and the time outside
   any operator (Python and framework overhead).

Run by hand on an otherwise idle machine; every figure of one run comes from the same minute.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnnlab.core.runtime import available_cores, configure_threads, cpu_has_bf16

GROUPS = {  # operator-name fragments -> group; the first match wins
    "conv": ("conv",),
    "matmul": ("addmm", "mm", "linear", "matmul"),
    "batchnorm": ("batch_norm",),
    "pooling": ("pool",),
    "optimizer": ("_foreach", "adam", "sgd", "lerp", "addcdiv", "addcmul", "sqrt"),
    "data movement": ("copy", "index", "contiguous", "clone", "cat", "permute", "gather", "stack", "to", "empty",
                      "as_strided", "view", "reshape", "select", "slice", "fill", "zero", "randperm", "randint"),
    "activations, loss, element-wise": ("relu", "gelu", "threshold", "add", "mul", "div", "sub", "softmax",
                                         "nll", "cross_entropy", "where", "neg", "sum", "mean", "argmax", "eq"),
}  # fmt: skip


def best_seconds(run: Callable[[], None], repeats: int = 5, min_seconds: float = 0.2) -> float:
    """Best time of one call: each sample repeats the call until it lasts ``min_seconds`` (timer noise)."""
    run()
    best = float("inf")
    for _ in range(repeats):
        calls, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < min_seconds or calls == 0:
            run()
            calls += 1
        best = min(best, elapsed / calls)
    return best


def matmul_peak(dtype: torch.dtype) -> tuple[float, str]:
    results = []
    for n in (256, 512, 1024, 2048):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        results.append((2 * n**3 / best_seconds(lambda a=a, b=b: a @ b) / 1e9, f"{n}x{n} @ {n}x{n}"))
    return max(results)


def conv_peak(dtype: torch.dtype) -> tuple[float, str]:
    results = []
    shapes = [(3 * 8, 32, 32), (32, 128, 16), (128, 128, 16), (128, 256, 8), (256, 256, 8)]
    for c_in, c_out, size in shapes:
        conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False).to(dtype, memory_format=torch.channels_last)
        for batch in (32, 128):
            x = torch.randn(batch, c_in, size, size, dtype=dtype).to(memory_format=torch.channels_last)
            flops = 2 * batch * c_out * c_in * 9 * size * size
            with torch.no_grad():
                seconds = best_seconds(lambda conv=conv, x=x: conv(x))
            results.append((flops / seconds / 1e9, f"3x3 {c_in}->{c_out} on {size}x{size}, batch {batch}"))
    return max(results)


def peaks(max_threads: int, dtypes: list[torch.dtype]) -> dict[tuple[str, torch.dtype], tuple[float, str]]:
    """The best GFLOP/s per (operation, dtype) over thread counts 1..max_threads, with the shape and
    threads that gave it."""
    found = {(name, dtype): (0.0, "") for name in ("matmul", "conv") for dtype in dtypes}
    for threads in range(1, max_threads + 1):
        torch.set_num_threads(threads)
        for (name, dtype), best in found.items():
            gflops, shape = (matmul_peak if name == "matmul" else conv_peak)(dtype)
            if gflops > best[0]:
                found[name, dtype] = (gflops, f"{shape}, {threads} thread(s)")
    torch.set_num_threads(max_threads)
    return found


def lab_models(x: np.ndarray):
    """(name, model, batch size, augmentation) for the three trainings measured."""
    from cnnlab.data.crop_flip import CropFlip
    from cnnlab.experiments.recipes import RECIPES, build_model
    from cnnlab.models.cnn import build_cnn

    fast = RECIPES["fast"]
    return [
        ("lab model A (2 conv)", build_cnn(n_conv_layers=2, n_filters=16, device="cpu"), 20, None),
        ("lab model B (4 conv, dense 50)",
         build_cnn(n_conv_layers=4, n_filters=16, n_dense_layers=1, n_nodes=50, use_dropout=True, device="cpu"),
         128, None),
        (f"recipe fast ({fast.members} RecipeNets)", build_model(fast, x, device="cpu"), fast.batch_size,
         CropFlip(fast.translate, cutout=fast.cutout)),
    ]  # fmt: skip


def step_flops(model, x: np.ndarray, y: np.ndarray, batch_size: int) -> int:
    """FLOPs of one training step: forward, loss and backward of one batch."""
    images = torch.from_numpy(x[:batch_size]).permute(0, 3, 1, 2)
    labels = torch.from_numpy(y[:batch_size])
    model.network.train()
    with FlopCounterMode(display=False) as counter:
        loss = model._loss(model.network(images), labels)  # an ensemble gives one set of logits per member
        loss.backward()
    model.network.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def group_of(op_name: str) -> str:
    name = op_name.lower()
    for group, fragments in GROUPS.items():
        if any(fragment in name for fragment in fragments):
            return group
    return "other operators"


def profile_groups(fit: Callable[[], None]) -> tuple[dict[str, float], float]:
    """Self time per operator group (seconds) and the wall time of ``fit`` under the profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        fit()
        wall = time.perf_counter() - started
    groups: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        groups[group_of(event.key)] += event.self_cpu_time_total / 1e6
    return dict(groups), wall


def measure_training(name, model, batch_size, augment, steps, conv_peaks: dict) -> tuple[dict, dict]:
    rng = np.random.default_rng(0)
    n = batch_size * steps
    x = rng.uniform(-1, 1, (n, *model.input_shape)).astype(np.float32)
    y = rng.integers(0, model.num_classes, n)

    def fit(images=x, labels=y) -> None:
        model.fit(images, labels, batch_size=batch_size, epochs=1, verbose=0, augment=augment)

    fit(x[: batch_size * 3], y[: batch_size * 3])  # warm-up: first-call allocations and kernel selection
    flops = step_flops(model, x, y, batch_size)
    started = time.perf_counter()
    fit()
    seconds = time.perf_counter() - started
    achieved = flops * steps / seconds / 1e9
    dtype = model.amp_dtype or torch.float32
    row = {"training": name, "batch": batch_size, "computes in": str(dtype).removeprefix("torch."),
           "GFLOP/step": flops / 1e9, "s/step": seconds / steps, "GFLOP/s": achieved,
           "share of conv peak": achieved / conv_peaks[dtype]}  # fmt: skip
    groups, wall = profile_groups(fit)
    shares = {group: t / wall for group, t in groups.items()}
    shares["outside operators (Python, framework)"] = max(0.0, 1 - sum(groups.values()) / wall)
    return row, shares


def markdown(rows: list[dict], percent: bool = False) -> str:
    """A Markdown table; floats as percentages where ``percent`` or the column is a share."""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [
            (f"{v:.1%}" if percent or "share" in k else f"{v:.3g}") if isinstance(v, float) else str(v)
            for k, v in row.items()
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="training threads (default: free cores)")
    parser.add_argument("--steps", type=int, default=30, help="training steps timed per model")
    args = parser.parse_args()
    threads = configure_threads(args.threads or available_cores())
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.processor() or platform.machine()}, torch "
          f"{torch.__version__}, training on {threads} thread(s)\n")  # fmt: skip

    found = peaks(threads, [torch.float32] + ([torch.bfloat16] if cpu_has_bf16() else []))
    print("| peak | dtype | GFLOP/s | best shape |\n|---|---|---|---|")
    for (name, dtype), (gflops, shape) in found.items():
        print(f"| {name} | {str(dtype).removeprefix('torch.')} | {gflops:.1f} | {shape} |")
    conv_peaks = {dtype: gflops for (name, dtype), (gflops, _) in found.items() if name == "conv"}

    x = np.random.default_rng(0).uniform(-1, 1, (512, 32, 32, 3)).astype(np.float32)
    rows, breakdown = [], {}
    for name, model, batch_size, augment in lab_models(x):
        row, shares = measure_training(name, model, batch_size, augment, args.steps, conv_peaks)
        rows.append(row)
        breakdown[name] = shares
    print("\n" + markdown(rows))
    groups = sorted({g for shares in breakdown.values() for g in shares})
    print("\nShare of training wall time (torch.profiler self time per operator group):\n")
    table = [{"operator group": g, **{name: shares.get(g, 0.0) for name, shares in breakdown.items()}} for g in groups]
    print(markdown(table, percent=True))


if __name__ == "__main__":
    main()
