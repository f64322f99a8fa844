"""Shared fixtures: where the real data lies, and a private cache per test session.

Tests that need real data fail (not skip) when CI=true and the data is missing, as the brief asks.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("CNNLAB_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session", autouse=True)
def _threads():
    """Apply $CNNLAB_THREADS once: torch otherwise takes every core and spin-waits on a busy machine."""
    from cnnlab.core.runtime import configure_threads

    configure_threads()


def _shared_dir() -> Path:
    return Path(os.environ.get("CNNLAB_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def require_path(path: Path, what: str) -> Path:
    """Return path if it exists; otherwise fail in CI and skip (with the reason) elsewhere."""
    if path.exists():
        return path
    message = f"{what} not found at {path}; set CNNLAB_SHARED to the folder that holds it"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return require_path(_shared_dir(), "the shared data folder")


@pytest.fixture(scope="session")
def cifar10_archive() -> Path:
    env = os.environ.get("CNNLAB_CIFAR10")
    path = Path(env) if env else _shared_dir() / "datasets" / "cifar-10-binary-lossy.tar.xz"
    return require_path(path, "the CIFAR-10 archive")


@pytest.fixture(scope="session")
def photos_dir(shared_dir) -> Path:
    return require_path(shared_dir / "photos", "the photos folder")


@pytest.fixture(scope="session")
def weights_path() -> Path:
    """The ImageNet ResNet50 weights that $CNNLAB_RESNET50_WEIGHTS names."""
    value = os.environ.get("CNNLAB_RESNET50_WEIGHTS")
    path = Path(value) if value else Path("<CNNLAB_RESNET50_WEIGHTS not set>")
    return require_path(
        path, "the ResNet50 weights (export CNNLAB_RESNET50_WEIGHTS=$(scripts/fetch_resnet_weights.sh))"
    )


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    """A cnnlab cache shared by the tests of one session (CIFAR-10 decodes once)."""
    path = tmp_path_factory.mktemp("cnnlab-cache")
    os.environ["CNNLAB_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def scipy_ascent(shared_dir, tmp_path_factory) -> Path:
    """Seed scipy's pooch cache with the shared ascent.dat so scipy.datasets.ascent() works offline."""
    source = require_path(shared_dir / "datasets" / "ascent.dat", "ascent.dat")
    cache = tmp_path_factory.mktemp("xdg-cache")
    target = cache / "scipy-data" / "ascent.dat"
    target.parent.mkdir(parents=True)
    shutil.copyfile(source, target)
    os.environ["XDG_CACHE_HOME"] = str(cache)
    return target
