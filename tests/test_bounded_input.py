"""The bounded reader every JSON input goes through, and the one check of phrases and output ids."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from globallocal.data.bounded import (
    MAX_DEPTH,
    NUMBER,
    JsonError,
    check_shape,
    iter_json_lines,
    json_text,
    parse_json,
    read_json,
    read_regular,
)
from globallocal.data.phrases import MAX_ID_BYTES, MAX_PHRASE_CHARS, check_output_id, clean_phrase
from globallocal.errors import InputError


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("[" * 100_000 + "]" * 100_000, f"nests containers more than {MAX_DEPTH} levels deep"),
        ('{"a": ' + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1) + "}", r"more than 32 levels deep at a\[0\]"),
        ('{"size": [1' + "0" * 400 + ", 3]}", r"an integer beyond 64 bits at size\[0\]"),
        ('{"id": 1' + "0" * 5000 + "}", "an integer of thousands of digits"),
        ('{"height": Infinity}', r"a number that is not finite \(inf\) at height"),
        ('[{"score": NaN}]', r"a number that is not finite \(nan\) at \[0\].score"),
        ('{"x": {"y": [1, 1e400]}}', r"a number that is not finite \(inf\) at x.y\[1\]"),
        ('{"phrase": "the \\ud800 man"}', "a string with a lone UTF-16 surrogate .* at phrase"),
        ('[{"counts": "\\udc00x"}]', r"lone UTF-16 surrogate .* at \[0\].counts"),
        ('{"\\ud800": 1}', "a key with a lone UTF-16 surrogate"),
        ('{"a": 1', "is not valid JSON .Expecting ',' delimiter at line 1 column 8"),
    ],
)
def test_json_outside_the_bounds_is_one_line_naming_the_key(text, pattern):
    with pytest.raises(JsonError, match=rf"^masks.json .*{pattern}") as refused:
        parse_json(text, "masks.json")
    assert "\n" not in str(refused.value)


def test_json_inside_the_bounds_reads_as_json_does():
    text = '{"p": "a \\ud83d\\ude00 \\u200b", "n": [-9223372036854775808, 9223372036854775807, 1.5e300], "d": '
    text += "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "}"
    import json

    assert parse_json(text, "f") == json.loads(text)
    assert parse_json(b"\xef\xbb\xbf[1]", "f") == [1]  # a BOM, as Windows editors write
    with pytest.raises(JsonError, match="f is not UTF-8 text"):
        parse_json(b'["\xff"]', "f")


def test_only_regular_files_are_read_and_a_fifo_does_not_block(tmp_path, no_hang):
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match=f"config {fifo} is a FIFO; give a regular file"):
        read_json(fifo, what="config")
    with pytest.raises(InputError, match="is a folder"):
        read_json(tmp_path, what="config")
    with pytest.raises(InputError, match="is a FIFO"):
        list(iter_json_lines(fifo, what="manifest"))


def test_a_file_is_bounded_before_it_is_read(tmp_path, monkeypatch):
    sparse = tmp_path / "huge.json"
    with open(sparse, "wb") as handle:
        handle.truncate(7 << 30)  # 7 GiB that take no disk (and must not be read)
    monkeypatch.setattr(os, "read", lambda *a: pytest.fail("read"))
    with pytest.raises(InputError, match=r"manifest .*huge.json is 7 GiB, more than the 1 GiB allowed"):
        read_json(sparse, what="manifest")
    with pytest.raises(InputError, match=r"is 7 GiB, more than the 1 KiB allowed; raise it with X"):
        read_regular(sparse, 1024, what="photo", hint="; raise it with X")


# A process whose address space cannot hold the bound, only what it reads: before the fix, read(bound + 1) of a
# small file allocated the whole bound (201 MB per photo), and serve answered every upload with MemoryError.
_BOUNDED_PROCESS = """
import resource, sys
from globallocal.data.bounded import MAX_JSON_BYTES, read_regular
from globallocal.data.images import load_image
size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (size + (120 << 20), resource.RLIM_INFINITY))
assert read_regular(sys.argv[1], MAX_JSON_BYTES) == b'{"a": 1}'
assert load_image(sys.argv[2]).size == (40, 30)
print("read")
"""


def test_a_bounded_read_allocates_what_the_file_holds_not_its_bound(tmp_path):
    from PIL import Image

    small = tmp_path / "small.json"
    small.write_bytes(b'{"a": 1}')
    photo = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(photo)
    done = subprocess.run([sys.executable, "-c", _BOUNDED_PROCESS, str(small), str(photo)], capture_output=True,
                          text=True, timeout=60, cwd=Path(__file__).parents[1])
    assert done.returncode == 0 and done.stdout == "read\n", done.stderr[-2000:]


def test_json_lines_are_read_one_bounded_line_at_a_time(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"a": 1}\n\n' + b'{"b": "' + b"x" * 5000 + b'"}\n[' + b"[" * 50 + b"\n" + b'{"c": 3}')
    lines = list(iter_json_lines(path, what="manifest", max_line_bytes=1000))
    assert [number for number, _ in lines] == [1, 3, 4, 5]
    assert lines[0][1] == {"a": 1} and lines[3][1] == {"c": 3}
    assert str(lines[1][1]) == "manifest m.jsonl line 3 is longer than 1000 bytes"
    assert str(lines[2][1]).startswith("manifest m.jsonl line 4 is not valid JSON")


REPORT_SHAPE = {"config": {"dataset": str, "split_by?": str}, "metrics": {"oIoU": NUMBER, "P": [NUMBER]}}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "r.json: the top level must be an object, got null; rerun"),
        ({"config": {"dataset": "refcoco"}}, "r.json: metrics is missing; rerun"),
        ({"config": {"dataset": 3}, "metrics": {}}, 'r.json: config.dataset must be a string, got 3; rerun'),
        ({"config": {"dataset": "a", "split_by": None}, "metrics": {}}, "config.split_by must be a string, got null"),
        ({"config": {"dataset": "a"}, "metrics": {"oIoU": "0.5", "P": []}}, 'metrics.oIoU must be a number, got "0.5"'),
        ({"config": {"dataset": "a"}, "metrics": {"oIoU": True, "P": []}}, "metrics.oIoU must be a number, got true"),
        ({"config": {"dataset": "a"}, "metrics": {"oIoU": 1, "P": [0.5, "x"]}}, r'metrics.P\[1\] must be a number'),
    ],
)
def test_data_read_back_is_checked_against_its_shape(value, message):
    with pytest.raises(InputError, match=message):
        check_shape(value, REPORT_SHAPE, "r.json", "; rerun")


def test_a_good_shape_passes():
    check_shape({"config": {"dataset": "a", "extra": 1}, "metrics": {"oIoU": 0.5, "P": [1, 0.5]}}, REPORT_SHAPE, "r")


# ---- phrases and ids ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("phrase", ["", "   ", "\u200b\u200b", "\u200d\ufeff \u2060", "\n\t"])
def test_invisible_phrases_are_empty(phrase):
    with pytest.raises(InputError, match="the phrase is empty"):
        clean_phrase(phrase)


def test_phrases_that_are_not_unicode_text_are_refused():
    with pytest.raises(InputError, match="is not valid Unicode text"):
        clean_phrase("the \udce9 man")  # how Python hands over a Latin-1 byte in argv
    with pytest.raises(InputError, match="a phrase must be a string, got int"):
        clean_phrase(3)


def test_long_phrases_are_cut_before_parsing_with_a_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert clean_phrase("the man on the right") == "the man on the right"
        assert clean_phrase("l'homme \u200b à droite") == "l'homme \u200b à droite"  # kept as typed
        assert not caught
        cut = clean_phrase("the chair " * 200_001)
    assert cut == ("the chair " * 200_001)[:MAX_PHRASE_CHARS]
    assert len(caught) == 1 and f"phrase of 2000010 characters was cut to its first {MAX_PHRASE_CHARS}" in str(
        caught[0].message
    )


@pytest.mark.parametrize(
    ("value", "pattern"),
    [
        ("a\0b", "holds a control character"),
        ("a\nb", "holds a control character"),
        ("a\udcffb", "not valid Unicode"),
        ("x" * 300, f"longer than {MAX_ID_BYTES} bytes"),
        ("é" * 101, f"longer than {MAX_ID_BYTES} bytes"),
        ("\u200b", "cannot name a mask file"),
        ("../up", "cannot name a mask file"),
        (".hidden", "cannot name a mask file"),
        (1.5, "id must be a string or an integer"),
    ],
)
def test_output_ids_that_cannot_name_a_file_are_refused(value, pattern):
    with pytest.raises(ValueError, match=pattern):
        check_output_id(value)


def test_good_ids_pass():
    assert check_output_id(7) == "7"
    assert check_output_id("photo-1_les_hommes") == "photo-1_les_hommes"
    assert check_output_id("x" * MAX_ID_BYTES) == "x" * MAX_ID_BYTES


def test_what_the_tool_writes_it_can_read_back():
    value = {"score": float("nan"), "scores": [1.5, float("inf"), -float("inf")], "nested": ({"x": float("nan")},)}
    text = json_text(value, indent=1)
    assert parse_json(text, "f") == {"score": None, "scores": [1.5, None, None], "nested": [{"x": None}]}
    assert parse_json('{"oIoU": NaN}', "f", nan_as_null=True) == {"oIoU": None}
    with pytest.raises(JsonError, match=r"not finite \(inf\) at oIoU"):
        parse_json('{"oIoU": Infinity}', "f", nan_as_null=True)
