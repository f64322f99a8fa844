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


def test_python_dash_m_cnnlab_prints_the_version():
    done = subprocess.run([sys.executable, "-m", "cnnlab", "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == f"cnnlab {cnnlab.__version__}", done


def test_the_import_contract_lists_every_cli_command():
    """A new command module must be added to .importlinter's independence contract, or it could import
    another command's helpers unchecked."""
    import configparser
    from pathlib import Path

    root = Path(cnnlab.__file__).parent
    contracts = configparser.ConfigParser()
    contracts.read(root.parent / ".importlinter")
    listed = set(contracts["importlinter:contract:cli-commands"]["modules"].split())
    commands = {f"cnnlab.cli.{p.stem}" for p in (root / "cli").glob("*.py") if not p.stem.startswith("_")}
    assert listed == commands


def test_the_package_has_one_sub_package_or_module_per_layer():
    """The layers contract names every top-level part of the package, so nothing escapes the check."""
    import configparser
    from pathlib import Path

    root = Path(cnnlab.__file__).parent
    contracts = configparser.ConfigParser()
    contracts.read(root.parent / ".importlinter")
    layers = set(contracts["importlinter:contract:layers"]["layers"].split())
    parts = {f"cnnlab.{p.stem}" for p in root.iterdir() if (p.suffix == ".py" or (p / "__init__.py").exists())}
    assert parts - {"cnnlab.__init__", "cnnlab.__main__"} == layers
