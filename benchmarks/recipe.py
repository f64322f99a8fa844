"""Test accuracy and time of the recipes on the lab's protocol, several seeds, in one run.

    CNNLAB_CIFAR10=... python benchmarks/recipe.py [--seeds 0 1 2] [--threads 2] [--recipes fast2 fast5 fast lab]
        [--plot docs/recipe_pareto.png]      (--recipes resnet50 resnet50-short: the fine-tuned ResNet50)

Each run trains on the 7,500 training images, then measures validation and test accuracy (2,000
test images) with the recipe's test-time augmentation. Wall time covers building the model, training
and both evaluations; CPU time is the process's user + sys time over the same span (on a shared
machine wall time grows with the load, CPU time much less). Energy comes from cnnlab.carbon when
that module is there. The table ends with the median per recipe, then the Pareto table (median
test accuracy against median wall time; a recipe is on the front when no other is both faster and
more accurate), then the targets: 'fast' >= 85% within 600 s, 'fast5' within 300 s, 'lab' (the lab's
model B with the recipe's training) >= 65%. ``--plot`` draws every run and the front as a PNG.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import time

# "resnet50" is ImageNet ResNet50 fine-tuned (cnnlab.experiments.fine_tune's "full" budget; "resnet50-short"
# its "short" one). It needs $CNNLAB_RESNET50_WEIGHTS.
TARGETS = {
    "resnet50": (0.85, 600.0),
    "fast": (0.85, 600.0),
    "fast5": (None, 300.0),
    "fast2": (None, 150.0),
    "lab": (0.65, None),
}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def energy_callbacks() -> list:
    try:
        from cnnlab.carbon.tracker import CarbonCallback
    except ImportError:
        return []
    return [CarbonCallback(verbose=False)]


def measure(data, name: str, seed: int, device: str) -> dict:
    from cnnlab.experiments.fine_tune import train_pretrained
    from cnnlab.experiments.recipes import train_recipe

    callbacks = energy_callbacks()
    load_before, cpu_before = os.getloadavg()[0], cpu_seconds()
    if name.startswith("resnet50"):
        budget = "short" if name == "resnet50-short" else "full"
        result = train_pretrained(data, budget, seed=seed, device=device, verbose=0, callbacks=callbacks)
    else:
        result = train_recipe(data, name, seed=seed, device=device, verbose=0, callbacks=callbacks)
    energy = callbacks[0].run_metrics().get("carbon_energy_kwh") if callbacks else None
    return {"recipe": name, "seed": seed, "test": result["test"]["accuracy"], "val": result["val"]["accuracy"],
            "wall": result["seconds"], "cpu": cpu_seconds() - cpu_before, "energy": energy,
            "load": (load_before + os.getloadavg()[0]) / 2}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipes", nargs="+", default=["fast2", "fast5", "fast", "lab"])
    parser.add_argument("--plot", default=None, help="write the accuracy-against-time plot to this PNG")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import torch

    from cnnlab.core.runtime import configure_threads, cpu_model_name
    from cnnlab.data.split import load_lab_data

    threads = configure_threads(args.threads)
    data = load_lab_data()
    rows = []
    for name in args.recipes:
        for seed in args.seeds:
            rows.append(measure(data, name, seed, args.device))
            r = rows[-1]
            print(f"{name} seed {seed}: test {r['test']:.4f}, {r['wall']:.0f} s wall, {r['cpu']:.0f} s CPU", flush=True)

    lossy = "" if data.source.get("official") else " (a LOSSY copy of CIFAR-10: accuracy may differ from the original)"
    print(f"\n{time.strftime('%Y-%m-%d %H:%M')}, {cpu_model_name()}, {threads} threads, torch {torch.__version__}, "
          f"{platform.node()}; data: {data.source.get('source')}{lossy}\n")  # fmt: skip
    medians = summarize(rows, args.recipes)
    print_pareto(medians)
    print("\n" + "\n".join(verdicts(medians)))
    if args.plot:
        print(f"plot: {plot_runs(rows, medians, args.plot)}")


def line(cells: list) -> None:
    print("| " + " | ".join(str(c) for c in cells) + " |")


def summarize(rows: list[dict], names: list[str]) -> list[dict]:
    """Print every run and each recipe's medians; return the medians."""
    with_energy = any(r["energy"] is not None for r in rows)
    header = ["recipe", "seed", "test acc (TTA)", "val acc (TTA)", "wall s", "CPU s (user+sys)", "load avg"]
    line(header + (["energy kWh"] if with_energy else []))
    print("|" + "---|" * (len(header) + with_energy))
    for r in rows:
        cells = [r["recipe"], r["seed"], f"{r['test']:.4f}", f"{r['val']:.4f}", f"{r['wall']:.0f}", f"{r['cpu']:.0f}",
                 f"{r['load']:.1f}"]  # fmt: skip
        line(cells + ([f"{r['energy']:.2e}" if r["energy"] is not None else ""] if with_energy else []))
    medians = []
    for name in names:
        mine = [r for r in rows if r["recipe"] == name]
        energies = [r["energy"] for r in mine if r["energy"] is not None]
        medians.append({"recipe": name, "runs": len(mine), **{key: statistics.median(r[key] for r in mine)
                        for key in ("test", "val", "wall", "cpu")},
                        "energy": statistics.median(energies) if energies else None})  # fmt: skip
        m = medians[-1]
        cells = [f"**{name} median**", "", f"**{m['test']:.4f}**", f"{m['val']:.4f}", f"{m['wall']:.0f}",
                 f"{m['cpu']:.0f}", ""]  # fmt: skip
        line(cells + ([f"{m['energy']:.2e}" if energies else ""] if with_energy else []))
    return medians


