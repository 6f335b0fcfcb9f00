"""run --json's results in a temporary file (master/resultspool.py): each
comes back as it went in, the last of a host wins, and the file is unlinked
and closed."""

from __future__ import annotations

import math
import os
import tempfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

from safcm.common.errors import ScratchFileError
from safcm.master.outcomes import outcome
from safcm.master.resultspool import ResultSpool
from tests.common.strategies import fuzz, minion_ids, result_bodies

# What a control reply's body can hold, as common/codec.py decodes it.
VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)


def same(a, b) -> bool:
    """Equal and of the same types all the way down (1 == 1.0 == True in Python)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return a == b


@fuzz(0.25)
@given(
    added=st.lists(
        st.tuples(
            minion_ids,
            # no response, a result, or any value the wire can carry (a failed outcome)
            st.none()
            | result_bodies()
            | st.fixed_dictionaries({"status": st.just("error"), "x": VALUES}),
        ),
        max_size=8,
    ),
)
def test_each_result_comes_back_as_it_went_in_the_last_of_a_host_wins(added):
    last = {}
    with ResultSpool() as spool:
        for host, result in added:
            spool.add(host, result)
            last[host] = result
        assert len(spool) == len(last) and set(spool) == set(last)
        for host in sorted(last, reverse=True):  # read back in another order
            assert host in spool
            assert same(spool[host], last[host])
        assert spool.statuses() == {host: outcome(r) for host, r in last.items()}
        assert "nosuch" not in spool
        with pytest.raises(KeyError):
            spool["nosuch"]


def test_the_file_has_no_name_and_is_closed_on_every_way_out(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with ResultSpool() as spool:
        spool.add("web1", None)
        assert os.listdir(tmp_path) == []  # unlinked: it goes with the process
    assert spool.file.closed
    with pytest.raises(RuntimeError), ResultSpool() as failing:
        raise RuntimeError("a run cut short")
    assert failing.file.closed


def test_no_temporary_directory_is_a_scratch_file_error(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    with pytest.raises(ScratchFileError, match="cannot make a temporary file"):
        ResultSpool()
