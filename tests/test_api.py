"""The public API: every exported name resolves, and importing cnnlab stays light."""

import subprocess
import sys

import cnnlab


def test_every_exported_name_resolves():
    for name in cnnlab.__all__:
        assert getattr(cnnlab, name) is not None, name


def test_import_does_not_load_torch():
    code = "import sys, cnnlab; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
