"""The one error a run raises for a reason the user can act on."""

from __future__ import annotations


class RunError(ValueError):
    """A run cannot start or go on: the message names the file, field or value and what is wrong.

    The ``textrefiner`` command prints it as one line and exits with status 2. It derives from
    ValueError so that callers catching bad values catch it too.
    """
