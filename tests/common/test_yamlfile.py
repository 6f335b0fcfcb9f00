"""The YAML layer: scalars as written, lines, duplicate keys, tags, files,
limits; with libyaml's parser and with PyYAML's, which must agree."""

from __future__ import annotations

import pytest

from safcm.common import yamlfile
from safcm.common.yamlfile import (
    MAX_ALIAS_NODES,
    MAX_DEPTH,
    Problems,
    YMap,
    YScalar,
    YSeq,
    load_yaml_file,
    parse_yaml,
)


@pytest.fixture(autouse=True, params=["libyaml", "python"])
def parser(request, monkeypatch):
    """Every test of this module runs with each parser; "python" is what a
    PyYAML built without libyaml uses."""
    if request.param == "python":
        monkeypatch.setattr(yamlfile, "_CLoader", None)
    elif yamlfile._CLoader is None:
        pytest.skip("PyYAML has no libyaml here")
    return request.param


def parse(text):
    problems = Problems()
    node = parse_yaml(text, "f.yaml", problems)
    return node, [str(p) for p in problems]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0644", "0644"),  # not the integer 420
        ("644", "644"),
        ("yes", "yes"),  # not True
        ("no", "no"),  # the Norway problem
        ("true", "true"),
        ("~", "~"),
        ("1e3", "1e3"),
        ("'quoted: yes'", "quoted: yes"),
        ('"tab\\there"', "tab\there"),
        ("2024-01-02", "2024-01-02"),
    ],
)
def test_scalars_stay_as_written(text, value):
    node, problems = parse(f"key: {text}\n")
    assert problems == []
    assert node == YMap([(YScalar("key", 1), YScalar(value, 1))], 1)


def test_lines_are_recorded_for_every_node():
    node, problems = parse("# comment\na:\n  - x\n\n  - y\nb: {c: d}\n")
    assert problems == []
    assert isinstance(node, YMap)
    (ka, va), (kb, vb) = node.items
    assert (ka.line, kb.line) == (2, 6)
    assert isinstance(va, YSeq)
    assert [i.line for i in va.items] == [3, 5]
    assert isinstance(vb, YMap)
    assert vb.items[0][1] == YScalar("d", 6)


def test_duplicate_keys_name_both_lines_at_any_depth():
    node, problems = parse("a:\n  x: 1\n  y: 2\n  x: 3\nb: 1\nb: 2\n")
    assert problems == [
        "f.yaml:4: duplicate key 'x' (first at line 2)",
        "f.yaml:6: duplicate key 'b' (first at line 5)",
    ]
    # The first one is kept; the rest of the file is still read.
    assert [k.text for k, _ in node.items] == ["a", "b"]
    assert node.items[1][1] == YScalar("1", 5)


def test_complex_keys_are_refused():
    _, problems = parse("? [a, b]\n: c\n")
    assert problems == ["f.yaml:1: a key must be a single value, not a list"]


def test_anchors_and_aliases_are_resolved():
    node, problems = parse("a: &x [h1, h2]\nb: *x\n")
    assert problems == []
    assert node.items[1][1] == YSeq([YScalar("h1", 1), YScalar("h2", 1)], 1)


def test_several_documents_are_an_error():
    node, problems = parse("a: 1\n---\nb: 2\n")
    assert node is None
    assert problems == [
        "f.yaml:2: YAML syntax error:"
        " expected a single document in the stream, but found another document"
    ]


def test_empty_documents_are_none():
    assert parse("") == (None, [])
    assert parse("# only a comment\n") == (None, [])


def test_load_yaml_file(tmp_path):
    problems = Problems()
    assert load_yaml_file(str(tmp_path), "missing.yaml", problems) is None
    assert problems == []
    (tmp_path / "bad.yaml").write_bytes(b"a: 1\nb: caf\xe9\n")
    assert load_yaml_file(str(tmp_path), "bad.yaml", problems) is None
    (tmp_path / "dir.yaml").mkdir()
    assert load_yaml_file(str(tmp_path), "dir.yaml", problems) is None
    (tmp_path / "ok.yaml").write_text("- a\n")
    assert load_yaml_file(str(tmp_path), "ok.yaml", problems) == YSeq([YScalar("a", 1)], 1)
    assert [str(p) for p in problems] == [
        "bad.yaml:2: not valid UTF-8 (byte 0xe9)",
        "dir.yaml: must be a regular file, not a directory",
    ]


def test_a_nul_character_is_a_problem_not_an_exception():
    assert parse("a: \x00\n") == (
        None,
        [
            "f.yaml: YAML error: unacceptable character #x0000: special characters"
            ' are not allowed\n  in "<unicode string>", position 3'
        ],
    )


