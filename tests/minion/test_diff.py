"""Diffs for the change report: format, binary content, caps, and a round-trip property."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safcm.minion import diff
from safcm.minion.diff import NO_NEWLINE, unified_diff

CASES = [
    ("one changed line", b"a\nb\nc\n", b"a\nB\nc\n", "@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n"),
    ("appended line", b"a\n", b"a\nb\n", "@@ -1 +1,2 @@\n a\n+b\n"),
    ("from empty", b"", b"x\n", "@@ -0,0 +1 @@\n+x\n"),
    ("to empty", b"x\n", b"", "@@ -1 +0,0 @@\n-x\n"),
    ("newline added", b"x", b"x\n", "@@ -1 +1 @@\n-x\n" + NO_NEWLINE + "+x\n"),
    ("newline removed", b"x\n", b"x", "@@ -1 +1 @@\n-x\n+x\n" + NO_NEWLINE),
    (
        "both without newline",
        b"a\nb",
        b"a\nc",
        "@@ -1,2 +1,2 @@\n a\n-b\n" + NO_NEWLINE + "+c\n" + NO_NEWLINE,
    ),
    ("carriage return kept", b"a\r\n", b"b\r\n", "@@ -1 +1 @@\n-a\r\n+b\r\n"),
    ("form feed is no line break", b"a\x0cb\n", b"a\x0cc\n", "@@ -1 +1 @@\n-a\x0cb\n+a\x0cc\n"),
    ("binary to text", b"\0\1", b"t\n", "@@ -1 +1 @@\n-<binary content, 2 bytes>\n+t\n"),
    ("text to binary", b"t\n", b"\xc3\x28", "@@ -1 +1 @@\n-t\n+<binary content, 2 bytes>\n"),
    (
        "equal-size binaries still differ",
        b"\0a",
        b"\0b",
        "@@ -1 +1 @@\n-<binary content, 2 bytes>\n+<binary content, 2 bytes>\n",
    ),
    (
        "several text lines to binary",
        b"1\n2\n3",
        b"\0",
        "@@ -1,3 +1 @@\n-1\n-2\n-3\n" + NO_NEWLINE + "+<binary content, 1 bytes>\n",
    ),
]


@pytest.mark.parametrize(("old", "new", "body"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_diff(old, new, body):
    assert unified_diff("/f", old, len(old), new) == "--- a/f\n+++ b/f\n" + body


def test_link_targets_are_whole_lines():
    text = unified_diff("/f", b"old", 3, b"new", old_link=True, new_link=True)
    assert text == "--- a/f\n+++ b/f\n@@ -1 +1 @@\n-old\n+new\n"


def test_unread_or_large_sides_are_not_diffed(monkeypatch):
    monkeypatch.setattr(diff, "DIFF_INPUT_MAX", 10)
    monkeypatch.setattr(diff, "DIFF_LINES_MAX", 3)
    assert unified_diff("/f", None, 99, b"x\n").splitlines()[3] == (
        "-<content not diffed, 99 bytes: too large to diff>"
    )
    assert unified_diff("/f", b"a\n", 2, b"0123456789A").splitlines()[4] == (
        "+<content not diffed, 11 bytes: too large to diff>"
    )
    assert unified_diff("/f", b"a\n", 2, b"1\n2\n3\n4\n").splitlines()[4] == (
        "+<content not diffed, 8 bytes: too large to diff>"
    )


def test_diff_text_is_capped_on_a_line_boundary(monkeypatch):
    monkeypatch.setattr(diff, "DIFF_TEXT_MAX", 100)
    old = b"".join(b"old line %d\n" % i for i in range(50))
    new = b"".join(b"new line %d\n" % i for i in range(50))
    text = unified_diff("/f", old, len(old), new)
    shown, note = text.rsplit("\n[", 1)
    assert len(shown) < 100
    # 36 characters of headers, then 12 per line: five whole lines fit in 100
    assert shown.endswith("\n-old line 4")
    assert re.fullmatch(r"diff truncated: \d+ of \d+ characters not shown\]\n", note)


def test_diff_text_cap_drops_a_long_line_whole(monkeypatch):
    monkeypatch.setattr(diff, "DIFF_TEXT_MAX", 50)
    text = unified_diff("/f", b"a\n", 2, b"b" * 500 + b"\n")
    assert text == (
        "--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n[diff truncated: 502 of 533 characters not shown]\n"
    )


def apply_patch(old: str, patch: str) -> str:
    """Apply a unified diff produced by unified_diff to `old`; a test oracle."""
    lines = old.split("\n")
    ends = [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
    out: list[str] = []
    pos = 0
    body = patch.split("\n")[2:]
    i = 0
    while i < len(body) and body[i]:
        m = re.fullmatch(r"@@ -(\d+)(?:,(\d+))? \+\d+(?:,\d+)? @@", body[i])
        assert m, body[i]
        start, count = int(m[1]), int(m[2] or 1)
        copy_to = start - 1 if count else start
        out.extend(ends[pos:copy_to])
        pos = copy_to
        i += 1
        while i < len(body) and body[i][:1] in (" ", "-", "+"):
            text = body[i][1:]
            no_nl = i + 1 < len(body) and body[i + 1] == NO_NEWLINE.rstrip("\n")
            full = text if no_nl else text + "\n"
            if body[i][0] in " -":
                assert ends[pos] == full
                pos += 1
            if body[i][0] in " +":
                out.append(full)
            i += 2 if no_nl else 1
    out.extend(ends[pos:])
    return "".join(out)


lines = st.lists(st.sampled_from(["a", "b", "c", "", "long line", "x y"]), max_size=30)


@given(lines, lines, st.booleans(), st.booleans())
@settings(max_examples=400)
def test_property_patch_round_trip(a, b, a_nl, b_nl):
    old = "\n".join(a) + ("\n" if a and a_nl else "")
    new = "\n".join(b) + ("\n" if b and b_nl else "")
    text = unified_diff("/f", old.encode(), len(old.encode()), new.encode())
    if old == new:
        assert text == ""
    else:
        assert text.startswith("--- a/f\n+++ b/f\n@@ ")
        assert apply_patch(old, text) == new


texts = st.text(st.sampled_from(["a", "b", " ", "\n", "\r", "\x0c", "é", "\t"]), max_size=60)


@given(texts)
@settings(max_examples=400)
def test_property_whole_side_is_the_line_diff_against_nothing(text):
    # A created or removed file's diff is built without difflib; it must be
    # the very text difflib gives for its lines against none.
    data = text.encode()
    lines = diff._split(text)
    created = unified_diff("/f", None, 0, data, old_missing=True)
    removed = unified_diff("/f", data, len(data), b"", new_missing=True)
    if not lines:
        assert created == removed == ""
    else:
        assert created == diff._line_diff([], lines, ("/dev/null", "b/f"))
        assert removed == diff._line_diff(lines, [], ("a/f", "/dev/null"))


def test_whole_side_placeholders_and_cap(monkeypatch):
    monkeypatch.setattr(diff, "DIFF_LINES_MAX", 3)
    assert unified_diff("/f", None, 0, b"1\n2\n3\n4\n", old_missing=True).splitlines()[3] == (
        "+<content not diffed, 8 bytes: too large to diff>"
    )
    assert unified_diff("/f", b"\0", 1, b"", new_missing=True).splitlines()[3] == (
        "-<binary content, 1 bytes>"
    )
    monkeypatch.setattr(diff, "DIFF_TEXT_MAX", 30)
    text = unified_diff("/f", None, 0, b"x\n" * 3, old_missing=True)
    assert text == "--- /dev/null\n+++ b/f\n[diff truncated: 25 of 47 characters not shown]\n"
