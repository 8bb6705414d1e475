"""Thin DVC stage entry points: `python -m stages.<name>`; the logic lives in salis.pipeline."""

import importlib.util
import sys

# DVC runs `python -m stages.x` with whatever `python` is first on PATH: without the project's
# virtual environment that python has no salis, and the import below each stage would end in a
# traceback. Say what to do instead.
if importlib.util.find_spec("salis") is None:
    sys.exit(
        f"salis is not installed for {sys.executable}: activate the project's virtual environment "
        "(`source .venv/bin/activate`, after `make install`) and run dvc again"
    )
