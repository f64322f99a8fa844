"""notebooks/cnn_lab.ipynb: valid, stored without outputs, and it runs top to bottom on tiny settings.

The notebook runs in a kernel whose spec is written to a temporary folder for this interpreter (.venv's
python), so the test neither needs nor changes a kernel installed on the machine.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat
import pytest

from cnnlab.lab import discover_parts

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "cnn_lab.ipynb"
LAB_PARTS = ["convolution", "device", "data", "cnn", "generalization", "carbon", "resnet", "tuning", "best"]


def _shown_parts(notebook) -> list[str]:
    code = "".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    return re.findall(r'show\("(\w+)"\)', code)


def test_notebook_is_valid_and_stored_clean():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)
    assert all(len(cell.source.splitlines()) <= 20 for cell in code), "cells stay short"


def test_notebook_shows_every_part_of_the_lab_in_order():
    shown = _shown_parts(nbformat.read(NOTEBOOK, as_version=4))
    assert shown == LAB_PARTS
    assert set(shown) <= {key for key, _ in discover_parts()}


@pytest.fixture
def kernel_name(tmp_path, monkeypatch) -> str:
    """A kernel spec for this interpreter in a temporary Jupyter path."""
    from ipykernel.kernelspec import install

    prefix = tmp_path / "jupyter"
    install(kernel_name="cnnlab-test", prefix=str(prefix), display_name="cnnlab test")
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("cnnlab-test")
    assert Path(spec.argv[0]).resolve() == Path(sys.executable).resolve()
    return "cnnlab-test"


@pytest.mark.slow
def test_notebook_runs_on_tiny_settings(
    tmp_path, monkeypatch, kernel_name, scipy_ascent, cifar10_archive, session_cache
):
    from nbclient import NotebookClient

    out = tmp_path / "lab"
    monkeypatch.setenv("CNNLAB_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("CNNLAB_NOTEBOOK_OUT", str(out))
    monkeypatch.setenv("CNNLAB_CIFAR10", str(cifar10_archive))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, kernel_name=kernel_name, timeout=600, resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    shown = "".join(output.get("data", {}).get("text/markdown", "") for output in outputs)
    assert shown.count("](data:image/png;base64,") >= 10, "each part's figures are inline"
    assert "**24. What is the test accuracy on rotated test images" in shown
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
