"""Text from untrusted peers, made safe to print or log."""

from __future__ import annotations


def escape(text: str) -> str:
    """Make text safe for a terminal or a log line.

    Every non-printable character (C0 and C1 controls, ESC, DEL, newlines,
    bidi overrides, ...) becomes a visible escape, so that a managed host can
    neither move the cursor or retitle the terminal, nor forge extra log
    lines. Tabs are kept. Split multi-line text into lines first if the line
    breaks are meant to show.
    """
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable() or ch == "\t":
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return "".join(out)