def on_front(median: dict, medians: list[dict]) -> bool:
    """No other recipe is at least as fast and at least as accurate, and better in one of the two."""
    point = (median["wall"], median["test"])
    return not any(o["wall"] <= point[0] and o["test"] >= point[1] and (o["wall"], o["test"]) != point for o in medians)


def print_pareto(medians: list[dict]) -> None:
    print("\nPareto table: median test accuracy (TTA) against median wall time\n")
    line(["recipe", "wall s (median)", "minutes", "test acc (median)", "on the front"])
    print("|---|---|---|---|---|")
    for m in sorted(medians, key=lambda m: m["wall"]):
        line([m["recipe"], f"{m['wall']:.0f}", f"{m['wall'] / 60:.1f}", f"{m['test']:.4f}",
              "yes" if on_front(m, medians) else "no"])  # fmt: skip


def verdicts(medians: list[dict]) -> list[str]:
    said = []
    for m in medians:
        accuracy, seconds = TARGETS.get(m["recipe"], (None, None))
        if accuracy is None and seconds is None:
            continue
        met = (accuracy is None or m["test"] >= accuracy) and (seconds is None or m["wall"] <= seconds)
        wanted = [f">= {accuracy:.0%}"] if accuracy else []
        wanted = " and ".join(wanted + ([f"<= {seconds:.0f} s"] if seconds else []))
        said.append(f"{m['recipe']}: target {wanted}: {'met' if met else 'NOT met'} "
                    f"(median {m['test']:.2%}, {m['wall']:.0f} s, {m['runs']} seeds)")  # fmt: skip
    return said


def plot_runs(rows: list[dict], medians: list[dict], path: str):
    """Every run as a dot, each recipe's median as a labelled marker, the front as a line."""
    from cnnlab.plots import plt, save_figure

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for m in medians:
        mine = [r for r in rows if r["recipe"] == m["recipe"]]
        dots = ax.scatter([r["wall"] / 60 for r in mine], [100 * r["test"] for r in mine], s=14, alpha=0.5)
        ax.scatter([m["wall"] / 60], [100 * m["test"]], s=60, marker="D", color=dots.get_facecolor()[0])
        ax.annotate(f"{m['recipe']} {100 * m['test']:.1f}%", (m["wall"] / 60, 100 * m["test"]),
                    textcoords="offset points", xytext=(6, -12))  # fmt: skip
    front = sorted((m for m in medians if on_front(m, medians)), key=lambda m: m["wall"])
    minutes, accuracy = [m["wall"] / 60 for m in front], [100 * m["test"] for m in front]
    ax.plot(minutes, accuracy, "k--", lw=1, label="Pareto front (medians)")
    ax.set_xlabel("wall time per run, minutes (2 CPU threads)")
    ax.set_ylabel("test accuracy with TTA, % (lossy CIFAR-10 copy)")
    ax.set_title("Recipes on the lab's protocol: accuracy against time")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    save_figure(fig, path)
    return path


if __name__ == "__main__":
    main()
