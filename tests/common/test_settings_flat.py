"""The fast reader of flat settings files (common/settings.py _flat_entries):
whatever it accepts, the YAML parser reads the same; everything else it
declines, and the YAML parser reports it."""

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safcm.common import settings as s
from safcm.common.errors import ConfigError
from safcm.master import settings as master_settings

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs")


def yaml_entries(text: str):
    return s._yaml_entries(text, "master.yaml")


@pytest.mark.parametrize("name", ["master.yaml", "minion.yaml"])
def test_the_shipped_settings_files_are_flat(name):
    with open(os.path.join(CONFIGS, name), encoding="utf-8") as f:
        text = f.read()
    entries = s._flat_entries(text)
    assert entries is not None and entries == yaml_entries(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "# only a comment\n\n   # and an indented one\n",
        "interface: 127.0.0.1\npublish_port: 5505  # a comment\n",
        "state_dir: /srv/state/\njob_timeout: 2m\nlog_level: DEBUG\n",
        "interface: fe80::1\nkey_port:\nadmin_group: null\n",
        "result_quota: 256M\nkeep_jobs: 90d   \n",
    ],
)
def test_accepted_texts_read_as_yaml_reads_them(text):
    entries = s._flat_entries(text)
    assert entries is not None
    assert entries == yaml_entries(text)


@pytest.mark.parametrize(
    "text",
    [
        "interface: '127.0.0.1'\n",  # quoted
        'state_dir: "/srv"\n',
        "publish_port: 1\npublish_port: 2\n",  # duplicate: YAML names both lines
        "state_dir:\n  /srv\n",  # value on the next line
        "  interface: 127.0.0.1\n",  # indented
        "interface:\t127.0.0.1\n",  # a tab
        "log_level: a: b\n",  # a nested mapping
        "log_level: info#x\n",  # '#' that YAML keeps in the value
        "log_level: ::\n",  # starts with an indicator
        "log_level: [info]\n",
        "log_level: *alias\n",
        "log_level: !!str info\n",
        "log_level: ends:\n",
        "---\nlog_level: info\n",
        "%YAML 1.1\n---\nlog_level: info\n",
        "Interface: 127.0.0.1\n",  # not a settings key's spelling
        "\ufeffinterface: 127.0.0.1\n",  # a byte order mark
        "log_level: caf\u00e9\n",
        "interface: 127.0.0.1\r\n",
        "- a list\n",
    ],
)
def test_anything_else_is_left_to_the_yaml_parser(text):
    assert s._flat_entries(text) is None


def test_a_duplicate_key_is_still_reported_with_both_lines():
    with pytest.raises(ConfigError) as e:
        master_settings.parse("publish_port: 1\npublish_port: 2\n")
    assert [(p.line, p.message) for p in e.value.problems] == [
        (2, "duplicate key 'publish_port' (first at line 1)")
    ]


def test_bad_values_are_reported_as_before():
    text = "publish_port: 0\nlog_level: loud\nnope: 1\n"
    assert s._flat_entries(text) is not None
    with pytest.raises(ConfigError) as e:
        master_settings.parse(text)
    assert [(p.line, p.message.split(":")[0]) for p in e.value.problems] == [
        (1, "publish_port"),
        (2, "log_level"),
        (3, "nope"),
    ]


# Lines made of the pieces that matter to both readers: keys, separators,
# values with and without indicators and comment marks, indentation.
_piece = st.sampled_from(
    [
        "key",
        "log_level",
        "a_b",
        ":",
        ": ",
        " ",
        "  ",
        "\t",
        "#",
        " #c",
        "-",
        "/srv/x",
        "1.2.3.4",
        "fe80::1",
        "5m",
        "a:b",
        "'q'",
        '"q"',
        "[",
        "{",
        "*",
        "&",
        "!",
        "|",
        ">",
        "%",
        "@",
        "`",
        "?",
        "~",
        "null",
        "true",
        "0644",
        ".",
        "...",
        "---",
        "é",
        ",",
    ]
)
# Mostly lines shaped like a setting (a key, a colon, spaces, a value of
# pieces, perhaps a comment), so that many texts get past the fast reader.
_setting = st.tuples(
    st.sampled_from(["key", "log_level", "a_b", "Key", " key", ""]),
    st.sampled_from([":", ": ", ":  ", " :", ":\t"]),
    st.lists(_piece, max_size=3).map("".join),
    st.sampled_from(["", " ", " # comment", "#c", "  #"]),
).map("".join)
_line = st.one_of(_setting, _setting, st.lists(_piece, max_size=6).map("".join))


@settings(max_examples=1500, deadline=None)
@given(st.lists(_line, max_size=6).map("\n".join))
def test_whatever_the_fast_reader_accepts_yaml_reads_the_same(text):
    entries = s._flat_entries(text)
    if entries is None:
        return
    try:
        expected = yaml_entries(text)
    except ConfigError as e:
        pytest.fail(f"the fast reader accepted {text!r}, YAML refuses it: {e.problems}")
    assert entries == expected
