"""Loaded by every Python process whose PYTHONPATH starts with this folder (tests/test_distributed.py puts it
there): when $CNNLAB_TEST_WRITES names a folder, each file this process opens for writing or renames into place
(cnnlab writes every file through a temp file and os.replace) is logged to rank<RANK>-<pid>.txt in it, so a
test can tell which rank wrote what."""

import os
import sys

_FOLDER = os.environ.get("CNNLAB_TEST_WRITES")
if _FOLDER:
    _LOG = open(os.path.join(_FOLDER, f"rank{os.environ.get('RANK', '-')}-{os.getpid()}.txt"), "a", buffering=1)  # noqa: SIM115 (open for the whole process)

    def _record(event: str, args: tuple) -> None:
        if event == "os.rename":  # os.replace raises this event too
            _LOG.write(f"{args[1]}\n")
        elif event == "open" and isinstance(args[0], str) and isinstance(args[1], str) and set(args[1]) & set("wax+"):
            _LOG.write(f"{args[0]}\n")

    sys.addaudithook(_record)
