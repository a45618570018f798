"""Test-only: Python imports this at start-up when `tests/site` is on PYTHONPATH (conftest's `tiny_env`
puts it there), so the command line and the page started by the tests know the SAM variant "tiny",
registered as in the test process itself (`tiny_models.register_tiny_sam`)."""

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
sys.path += [str(TESTS), str(TESTS.parent)]  # tiny_models, and the repository it registers into

from tiny_models import register_tiny_sam  # noqa: E402

register_tiny_sam()
