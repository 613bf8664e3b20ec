"""Checks and JSON codecs for the fixed-width fields of signed structures.

Every signed format in protocol/ is a fixed-width layout; these helpers make sure a value
fits its slot before it is packed (so encoding can never silently truncate) and turn JSON
values back into bytes/ints with a ValueError that names the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

UINT_MAX = {8: 0xFF, 16: 0xFFFF, 32: 0xFFFF_FFFF, 64: 0xFFFF_FFFF_FFFF_FFFF}


def check_bytes(name: str, value: Any, size: int) -> bytes:
    """`value` as bytes of exactly `size` bytes, or ValueError naming the field."""
    if isinstance(value, (bytearray, memoryview)):
        value = bytes(value)
    if not isinstance(value, bytes):
        raise ValueError(f"{name} must be bytes, got {type(value).__name__}")
    if len(value) != size:
        raise ValueError(f"{name} must be {size} bytes, got {len(value)}")
    return value


def check_uint(name: str, value: Any, bits: int) -> int:
    """`value` as an int in [0, 2**bits), or ValueError naming the field."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {type(value).__name__}")
    if not 0 <= value <= UINT_MAX[bits]:
        raise ValueError(f"{name} out of range for u{bits}: {value}")
    return int(value)


def check_float(name: str, value: Any) -> float:
    """A finite float (JSON cannot carry NaN or infinities)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def hex_field(data: Mapping[str, Any], name: str, size: int) -> bytes:
    """Read lowercase/uppercase hex (no 0x) of exactly `size` bytes from a JSON object."""
    value = require(data, name)
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a hex string")
    if value.startswith(("0x", "0X")):
        raise ValueError(f"{name} must be hex without 0x")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise ValueError(f"{name} is not valid hex") from None
    return check_bytes(name, raw, size)


def uint_field(data: Mapping[str, Any], name: str, bits: int) -> int:
    return check_uint(name, require(data, name), bits)


def require(data: Mapping[str, Any], name: str) -> Any:
    if not isinstance(data, Mapping):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    if name not in data:
        raise ValueError(f"missing field {name!r}")
    return data[name]
