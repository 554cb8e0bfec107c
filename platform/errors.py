"""Errors users see: one line, naming the file/field/client and what to do.

The CLI maps :class:`UsageError` to exit 2 and :class:`CheckFailed` to exit 1 (docs/contracts.md,
"Exit codes"), so library code raises these instead of printing or exiting.
"""

from __future__ import annotations


class VeilfedError(Exception):
    """Base class; ``str(err)`` is the one-line message shown to the user."""

    exit_code = 2


class UsageError(VeilfedError):
    """Bad input, config or environment: exit 2."""

    exit_code = 2


class CheckFailed(VeilfedError):
    """A verification ran and failed (tampering, budget violation, invalid model): exit 1."""

    exit_code = 1
