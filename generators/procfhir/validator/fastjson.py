"""orjson beside the validator's exact JSON reader
(:func:`procfhir.validator.inputs.parse_text`: Python's ``json`` with a hook per object for
duplicate keys, strict number hooks from :mod:`procfhir.strictio`, a lone-surrogate check).

Every input is read by :func:`loads_plain` (orjson) first, and its value taken when
:func:`proven` shows it is what the exact reader gives without any issue; otherwise the exact
reader reads the input again, and finds and words the problem, or accepts it (a false alarm
here only costs time). On the R4 examples, orjson and the proof take 0.63 s against 0.79 s for
the exact reader (about 0.8 of its time), and every file but three is proven.

:func:`proven` is one walk of the value, no allocation. Why each difference between the two
readers is covered (``T`` the input bytes, ``V`` the value orjson parsed):

- *what orjson refuses* (invalid UTF-8, encoded surrogates, lone ``\\u`` surrogates, NaN,
  Infinity, numbers that become infinite, nesting beyond 1024, control characters, a second
  byte order mark...): UNPROVEN. orjson is a strict RFC 8259 reader: it accepts no text that
  Python's ``json`` refuses (tests/test_validator_fastjson.py compares them on adversarial and
  random documents).
- *the root is not an object* (``null``, a list, a number...): UNPROVEN.
- *duplicate keys*. In valid JSON a ``:`` outside a string follows each key, once per member,
  and nowhere else; byte 0x3A is never part of a multi-byte UTF-8 character. So
  ``T.count(":") = P + S_T``, P the members written in ``T``, S_T the ``:`` inside its strings.
  Without a ``\\u003a`` / ``\\u003A`` escape in ``T``, a ``:`` in a decoded string comes from
  one literal ``:``, so S_T is also the ``:`` characters of all the strings ``T`` decodes to.
  The walk counts K + S_V: K the keys of ``V``'s objects, S_V the ``:`` in ``V``'s strings
  (keys included). A duplicate key leaves one key where ``T`` has two members, and drops a
  value: K <= P (equal only without any duplicate) and S_V <= S_T. Hence K + S_V ==
  ``T.count(":")`` implies K == P: no object of ``T`` has a key twice (keys equal after their
  escapes are decoded included: the count is of parsed keys). Any other outcome: UNPROVEN.
- *integers*: Python reads any size (strictio refuses beyond 64 bits signed); orjson gives an
  ``int`` up to 2**64 - 1, a ``float`` beyond. An int outside 64 bits signed: UNPROVEN; a float
  of magnitude 1e16 or more (any integer beyond 64 bits turned float is): UNPROVEN.
- *floats*: both readers round a decimal to the nearest double (orjson's yyjson and Python's
  ``float()`` are correctly rounded; compared in the tests). strictio refuses a non-zero decimal
  that becomes 0.0 (``1e-999``): any zero float in ``V``, UNPROVEN. Python gives an int or a
  float from the same text as orjson (int without fraction or exponent).
- *depth*: Python's reader recurses (RecursionError near the recursion limit, ~1000 less the
  caller's frames); orjson stops at 1024. Nesting beyond :data:`MAX_DEPTH` (far below
  Python's limit): UNPROVEN.
- *a UTF-8 byte order mark*: the exact reader decodes with ``utf-8-sig``, so one is skipped
  here too (orjson refuses it).
- *strings*: both decode the same escapes; lone surrogates are refused by orjson (above)."""

from __future__ import annotations

import gc
from collections.abc import Iterable
from typing import Any, Final

import orjson

UNPROVEN: Final[Any] = object()
MAX_DEPTH: Final = 200  # nesting the shortcut accepts (the exact reader fails from ~1000 less its caller's)
_BOM: Final = b"\xef\xbb\xbf"
_MAX_INT: Final = (1 << 63) - 1
_MIN_INT: Final = -(1 << 63)
_BIG: Final = 1e16  # a float this large may be an integer beyond 64 bits (orjson), refused by strictio


def loads_plain(data: bytes) -> Any:
    """orjson's reading of ``data`` (a UTF-8 byte order mark skipped), or :data:`UNPROVEN` when
    orjson refuses it; nothing proven (see :func:`proven`)."""
    body: bytes | memoryview = memoryview(data)[3:] if data.startswith(_BOM) else data
    collecting = gc.isenabled()
    gc.disable()  # parsing makes no reference cycles: a collection would only walk the new tree
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return UNPROVEN
    finally:
        if collecting:
            gc.enable()


def loads_proven(data: bytes) -> Any:
    """:func:`loads_plain` of ``data`` when it is :func:`proven`, else :data:`UNPROVEN`."""
    value = loads_plain(data)
    return value if value is not UNPROVEN and proven(value, data) else UNPROVEN


def proven(value: Any, data: bytes) -> bool:
    """Whether ``value``, :func:`loads_plain` of ``data``, is what the exact reader gives
    without any issue (see the module)."""
    if not isinstance(value, dict) or _colon_escape(data):
        return False
    count = _tally_object(value, 0)
    return count >= 0 and count == data.count(b":")


def _colon_escape(data: bytes) -> bool:
    """Whether ``data`` writes a ``:`` as an escape (``\\u003a``, ``\\u003A``)."""
    return b"\\u003" in data and (b"\\u003a" in data or b"\\u003A" in data)


def _tally_object(obj: dict[str, Any], depth: int) -> int:
    """K + S_V of ``obj`` (see the module: its keys, the ``:`` in its keys and strings, those of
    what it holds), or -1 when something in it is not proven (a number, the depth)."""
    if depth >= MAX_DEPTH:
        return -1
    n = len(obj)
    for key in obj:
        if ":" in key:
            n += key.count(":")
    inside = _tally_all(obj.values(), depth)
    return -1 if inside < 0 else n + inside


def _tally_all(values: Iterable[Any], depth: int) -> int:
    """The sum of :func:`_tally` of ``values`` (held at ``depth``), or -1 as soon as one is -1;
    strings, the most frequent values, counted here."""
    n = 0
    for v in values:
        if isinstance(v, str):
            if ":" in v:
                n += v.count(":")
            continue
        sub = _tally_object(v, depth + 1) if isinstance(v, dict) else _tally(v, depth + 1)
        if sub < 0:
            return -1
        n += sub
    return n


def _tally(v: Any, depth: int) -> int:
    """:func:`_tally_object` of any value but an object."""
    if isinstance(v, list):
        return -1 if depth >= MAX_DEPTH else _tally_all(v, depth)
    if isinstance(v, str):
        return v.count(":")
    if v is None or v is True or v is False:
        return 0
    if isinstance(v, int):
        return 0 if _MIN_INT <= v <= _MAX_INT else -1
    if isinstance(v, float):
        return 0 if v != 0.0 and -_BIG < v < _BIG else -1
    return -1
