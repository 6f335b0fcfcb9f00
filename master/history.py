"""History: the JOBS control request (jobs list, jobs show), read from the job store."""

from __future__ import annotations

from typing import Any

from safcm.common.errors import UsageError
from safcm.common.protocol import NO_RESPONSE, Message, MsgType
from safcm.master.control import ControlConnection
from safcm.master.jobstore import HostState, JobRecord, JobStore


class History:
    def __init__(self, jobs: JobStore) -> None:
        self.jobs = jobs

    def on_jobs(self, conn: ControlConnection, msg: Message) -> None:
        body = msg.body
        if body["action"] == "list":
            rows = self.jobs.list_jobs(
                host=body["host"],
                target=body["target"],
                limit=body["limit"],
                **{k: body.get(k) for k in ("since", "until", "module", "status", "user")},
            )
            conn.send(
                MsgType.JOBS_REPLY,
                {
                    "jobs": [
                        {
                            **_job_dict(s.job),
                            "hosts": s.hosts,
                            "changed": s.changed,
                            "ok": s.ok,
                            "failed": s.failed,
                            "no_response": s.no_response,
                            "pending": s.pending,
                        }
                        for s in rows
                    ]
                },
            )
        else:
            job = self.jobs.get_job(body["jid"])
            if job is None:
                raise UsageError(f"no job {body['jid']} in the history")
            hosts = self.jobs.get_hosts(job.jid, body["host"])
            if body["host"] is not None and not hosts:
                raise UsageError(f"job {job.jid} did not go to {body['host']}")
            conn.send(
                MsgType.JOB_REPLY,
                {
                    "job": _job_dict(job),
                    "hosts": [
                        {
                            "host": h.host,
                            "state": str(h.state),
                            "status": _stored_status(h.state, h.result),
                            "received": h.received,
                            "returned": h.returned,
                            "late": h.late,
                            "result": h.result,
                        }
                        for h in hosts
                    ],
                },
            )
        conn.finish()


def _stored_status(state: HostState, result: dict[str, Any] | None) -> str:
    if result is not None:
        return result["status"]
    return NO_RESPONSE if state is HostState.NO_RESPONSE else "pending"


def _job_dict(job: JobRecord) -> dict[str, Any]:
    return {
        "jid": job.jid,
        "submitted": job.submitted,
        "deadline": job.deadline,
        "user": job.user,
        "target": job.target,
        "module": job.module,
        "dry_run": job.dry_run,
        "git_commit": job.git_commit,
    }
