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

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "cnn_lab.ipynb"
# The calls the lab asks students to write, in the lab's order (regular expressions on the code cells).
LAB_CALLS = [
    r"\bload_lab_data\(",
    r"\bbuild_cnn\(",
    r"\.summary\(",
    r"\.fit\(",
    r"\.evaluate\(",
    r"\bplot_results\(",
    r"\bAugmentation\(",
    r"\bevaluate_rotated\(",
    r"\bCarbonCallback\(",
    r"\b(load_resnet50|classify_photos)\(",
    r"\btune\(",
    r"\btrain_recipe\(",
]


def _code(notebook) -> str:
    return "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")


def test_notebook_is_valid_and_stored_clean():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)
    assert all(len(cell.source.splitlines()) <= 20 for cell in code), "cells stay short"


def test_notebook_shows_the_labs_calls_in_order():
    code = _code(nbformat.read(NOTEBOOK, as_version=4))
    position = 0
    for call in LAB_CALLS:
        found = re.compile(call).search(code, position)
        assert found, f"no call {call} after the previous one of the lab's calls"
        position = found.end()
    assert 'show("' not in code, "no helper hides a part's code"


def test_notebook_asks_the_labs_questions_in_bold():
    cells = nbformat.read(NOTEBOOK, as_version=4).cells
    text = "\n".join(cell.source for cell in cells if cell.cell_type == "markdown")
    asked = [int(number) for number in re.findall(r"\*\*(\d+)\. ", text)]
    # The lab numbers part 6's questions 28-30 again after part 5's 28 and 29; the notebook keeps its numbers.
    assert asked == [*range(1, 30), *range(28, 36)]


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

    from cnnlab.data.cifar import source_description

    out = tmp_path / "lab"
    monkeypatch.setenv("CNNLAB_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("CNNLAB_NOTEBOOK_OUT", str(out))
    monkeypatch.setenv("CNNLAB_CIFAR10", str(cifar10_archive))
    monkeypatch.delenv("CNNLAB_RESNET50_WEIGHTS", raising=False)  # the cell must explain, not fail
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, kernel_name=kernel_name, timeout=600, resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    assert sum("image/png" in output.get("data", {}) for output in outputs) >= 10, "figures are inline"
    printed = "".join(output.get("text", "") for output in outputs if output.output_type == "stream")
    answered = set()
    for first, last in re.findall(r"^(\d+)(?:-(\d+))?\. ", printed, re.MULTILINE):
        answered.update(range(int(first), int(last or first) + 1))
    assert answered == set(range(1, 36)), "every question of the lab is answered by a printed sentence"
    percent = r"\d+\.\d%"
    for answer in (
        r"5\. Gaussian \(498, 498\) = 512 - 15 \+ 1",
        rf"13\. Run A reaches {percent} on training images but {percent} on test images",
        r"15\. Run C has 124,180 trainable parameters",
        rf"24\. Run [A-D] scores {percent} on the test images and {percent} on the same images turned",
        r"28\. The number of epochs and the batch size.* \d+\.\d+x the energy of batch 128",
        r"32\. 25,583,592 trainable parameters",
        rf"Recipe 'fast': {percent} test accuracy",
    ):
        assert re.search(answer, printed), answer
    assert "No ResNet50 weights: run `export CNNLAB_RESNET50_WEIGHTS=" in printed
    official = source_description(cifar10_archive)["official"]  # read from the cache the notebook filled
    assert ("This is the official CIFAR-10 archive" if official else "not the official CIFAR-10") in printed
    assert (out / "runs" / "A" / "metrics.json").is_file() and (out / "figures" / "run_A.png").is_file()
