"""Exceptions that the CLI turns into one actionable line each."""
from __future__ import annotations


class HifikitError(Exception):
    """An error the user can act on; its message is shown as is."""


class NotBuiltError(HifikitError):
    """The bundled llama.cpp binaries or libraries are missing."""


class ToolFailedError(HifikitError):
    """A bundled binary exited non-zero."""
