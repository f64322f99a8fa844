"""Packed shards (cnnlab pack, load_shards): what is packed reads back as the in-memory load reads it, training on
shards is deterministic, ranks get disjoint samples and equal steps, damage is refused, a killed pack recovers."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from cnnlab.cli import main
from cnnlab.core.errors import ConfigError, DataError
from cnnlab.data.batches import batch_windows, steps_per_epoch
from cnnlab.data.images import find_images, load_images
from cnnlab.data.load import load_dataset
from cnnlab.data.pack import pack
from cnnlab.data.shards import ShardDataset, load_shards
from cnnlab.models.cnn import build_cnn
from cnnlab.train.feed import Shard, is_feed

pytestmark = pytest.mark.filterwarnings("ignore:.*converted 6 image:UserWarning")  # the fixture's grey images

CLASSES = ("cat", "dog", "emu")
SIZE = 16
TINY_CNN = {"n_conv_layers": 1, "n_filters": 4, "device": "cpu"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """48 training and 18 test PNGs of three classes, of a few sizes, one of them grey."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 16), ("test", 6)):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (20 + i % 3, 24, 3), dtype=np.uint8)
                image = Image.fromarray(pixels).convert("L") if i == 5 else Image.fromarray(pixels)
                image.save(root / split / name / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def packed(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    pack(folder, out, image_size=SIZE, progress=False)
    return out


def _tar_samples(shards) -> dict[str, tuple[np.ndarray, int, str]]:
    """Every sample of every shard the index lists, read with webdataset itself, keyed by its file (the split's
    file listing names the file of sample number n on line n): path -> (image, label, split)."""
    index = json.loads((shards / "index.json").read_text())
    files = {split: (shards / name).read_text().splitlines() for split, name in index["files"].items()}
    samples = {}
    for record in index["shards"]:
        for sample in wds.tarfile_samples([{"url": str(shards / record["name"])}]):
            split, number = sample["__key__"].split("/")
            assert split == record["split"]
            samples[files[split][int(number)]] = (np.load(io.BytesIO(sample["npy"])), int(sample["cls"]), split)
    return samples


def _images(batches) -> list[bytes]:
    return [image.numpy().tobytes() for images, _ in batches for image in images]


def test_packed_images_and_labels_equal_the_in_memory_load(folder, packed, session_cache):
    samples = _tar_samples(packed)
    files = sorted(find_images(folder))
    assert sorted(samples) == sorted(path.relative_to(folder).as_posix() for path in files)
    decoded, kept, _, _ = load_images(files, (SIZE, SIZE), progress=False)
    for image, path in zip(decoded, kept, strict=True):
        split, name = path.relative_to(folder).parts[:2]
        assert samples[path.relative_to(folder).as_posix()][1:] == (CLASSES.index(name), split)
        assert np.array_equal(samples[path.relative_to(folder).as_posix()][0], image)
    in_memory = load_dataset(folder, image_size=SIZE, progress=False)
    for split, x, y in (("train", in_memory.x_train, in_memory.y_train), ("test", in_memory.x_test, in_memory.y_test)):
        packed_split = sorted((image.tobytes(), label) for image, label, s in samples.values() if s == split)
        assert packed_split == sorted((image.tobytes(), int(label)) for image, label in zip(x, y, strict=True))


def test_a_plain_pass_reads_every_sample_once_in_pack_order(packed):
    data = load_shards(packed)
    index = data.index
    expected = []
    for record in (r for r in index["shards"] if r["split"] == "test"):
        for sample in wds.tarfile_samples([{"url": str(packed / record["name"])}]):
            expected.append((np.load(io.BytesIO(sample["npy"])).tobytes(), int(sample["cls"])))
    batches = list(data.test.batches(5))
    assert _images(batches) == [image for image, _ in expected]
    assert [int(label) for _, y in batches for label in y] == [label for _, label in expected]
    assert data.test.labels.tolist() == [label for _, label in expected]
    assert all(x.dtype == torch.uint8 and y.dtype == torch.int64 and x.shape[1:] == (SIZE, SIZE, 3) for x, y in batches)


def test_a_subset_streams_its_samples_in_feed_order_and_load_keeps_the_order_asked(packed):
    feed = load_shards(packed).test
    everything = list(zip(_images(feed.batches(64)), feed.labels.tolist(), strict=True))
    positions = [11, 2, 17, 5]
    subset = feed.subset(positions)
    assert subset.samples == 4 and subset.labels.tolist() == [everything[i][1] for i in sorted(positions)]
    assert _images(subset.batches(3)) == [everything[i][0] for i in sorted(positions)]
    images, labels = feed.load(positions)
    assert [image.tobytes() for image in images] == [everything[i][0] for i in positions]
    assert labels.tolist() == [everything[i][1] for i in positions]


def test_the_index_holds_classes_shape_counts_and_checksums(packed):
    index = json.loads((packed / "index.json").read_text())
    assert index["class_names"] == list(CLASSES) and index["image_shape"] == [SIZE, SIZE, 3]
    assert index["counts"]["train"]["samples"] == 48 and index["counts"]["test"]["samples"] == 18
    assert index["counts"]["train"]["per_class"] == dict.fromkeys(CLASSES, 16)
    assert index["counts"]["test"]["per_class"] == dict.fromkeys(CLASSES, 6)
    assert index["source"]["kind"] == "folder" and index["encoding"] == "npy"
    names = sorted(path.name for path in packed.iterdir() if path.suffix == ".tar")
    assert names == sorted(record["name"] for record in index["shards"])
    assert sum(record["split"] == "train" for record in index["shards"]) == 8, "a split of 8+ images: 8+ shards"
    for record in index["shards"]:
        assert (packed / record["name"]).stat().st_size == record["bytes"]
        assert len(record["labels"].split()) == record["samples"]


def test_load_dataset_opens_a_shard_set_and_refuses_options_that_do_not_apply(packed):
    data = load_dataset(packed)
    assert isinstance(data, ShardDataset) and data.origin["kind"] == "shards" and data.origin["path"] == str(packed)
    assert data.num_classes == 3 and data.image_shape == (SIZE, SIZE, 3) and is_feed(data.train)
    with pytest.raises(ConfigError, match="image folders only"):
        load_dataset(packed, image_size=32)
    with pytest.raises(DataError, match="packed shard set, read streamed"):
        data.x_train  # noqa: B018 - code written for arrays gets a one-line answer


def test_a_training_epoch_covers_every_sample_once_in_a_new_order(packed):
    feed = load_shards(packed).train
    everything = sorted(_images(feed.batches(8)))
    epochs = []
    for epoch in (0, 1):
        batches = list(feed.batches(8, epoch=epoch, seed=3, train=True))
        assert [len(y) for _, y in batches] == [w.stop - w.start for w in batch_windows(feed.samples, 8)]
        epochs.append(_images(batches))
        assert sorted(epochs[-1]) == everything
    assert epochs[0] != epochs[1]
    assert _images(feed.batches(8, epoch=1, seed=3, train=True)) == epochs[1], "same seed and epoch, same order"


def test_training_two_epochs_on_shards_is_deterministic(packed):
    def run(seed):
        data = load_shards(packed, validation_split=0.25)
        model = build_cnn(input_shape=data.image_shape, class_names=data.class_names, seed=seed, **TINY_CNN)
        fitted = model.fit(
            data.train, None, batch_size=8, epochs=2, validation_data=data.validation, verbose=0, seed=seed
        )
        return fitted.history, model.evaluate(data.test)

    first = run(1)
    assert set(first[0]) == {"loss", "accuracy", "val_loss", "val_accuracy"} and len(first[0]["loss"]) == 2
    assert run(1) == first


@pytest.mark.parametrize("stop", [None, 40])  # 40: seven pieces, one rank has fewer samples and cycles them
def test_two_ranks_get_disjoint_samples_and_the_same_steps(packed, stop):
    feed = load_shards(packed).feed("train", 0, stop)
    quota = feed.samples // 2
    for epoch in (0, 1):
        ranks = [list(feed.batches(8, epoch=epoch, shard=Shard(rank, 2), train=True)) for rank in (0, 1)]
        assert len(ranks[0]) == len(ranks[1]) == steps_per_epoch(quota, 4)
        assert [sum(len(y) for _, y in batches) for batches in ranks] == [quota, quota]
        seen = [set(_images(batches)) for batches in ranks]
        assert not seen[0] & seen[1]
    passes = [set(_images(feed.batches(8, shard=Shard(rank, 2)))) for rank in (0, 1)]
    assert not passes[0] & passes[1] and len(passes[0] | passes[1]) == feed.samples


def test_a_damaged_or_missing_shard_is_refused_in_one_line(packed, tmp_path):
    copy = tmp_path / "shards"
    shutil.copytree(packed, copy)
    shard = copy / "train-000003.tar"
    damaged = bytearray(shard.read_bytes())
    damaged[1000] ^= 0xFF
    shard.write_bytes(bytes(damaged))
    with pytest.raises(DataError) as refused:
        list(load_shards(copy).train.batches(8))
    message = str(refused.value)
    assert "\n" not in message and "train-000003.tar" in message and "checksum" in message and "cnnlab pack" in message
    (copy / "test-000001.tar").unlink()
    with pytest.raises(DataError, match=r"shard test-000001\.tar is missing"):
        list(load_shards(copy).test.batches(8))


# Runs `cnnlab pack` and stops it (SIGSTOP, from inside) once the second shard has its first sample, so the test
# can SIGKILL it there: half-way through a shard, every time, with no race against a fast machine.
STOPPED_PACK = """
import os, signal, sys
from cnnlab.cli import main
from cnnlab.data import pack
add = pack._ShardWriter.add
def add_then_stop(self, *args):
    add(self, *args)
    if len(self.records) == 1 and len(self._labels) == 1:
        os.kill(os.getpid(), signal.SIGSTOP)
pack._ShardWriter.add = add_then_stop
sys.exit(main(sys.argv[1:]))
"""


def test_a_killed_pack_leaves_no_index_and_a_rerun_completes(folder, tmp_path):
    out = tmp_path / "shards"
    arguments = ["pack", str(folder), "--out", str(out), "--image-size", str(SIZE), "--quiet"]
    env = {**os.environ, "CNNLAB_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-c", STOPPED_PACK, *arguments], env=env, start_new_session=True)
    deadline = time.time() + 120
    while not (out / "train-000001.tar.partial").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    time.sleep(0.2)  # let it reach its SIGSTOP; killed before or after, it has a partial shard and no index
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert (out / "train-000000.tar").exists() and (out / "train-000001.tar.partial").exists()
    assert not (out / "index.json").exists()
    with pytest.raises(DataError, match="no index.json"):
        load_shards(out)
    assert main(arguments) == 0
    assert not list(out.glob("*.partial"))
    assert load_shards(out).count("train") == 48


def test_cnnlab_pack_and_train_end_to_end(folder, tmp_path, capsys):
    out, run = tmp_path / "shards", tmp_path / "run"
    assert main(["pack", str(folder), "--out", str(out), "--image-size", str(SIZE), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "train: 48 images in 8 shard(s)" in printed and "test: 18 images" in printed
    assert f"cnnlab train --data {out} --n-train-val 48 --n-test 18" in printed
    assert main(["pack", str(folder), "--out", str(out), "--quiet"]) == 2
    assert "already holds a packed shard set" in capsys.readouterr().err
    arguments = ["--data", str(out), "--epochs", "1", "--out", str(run), "--quiet", "--batch-size", "8"]
    assert main(["train", *arguments, "--n-conv-layers", "1", "--n-filters", "4"]) == 0
    printed = capsys.readouterr().out
    assert "streamed from disk" in printed and "3 classes, 16x16x3" in printed
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["test_accuracy"] <= 1 and metrics["data_source"]["kind"] == "shards"
    assert metrics["data_source"]["split"]["test_images"] == 18
    assert len((run / "history.csv").read_text().splitlines()) == 2 and (run / "samples.png").exists()
    assert main(["evaluate", str(run), "--data", str(out), "--out", str(tmp_path / "evaluation")]) == 0
    evaluation = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    assert evaluation["images"] == 18 and evaluation["accuracy"] == pytest.approx(metrics["test_accuracy"])


def test_arrays_are_packed_as_they_are(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {
        "x_train": rng.integers(0, 256, (30, 8, 8, 3), dtype=np.uint8),
        "y_train": np.arange(30) % 2,
        "x_test": rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8),
        "y_test": np.arange(10) % 2,
    }
    np.savez(tmp_path / "set.npz", **arrays)
    pack(tmp_path / "set.npz", tmp_path / "shards", progress=False)
    index = json.loads((tmp_path / "shards" / "index.json").read_text())
    assert index["source"]["kind"] == "npz" and index["counts"]["test"]["samples"] == 10
    for record in index["shards"]:
        for sample in wds.tarfile_samples([{"url": str(tmp_path / "shards" / record["name"])}]):
            split, number = sample["__key__"].split("/")
            position = int(number)
            assert np.array_equal(np.load(io.BytesIO(sample["npy"])), arrays[f"x_{split}"][position])
            assert int(sample["cls"]) == arrays[f"y_{split}"][position]


@pytest.mark.parametrize("source", ["shards", "streamed folder"])
def test_data_workers_sets_the_reading_processes_of_both_kinds_of_stream(folder, packed, source, capsys):
    """`--data-workers N` reaches the feeds that training reads from, whichever kind of stream the data is; a value
    that is not a count is refused by the parser in one line."""
    from cnnlab.cli import build_parser
    from cnnlab.cli._data import dataset_from_args, lab_data_from_args

    spec = [str(packed)] if source == "shards" else [str(folder), "--stream"]
    args = build_parser().parse_args(["train", "--data", *spec, "--data-workers", "3"])
    assert dataset_from_args(args).num_workers == 3
    split = lab_data_from_args(args, n_train_val=40, n_test=10, val_fraction=0.25, seed=0)
    workers = split.train.workers if source == "shards" else split.train.decoding.num_workers
    assert workers == 3
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--data", str(packed), "--data-workers", "many"])
    assert "'many' is not a number of processes" in capsys.readouterr().err
