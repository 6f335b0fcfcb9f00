"""Result bodies: the right status, and a large result shrinks to fit the wire."""

from __future__ import annotations

from common import codec
from common.model import ApplyResult, FileChange, FileState, FileType, TriggerRun, TriggerStatus
from common.protocol import SPECS, MsgType
from common.schema import validate
from minion import results

NEW = FileState(FileType.FILE, 0o644, 0, 0, "root", "root")


def test_status_follows_the_apply():
    ok = results.files_result(ApplyResult(dry_run=False), started=1.0, finished=2.0)
    assert ok["status"] == "ok"
    failed = ApplyResult(dry_run=False, triggers=[TriggerRun("false", TriggerStatus.FAILED, 1)])
    assert results.files_result(failed, started=1.0, finished=2.0)["status"] == "failed"
    for body in (
        ok,
        results.ping_result("1", started=1.0, finished=1.0),
        results.error_result("files", "lock held", started=1.0, finished=1.0),
    ):
        validate(SPECS[MsgType.RESULT].schema, body, "RESULT")


def test_a_result_too_large_for_the_wire_loses_details_not_changes():
    big = "+" + "x" * 60_000 + "\n"
    apply = ApplyResult(
        dry_run=False,
        changes=[FileChange(f"/f{i}", False, NEW, NEW, big * (i + 1)) for i in range(20)],
        triggers=[TriggerRun("cat", TriggerStatus.OK, 0, "y" * 500_000, 0.1)],
    )
    body = results.files_result(apply, started=1.0, finished=2.0)
    limit = 3_000_000
    assert len(codec.pack(body)) > limit
    packed = results.fit(body, limit)
    assert len(packed) <= limit
    shrunk = codec.unpack(packed, max_depth=16)
    assert len(shrunk["apply"]["changes"]) == 20  # every change is still reported
    dropped = [c for c in shrunk["apply"]["changes"] if c["diff"] == results.DIFF_DROPPED]
    kept = [c for c in shrunk["apply"]["changes"] if c["diff"] != results.DIFF_DROPPED]
    assert dropped and kept
    # The largest diffs went first: diff i holds i + 1 copies, so the dropped
    # ones are the last paths and the kept ones the first.
    assert [c["path"] for c in kept] == [f"/f{i}" for i in range(len(kept))]
    small = results.files_result(ApplyResult(dry_run=False), started=1.0, finished=2.0)
    assert results.fit(small) == codec.pack(small)
