"""Test-only: Python imports this at start-up when `tests/site` is on PYTHONPATH (conftest puts it
there), so the processes the tests start (the command line, the page, Ray workers) know the SAM
variant "tiny", as the test process itself does (`tiny_models.register_tiny_sam`).

Cheap on purpose: every Python process started with this PYTHONPATH runs it (Ray's own helpers
too), so torch and the tiny model are imported only when the variant is built.
"""

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
sys.path += [str(TESTS), str(TESTS.parent)]  # tiny_models, and the repository it registers into


def build_tiny_sam():
    from tiny_models import build_tiny_sam as build

    return build()


from pipelines.masks.sam_models import SAM_VARIANTS  # noqa: E402

SAM_VARIANTS.setdefault("tiny", build_tiny_sam)
