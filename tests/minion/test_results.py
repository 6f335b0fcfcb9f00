"""Result bodies: the right status, and a large result shrinks to fit the wire."""

from __future__ import annotations

from safcm.common import codec
from safcm.common.model import (
    ApplyResult,
    FileChange,
    FileState,
    FileType,
    TriggerRun,
    TriggerStatus,
)
from safcm.common.protocol import SPECS, MsgType
from safcm.common.schema import validate
from safcm.minion import results

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


def check_result(body: dict) -> None:
    """What the master checks of every RESULT: its schema and cross-field rules."""
    spec = SPECS[MsgType.RESULT]
    validate(spec.schema, body, "RESULT")
    spec.check(body, None)


def huge_apply(changes: int, diff: str, outputs: int, output: str) -> ApplyResult:
    return ApplyResult(
        dry_run=False,
        changes=[FileChange(f"/f{i:05d}", False, NEW, NEW, diff) for i in range(changes)],
        triggers=[
            TriggerRun(f"echo {i}", TriggerStatus.OK, 0, output, 0.1) for i in range(outputs)
        ],
    )


def test_sizes_are_measured_in_bytes_so_no_more_is_dropped_than_needed():
    # Each "é" is one character but two bytes on the wire: 40 diffs of about
    # 100 kB each. Counting characters would drop twice as many as needed.
    apply = huge_apply(40, "+" + "é" * 50_000 + "\n", 0, "")
    body = results.files_result(apply, started=1.0, finished=2.0)
    limit = len(codec.pack(body)) - 950_000  # 10 diffs, less their notes
    packed = results.fit(body, limit)
    assert len(packed) <= limit
    shrunk = codec.unpack(packed, max_depth=16)
    dropped = sum(c["diff"] == results.DIFF_DROPPED for c in shrunk["apply"]["changes"])
    assert shrunk["reduced"]["diffs_omitted"] == dropped == 10
    check_result(shrunk)


def test_a_result_over_every_limit_degrades_step_by_step_to_a_summary():
    apply = huge_apply(3000, "+" + "x" * 2000 + "\n", 200, "y" * 5000)
    body = results.files_result(apply, started=1.0, finished=2.0)
    size = len(codec.pack(body))
    # Below what the changes alone need once every diff and output is gone.
    limit = 100_000
    packed = results.fit(body, limit)
    assert len(packed) <= limit
    shrunk = codec.unpack(packed, max_depth=16)
    check_result(shrunk)
    reduced = shrunk["reduced"]
    assert reduced["diffs_omitted"] == 3000 and reduced["outputs_omitted"] == 200
    kept = len(shrunk["apply"]["changes"])
    assert 0 < kept < 3000 and reduced["changes_omitted"] == 3000 - kept
    # Per-file detail goes from the end: what is kept is a prefix in path order.
    assert [c["path"] for c in shrunk["apply"]["changes"]] == [f"/f{i:05d}" for i in range(kept)]
    assert reduced["triggers_omitted"] == 0
    assert reduced["reason"] == f"too large: {size} bytes, the wire allows {limit}"


def test_down_to_the_summary_a_failed_result_stays_failed():
    apply = huge_apply(500, "+" + "x" * 100 + "\n", 500, "y" * 100)
    apply.triggers[-1] = TriggerRun("false", TriggerStatus.FAILED, 1, "boom", 0.1)
    body = results.files_result(apply, started=1.0, finished=2.0)
    assert body["status"] == "failed"
    packed = results.fit(body, 4_000)
    assert len(packed) <= 4_000
    shrunk = codec.unpack(packed, max_depth=16)
    check_result(shrunk)  # the failed trigger was left out; "failed" still holds
    assert shrunk["status"] == "failed"
    assert shrunk["apply"]["changes"] == []
    assert shrunk["reduced"]["changes_omitted"] == 500
    assert shrunk["reduced"]["triggers_omitted"] > 0
