"""Text from untrusted peers (and odd file names), made safe to print or log.

A managed host is untrusted: a path, a user name, a diff or a trigger's
output from it must not be able to move the cursor, retitle the terminal,
hide lines with bidi overrides, or forge an extra log line. Two forms for
display:

- escape(): for names and one-line messages. Every non-printable character
  becomes an escape and the backslash itself is doubled, so the result is
  printable and unambiguous (it can be decoded back).
- escape_content(): for one line of file content or command output, shown
  line by line. Non-printable characters are escaped but tabs and
  backslashes stay as they are, so the line still reads like the file.

One more form is not for display but for the wire: escape_name(), for a
file name a minion read from its host. A Linux name is bytes, not always
UTF-8; Python keeps the bytes that are not (surrogateescape), and such a
str cannot be encoded as msgpack. escape_name() writes each of them as
\\xNN and doubles the backslash, and keeps everything else: the result
travels, and still says which bytes the name had (it can be decoded back).
For display, master/render.py escape_reported() escapes it as escape() does
but keeps its backslashes, so that the form shows once.
"""

from __future__ import annotations

# Code points that surrogateescape uses for bytes that were not UTF-8.
_SURROGATE_LOW, _SURROGATE_HIGH = 0xDC80, 0xDCFF
# Every surrogate code point: none is valid alone in UTF-8.
_SURROGATES_FIRST, _SURROGATES_LAST = 0xD800, 0xDFFF
_NAMED_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape(text: str) -> str:
    """`text` with every character that is not printable written as an escape.

    C0 controls and DEL become \\xNN (\\n, \\r, \\t by name); other
    non-printable code points (C1 controls, bidi overrides, ...) \\uNNNN or
    \\UNNNNNNNN; a byte that was not UTF-8 (kept by surrogateescape) \\xNN
    with NN >= 80; the backslash itself \\\\. Plain text is returned as is.
    """
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(_NAMED_ESCAPES.get(ch) or _escape_char(ch) for ch in text)


def escape_name(name: str) -> str:
    """A name read from the host (a file name, a user name), in a form the wire carries.

    The rule: each byte that was not UTF-8 (a lone surrogate U+DC80..U+DCFF,
    as surrogateescape keeps it) becomes \\xNN, NN its value in lower-case
    hex (80..ff); any other lone surrogate \\uNNNN; a backslash \\\\. Every
    other character stays as it is. So the result is valid UTF-8, and
    unambiguous: in it a single backslash always starts an escape, and a
    name with a real "\\xe9" in it (four characters) reads "\\\\xe9".
    A plain name is returned as is.
    """
    if "\\" not in name and (name.isascii() or _is_utf8(name)):
        return name
    return "".join("\\\\" if ch == "\\" else _escape_surrogate(ch) for ch in name)


def _is_utf8(text: str) -> bool:
    """True if `text` can be encoded as UTF-8: it holds no lone surrogate."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _escape_surrogate(ch: str) -> str:
    code = ord(ch)
    if _SURROGATE_LOW <= code <= _SURROGATE_HIGH:
        return f"\\x{code - 0xDC00:02x}"
    if _SURROGATES_FIRST <= code <= _SURROGATES_LAST:
        return f"\\u{code:04x}"
    return ch


def escape_content(line: str) -> str:
    """One line of content for display: non-printables escaped, tabs and
    backslashes kept. Split the text into lines first."""
    if line.isprintable():
        return line
    return "".join(ch if ch == "\t" else _escape_char(ch) for ch in line)


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if _SURROGATE_LOW <= code <= _SURROGATE_HIGH:
        return f"\\x{code - 0xDC00:02x}"
    if ch.isprintable():
        return ch
    if code <= 0x7F:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
