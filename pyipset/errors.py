"""The package's error types, and how a value a user gave is quoted in a message.

Every error pyipset raises on purpose derives from PyipsetError, so that the
command line can tell an expected failure (one line, exit 1 or 2) from a bug
(one line and a hint to re-run with --debug). A message quotes at most
QUOTE_MAX characters of any value it names: a hostile 1.6 MB field must not
become a 1.6 MB message, nor a 5 GB repr of a YAML alias bomb."""

from __future__ import annotations

import reprlib

QUOTE_MAX = 80


class PyipsetError(Exception):
    """An expected failure: bad input, a refused program, a kernel tool's error."""


class UsageError(PyipsetError):
    """Bad arguments (the command line exits 2)."""


class InputRejected(PyipsetError):
    """The input holds objects that were rejected, so nothing was changed."""


_repr = reprlib.Repr()
_repr.maxstring = QUOTE_MAX
_repr.maxother = QUOTE_MAX
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 4
_repr.maxlevel = 3


def brief(value) -> str:
    """A bounded repr: strings cut to QUOTE_MAX characters (saying how long
    they were), containers to a few items and levels. Linear in what it
    prints, whatever the value's size or sharing."""
    if isinstance(value, str) and len(value) > QUOTE_MAX:
        return repr(value[:QUOTE_MAX]) + f"... ({len(value)} characters)"
    text = _repr.repr(value)
    return text if len(text) <= 4 * QUOTE_MAX else text[:4 * QUOTE_MAX] + "..."


def brief_text(text: str) -> str:
    """A bounded, one-line copy of free text (a name, a tool's stderr, a line of
    input): control characters are escaped, so a message stays one line."""
    text = str(text)
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= 4 * QUOTE_MAX else text[:4 * QUOTE_MAX] + f"... ({len(text)} characters)"
