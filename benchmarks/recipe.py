"""Test accuracy and time of the recipes on the lab's protocol, several seeds, in one run.

    CNNLAB_CIFAR10=... python benchmarks/recipe.py [--seeds 0 1 2] [--threads 2] [--recipes fast lab]

Each run trains on the 7,500 training images, then measures validation and test accuracy (2,000
test images) with the recipe's test-time augmentation. Wall time covers building the model, training
and both evaluations; CPU time is the process's user + sys time over the same span (on a shared
machine wall time grows with the load, CPU time much less). Energy comes from cnnlab.carbon when
that module is there. The table ends with the median per recipe and the targets of issue #9:
'fast' >= 82% within 600 s, 'lab' (the lab's model B with the recipe's training) >= 65%.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import time

TARGETS = {"fast": (0.82, 600.0), "lab": (0.65, None)}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def energy_callbacks() -> list:
    try:
        from cnnlab.carbon import CarbonCallback
    except ImportError:
        return []
    return [CarbonCallback(verbose=False)]


def measure(data, name: str, seed: int, device: str) -> dict:
    from cnnlab.recipes import train_recipe

    callbacks = energy_callbacks()
    load_before, cpu_before = os.getloadavg()[0], cpu_seconds()
    result = train_recipe(data, name, seed=seed, device=device, verbose=0, callbacks=callbacks)
    energy = callbacks[0].run_metrics().get("carbon_energy_kwh") if callbacks else None
    return {"recipe": name, "seed": seed, "test": result["test"]["accuracy"], "val": result["val"]["accuracy"],
            "wall": result["seconds"], "cpu": cpu_seconds() - cpu_before, "energy": energy,
            "load": (load_before + os.getloadavg()[0]) / 2}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipes", nargs="+", default=["fast", "lab"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import torch

    from cnnlab.data import load_lab_data
    from cnnlab.device import configure_threads, cpu_model_name

    threads = configure_threads(args.threads)
    data = load_lab_data()
    rows = []
    for name in args.recipes:
        for seed in args.seeds:
            rows.append(measure(data, name, seed, args.device))
            r = rows[-1]
            print(f"{name} seed {seed}: test {r['test']:.4f}, {r['wall']:.0f} s wall, {r['cpu']:.0f} s CPU", flush=True)
    with_energy = any(r["energy"] is not None for r in rows)

    lossy = "" if data.source.get("official") else " (a LOSSY copy of CIFAR-10: accuracy may differ from the original)"
    print(f"\n{time.strftime('%Y-%m-%d %H:%M')}, {cpu_model_name()}, {threads} threads, torch {torch.__version__}, "
          f"{platform.node()}; data: {data.source.get('source')}{lossy}\n")  # fmt: skip
    header = ["recipe", "seed", "test acc (TTA)", "val acc (TTA)", "wall s", "CPU s (user+sys)", "load avg"]
    header += ["energy kWh"] if with_energy else []
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))

    def line(cells: list) -> None:
        print("| " + " | ".join(str(c) for c in cells) + " |")

    for r in rows:
        cells = [r["recipe"], r["seed"], f"{r['test']:.4f}", f"{r['val']:.4f}", f"{r['wall']:.0f}", f"{r['cpu']:.0f}",
                 f"{r['load']:.1f}"]  # fmt: skip
        line(cells + ([f"{r['energy']:.2e}" if r["energy"] is not None else ""] if with_energy else []))
    verdicts = []
    for name in args.recipes:
        mine = [r for r in rows if r["recipe"] == name]
        test, wall = statistics.median(r["test"] for r in mine), statistics.median(r["wall"] for r in mine)
        cells = [f"**{name} median**", "", f"**{test:.4f}**", f"{statistics.median(r['val'] for r in mine):.4f}",
                 f"{wall:.0f}", f"{statistics.median(r['cpu'] for r in mine):.0f}", ""]  # fmt: skip
        energies = [r["energy"] for r in mine if r["energy"] is not None]
        line(cells + ([f"{statistics.median(energies):.2e}" if energies else ""] if with_energy else []))
        accuracy, seconds = TARGETS.get(name, (None, None))
        if accuracy is not None:
            met = test >= accuracy and (seconds is None or wall <= seconds)
            limit = f" within {seconds:.0f} s" if seconds else ""
            verdicts.append(f"{name}: target >= {accuracy:.0%}{limit}: {'met' if met else 'NOT met'} "
                            f"(median {test:.2%}, {wall:.0f} s)")  # fmt: skip
    print("\n" + "\n".join(verdicts))


if __name__ == "__main__":
    main()
