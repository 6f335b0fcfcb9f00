"""A result that runs a trigger owed by an old job is stored, not refused."""

from __future__ import annotations

import pytest

from safcm.master.intake import Intake
from safcm.master.jobcontent import JobParts
from safcm.master.jobstore import OWED_JOBS_LOOKBACK, JobRecord, JobStore, Plan


class Said:
    """A PeerLog that keeps what it was asked to say."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def warning(self, fmt: str, *args: object) -> None:
        self.lines.append(fmt % args)

    info = warning


def files_job(store: JobStore, jid: str, trigger: str) -> None:
    parts = JobParts(100.0)
    parts.add(
        "web1",
        {
            "module": "files",
            "dry_run": False,
            "deadline": 100.0,
            "files": [],
            "absent": [],
            "purge": [],
            "secrets": [],
        },
        lambda h: frozenset(),
    )
    plan = Plan(frozenset(["/etc/app"]), frozenset([trigger]))
    store.create(
        JobRecord(jid, 10.0, 100.0, "root", "web1", "files", False, None), parts, {"web1": plan}
    )


@pytest.fixture
def intake(conn) -> Intake:
    intake = Intake.__new__(Intake)  # only what checking a result reads
    intake.jobs = JobStore(conn)
    intake.peer_log = Said()  # type: ignore[assignment]
    return intake


def test_a_trigger_owed_longer_than_the_look_back_is_stored_with_a_warning(intake):
    # The trigger was owed by the first job; the administrator changed its
    # command, and more files jobs than the look-back went to the host
    # before one could run it.
    files_job(intake.jobs, "J0000", "reload v1")
    jids = [f"J{i:04d}" for i in range(1, OWED_JOBS_LOOKBACK + 2)]
    for jid in jids:
        files_job(intake.jobs, jid, "reload v2")
    trigger = {"command": "reload v1", "status": "ok", "exit": 0, "output": "", "duration": 0.1}
    body = {
        "module": "files",
        "apply": {"dry_run": False, "changes": [], "triggers": [trigger]},
    }
    assert intake._result_problem(jids[-1], "web1", body) is None
    assert len(intake.peer_log.lines) == 1
    assert "reports trigger 'reload v1', which none of its last" in intake.peer_log.lines[0]
