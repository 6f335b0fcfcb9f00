"""The YAML layer: scalars as written, lines, duplicate keys, tags, files."""

from __future__ import annotations

import pytest

from safcm.common.yamlfile import Problems, YMap, YScalar, YSeq, load_yaml_file, parse_yaml


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
