"""Unified diffs of file content and symlink targets for the change report.

Pure: bytes in, text out. The engine shows a diff whenever content or a link
target appears, is replaced or is lost: replacing or removing destroys data
and the administrator must be able to see what was lost, and a created file
shows what was put there.

The output reads like `diff -u` and git: "--- a/etc/app/app.conf" /
"+++ b/etc/app/app.conf" headers ("/dev/null" for a side with no content),
so a saved diff applies with `patch -p1` from the host's root; hunks with
DIFF_CONTEXT lines of context, and a "\\ No newline at end of file" marker
after a last line that lacks its newline. A side that is not text (it holds a
NUL byte or is not valid UTF-8) is shown as one line "<binary content, N
bytes>"; a side larger than DIFF_INPUT_MAX bytes or DIFF_LINES_MAX lines is
shown as one line that says so; and the diff text is cut at DIFF_TEXT_MAX
characters. So one huge or binary file cannot make a huge or slow report.
"""

from __future__ import annotations

import difflib
import hashlib

# Lines of context around each change, as `diff -u` and git use.
DIFF_CONTEXT = 3
# Largest side we diff, in bytes, and in lines. difflib's cost grows faster
# than linearly with the number of lines (many short repeated lines are its
# worst case); 10000 lines of that kind still diff in about 0.2 s here.
DIFF_INPUT_MAX = 256 * 1024
DIFF_LINES_MAX = 10_000
# Longest diff text we report, in characters. A result travels to the master
# and into its job history, so one file must not be able to bloat either.
DIFF_TEXT_MAX = 64 * 1024

NO_NEWLINE = "\\ No newline at end of file\n"
# The header of a side that has no content (nothing there, or a directory),
# as diff and git write it.
NO_SIDE = "/dev/null"
# Hex digits of SHA-256 shown for a secret's content: enough to tell two
# versions apart at a glance. (No hash hides a guessable secret, such as a
# short password, from a brute-force search; keys and generated passwords
# are safe, and those are what secrets.yaml is for.)
SECRET_HASH_HEX = 12


def as_text(data: bytes) -> str | None:
    """`data` as text, or None if it is binary: it has a NUL byte or is not UTF-8."""
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _split(text: str) -> list[str]:
    """Split on "\\n" only (str.splitlines also splits on \\r, \\f and others)."""
    lines = text.split("\n")
    last = lines.pop()
    out = [line + "\n" for line in lines]
    if last:
        out.append(last)  # the last line lacks its newline
    return out


def _side(data: bytes | None, size: int, *, link: bool) -> tuple[list[str], bool]:
    """Lines for one side, and whether they are a one-line placeholder."""
    too_large = [f"<content not diffed, {size} bytes: too large to diff>\n"], True
    if data is None or size > DIFF_INPUT_MAX:
        return too_large
    text = as_text(data)
    if text is None:
        return [f"<binary content, {size} bytes>\n"], True
    if link:
        # A link target is one value, not a text file: show it as one whole
        # line so every symlink diff does not carry "No newline" markers.
        return [text + "\n"], False
    lines = _split(text)
    if len(lines) > DIFF_LINES_MAX:
        return too_large
    return lines, False


def unified_diff(
    path: str,
    old: bytes | None,
    old_size: int,
    new: bytes,
    *,
    old_link: bool = False,
    new_link: bool = False,
    old_missing: bool = False,
    new_missing: bool = False,
) -> str:
    """The unified diff of `path` from `old` to `new`, capped to DIFF_TEXT_MAX characters.

    `old` is None when the old content was not read because it is larger than
    DIFF_INPUT_MAX; `old_size` is its size in bytes either way. `old_link` and
    `new_link` say a side is a symlink target rather than file content.
    `old_missing` (a creation) and `new_missing` (a removal) say a side has
    no content at all: it is empty and its header is /dev/null. Returns ""
    when there is nothing to show (an empty file created or removed).
    """
    if old_missing != new_missing and not (old_link or new_link):
        whole = _whole_side(
            path,
            new if old_missing else old,
            len(new) if old_missing else old_size,
            added=old_missing,
        )
        if whole is not None:
            return whole
    a, a_placeholder = ([], False) if old_missing else _side(old, old_size, link=old_link)
    b, b_placeholder = ([], False) if new_missing else _side(new, len(new), link=new_link)
    if not a and not b:
        return ""
    labels = (NO_SIDE if old_missing else "a" + path, NO_SIDE if new_missing else "b" + path)
    if a_placeholder or b_placeholder:
        # A placeholder stands for the whole side: never match it line by
        # line (two binary files of equal size have equal placeholders).
        return _cap(_whole_hunk(a, b, labels))
    return _cap(_line_diff(a, b, labels))


