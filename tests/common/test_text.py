"""Escaping of peer-supplied text for terminals and logs."""

from safcm.common.text import escape, escape_content


def test_escape_content_keeps_tabs_and_backslashes():
    assert escape_content("a\tb\\c") == "a\tb\\c"
    assert escape_content("red \x1b[31m here\x9b") == "red \\x1b[31m here\\u009b"
    assert escape_content("\u202egnp.exe") == "\\u202egnp.exe"


def test_escape_is_unambiguous_for_names():
    assert escape("a\tb\\c\n") == "a\\tb\\\\c\\n"
    assert escape("bad\udcffname") == "bad\\xffname"
