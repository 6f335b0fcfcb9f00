"""History: the JOBS control request (jobs list, jobs show), read from the job store."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from safcm.common.errors import UsageError
from safcm.common.protocol import NO_RESPONSE, Message, MsgType
from safcm.master.control import ControlConnection
from safcm.master.jobstore import HostRecord, HostState, JobRecord, JobStore

# Bytes of stored results per JOB_REPLY of a streamed `jobs show` (at least
# one host's): the master holds one part, unpacked, at a time (a few times
# this), and reading and packing one takes the loop about 10 ms.
SHOW_PART_BYTES = 1024 * 1024
# Stored results a CLI from before streaming is sent in one JOB_REPLY at
# most: they are unpacked, checked and packed again in one go on the loop,
# about 10 ms per MiB, and held several times over in memory meanwhile.
MAX_UNSTREAMED_BYTES = 4 * 1024 * 1024


class History:
    def __init__(
        self, jobs: JobStore, report: Callable[[ControlConnection, str, Exception], None]
    ) -> None:
        self.jobs = jobs
        # How a failed request is answered (MasterDaemon.report): a part that
        # fails after the first is answered the same way.
        self.report = report

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
            self._show(conn, body)
            return
        conn.finish()

    def _show(self, conn: ControlConnection, body: dict[str, Any]) -> None:
        job = self.jobs.get_job(body["jid"])
        if job is None:
            raise UsageError(f"no job {body['jid']} in the history")
        if body["host"] is not None:
            hosts = self.jobs.get_hosts(job.jid, body["host"])
            if not hosts:
                raise UsageError(f"job {job.jid} did not go to {body['host']}")
            more = False if body.get("stream") else None
            conn.send(MsgType.JOB_REPLY, _job_reply(job, hosts, more=more))
            conn.finish()
        elif body.get("stream"):
            self._send_part(conn, job, "")
        else:
            # A CLI from before streaming reads one reply: the whole job, if
            # that is small enough to build at once.
            size = self.jobs.result_bytes(job.jid)
            if size > MAX_UNSTREAMED_BYTES:
                raise UsageError(
                    f"job {job.jid}'s results take {size} bytes, too many for one reply; "
                    "this safcm-master command is older than the daemon: use the installed one"
                )
            reply = _job_reply(job, self.jobs.get_hosts(job.jid), more=None)
            conn.send(MsgType.JOB_REPLY, reply)
            conn.finish()

    def _send_part(self, conn: ControlConnection, job: JobRecord, after: str) -> None:
        """Send the job's next hosts after `after`; the part after them once
        this one has been written (so one part is in memory at a time)."""
        try:
            hosts, more = self.jobs.hosts_after(job.jid, after, max_bytes=SHOW_PART_BYTES)
            conn.send(MsgType.JOB_REPLY, _job_reply(job, hosts, more=more))
        except Exception as e:  # answered as a request that failed at once
            self.report(conn, "JOBS", e)
            return
        if more:
            last = hosts[-1].host
            conn.when_drained(lambda: self._send_part(conn, job, last))
        else:
            conn.finish()


def _job_reply(job: JobRecord, hosts: list[HostRecord], *, more: bool | None) -> dict[str, Any]:
    reply: dict[str, Any] = {
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
    }
    if more is not None:
        reply["more"] = more
    return reply


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
