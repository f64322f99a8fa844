"""CIFAR-10 loading: the real shared archive, every layout, the cache, and each bad input."""

from __future__ import annotations

import io
import pickle
import tarfile
import time
import warnings

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from cnnlab.core.errors import DataError
from cnnlab.data.arrays import class_counts, scale_images, to_categorical
from cnnlab.data.cifar import CLASS_NAMES, accuracy_caveat, load_cifar10, unofficial_copy
from cnnlab.data.dataset import validate_arrays
from cnnlab.data.split import LabData, load_lab_data

LAB_COUNTS = [1005, 974, 1032, 1016, 999, 937, 1030, 1001, 1025, 981]


def test_shared_archive_loads_with_lab_counts(cifar10_archive, session_cache):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (x, y), (x_test, y_test) = load_cifar10(cifar10_archive)
    assert x.shape == (50000, 32, 32, 3) and x.dtype == np.uint8
    assert x_test.shape == (10000, 32, 32, 3) and y_test.shape == (10000,)
    assert class_counts(y[:10000]) == LAB_COUNTS
    # The lossy copy is not the official archive: one warning on first decode (none from the cache).
    assert len([w for w in caught if "not the official" in str(w.message)]) <= 1


def test_second_load_comes_from_cache_fast(cifar10_archive, session_cache):
    load_cifar10(cifar10_archive)
    started = time.perf_counter()
    (x, _), _ = load_cifar10(cifar10_archive)
    assert time.perf_counter() - started < 1.0
    assert x.shape[0] == 50000


def test_lab_data_protocol(cifar10_archive, session_cache):
    data = load_lab_data(cifar10_archive)
    assert data.x_train.shape == (7500, 32, 32, 3) and data.x_val.shape == (2500, 32, 32, 3)
    assert data.x_test.shape == (2000, 32, 32, 3)
    assert data.x_train.dtype == np.float32
    assert data.x_train.min() >= -1 and data.x_train.max() <= 1
    assert sum(class_counts(data.y_train)) + sum(class_counts(data.y_val)) == 10000
    assert data.source["official"] is False
    assert data.class_names == CLASS_NAMES and data.input_shape == (32, 32, 3) and data.num_classes == 10
    again = load_lab_data(cifar10_archive)
    np.testing.assert_array_equal(data.y_val, again.y_val)  # the split is seeded


def test_lab_split_of_cifar10_is_the_labs_own(cifar10_archive, session_cache):
    """The first 10,000 training images, an unstratified seeded split, the first 2,000 test images: as published."""
    (x, y), (x_test, y_test) = load_cifar10(cifar10_archive)
    data = load_lab_data(cifar10_archive, dtype="uint8")
    _, x_val, _, y_val = train_test_split(x[:10_000], y[:10_000], test_size=0.25, random_state=0)
    np.testing.assert_array_equal(data.x_val, x_val)
    np.testing.assert_array_equal(data.y_val, y_val)
    np.testing.assert_array_equal(data.x_test, x_test[:2000])
    assert data.x_train.dtype == np.uint8 and "(a lossy copy of CIFAR-10: it costs about 4-5" in data.summary()


@pytest.mark.parametrize(
    ("source", "copy", "caveat"),
    [
        ({"kind": "cifar10", "source": "/d/cifar-10-binary.tar.gz", "official": True}, None, ""),
        ({"kind": "cifar10", "source": "/d/cifar-10-lossy.tar.xz", "official": False}, "lossy", "4-5 accuracy points"),
        ({"kind": "cifar10", "source": "/d/my.tar.gz", "official": False}, "unverified", "not the official archive"),
        ({"kind": "cifar100", "source": "/d/c100.tar.gz", "official": None}, "unverified", "copy of CIFAR-100"),
        ({"kind": "folder", "source": "/d/photos", "official": None}, None, ""),
        (None, None, ""),
    ],
)
def test_one_rule_says_which_data_needs_an_accuracy_caveat(source, copy, caveat):
    assert unofficial_copy(source) == copy
    assert caveat in accuracy_caveat(source) and bool(accuracy_caveat(source)) == bool(copy)


def test_validate_arrays_for_other_data_sets():
    arrays = {"x_train": np.zeros((4, 28, 28, 1), np.uint8), "y_train": np.array([0, 1, 2, 41])}
    validate_arrays(arrays, "grey", num_classes=42, image_shape=None)  # no test split, 42 classes, 28x28x1
    with pytest.raises(DataError, match=r"labels outside 0..2 "):
        validate_arrays(arrays, "grey", num_classes=3, image_shape=None)
    with pytest.raises(DataError, match=r"shape \(N, 32, 32, 3\)"):
        validate_arrays(arrays, "cifar", 10, (32, 32, 3))


def test_old_positional_lab_data_gets_names_and_shape():
    images, labels = np.zeros((3, 32, 32, 3), np.float32), np.array([0, 9, 3])
    data = LabData(images, labels, images, labels, images, labels, {"source": "synthetic"})
    assert data.class_names == CLASS_NAMES and data.input_shape == (32, 32, 3)
    other = LabData(images[:, :8], labels, images[:, :8], labels, images[:, :8], labels, {})
    assert other.class_names == tuple(str(i) for i in range(10)) and other.input_shape == (8, 32, 3)


