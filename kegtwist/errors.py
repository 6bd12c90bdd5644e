"""Errors that stop start-up with one clear line (no traceback).

Kept in a module of its own, with no imports, so that catching them costs
nothing: importing the manhole to catch its error loaded twisted.conch and
cryptography (12 MiB) into every daemon, manhole or not.
"""

from __future__ import annotations


class StartupError(Exception):
    """A setting or the environment makes starting impossible; the message
    says what to do."""
