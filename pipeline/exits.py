"""How a run ends, as the user sees it: the exit statuses and the usage error.

At the bottom of ``pipeline/`` and importing nothing, so that the run model, the
commands and the command line can all refuse a request the same way without importing
each other.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """A mistake in what the user asked for: reported in one line, exit 2, nothing written."""
