"""argparse types shared by the command-line parsers (`emu35-robot ...` and `emu35-robot eval`)."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An int >= 1; argparse reports anything else as a usage error that names the flag."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"want a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"want 1 or more, got {value}")
    return value
