"""Bundle metadata read one field at a time: type, finiteness, range and size checked at load.

    d = parse(text, source)                     # bounded JSON: size, nesting, string and list lengths
    f = Fields(d["ood"], "ood", source)
    f.number("threshold", above=0)              # finite and > 0, else ModelError naming 'ood.threshold'
    f.integer("dim", 1, MAX_DIM)
    f.packed("means", (classes, dim))           # base64 float32 of exactly that many finite numbers

A metadata value that is NaN, infinite, out of its range, of the wrong type or of the wrong size must fail
here, by name, in one line: a guard whose threshold is NaN would accept every film without a word.
"""

from __future__ import annotations

import base64
import binascii
import json
import math

import numpy as np

from .errors import ModelError

MAX_META_CHARS = 32 * 2**20  # the whole JSON; the shipped INT8 file's is 0.25 MB
MAX_DEPTH = 16  # nesting levels of objects and lists; the metadata uses 4
MAX_TEXT_CHARS = 16 * 2**20  # one string: the largest is a packed guard array (0.22 MB shipped)
MAX_ITEMS = 100_000  # entries of one list or object
MISSING = object()


def bad(source: str, name: str, why: str) -> ModelError:
    return ModelError(f"{source}: metadata field '{name}' {why}")


def parse(text: str, source: str, what: str = "metadata") -> object:
    """JSON whose size, nesting and lengths are bounded, before and after it is read."""
    if not isinstance(text, str):
        raise ModelError(f"{source}: {what} is not text")
    if len(text) > MAX_META_CHARS:
        raise ModelError(f"{source}: {what} is {len(text) / 2**20:.0f} MB of JSON, more than the "
                         f"{MAX_META_CHARS // 2**20} MB a bundle may carry")
    try:
        value = json.loads(text)
    except RecursionError:  # the C reader gives up before the stack does: nesting far past MAX_DEPTH
        raise ModelError(f"{source}: {what} nests deeper than {MAX_DEPTH} levels") from None
    except (json.JSONDecodeError, TypeError) as e:
        raise ModelError(f"{source}: {what} is not valid JSON ({e})") from None
    check_bounds(value, source)
    return value


def check_bounds(value: object, source: str) -> None:
    """Nesting depth, string and list lengths of parsed JSON, walked without recursion."""
    stack = [(value, "", 1)]
    while stack:
        v, name, depth = stack.pop()
        where = name or "(top level)"
        if depth > MAX_DEPTH:
            raise bad(source, where, f"nests deeper than {MAX_DEPTH} levels")
        if isinstance(v, str) and len(v) > MAX_TEXT_CHARS:
            raise bad(source, where, f"is a string of {len(v)} characters (at most {MAX_TEXT_CHARS})")
        if isinstance(v, (list, dict)) and len(v) > MAX_ITEMS:
            raise bad(source, where, f"holds {len(v)} entries (at most {MAX_ITEMS})")
        if isinstance(v, dict):
            stack.extend((x, f"{name}.{k}" if name else str(k)[:80], depth + 1) for k, x in v.items())
        elif isinstance(v, list):
            stack.extend((x, f"{name}[{i}]", depth + 1) for i, x in enumerate(v))


def _interval(lo: float, hi: float, lo_open: bool, hi_open: bool) -> str:
    return f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"


