"""How an error reads for people (one line), and the errors an edit raises that callers catch.

Stages raise with their cause chained (`raise ... from err`); the edges (the page, the API, the
command line, batch records, notices) show `one_line(err)` and keep the chain for the log.
"""

from __future__ import annotations


def one_line(exc: BaseException) -> str:
    """The first line of `exc`'s message, or its type's name when the message is empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Cancelled(Exception):
    """The caller's `should_cancel()` returned True; the edit stopped between two steps."""


class GpuOutOfMemory(RuntimeError):
    """The GPU ran out of memory during an edit. Its memory has been freed; the next edit can run."""
