"""libyaml's parser and PyYAML's read every document alike: the same nodes,
lines and problems (safcm.common.yamlfile uses the first when it can, the
second for errors and where they are known to disagree)."""

from __future__ import annotations

import pathlib

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from safcm.common import yamlfile
from safcm.common.yamlfile import Problems, parse_yaml
from tests.common.strategies import fuzz

pytestmark = pytest.mark.skipif(yamlfile._CLoader is None, reason="PyYAML has no libyaml here")

TESTS = pathlib.Path(__file__).resolve().parents[1]
REPO = TESTS.parent


def parse(text):
    problems = Problems()
    node = parse_yaml(text, "f.yaml", problems)
    return node, [str(p) for p in problems]


def fixtures() -> list[pathlib.Path]:
    """Every YAML file of the tests' repositories and of the shipped examples."""
    paths = [*TESTS.rglob("*.yaml"), *(REPO / "configs").rglob("*.yaml")]
    return sorted(p for p in paths if p.is_file() and not p.is_symlink())


def both_parsers(text: str) -> tuple[tuple, tuple]:
    """parse() of `text` with libyaml's parser and with PyYAML's."""
    with_c = parse(text)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(yamlfile, "_CLoader", None)
        return with_c, parse(text)


@pytest.mark.parametrize("path", fixtures(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_yaml_file_of_the_tests_reads_the_same_with_both_parsers(path):
    text = path.read_bytes().decode("utf-8", errors="replace")
    with_c, with_python = both_parsers(text)
    assert with_c == with_python


# Documents that libyaml reads otherwise than PyYAML, one for each rule of
# yamlfile._C_DIFFERS and _misread_by_c: each goes to PyYAML's parser alone.
KNOWN_DIFFERENCES = [
    "a: b\t\n",  # libyaml takes the tab
    "[a,\n\ufeffb]\n",  # libyaml skips the byte order mark
    "{a:\x85}\n",  # the empty value on line 2 for libyaml
    "{a:\u2028}\n",
    "{a:\u2029}\n",
    "{a:\r}#c\n",
    "[a? b]\n",  # one scalar for libyaml, an error for PyYAML
    "a: {b: [c, {d: e?}]}\n",
    "{a?: b}\n",
    "- |#c\n",  # an empty block scalar for libyaml
    "!@! a\n",  # a tag for libyaml
    "? a",  # the empty value on line 2 for libyaml
    "---",
]


@pytest.mark.parametrize("text", KNOWN_DIFFERENCES)
def test_documents_libyaml_reads_otherwise_are_read_by_pyyaml(text):
    with_c, with_python = both_parsers(text)
    assert with_c == with_python


# Pieces of YAML that libyaml and PyYAML might read differently. A soup of
# them is mostly an error (which must be reported in the same words); a
# document of lines (indentation, a lead, a value) mostly reads, and must
# read the same, line by line.
_WORDS = [
    "a",
    "key",
    "a b",
    "a?b",
    "?a",
    "0644",
    "yes",
    "~",
    "é",
    "\u00a0",
    "-",
    ".",
    "@",
    "`",
    "%",
    "\\",
]
_INDICATORS = ["- ", ": ", ":", "? ", ",", "[", "]", "{", "}", "#c", " # c", "<<: "]
_ANCHORS = ["&x ", "*x", "&y ", "*y"]
_TAGS = ["!!str ", "!t ", "! ", "!", "!@!", "!e!x ", "%TAG !e! tag:e,2000:\n"]
_QUOTES = ["'q'", "'", "''", '"d\\x41"', '"', '"\\\n"']
_BLOCKS = ["|", "|-", ">", ">+", "|2", "|#c", ">-#c"]
_DOCUMENTS = ["---", "--- ", "...", "%YAML 1.1\n"]
_BREAKS = [" ", "  ", "\n", "\n  ", "\n- ", "\r\n", "\r", "\x85", "\u2028", "\t", "\ufeff"]
_PIECES = st.sampled_from(
    _WORDS + _INDICATORS + _ANCHORS + _TAGS + _QUOTES + _BLOCKS + _DOCUMENTS + _BREAKS
)
_LINE = st.tuples(
    st.sampled_from(["", " ", "  ", "   ", "    ", "      "]),
    st.sampled_from(["", "- ", "k: ", "- k: ", "k2: ", "- - ", "? ", ": ", "k:"]),
    st.sampled_from(
        _WORDS
        + _ANCHORS
        + _QUOTES
        + _BLOCKS
        + _DOCUMENTS
        + ["[a, b]", "[a,", "b]", "{a: b}", "{a: b,", "c: d}", "{}", "[]", "a # c", "a#c"]
        + ["'a\n\n b'", '"a\\\nb"', "&y [a]", "<<: *y", ""]
    ),
    st.sampled_from(["\n", "\n", "\r\n", " \n", "\n\n", ""]),
).map("".join)


@fuzz(3)
@given(text=st.lists(_PIECES, max_size=24).map("".join))
def test_any_text_reads_the_same_with_both_parsers(text):
    with_c, with_python = both_parsers(text)
    assert with_c == with_python


@fuzz(3)
@given(text=st.lists(_LINE, min_size=1, max_size=8).map("".join))
def test_any_lines_read_the_same_with_both_parsers(text):
    with_c, with_python = both_parsers(text)
    assert with_c == with_python


_SCALARS = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=8)
_VALUES = st.recursive(
    st.one_of(_SCALARS, st.integers(), st.booleans(), st.none()),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(_SCALARS, inner, max_size=4)
    ),
    max_leaves=20,
)


@fuzz(2)
@given(
    value=_VALUES,
    flow=st.sampled_from([None, True, False]),
    style=st.sampled_from([None, "'", '"', "|", ">"]),
    indent=st.integers(2, 6),
    width=st.sampled_from([8, 20, 80]),
)
def test_dumped_documents_read_the_same_with_both_parsers(value, flow, style, indent, width):
    text = yaml.safe_dump(
        value,
        default_flow_style=flow,
        default_style=style,
        indent=indent,
        width=width,
        allow_unicode=True,
    )
    with_c, with_python = both_parsers(text)
    assert with_c == with_python