def test_a_lone_surrogate_is_a_problem_not_an_exception():
    # Only a caller's str can hold one (a decoded file cannot); libyaml's
    # loader cannot even encode it, PyYAML's reader names it.
    node, problems = parse("a: \ud800\n")
    assert node is None
    assert problems == [
        "f.yaml: YAML error: unacceptable character #xd800: special characters"
        ' are not allowed\n  in "<unicode string>", position 3'
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        # libyaml takes a tab after a value or a colon; PyYAML does not.
        (
            "a: b\t\n",
            "f.yaml:1: YAML syntax error: found character '\\t' that cannot start any token",
        ),
        (
            "a:\tb\n",
            "f.yaml:1: YAML syntax error: found character '\\t' that cannot start any token",
        ),
    ],
)
def test_tabs_are_read_as_pyyaml_reads_them(text, problem):
    assert parse(text) == (None, [problem])


def test_a_byte_order_mark_is_skipped_only_at_the_start():
    # libyaml skips one at the start of any line.
    node, problems = parse("[a,\n\ufeffb]\n")
    assert problems == []
    assert node == YSeq([YScalar("a", 1), YScalar("\ufeffb", 2)], 1)


def test_syntax_errors_are_pyyaml_s_words_and_lines():
    # libyaml says "mapping values are not allowed in this context".
    assert parse("a: b: c\n") == (
        None,
        ["f.yaml:1: YAML syntax error: mapping values are not allowed here"],
    )
    assert parse("a: 'open\nb: 2\n") == (
        None,
        [
            "f.yaml:3: YAML syntax error: found unexpected end of stream"
            " (while scanning a quoted scalar at line 1)"
        ],
    )


def nested(levels: int) -> str:
    return "[" * levels + "]" * levels


def test_nesting_up_to_the_limit_is_read():
    node, problems = parse(nested(MAX_DEPTH))
    assert problems == []
    for _ in range(MAX_DEPTH - 1):
        (node,) = node.items
    assert node == YSeq([], 1)


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 400, 2000, 100_000])
def test_deeper_nesting_refuses_the_document(levels):
    # 400 levels: deeper than the Python composer can recurse; 2000: deeper
    # than libyaml composes (its own error, then PyYAML's parser decides).
    assert parse("a: [x]\na: 1\nb: " + nested(levels) + "\n") == (
        None,
        [f"f.yaml:3: YAML nested more than {MAX_DEPTH} deep"],
    )


def test_deep_block_nesting_names_the_first_line_too_deep():
    text = "".join("  " * i + "-\n" for i in range(MAX_DEPTH + 5))
    assert parse(text) == (
        None,
        [f"f.yaml:{MAX_DEPTH + 1}: YAML nested more than {MAX_DEPTH} deep"],
    )


def test_nesting_under_a_duplicate_key_counts_too():
    # The duplicate's value is never converted, but it is composed.
    assert parse("a: 1\na: " + nested(MAX_DEPTH) + "\n") == (
        None,
        [f"f.yaml:2: YAML nested more than {MAX_DEPTH} deep"],
    )


def test_the_first_node_too_deep_is_named_where_it_is_written():
    # The anchor sits deep on line 2; an alias of it on line 1's level comes
    # later. The document is refused at line 2 on both parsers.
    text = (
        "- "
        + nested(3)
        + "\n- "
        + "[" * (MAX_DEPTH - 1)
        + "&x [] "
        + "]" * (MAX_DEPTH - 1)
        + "\n- *x\n"
    )
    assert parse(text) == (None, [f"f.yaml:2: YAML nested more than {MAX_DEPTH} deep"])


def test_aliases_nesting_too_deep_refuse_the_document():
    # Each anchor is one level deeper than the one it holds: a shallow file
    # whose values nest as deep as it has lines (the x of line k at depth k + 2).
    lines = ["a0: &a0 [x]"] + [f"a{i}: &a{i} [*a{i - 1}]" for i in range(1, MAX_DEPTH + 1)]
    _, problems = parse("\n".join(lines[: MAX_DEPTH - 2]) + "\n")
    assert problems == []
    assert parse("\n".join(lines) + "\n") == (
        None,
        [f"f.yaml:1: YAML nested more than {MAX_DEPTH} deep"],
    )


def laughs(levels: int) -> str:
    """A "billion laughs" document: each anchor lists ten aliases of the one before."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_aliases_expanding_within_the_limit_are_read():
    node, problems = parse(laughs(4))  # 10 + 100 + 1000 + 10000 scalars
    assert problems == []
    assert len(node.items[3][1].items[9].items[9].items) == 10


def test_billion_laughs_refuse_the_document_at_once():
    # Nine levels expand to 10**9 scalars; unbounded, this takes hours.
    assert parse("a: 1\na: 2\n" + laughs(9)) == (
        None,
        [f"f.yaml:3: YAML aliases expand to more than {MAX_ALIAS_NODES} nodes"],
    )