def test_helpers():
    assert scale_images(np.array([0, 255], dtype=np.uint8)).tolist() == [-1.0, 1.0]
    one_hot = to_categorical(np.array([[3], [0]]))
    assert one_hot.shape == (2, 10) and one_hot[0, 3] == 1 and one_hot.sum() == 2
    assert len(CLASS_NAMES) == 10 and CLASS_NAMES[3] == "cat"
    with pytest.raises(DataError, match="0..9"):
        to_categorical(np.array([10]))
    with pytest.raises(DataError, match="uint8"):
        scale_images(np.zeros(3, dtype=np.float32))


# ------------------------------------------------------------------ synthetic archives


def _binary_batch(n: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    records = rng.integers(0, 256, size=(n, 3073), dtype=np.uint8)
    records[:, 0] = np.arange(n) % 10
    return records.tobytes()


def _python_batch(n: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    return pickle.dumps({b"data": data, b"labels": [i % 10 for i in range(n)]})


def _make_tar(path, files: dict[str, bytes], mode: str = "w:gz"):
    with tarfile.open(path, mode) as tar:
        for name, payload in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def _layout(kind: str, n: int = 20) -> dict[str, bytes]:
    if kind == "binary":
        names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
        return {f"cifar-10-batches-bin/{n_}": _binary_batch(n, i) for i, n_ in enumerate(names)}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    return {f"cifar-10-batches-py/{n_}": _python_batch(n, i) for i, n_ in enumerate(names)}


@pytest.mark.parametrize("kind", ["binary", "python"])
@pytest.mark.parametrize("mode", ["w:gz", "w:xz"])
def test_layouts_and_compressions(tmp_path, monkeypatch, kind, mode):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    archive = _make_tar(tmp_path / f"c.tar.{mode[-2:]}", _layout(kind), mode)
    with pytest.warns(UserWarning, match="not the official"):
        (x, y), (x_test, y_test) = load_cifar10(archive)
    assert x.shape == (100, 32, 32, 3) and y.tolist()[:12] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert x_test.shape == (20, 32, 32, 3)
    # Channel-major records become NHWC: pixel (0, 0) of image 0 holds bytes 0, 1024 and 2048 of its planes.
    raw = np.frombuffer(_layout(kind)[next(iter(_layout(kind)))], dtype=np.uint8)
    if kind == "binary":
        planes = raw.reshape(-1, 3073)[0, 1:]
        assert x[0, 0, 0].tolist() == [planes[0], planes[1024], planes[2048]]


def test_extracted_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    for name, payload in _layout("binary").items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(payload)
    (x, _), (x_test, _) = load_cifar10(tmp_path / "cifar-10-batches-bin")
    assert x.shape[0] == 100 and x_test.shape[0] == 20


def test_env_variable_is_used(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CNNLAB_CIFAR10", str(_make_tar(tmp_path / "c.tgz", _layout("binary"))))
    with pytest.warns(UserWarning):
        (x, _), _ = load_cifar10()
    assert x.shape[0] == 100


def test_offline_without_source_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CNNLAB_CIFAR10", raising=False)
    monkeypatch.setattr("cnnlab.data.cifar.OFFICIAL_URL", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    with pytest.raises(DataError, match="could not be downloaded.*CNNLAB_CIFAR10"):
        load_cifar10()
    with pytest.raises(DataError, match="downloads are off.*--data PATH"):
        load_cifar10(allow_download=False)
    assert not any((tmp_path / "cache").rglob("*.tar.gz")), "no partial download left behind"


def test_truncated_archive(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    archive = _make_tar(tmp_path / "c.tar.xz", _layout("binary"), "w:xz")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_cifar10(archive)
    assert not any((tmp_path / "cache").rglob("*.npy")), "nothing half-written in the cache"


def test_wrong_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="data_batch_1"):
        load_cifar10(tmp_path / "empty")
    with pytest.raises(DataError, match="does not exist"):
        load_cifar10(tmp_path / "missing")


def test_partial_record(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    files = _layout("binary")
    files["cifar-10-batches-bin/test_batch.bin"] = files["cifar-10-batches-bin/test_batch.bin"][:-5]
    with pytest.raises(DataError, match="test_batch.*whole number"):
        load_cifar10(_make_tar(tmp_path / "c.tgz", files))


def test_label_out_of_range(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    files = _layout("binary")
    batch = bytearray(files["cifar-10-batches-bin/data_batch_2.bin"])
    batch[0] = 12
    files["cifar-10-batches-bin/data_batch_2.bin"] = bytes(batch)
    with pytest.raises(DataError, match="y_train has labels outside 0..9"):
        load_cifar10(_make_tar(tmp_path / "c.tgz", files))


def test_wrong_image_shape_in_python_batch(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    files = _layout("python")
    files["cifar-10-batches-py/data_batch_1"] = pickle.dumps(
        {b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}
    )
    with pytest.raises(DataError, match=r"data_batch_1.*\(N, 3072\)"):
        load_cifar10(_make_tar(tmp_path / "c.tgz", files))
    files["cifar-10-batches-py/data_batch_1"] = pickle.dumps(
        {b"data": np.zeros((4, 3072), np.float64), b"labels": [0] * 4}
    )
    with pytest.raises(DataError, match="uint8"):
        load_cifar10(_make_tar(tmp_path / "d.tgz", files))


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_with_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    files = _layout("python")
    files["cifar-10-batches-py/test_batch"] = pickle.dumps({b"data": _Evil(), b"labels": []})
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        load_cifar10(_make_tar(tmp_path / "c.tgz", files))


def test_member_outside_target_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    files = _layout("binary")
    files["../../data_batch_3.bin"] = files.pop("cifar-10-batches-bin/data_batch_3.bin")
    with pytest.raises(DataError, match="outside"):
        load_cifar10(_make_tar(tmp_path / "c.tgz", files))
