"""The spool: whole files or none, kept until removed, crash leftovers cleaned."""

import os

import pytest

from safcm.common import atomicfile
from safcm.common.errors import ProtocolError
from safcm.minion.spool import Kind, Spool

J1, J2 = "20260101T000000.000001Z", "20260101T000000.000002Z"


def test_put_get_remove_and_reopen(tmp_path):
    d = str(tmp_path / "spool")
    spool = Spool(d)
    spool.put(Kind.RESULT, J2, b"two")
    spool.put(Kind.RESULT, J1, b"one")
    spool.put(Kind.JOB, J2, b"job")
    assert spool.jids(Kind.RESULT) == [J1, J2]
    assert spool.jids(Kind.JOB) == [J2]
    assert os.stat(d).st_mode & 0o777 == 0o700
    assert os.stat(os.path.join(d, J1 + ".result")).st_mode & 0o777 == 0o600
    spool.close()

    spool = Spool(d)  # what a restarted minion finds
    assert spool.get(Kind.RESULT, J2) == b"two"
    assert spool.get(Kind.JOB, J2) == b"job"
    assert spool.remove(Kind.RESULT, J1)
    assert not spool.remove(Kind.RESULT, J1)
    assert spool.get(Kind.RESULT, J1) is None
    assert spool.jids(Kind.RESULT) == [J2]
    spool.close()


def test_leftover_temporaries_are_removed(tmp_path):
    d = tmp_path / "spool"
    d.mkdir()
    (d / f"{atomicfile.TEMP_PREFIX}0123456789abcdef-{J1}.result").write_bytes(b"half")
    spool = Spool(str(d))
    assert spool.jids(Kind.RESULT) == []
    assert os.listdir(d) == []
    spool.close()


@pytest.mark.parametrize("jid", ["../../etc/passwd", "x/y", ""])
def test_names_are_jids_only(tmp_path, jid):
    spool = Spool(str(tmp_path))
    with pytest.raises(ProtocolError):
        spool.put(Kind.RESULT, jid, b"x")
    spool.close()