def _line_diff(a: list[str], b: list[str], labels: tuple[str, str]) -> str:
    """The unified diff of two lists of lines, matched line by line (difflib)."""
    return "".join(_mark_no_newline(difflib.unified_diff(a, b, *labels, n=DIFF_CONTEXT)))


def _whole_side(path: str, data: bytes | None, size: int, *, added: bool) -> str | None:
    """The diff of file content that appears whole (`added`) or goes whole; None
    when that side is a placeholder (not read, too large, binary).

    The same text as _line_diff() against no lines, built with a few string
    operations instead of difflib's matching, which has nothing to match
    here: a create of many small files spent most of its time in it.
    """
    if data is None or size > DIFF_INPUT_MAX:
        return None
    text = as_text(data)
    if text is None:
        return None
    if not text:
        return ""
    complete = text.endswith("\n")
    count = text.count("\n") + (0 if complete else 1)
    if count > DIFF_LINES_MAX:
        return None
    sign = "+" if added else "-"
    body = sign + text.replace("\n", "\n" + sign)
    # The replace left a sign after the last newline, or the last line lacks one.
    body = body[:-1] if complete else body + "\n" + NO_NEWLINE
    if added:
        head = f"--- {NO_SIDE}\n+++ b{path}\n@@ -0,0 +{_range(count)} @@\n"
    else:
        head = f"--- a{path}\n+++ {NO_SIDE}\n@@ -{_range(count)} +0,0 @@\n"
    return _cap(head + body)


def secret_summary(
    old: bytes | None, old_size: int, new: bytes, *, old_missing: bool, new_missing: bool
) -> str:
    """The one line that stands for the diff of a secret: short hashes, never content.

    Said on one line so that neither the CLI, nor --json, nor the job history
    ever holds a byte of the content itself.
    """
    before = "nothing" if old_missing else _fingerprint(old, old_size)
    after = "nothing" if new_missing else _fingerprint(new, len(new))
    return f"secret content not shown: {before} -> {after}\n"


def _fingerprint(data: bytes | None, size: int) -> str:
    if data is None:
        return f"{size} bytes (too large to hash)"
    return f"sha256:{hashlib.sha256(data).hexdigest()[:SECRET_HASH_HEX]} ({size} bytes)"


def _whole_hunk(a: list[str], b: list[str], labels: tuple[str, str]) -> str:
    """A diff that removes every line of `a` and adds every line of `b`."""
    parts = [f"--- {labels[0]}\n", f"+++ {labels[1]}\n"]
    parts.append(f"@@ -{_range(len(a))} +{_range(len(b))} @@\n")
    parts.extend(_mark_no_newline("-" + line for line in a))
    parts.extend(_mark_no_newline("+" + line for line in b))
    return "".join(parts)


def _range(count: int) -> str:
    """The "start,count" of a hunk that covers a whole side (diff -u's spelling)."""
    if count == 0:
        return "0,0"
    if count == 1:
        return "1"
    return f"1,{count}"


def _mark_no_newline(lines):
    """Yield the diff's lines, adding the marker after a line without newline."""
    for line in lines:
        if line.endswith("\n"):
            yield line
        else:
            yield line + "\n"
            yield NO_NEWLINE


def _cap(text: str) -> str:
    if len(text) <= DIFF_TEXT_MAX:
        return text
    # Whole lines only; the "--- " header guarantees a line end to cut at.
    cut = text.rfind("\n", 0, DIFF_TEXT_MAX) + 1
    return text[:cut] + f"[diff truncated: {len(text) - cut} of {len(text)} characters not shown]\n"
