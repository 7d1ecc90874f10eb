"""Checks of user-given numbers, shared by the library and the command line.

Each returns the value as a plain Python number (numpy scalars accepted) or raises MessiError
naming the option and the allowed range, before any model is loaded or any step is trained.
"""

from __future__ import annotations

import math
import numbers

from .errors import MessiError

#: Seeds feed numpy, torch and transformers; numpy's legacy seeding takes 0 .. 2**32 - 1.
SEED_MAX = 2**32 - 1


def integer(name: str, value, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int in [low, high] (either bound optional); bools and floats refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise MessiError(f"{name} must be a whole number, got {value!r}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        span = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        raise MessiError(f"{name} must be in {span}, got {value}")
    return value


def real(name: str, value, low: float | None = None, high: float | None = None, low_open: bool = False) -> float:
    """``value`` as a finite float in [low, high] (``(low, high]`` with ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise MessiError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise MessiError(f"{name} must be a finite number, got {value}")
    below = low is not None and (value <= low if low_open else value < low)
    if below or (high is not None and value > high):
        lo = "(" if low_open else "["
        raise MessiError(f"{name} must be in {lo}{low if low is not None else '-inf'}, "
                         f"{high if high is not None else 'inf'}], got {value:g}")
    return value


def seed(name: str, value) -> int:
    """A seed in [0, 2**32 - 1]."""
    return integer(name, value, 0, SEED_MAX)


def optional_count(name: str, value) -> int | None:
    """None (no limit) or an int >= 1."""
    return None if value is None else integer(name, value, 1)


#: Bounds on a config's sizes, checked before a model is built from it: real models stay far
#: inside them (Gemma 3: 262,144 tokens, 32,768 positions), while a value beyond them makes
#: transformers allocate buffers of that size (position ids, masks) before anything fails.
MAX_CONFIG_SIZE, MAX_POSITIONS = 1 << 24, 1 << 21
_SIZE_SUFFIXES = ("_size", "_embeddings", "_positions", "_layers", "_heads", "_dim", "n_ctx", "n_embd", "n_head",
                  "n_layer", "window")


def config_sizes(config: dict, where: str) -> None:
    """MessiError if a size-like integer of ``config`` (a config's dict, nested ones included) is
    negative, not an integer, or beyond what any real model has."""
    for key, value in config.items():
        if isinstance(value, dict):
            config_sizes(value, where)
            continue
        if not (isinstance(key, str) and key.endswith(_SIZE_SUFFIXES)) or value is None or isinstance(value, (bool, list, str)):
            continue
        limit = MAX_POSITIONS if "position" in key or key in ("n_ctx", "n_positions") else MAX_CONFIG_SIZE
        if not isinstance(value, int) or not 0 <= value <= limit:
            raise MessiError(f"{where}: {key} is {value!r}, outside 0..{limit:,} (larger than any real model's); "
                             "the config was edited or damaged")
