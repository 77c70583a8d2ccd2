"""Argument types for the command line: argparse refuses a bad number with the range it must lie in."""
from __future__ import annotations

import argparse
import math


def _number(kind, text: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _checked(kind, test, requirement: str):
    def parse(text: str):
        value = _number(kind, text)
        if not test(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value

    parse.__name__ = f"{kind.__name__} {requirement}"
    return parse


def at_least(low, kind=int):
    return _checked(kind, lambda value: value >= low, f"≥ {low}")


def above(low, kind=float):
    return _checked(kind, lambda value: value > low, f"> {low}")


def between(low, high, kind=float):
    return _checked(kind, lambda value: low <= value <= high, f"in [{low}, {high}]")


def above_up_to(low, high, kind=float):
    return _checked(kind, lambda value: low < value <= high, f"in ({low}, {high}]")


def int_list(low: int = 1):
    """Comma-separated integers, each ≥ `low`."""
    item = at_least(low)

    def parse(text: str) -> list[int]:
        parts = [part.strip() for part in text.split(",")]
        if not all(parts):
            raise argparse.ArgumentTypeError(f"give comma-separated integers, got {text!r}")
        return [item(part) for part in parts]

    return parse
