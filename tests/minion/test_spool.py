"""The result spool: whole files or none, kept until removed, crash leftovers cleaned."""

import os

from minion.spool import Spool


def test_put_get_remove_and_reopen(tmp_path):
    d = str(tmp_path / "spool")
    spool = Spool(d)
    spool.put("20260101T000000.000002Z", b"two")
    spool.put("20260101T000000.000001Z", b"one")
    assert spool.jids() == ["20260101T000000.000001Z", "20260101T000000.000002Z"]
    assert os.stat(d).st_mode & 0o777 == 0o700
    assert os.stat(os.path.join(d, "20260101T000000.000001Z.result")).st_mode & 0o777 == 0o600
    spool.close()

    spool = Spool(d)  # what a restarted minion finds
    assert spool.get("20260101T000000.000002Z") == b"two"
    assert spool.remove("20260101T000000.000001Z")
    assert not spool.remove("20260101T000000.000001Z")
    assert spool.get("20260101T000000.000001Z") is None
    assert spool.jids() == ["20260101T000000.000002Z"]
    spool.close()


def test_leftover_temporaries_are_removed(tmp_path):
    d = tmp_path / "spool"
    d.mkdir()
    (d / ".tmp-20260101T000000.000001Z").write_bytes(b"half")
    spool = Spool(str(d))
    assert spool.jids() == []
    assert os.listdir(d) == []
    spool.close()