def is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class Fields:
    """One metadata object's fields; every getter checks its value or raises a ModelError naming the field."""

    def __init__(self, d: object, prefix: str, source: str):
        if not isinstance(d, dict):
            raise bad(source, prefix, f"must be an object, got {type(d).__name__}")
        self.d, self.prefix, self.source = d, prefix, source

    def name(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def bad(self, key: str, why: str) -> ModelError:
        return bad(self.source, self.name(key), why)

    def has(self, key: str) -> bool:
        return self.d.get(key) is not None

    def get(self, key: str, default=MISSING):
        """The raw value; a missing (or null) field is `default`, or an error when there is none."""
        return self._value(key, default)[1]

    def _value(self, key: str, default) -> tuple[bool, object]:
        """(True, default) for a missing or null field that has a default, else (False, its value)."""
        v = self.d.get(key)
        if v is None:
            if default is MISSING:
                raise self.bad(key, "is missing")
            return True, default
        return False, v

    def number(self, key: str, lo: float = -math.inf, hi: float = math.inf, *, lo_open: bool = False,
               hi_open: bool = False, default=MISSING) -> float:
        absent, v = self._value(key, default)
        if absent:
            return v
        inside = (is_number(v) and math.isfinite(v) and (lo < v if lo_open else lo <= v)
                  and (v < hi if hi_open else v <= hi))
        if not inside:
            raise self.bad(key, f"must be a finite number in {_interval(lo, hi, lo_open, hi_open)}, got {_shown(v)}")
        return float(v)

    def integer(self, key: str, lo: int, hi: int, default=MISSING) -> int:
        absent, v = self._value(key, default)
        if absent:
            return v
        if not (isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi):
            raise self.bad(key, f"must be an integer in [{lo}, {hi}], got {_shown(v)}")
        return v

    def text(self, key: str, longest: int = 1000, default=MISSING) -> str:
        absent, v = self._value(key, default)
        if absent:
            return v
        if not isinstance(v, str) or len(v) > longest:
            raise self.bad(key, f"must be a string of at most {longest} characters, got {_shown(v)}")
        return v

    def texts(self, key: str, default=MISSING) -> tuple[str, ...]:
        absent, v = self._value(key, default)
        if absent:
            return tuple(v)
        if not (isinstance(v, list) and all(isinstance(x, str) and len(x) <= 1000 for x in v)):
            raise self.bad(key, f"must be a list of strings, got {_shown(v)}")
        return tuple(v)

    def numbers(self, key: str, count: int | None = None, lo: float = -math.inf, hi: float = math.inf, *,
                lo_open: bool = False, longest: int = 10_000, default=MISSING) -> np.ndarray:
        """A JSON list of finite numbers in the interval: `count` of them, or 1 to `longest`."""
        absent, v = self._value(key, default)
        if absent:
            return v
        size = f"{count}" if count is not None else f"1 to {longest}"
        if not isinstance(v, list) or (len(v) != count if count is not None else not 1 <= len(v) <= longest):
            raise self.bad(key, f"must be a list of {size} numbers, got {_shown(v)}")
        if not all(is_number(x) for x in v):
            raise self.bad(key, f"must hold numbers only, got {_shown(v)}")
        a = np.asarray(v, np.float64)
        inside = np.isfinite(a) & (a > lo if lo_open else a >= lo) & (a <= hi)
        if not inside.all():
            raise self.bad(key, f"holds {_shown(v[int(np.argmin(inside))])}: each must be a finite number in "
                                f"{_interval(lo, hi, lo_open, False)}")
        return a

    def packed(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
        """Base64 of float32 numbers, exactly prod(shape) of them, all finite; float64 of that shape."""
        v = self.get(key)
        n = int(np.prod(shape))
        want = 4 * math.ceil(4 * n / 3)  # characters of base64 for n float32 (padding included)
        if not isinstance(v, str):
            raise self.bad(key, f"must be base64 float32 text, got {type(v).__name__}")
        if len(v) != want:
            raise self.bad(key, f"holds {len(v)} characters of base64; shape {tuple(shape)} needs {want}")
        try:
            a = np.frombuffer(base64.b64decode(v, validate=True), np.float32)
        except (binascii.Error, ValueError) as e:
            raise self.bad(key, f"is not base64 ({e})") from None
        if a.size != n:
            raise self.bad(key, f"holds {a.size} numbers; shape {tuple(shape)} needs {n}")
        if not np.isfinite(a).all():
            raise self.bad(key, "holds non-finite numbers (NaN or infinity)")
        return a.reshape(shape).astype(np.float64)

    def child(self, key: str) -> "Fields":
        return Fields(self.get(key), self.name(key), self.source)


def _shown(v: object) -> str:
    """A value for an error line: its repr, cut short (metadata can hold megabytes)."""
    text = repr(v)
    return text if len(text) <= 60 else f"{text[:57]}..."
