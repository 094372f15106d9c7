"""orjson beside the validator's exact JSON reader
(:func:`procfhir.validator.inputs.parse_text`: Python's ``json`` with a hook per object for
duplicate keys, strict number hooks from :mod:`procfhir.strictio`, a lone-surrogate check).

The first pass of :func:`procfhir.validator.run.run` only looks for definitions in the inputs
it reads again later: :func:`loads_plain` (orjson, about twice as fast as the exact reader on
FHIR JSON) finds them; when there are some, :func:`proven` says whether orjson's value is what
the exact reader gives without any issue (else the exact reader reads the file, and finds and
words the problem, or accepts it: a false alarm here only costs time).

The second pass (validation) keeps the exact reader, except for the very bytes proven in the
first pass (their ``hash()`` kept): measured on the R4 examples, orjson plus this proof (about
seven passes over the bytes) is not faster than the exact reader, except on files made of many
small objects such as a Bundle of StructureDefinitions.

Why each difference between the two readers is covered (``T`` the input bytes, ``V`` the value
orjson parsed, ``D`` orjson's dump of ``V``, indented by 2, integers limited to 53 bits):

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
  orjson writes a ``:`` after each key and never escapes ``:`` in a string:
  ``D.count(":") = K + S_V``, K the keys of ``V``'s objects, S_V the ``:`` in ``V``'s strings.
  A duplicate key leaves one key where ``T`` has two members, and drops a value: K <= P (equal
  only without any duplicate) and S_V <= S_T. Hence ``D.count(":") == T.count(":")`` implies
  K == P: no object of ``T`` has a key twice (keys equal after their escapes are decoded
  included: the count is of parsed keys). Any other outcome: UNPROVEN.
- *integers*: Python reads any size (strictio refuses beyond 64 bits signed); orjson gives an
  ``int`` up to 2**64 - 1, a ``float`` beyond. ``D`` is written with OPT_STRICT_INTEGER: an
  integer beyond 53 bits raises, UNPROVEN; a float of magnitude 1e16 or more is written with
  ``e+`` (so any integer turned float, 9.2e18 and more): ``e+`` anywhere in ``D``, UNPROVEN.
- *floats*: both readers round a decimal to the nearest double (orjson's yyjson and Python's
  ``float()`` are correctly rounded; compared in the tests). strictio refuses a non-zero decimal
  that becomes 0.0 (``1e-999``): any zero float in ``V`` (written ``0.0`` or ``-0.0`` in ``D``:
  found with the bytes around it, strings with such text are also taken as zeros), UNPROVEN.
  Python gives an int or a float from the same text as orjson (int without fraction or
  exponent).
- *depth*: Python's reader recurses (RecursionError near the recursion limit, ~1000 less the
  caller's frames); orjson stops at 1024. In ``D`` an element at depth d starts a line indented
  by 2 * d spaces: a line break followed by ``2 * MAX_DEPTH`` spaces means nesting beyond
  :data:`MAX_DEPTH` (far below Python's limit), UNPROVEN.
- *a UTF-8 byte order mark*: the exact reader decodes with ``utf-8-sig``, so one is skipped
  here too (orjson refuses it).
- *strings*: both decode the same escapes; lone surrogates are refused by orjson (above).

A large document is dumped in pieces (the values two levels under the root, e.g. a Bundle's
entries), the counts added up with the keys of the levels above, so that the dump never holds
a second copy of a large input at once (the run's peak of memory is while parsing the largest
Bundle)."""

from __future__ import annotations

import gc
from typing import Any, Final

import orjson

UNPROVEN: Final[Any] = object()
MAX_DEPTH: Final = 200  # nesting the shortcut accepts (the exact reader fails from ~1000 less its caller's)
SPLIT_BYTES: Final = 1 << 20  # larger documents are dumped in pieces
_SPLIT_LEVELS: Final = 2
_BOM: Final = b"\xef\xbb\xbf"
_DUMP: Final = orjson.OPT_INDENT_2 | orjson.OPT_STRICT_INTEGER
_DEEP: Final = [b"\n" + b" " * (2 * (MAX_DEPTH - level)) for level in range(_SPLIT_LEVELS + 1)]


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


def proven(value: Any, data: bytes, split_bytes: int = SPLIT_BYTES) -> bool:
    """Whether ``value``, :func:`loads_plain` of ``data``, is what the exact reader gives
    without any issue (see the module; ``data`` larger than ``split_bytes`` is dumped in
    pieces)."""
    if not isinstance(value, dict) or _colon_escape(data):
        return False
    tally = [0]
    levels = _SPLIT_LEVELS if len(data) > split_bytes else 0
    return _dumps_alike(value, 0, levels, tally) and tally[0] == data.count(b":")


def _colon_escape(data: bytes) -> bool:
    """Whether ``data`` writes a ``:`` as an escape (``\\u003a``, ``\\u003A``)."""
    return b"\\u003" in data and (b"\\u003a" in data or b"\\u003A" in data)


def _dumps_alike(value: Any, level: int, levels: int, tally: list[int]) -> bool:
    """Whether the dump of ``value`` (at ``level`` containers under the root; split further
    down to ``levels``) shows no integer beyond 53 bits, no float of 1e16 or more, no zero
    float and no nesting beyond MAX_DEPTH in all; adds its ``:`` count to ``tally[0]``."""
    if level < levels:
        if isinstance(value, dict):
            for k, v in value.items():
                tally[0] += 1 + k.count(":")  # the member's own ``:`` and those of its key
                if not _dumps_alike(v, level + 1, levels, tally):
                    return False
            return True
        if isinstance(value, list):
            return all(_dumps_alike(v, level + 1, levels, tally) for v in value)
    try:
        piece = orjson.dumps(value, option=_DUMP)
    except orjson.JSONEncodeError:
        return False
    if _DEEP[level] in piece or _zero_float(piece) or (b"+" in piece and _big_float(piece)):
        return False
    tally[0] += piece.count(b":")
    return True


def _zero_float(piece: bytes) -> bool:
    """Whether ``piece`` (orjson's indented dump) may hold the float 0.0 or -0.0: some ``0.0``
    after a space, a ``-`` or at the start, and before a ``,``, a line break or the end (every
    such number is; a string with that text also answers yes)."""
    i = piece.find(b"0.0")
    while i >= 0:
        before = piece[i - 1] if i else 0x20
        after = piece[i + 3] if i + 3 < len(piece) else 0x2C
        if before in (0x20, 0x2D) and after in (0x2C, 0x0A):
            return True
        i = piece.find(b"0.0", i + 1)
    return False


_DIGITS: Final = frozenset(b"0123456789")
_MANTISSA: Final = frozenset(b"0123456789.")


def _big_float(piece: bytes) -> bool:
    """Whether ``piece`` (orjson's indented dump) may hold a float of magnitude 1e16 or more:
    some ``e+`` after digits (and a ``.``) that follow a space, a ``-`` or the start, followed
    by digits then a ``,``, a line break or the end (every such number is written so; a string
    with that text also answers yes)."""
    n = len(piece)
    i = piece.find(b"e+")
    while i >= 0:
        j = i - 1
        while j >= 0 and piece[j] in _MANTISSA:
            j -= 1
        k = i + 2
        while k < n and piece[k] in _DIGITS:
            k += 1
        if (
            j < i - 1
            and (j < 0 or piece[j] in (0x20, 0x2D))
            and k > i + 2
            and (k == n or piece[k] in (0x2C, 0x0A))
        ):
            return True
        i = piece.find(b"e+", i + 2)
    return False
