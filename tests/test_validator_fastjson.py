"""orjson beside the validator's exact JSON reader (procfhir.validator.fastjson): whatever
``proven`` accepts, the exact reader reads the same, with no issue; what ``loads_plain`` reads,
the exact reader reads with the same values or refuses; ``parse_input_owned`` (orjson first,
the exact reader where not proven) gives what the exact reader alone gives, issues included.
Adversarial documents, then random ones (seeded) built to have duplicate keys, escapes and edge
numbers, and their mutations; then the validator's run with and without the shortcut gives the
same outcome."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from procfhir import fhircache
from procfhir.validator.fastjson import UNPROVEN, loads_plain, loads_proven, proven
from procfhir.validator.inputs import parse, parse_input_owned

# -------------------------------------------------------------------------- helpers


def _same(a: Any, b: Any, ordered: bool = True) -> bool:
    """Equal values of the same types (1 is not 1.0 nor True; -0.0 is not 0.0), keys in the
    same order when ``ordered`` (without recursion: documents may be deep)."""
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        if type(x) is not type(y):
            return False
        if isinstance(x, dict):
            if (list(x) if ordered else sorted(x)) != (list(y) if ordered else sorted(y)):
                return False
            stack.extend((x[k], y[k]) for k in x)
        elif isinstance(x, list):
            if len(x) != len(y):
                return False
            stack.extend(zip(x, y, strict=True))
        elif isinstance(x, float):
            if repr(x) != repr(y):
                return False
        elif x != y:
            return False
    return True


def _check(data: bytes) -> str:
    """The properties on ``data``; 'proven', 'plain' (orjson read it, not proven) or 'refused'."""
    exact, issues = parse(data, "doc.json")
    # (the validator's own path: orjson when proven, else the exact reader, which looks for the
    # surrogate escape in the bytes)
    _source, owned, owned_issues = parse_input_owned([("doc.json", data, None, False)])
    assert _same(owned, exact) and owned_issues == issues, data
    value = loads_plain(data)
    if value is UNPROVEN:
        assert loads_proven(data) is UNPROVEN
        return "refused"
    if exact is not None:  # the values agree where the exact reader reads the document
        assert _same(value, exact, ordered=False), data
    if proven(value, data):
        assert exact is not None and issues == [], (data, issues)
        assert _same(value, exact) and _same(loads_proven(data), exact), data
        return "proven"
    assert loads_proven(data) is UNPROVEN
    return "plain"


# -------------------------------------------------------------------------- adversarial

_DUPLICATES = [
    b'{"a": 1, "a": 2}',
    b'{"a": 1, "a": 1}',
    b'{"a" : 1,\n"a"\t:\r1}',
    b'{"a": 1, "\\u0061": 2}',
    b'{"\\u0061": 1, "\\u0061": 2}',
    b'{"a\\"b": 1, "a\\u0022b": 2}',
    b'{"a:b": 1, "a:b": 2}',
    b'{"a": "x:y", "a": "z"}',
    b'{"x": "\\"a\\": 1, ", "a": 1, "a": 2}',
    b'{"x": {"a": [1, {"b": 0, "b": 0}]}}',
    b'{"x": [{"a": 1}, {"a": 1, "a": {"c": ":::"}}]}',
    b'{"resourceType": "Patient", "id": "a", "id": "a"}',
    b'{"a": {}, "a": []}',
    b'{"": 1, "": 2}',
    b'{"a": ":", "b": {"a": ":", "a": ":"}}',
]

_ESCAPED_COLONS = [  # a duplicate hidden behind as many escaped colons: never proven
    b'{"a": 1, "a": "\\u003a"}',
    b'{"k\\u003A": 1, "k\\u003A": 2, "v": ":"}',
    b'{"x": "\\u003a\\u003a", "a": 1, "a": 2}',
]

_NUMBERS = [
    b'{"n": 1e999}',
    b'{"n": -1e999}',
    b'{"n": 1e-999}',
    b'{"n": -1e-400}',
    b'{"n": 0.' + b"0" * 400 + b"1}",
    b'{"n": 0.0}',
    b'{"n": -0.0}',
    b'{"n": 0e5}',
    b'{"n": -0}',
    b'{"n": 9223372036854775807}',
    b'{"n": 9223372036854775808}',
    b'{"n": 18446744073709551615}',
    b'{"n": 18446744073709551616}',
    b'{"n": -9223372036854775808}',
    b'{"n": -9223372036854775809}',
    b'{"n": 123456789012345678901234567890}',
    b'{"n": 9007199254740993}',
    b'{"n": 1e16}',
    b'{"n": 1E+16}',
    b'{"n": 1.7976931348623157e308}',
    b'{"n": 1.7976931348623159e308}',
    b'{"n": 4.9e-324}',
    b'{"n": 2.4703282292062328e-324}',
    b'{"n": 0.1}',
    b'{"n": 1.0}',
    b'{"n": 100}',
    b'{"n": 1e2}',
    b'{"n": 0.30000000000000004441}',
    b'{"n": NaN}',
    b'{"n": Infinity}',
    b'{"n": -Infinity}',
    b'{"n": 01}',
    b'{"n": 1.}',
    b'{"n": +1}',
    b'{"s": "e+16", "t": "0.0", "u": " 0.0,", "v": "1e+16"}',
]

_TEXT = [
    b'{"s": "\\ud800"}',
    b'{"s": "\\udc00\\ud800"}',
    b'{"s": "\\ud83d\\ude00"}',
    b'{"s": "\\ud83d\\u0041"}',
    b'{"\\ud800": 1}',
    '{"s": "\U0001f600 é ü"}'.encode(),
    b'{"s": "\xed\xa0\x80"}',
    b'{"s": "\xc0\xaf"}',
    b'{"s": "\xff"}',
    b'{"s": "a\x01b"}',
    b'{"s": "a\tb"}',
    b'{"s": "\x7f"}',
    b'{"s": "\\u0000"}',
    b'{"s": "\\/\\b\\f\\n\\r\\t\\\\\\""}',
    b'{"s": "\\x"}',
    b'{"s": "\\u12"}',
    '{"s": "\u2028\ufeff"}'.encode(),
    b"\xef\xbb\xbf" + b'{"a": 1}',
    b"\xef\xbb\xbf\xef\xbb\xbf" + b'{"a": 1}',
    b"\xff\xfe{\x00}\x00",
]

_SHAPES = [
    b"null",
    b"[]",
    b'[{"a": 1}]',
    b'"text"',
    b"1",
    b"",
    b" ",
    b"{}",
    b" {} ",
    b"{}\n",
    b"{} {}",
    b'{"a": 1,}',
    b'{"a": 1} x',
    b"{'a': 1}",
    b'{"a" 1}',
    b'{"a": [1, 2,]}',
    b'{"a": tru}',
    b'{"a": true, "b": false, "c": null}',
    b'{"a": 1}\x00',
    b'{"a": 1}\x0b',
    b'/* c */ {"a": 1}',
    b'{"a": 1 // c\n}',
    b'{"a":\x0c1}',
    b'{"a": 1e}',
    b'{"a": -}',
    b'{"a": .5}',
    b'{"a": 0x10}',
]


def _deep(n: int) -> bytes:
    return b'{"a": ' + b'{"a": ' * (n - 1) + b"1" + b"}" * n


@pytest.mark.parametrize(
    "data",
    _DUPLICATES
    + _ESCAPED_COLONS
    + _NUMBERS
    + _TEXT
    + _SHAPES
    + [_deep(n) for n in (150, 199, 200, 201, 900, 1100)],
)
def test_adversarial_documents(data: bytes) -> None:
    _check(data)


def test_problems_are_never_proven() -> None:
    for data in _DUPLICATES + _ESCAPED_COLONS + [_deep(201), _deep(1000)]:
        value = loads_plain(data)
        assert value is UNPROVEN or not proven(value, data), data
    for data in _NUMBERS + _TEXT + _SHAPES:
        value = loads_plain(data)
        if value is not UNPROVEN and proven(value, data):
            assert parse(data, "doc.json")[1] == [], data


def test_ordinary_documents_are_proven() -> None:
    """The shortcut is taken (a proof that always failed would pass the tests above)."""
    docs = [
        b'{"resourceType": "Patient", "id": "p", "birthDate": "2000-01-01", "name": [{"family": "A:B"}]}',
        b'{"resourceType": "Observation", "valueQuantity": {"value": 1.5, "unit": "mg"}, "n": 12}',
        b'{"a": {"b": {"c": [1, 2.25, -3, 4e-7, 5e15, true, null, "x\\"y\\\\z\\n"]}}}',
        b'{"s": "\\u00e9\\u20ac\\ud83d\\ude00"}',
        b"\xef\xbb\xbf" + b'{"a": 1}',
        b'{"a:b": {"c:d": [{"e:f": ":"}]}, "g": [{"h:i": 1}]}',
        _deep(199),
        json.dumps({"entry": [{"resource": {"k": i, "t": "a:b"}} for i in range(50)]}).encode(),
    ]
    for data in docs:
        assert _check(data) == "proven", data


# -------------------------------------------------------------------------- random

_KEYS = ["a", "b", "a:b", 'q"', ""]
_KEY_SPELLINGS = {
    "a": ['"a"', '"\\u0061"'],
    "b": ['"b"', '"\\u0062"', '"\\u0042"'],  # the last is "B": another key
    "a:b": ['"a:b"', '"a\\u003ab"', '"a\\u003Ab"'],
    'q"': ['"q\\""', '"q\\u0022"'],
    "": ['""'],
}
_NUMBER_TOKENS = [
    "0", "-0", "1", "-1", "0.0", "-0.0", "1.5", "1e2", "1E-2", "1e-999", "1e999", "0.1",
    "9223372036854775807", "9223372036854775808", "18446744073709551616", "-9223372036854775809",
    "9007199254740993", "1e16", "123456789.123456789", "5e-324", "2.5e-324", "0e0",
]  # fmt: skip
_STRINGS = [
    '"x"',
    '":"',
    '"\\":\\""',
    '"a\\u003ab"',
    '"\\ud83d\\ude00"',
    '"\\ud800"',
    '"é"',
    '"e+1"',
    '" 0.0,"',
    '"\\\\"',
]
_SPACE = ["", " ", "\n", "\t", "\r\n", "  "]


def _random_value(rng: random.Random, depth: int) -> str:
    roll = rng.random()
    if depth < 4 and roll < 0.3:
        members = []
        for _ in range(rng.randint(0, 4)):
            key = rng.choice(_KEYS)
            members.append(
                f"{rng.choice(_SPACE)}{rng.choice(_KEY_SPELLINGS[key])}{rng.choice(_SPACE)}:"
                f"{rng.choice(_SPACE)}{_random_value(rng, depth + 1)}"
            )
        return "{" + ",".join(members) + rng.choice(_SPACE) + "}"
    if depth < 4 and roll < 0.45:
        return "[" + ",".join(_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))) + "]"
    if roll < 0.7:
        return rng.choice(_NUMBER_TOKENS)
    if roll < 0.95:
        return rng.choice(_STRINGS)
    return rng.choice(["true", "false", "null"])


def _random_document(rng: random.Random) -> bytes:
    body = _random_value(rng, 0)
    if rng.random() < 0.8:  # mostly objects at the root, as resources are
        body = '{"resourceType": "Basic", "x": ' + body + "}"
    data = body.encode("utf-8", "surrogatepass")
    if rng.random() < 0.3:  # a mutation: a byte removed, added or replaced
        i = rng.randrange(len(data) + 1)
        byte = bytes([rng.choice(b'{}[]:,"\\0e-.+ u\xed\xa0')])
        data = rng.choice(
            [data[:i] + data[i + 1 :], data[:i] + byte + data[i:], data[:i] + byte + data[i + 1 :]]
        )
    return data


@pytest.mark.parametrize("seed", range(4))
def test_random_documents_against_the_exact_reader(seed: int) -> None:
    rng = random.Random(seed)
    seen = {"proven": 0, "plain": 0, "refused": 0}
    for _ in range(2500):
        data = _random_document(rng)
        seen[_check(data)] += 1
    assert all(seen.values()), seen  # every outcome met: the documents are varied enough


def test_orjson_reads_decimals_as_python_does() -> None:
    """Both round a decimal to the nearest double (yyjson and Python's float are correctly
    rounded): compared on random decimals of up to 25 digits, across the exponent range."""
    rng = random.Random(7)
    for _ in range(20000):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 25))).lstrip("0") or "0"
        point = rng.randint(0, len(digits))
        mantissa = (digits[:point] or "0") + "." + (digits[point:] or "0")
        text = f"{mantissa}e{rng.randint(-330, 310)}" if rng.random() < 0.7 else mantissa
        value = loads_plain(b'{"n": ' + text.encode() + b"}")
        if value is UNPROVEN:
            assert float(text) in (float("inf"), float("-inf")), text
            continue
        assert repr(value["n"]) == repr(float(text)), text


# -------------------------------------------------------------------------- the run


def test_two_pass_run_same_outcome_as_exact_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ran_with_python_modules: bool
) -> None:
    """A folder read by the exact reader alone (one pass, every file kept), and with orjson and
    the proof: in one pass, in two (the first pass with orjson and the proof), and with the
    first files waiting: the same issues, resources and verdict; profiles defined in files with
    a duplicate key or an out-of-range number are used (or not) alike."""
    if ran_with_python_modules:
        return  # it patches run's and inputs' functions: run with the Python modules (conftest)
    if not fhircache.is_filled():
        pytest.skip("FHIR package cache not filled")
    from procfhir.validator import inputs as inputs_mod
    from procfhir.validator import run as run_mod

    fixtures = Path(__file__).parent / "fixtures"
    profile = json.loads((fixtures / "definitions" / "StructureDefinition-limits-patient.json").read_text())
    patient = json.loads((fixtures / "invalid" / "profile-value-limits.json").read_text())

    def variant(name: str) -> str:
        return f"http://example.test/StructureDefinition/limits-{name}"

    text = json.dumps(profile, indent=2)
    files = {
        "p-plain.json": text.replace(profile["url"], variant("plain")),
        # a duplicate key: read by the exact reader, its definition still counts (last value)
        "p-dup.json": text.replace(profile["url"], variant("dup")).replace(
            '"status": "draft"', '"status": "active", "status": "draft"'
        ),
        # an out-of-range number: the exact reader refuses the file, so defines nothing
        "p-tiny.json": text.replace(profile["url"], variant("tiny")).replace(
            '"abstract": false', '"abstract": 1e-999'
        ),
        # a Bundle whose non-core url is an extension's only (no definition), a duplicate key too
        "q-bundle.json": json.dumps(
            {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [{"resource": {"resourceType": "Basic", "code": {"text": "x"}, "id": "b"}}],
            }
        ).replace('"id": "b"}', '"id": "b", "extension": [{"url": "lang", "valueCode": "en"}], "id": "c"}'),
        "r-nan.json": '{"resourceType": "Basic", "extension": [{"url": "x", "valueDecimal": NaN}]}',
        "s-escaped.json": text.replace(profile["url"], variant("esc")).replace(
            '"name": "LimitsPatient"', '"name": "Limits\\u003aPatient"'
        ),
    }
    for name in ("plain", "dup", "tiny", "esc", "none"):
        files[f"z-patient-{name}.json"] = json.dumps(patient).replace(profile["url"], variant(name))
    for name, body in files.items():
        (tmp_path / name).write_text(body)

    monkeypatch.setattr(inputs_mod, "loads_proven", lambda data: UNPROVEN)
    one = run_mod.run([str(tmp_path)])  # the exact reader alone
    monkeypatch.undo()
    total = sum(len(body.encode()) for body in files.values())
    for keep in (run_mod.KEEP_BYTES, total // 2, 0):  # all kept; the first files wait; two passes
        monkeypatch.setattr(run_mod, "KEEP_BYTES", keep)
        calls: list[bool] = []  # the first pass's proofs
        taken: list[bool] = []  # orjson's value taken when parsing

        def proven_seen(value: Any, data: bytes, calls: list[bool] = calls) -> bool:
            calls.append(proven(value, data))
            return calls[-1]

        def loads_seen(data: bytes, taken: list[bool] = taken) -> Any:
            value = loads_proven(data)
            taken.append(value is not UNPROVEN)
            return value

        monkeypatch.setattr(run_mod, "proven", proven_seen)
        monkeypatch.setattr(inputs_mod, "loads_proven", loads_seen)
        two = run_mod.run([str(tmp_path)])
        monkeypatch.undo()
        assert sorted(one.issues) == sorted(two.issues) and one.resources == two.resources, keep
        assert one.could_not_run is two.could_not_run is False
        # (every file parsed; in two passes, a definition not proven in the first is parsed in both)
        assert len(taken) >= len(files) and any(taken) and not all(taken), taken
        if keep == 0:
            assert calls and any(calls) and not all(calls)  # the first pass's shortcut: taken, refused
    by_file = {Path(i.source).name for i in one.issues if i.message_id in ("DT_MAX_LENGTH", "DT_MAX_VALUE")}
    assert by_file == {"z-patient-plain.json", "z-patient-dup.json", "z-patient-esc.json"}


@pytest.mark.parametrize(
    "body",
    [
        '{"resourceType": "Basic", "extension": [{"url": "lang", "valueDecimal": 1e-999}]}',
        '{"resourceType": "Basic", "extension": [{"url": "lang", "valueDecimal": NaN}]}',
        '{"resourceType": "Basic", "extension": [{"url": "lang", "valueString": "x"}]}',
    ],
)
@pytest.mark.parametrize("missing", [False, True])
def test_could_not_run_as_with_exact_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str, missing: bool
) -> None:
    """Whether any input could be read is the same when the first pass leaves it to the second
    (``missing``: also a path that does not exist, a fatal issue)."""
    if not fhircache.is_filled():
        pytest.skip("FHIR package cache not filled")
    from procfhir.validator import run as run_mod

    (tmp_path / "a.json").write_text(body)
    paths = [str(tmp_path / "missing.json")] * missing + [str(tmp_path / "a.json")]
    one = run_mod.run(paths)
    monkeypatch.setattr(run_mod, "KEEP_BYTES", 0)
    two = run_mod.run(paths)
    assert (one.could_not_run, one.resources, sorted(one.issues)) == (
        two.could_not_run,
        two.resources,
        sorted(two.issues),
    )


def test_read_bytes_asks_for_the_size_and_keeps_the_limit(tmp_path: Path) -> None:
    """strictio.read_bytes reads a file's size (not its limit) at once; the limit still holds,
    and a file whose size is not known beforehand (0 in /proc) is read whole."""
    from procfhir.strictio import StrictInputError, read_bytes

    f = tmp_path / "f.json"
    for size in (0, 1, 99, 100):
        f.write_bytes(b"x" * size)
        assert read_bytes(f, max_bytes=100) == b"x" * size
    f.write_bytes(b"x" * 101)
    with pytest.raises(StrictInputError, match="larger than 100 bytes"):
        read_bytes(f, max_bytes=100)
    status = Path("/proc/self/status")
    if status.is_file():
        assert status.stat().st_size == 0
        text = read_bytes(status, max_bytes=1 << 20)
        assert b"VmRSS" in text and text.endswith(b"\n")
        with pytest.raises(StrictInputError, match="larger than 10 bytes"):
            read_bytes(status, max_bytes=10)


def test_second_pass_holds_one_input_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When an input is parsed in the second pass, the JSON of the one before is already freed
    (nothing holds it: not the loop, not a generator suspended at its yield)."""
    if not fhircache.is_filled():
        pytest.skip("FHIR package cache not filled")
    import weakref

    from procfhir.validator import run as run_mod

    class Tracked(dict[str, Any]):
        __slots__ = ("__weakref__",)

    for n in range(6):
        body = {"resourceType": "Basic", "id": f"b{n}", "code": {"text": "x" * (n * 100)}}
        (tmp_path / f"b{n}.json").write_text(json.dumps(body))
    monkeypatch.setattr(run_mod, "KEEP_BYTES", 0)
    monkeypatch.setattr(run_mod, "BIG_BYTES", 300)  # some inputs "large" (validated first)
    alive: list[weakref.ref[Tracked]] = []
    seen: list[bool] = []
    real = run_mod.parse_input_owned

    def parse_tracked(box: list[Any]) -> tuple[str, Any, list[Any]]:
        seen.append(any(ref() is not None for ref in alive))
        source, res, issues = real(box)
        res = Tracked(res)
        alive.append(weakref.ref(res))
        return source, res, issues

    monkeypatch.setattr(run_mod, "parse_input_owned", parse_tracked)
    result = run_mod.run([str(tmp_path)])
    assert result.resources == 6 and len(seen) == 6
    assert not any(seen), seen
