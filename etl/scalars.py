"""What a run keeps of the values it is asked to log: one rule for ``run.log`` and for every library's logger.

A logged value is stored as a float64 (``scalars.value``) when it is one number: a Python int or float, a
numpy number, or a tensor or array of one element. NaN and infinities are numbers (a diverged loss is a
finding, and Parquet doubles hold them). Left out, with the reason: a bool (a flag, not a measurement), a
string, ``None``, a dict, a tensor or array of several elements (a histogram, a vector of norms), an int
past a float's range. ``run.log`` raises on such a value (the caller's own code passed it); a library's
logger (W&B-style ``layerlake.log``, Accelerate, Lightning, the Trainer, Hydra) must never stop training for
one, so it leaves the value out and says so once per name (``usable_numbers``).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any


def as_number(value: Any) -> tuple[float | None, str]:
    """``(value as a float, "")`` when it is one number, else ``(None, why it is not)``."""
    if value is None:
        return None, "None"
    if isinstance(value, (str, bytes, Mapping)):
        return None, f"a {type(value).__name__}"
    size = getattr(value, "numel", None) or getattr(value, "size", None)
    count = size() if callable(size) else size
    if isinstance(count, int) and count != 1 and hasattr(value, "item"):
        return None, f"{count} values"
    try:
        plain = value.item() if hasattr(value, "item") else value
        if isinstance(plain, bool):  # Python's and numpy's: a flag, not a measurement
            return None, "a bool"
        return float(plain), ""
    except OverflowError:
        return None, "an int past a float's range"
    except (TypeError, ValueError, RuntimeError):
        return None, f"a {type(value).__name__}"


def storable_name(name: Any) -> str | None:
    """``name`` as the text a scalars row stores, or None when no Parquet file can hold it (a lone
    surrogate such as '\\ud800': UTF-8 has no encoding for it, and the whole block's commit would fail)."""
    text = str(name)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return text


def usable_numbers(values: Mapping[str, Any], said: set[str]) -> dict[str, float]:
    """The numbers of ``values`` (a library's dict of logged values) as floats; every other value is left
    out, said on stderr the first time its name is met (``said`` holds the names said already)."""
    numbers = {}
    for name, value in values.items():
        number, why = as_number(value)
        if storable_name(name) is None:
            number, why = None, "its name is not text UTF-8 can encode"
        if number is not None:
            numbers[str(name)] = number
        elif name not in said:
            said.add(name)
            print(
                f"layerlake: {name!r} is not a number ({why}); scalars holds numbers, so it is left out "
                "(said once per name)",
                file=sys.stderr,
            )
    return numbers


__all__ = ["as_number", "storable_name", "usable_numbers"]
