"""Minion ids and jids: grammars and ordering."""

import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from safcm.common.errors import ProtocolError
from safcm.common.ids import (
    JID_LENGTH,
    MASTER_ID,
    check_jid,
    check_minion_id,
    jid_problem,
    jid_time,
    minion_id_problem,
    new_jid,
    peer_id_problem,
)
from tests.common.strategies import fuzz

GOOD_IDS = ["web1", "db-2.example.org", "a", "0", "x_y", "a" * 253, "1.2.3.4"]
BAD_IDS = [
    ("", "cannot be empty"),
    ("Web1", "not valid"),
    ("-web", "not valid"),
    (".hidden", "not valid"),
    ("..", "not valid"),
    (".", "not valid"),
    ("web/1", "not valid"),
    ("web 1", "not valid"),
    ("web\n1", "not valid"),
    ("wéb", "not valid"),
    ("@master", "not valid"),
    ("a" * 254, "at most 253"),
    (b"web1", "must be a string"),
    (None, "must be a string"),
]


@pytest.mark.parametrize("value", GOOD_IDS)
def test_good_minion_ids(value):
    assert minion_id_problem(value) is None
    assert check_minion_id(value) == value


@pytest.mark.parametrize(("value", "reason"), BAD_IDS)
def test_bad_minion_ids_name_the_reason(value, reason):
    assert reason in minion_id_problem(value)
    with pytest.raises(ProtocolError, match=reason):
        check_minion_id(value)


def test_master_id_is_a_peer_but_never_a_minion():
    assert minion_id_problem(MASTER_ID) is not None
    assert peer_id_problem(MASTER_ID) is None
    assert peer_id_problem("web1") is None
    assert peer_id_problem("@web1") is not None


def test_new_jid_has_the_documented_form():
    now = datetime.datetime(2026, 11, 21, 19, 30, 0, 123456, tzinfo=datetime.UTC).timestamp()
    jid = new_jid(now)
    assert jid == "20261121T193000.123456Z"
    assert len(jid) == JID_LENGTH
    assert jid_time(jid) == pytest.approx(now, abs=1e-6)


def test_new_jid_is_strictly_increasing_when_the_clock_stands_still_or_steps_back():
    now = datetime.datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=datetime.UTC).timestamp()
    first = new_jid(now)
    same = new_jid(now, first)
    back = new_jid(now - 3600, same)
    assert first == "20261231T235959.999999Z"
    assert same == "20270101T000000.000000Z"  # one microsecond on, across a year
    assert back == "20270101T000000.000001Z"


@given(st.lists(st.floats(0, 2**34, allow_nan=False), min_size=1, max_size=50))
@fuzz(0.5)
def test_new_jid_sequence_is_unique_sorted_and_valid(clock):
    jids = []
    last = None
    for now in clock:
        last = new_jid(now, last)
        jids.append(last)
    assert jids == sorted(jids)
    assert len(set(jids)) == len(jids)
    for jid in jids:
        assert jid_problem(jid) is None


BAD_JIDS = [
    "",
    "20261121T193000.123456",
    "20261121T193000.12345Z",
    "20261121t193000.123456Z",
    "20261321T193000.123456Z",  # month 13
    "20260230T193000.123456Z",  # 30 February
    "20261121T246000.123456Z",
    "20261121T235960.123456Z",  # second 60
    "00001121T193000.123456Z",  # year 0
    "../../etc/passwd",
    "20261121T193000.123456Z/..",
    "2026112 T193000.123456Z",
    "20261121T193000.123456Z'; DROP TABLE jobs; --",
    "\uff120261121T193000.123456Z",  # a full-width digit 2
]


@pytest.mark.parametrize("value", BAD_JIDS)
def test_bad_jids_are_refused(value):
    assert jid_problem(value) is not None
    with pytest.raises(ProtocolError):
        check_jid(value)


@given(st.text(max_size=30))
@fuzz()
def test_anything_that_passes_the_jid_check_is_path_and_sql_safe(value):
    if jid_problem(value) is None:
        assert set(value) <= set("0123456789TZ.")
        assert value not in (".", "..")
        assert new_jid(jid_time(value) - 1, value) > value


def test_new_jid_refuses_times_it_cannot_write():
    with pytest.raises(ProtocolError):
        new_jid(-1.0)
    with pytest.raises(ProtocolError):
        new_jid(1e12)
    for bad in (float("nan"), float("inf"), "now", None):
        with pytest.raises(ProtocolError, match="cannot be written as a jid"):
            new_jid(bad)
