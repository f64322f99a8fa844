"""Epoch time of cnnlab's fit against a minimal hand-written PyTorch loop, interleaved in one run.

    CNNLAB_CIFAR10=... python benchmarks/train_speed.py [--rounds 3] [--threads 2]

Model A: 2 conv, 16 filters, no dense, batch 20. Model B: 4 conv, 16 filters, 1x50 dense, dropout,
batch 128. Both on the lab's 7,500 training images. The two loops alternate epoch by epoch so machine
noise hits both alike; the table reports medians and the ratio cnnlab / hand-written (target <= 1.05).
Peak resident memory of the process is printed as well (target < 1.5 GB).

``--keras-python PATH`` adds the lab's Keras/TensorFlow setup, run by the Python of a separate
environment that has TensorFlow (``python -m venv /tmp/tf && /tmp/tf/bin/pip install tensorflow-cpu``);
it gets the same images through a temporary .npz file and is timed in the same run, after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

MODELS = {
    "A": (dict(n_conv_layers=2, n_filters=16, n_dense_layers=0), 20),
    "B": (dict(n_conv_layers=4, n_filters=16, n_dense_layers=1, n_nodes=50, use_dropout=True), 128),
}


def hand_written_epoch(model, x, y, batch_size: int, generator) -> float:
    """The smallest honest loop: shuffle, slice, forward, cross-entropy, backward, step."""
    import torch
    import torch.nn.functional as F

    network, optimizer = model.network, model.optimizer
    network.train()
    started = time.perf_counter()
    perm = torch.randperm(len(x), generator=generator)
    for start in range(0, len(x), batch_size):
        index = perm[start : start + batch_size]
        logits = network(x[index].permute(0, 3, 1, 2))
        loss = F.cross_entropy(logits, y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def cnnlab_epoch(model, x, y, batch_size: int) -> float:
    started = time.perf_counter()
    model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0)
    return time.perf_counter() - started


def keras_epoch_times(config: dict, batch_size: int, x: np.ndarray, y: np.ndarray, rounds: int) -> list[float]:
    import tensorflow as tf  # optional: only in a separate environment

    layers = [tf.keras.Input(x.shape[1:])]
    for i in range(config["n_conv_layers"]):
        layers += [
            tf.keras.layers.Conv2D(config["n_filters"] * 2**i, 3, padding="same", activation="relu"),
            tf.keras.layers.BatchNormalization(),
            tf.keras.layers.MaxPooling2D(2),
        ]
    layers.append(tf.keras.layers.Flatten())
    for _ in range(config["n_dense_layers"]):
        layers += [tf.keras.layers.Dense(config["n_nodes"], activation="relu"), tf.keras.layers.BatchNormalization()]
        if config.get("use_dropout"):
            layers.append(tf.keras.layers.Dropout(0.5))
    layers.append(tf.keras.layers.Dense(10, activation="softmax"))
    keras_model = tf.keras.Sequential(layers)
    keras_model.compile(tf.keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy", metrics=["accuracy"])
    keras_model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0)  # warm-up: graph tracing
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        keras_model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0)
        times.append(time.perf_counter() - started)
    return times


def keras_in_other_python(python: str, name: str, x, y, rounds: int, threads: int) -> float:
    """Run keras_epoch_times under another interpreter (the one with TensorFlow) on the same images."""
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(f"{tmp}/data.npz", x=x, y=y)
        env = {
            **os.environ,
            "TF_NUM_INTRAOP_THREADS": str(threads),
            "TF_NUM_INTEROP_THREADS": "1",
            "TF_CPP_MIN_LOG_LEVEL": "3",
        }
        result = subprocess.run(
            [python, __file__, "--keras-worker", f"{tmp}/data.npz", name, str(rounds)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    return statistics.median(json.loads(result.stdout.strip().splitlines()[-1]))


def keras_worker(path: str, name: str, rounds: int) -> None:
    data = np.load(path)
    config, batch_size = MODELS[name]
    print(json.dumps(keras_epoch_times(config, batch_size, data["x"], data["y"], rounds)))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--keras-worker":
        return keras_worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    import torch

    from cnnlab.core.runtime import configure_threads
    from cnnlab.data.split import load_lab_data
    from cnnlab.models.cnn import build_cnn

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--keras-python", help="a Python with TensorFlow, to time the lab's Keras setup too")
    args = parser.parse_args()
    threads = configure_threads(args.threads)
    data = load_lab_data()
    x_t, y_t = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    rows = []
    for name, (config, batch_size) in MODELS.items():
        ours = build_cnn(device="cpu", **config)
        theirs = build_cnn(device="cpu", **config)
        generator = torch.Generator().manual_seed(0)
        cnnlab_epoch(ours, data.x_train, data.y_train, batch_size)  # warm-up both
        hand_written_epoch(theirs, x_t, y_t, batch_size, generator)
        times_ours, times_hand = [], []
        for _ in range(args.rounds):
            times_ours.append(cnnlab_epoch(ours, data.x_train, data.y_train, batch_size))
            times_hand.append(hand_written_epoch(theirs, x_t, y_t, batch_size, generator))
        row = {
            "model": name,
            "batch": batch_size,
            "cnnlab_s": statistics.median(times_ours),
            "hand_s": statistics.median(times_hand),
        }
        if args.keras_python:
            row["keras_s"] = keras_in_other_python(
                args.keras_python, name, data.x_train, data.y_train, args.rounds, threads
            )
        rows.append(row)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nEpoch time on 7,500 images, CPU, {threads} threads, median of {args.rounds} interleaved rounds\n")
    header = "| model | batch | cnnlab fit (s) | hand-written loop (s) | ratio cnnlab/hand |"
    if args.keras_python:
        header += " Keras/TF (s) | Keras/cnnlab |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for r in rows:
        ratio = r["cnnlab_s"] / r["hand_s"]
        line = f"| {r['model']} | {r['batch']} | {r['cnnlab_s']:.2f} | {r['hand_s']:.2f} | {ratio:.3f} |"
        if "keras_s" in r:
            line += f" {r['keras_s']:.2f} | {r['keras_s'] / r['cnnlab_s']:.2f}x |"
        print(line)
    print(f"\nPeak resident memory: {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
