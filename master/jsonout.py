"""The --json format of safcm-master: one versioned document per command.

Every command's --json output (`run`, `jobs list`, `jobs show`, `show`,
`keys list`) is one JSON object whose `format` field names the version of
this format, FORMAT. Its JSON Schemas are docs/schema/*.json (draft
2020-12), one file per command plus common.json for the shared parts, and
the tests validate every document the commands print against them. The
rules, the same in every document:

- hosts are a list of objects, each with a "host" key;
- a host's outcome is one of OUTCOMES: changed, ok, failed, no response,
  pending, skipped;
- modes are four octal digits as a string ("0755");
- times are ISO 8601 in UTC with microseconds ("2026-12-02T01:50:11.123456Z");
  durations stay seconds (numbers);
- an error is {"format": ..., "error": {"kind", "message", "problems"}}.

The control wire (common/protocol.py) carries unix times, integer modes and
its own spellings; the functions here convert, and are pure.
"""

from __future__ import annotations

import datetime

from safcm.common.lightwire import NO_RESPONSE
from safcm.master.outcomes import OUTCOMES, PENDING, outcome

# `keys list --json` and `jobs list --json` (master/lightcli.py) import this
# module: typing and the wire's msgpack would cost them 7 ms.
TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping
    from typing import Any

# The version of this format. A change that can break a reader (a field
# removed, renamed or retyped) makes it "safcm/2"; new fields do not.
FORMAT = "safcm/1"
# A host the target matched that the job did not go to (run only).
SKIPPED = "skipped"
# run --batch: the skipped hosts of batches that never started (a summary count).
NOT_RUN = "not run"


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def iso_time(ts: float) -> str:
    """A unix time as ISO 8601 in UTC, to the microsecond. Cut, not rounded,
    as a jid is (common/ids.py): a job's "submitted" names its jid's instant,
    so it can be given back to `jobs list --since/--until` as it is."""
    t = _EPOCH + datetime.timedelta(microseconds=int(ts * 1_000_000))
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _iso_or_none(ts: float | None) -> str | None:
    return None if ts is None else iso_time(ts)


def mode_text(mode: int) -> str:
    return f"{mode:04o}"


def result_document(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """A minion's RESULT body (common/protocol.py) with times and modes converted."""
    if result is None:
        return None
    from safcm.master import modules

    doc = dict(result, started=iso_time(result["started"]), finished=iso_time(result["finished"]))
    doc.update(modules.result_json(result))  # each module's section (master/modules/)
    return doc


def change_document(change: dict[str, Any]) -> dict[str, Any]:
    """A file change (files module) with its modes as text."""
    return dict(change, old=_state(change["old"]), new=_state(change["new"]))


def _state(state: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if state is None else dict(state, mode=mode_text(state["mode"]))


def counts(outcomes: Iterable[str]) -> dict[str, int]:
    """How many hosts had each outcome, every outcome present; "hosts" is the total."""
    doc = dict.fromkeys(OUTCOMES, 0)
    total = 0
    for o in outcomes:
        doc[o] += 1
        total += 1
    return {"hosts": total, **doc}


def _job_fields(job: dict[str, Any]) -> dict[str, Any]:
    """A job record of the JOBS_REPLY or JOB_REPLY wire form."""
    return {
        "jid": job["jid"],
        "submitted": iso_time(job["submitted"]),
        "deadline": iso_time(job["deadline"]),
        "user": job["user"],
        "target": job["target"],
        "module": job["module"],
        "dry_run": job["dry_run"],
        "git_commit": job["git_commit"],
    }


def run_document(
    started: dict[str, Any],
    request: dict[str, Any],
    results: Mapping[str, dict[str, Any] | None],
    batches: list[dict[str, Any]] | None = None,
    not_run: Iterable[dict[str, Any]] = (),
) -> dict[str, Any]:
    """`run --json`: the RUN_STARTED body, the RUN request and every host's
    result (None: no response), by host. The job went to started["hosts"];
    a host of it without an entry in `results` is still pending.

    With --batch, `started` gathers the RUN_STARTED bodies of every batch (its
    jid the first batch's), `batches` lists each batch's {"jid", "hosts"}, and
    `not_run` the hosts of batches that never started, with the reason
    (RUN_DONE): those are "skipped", and counted as "not run" too.

    The CLI writes this document a host at a time (run_fields(), run_hosts()
    and tables.write_json_streamed()), its results read back from a file."""
    not_run = list(not_run)
    statuses = {host: outcome(result) for host, result in results.items()}
    return {
        **run_fields(started, request, statuses, batches, not_run),
        "hosts": list(run_hosts(started, results, not_run)),
    }


def run_fields(
    started: dict[str, Any],
    request: dict[str, Any],
    statuses: Mapping[str, str],
    batches: list[dict[str, Any]] | None,
    not_run: list[dict[str, Any]],
) -> dict[str, Any]:
    """run_document() but its hosts: the summary counts `statuses`, the
    outcome of each host that has an entry in its `results`."""
    summary = counts(statuses.get(host, PENDING) for host in started["hosts"])
    document = {
        "format": FORMAT,
        "jid": started["jid"],
        "target": request["target"],
        "group": request["group"],
        "module": request["module"],
        "dry_run": request["dry_run"],
        "summary": {**summary, SKIPPED: len(started["skipped"]) + len(not_run)},
    }
    if batches is not None:
        document["batches"] = [{"jid": b["jid"], "hosts": list(b["hosts"])} for b in batches]
        document["summary"][NOT_RUN] = len(not_run)
    return document


def run_hosts(
    started: dict[str, Any],
    results: Mapping[str, dict[str, Any] | None],
    not_run: list[dict[str, Any]],
) -> Iterator[dict[str, Any]]:
    """The hosts of run_document(), sorted by host (in the order given where
    a host comes twice), each made when its turn comes: a result is taken
    from `results` only then, so a mapping that reads it back from a file
    (master/resultspool.py) holds one at a time."""
    notes = {n["host"]: n["note"] for n in started.get("notes", [])}
    # (host, None) for a host the job went to, (host, its entry) for one skipped.
    order: list[tuple[str, dict[str, Any] | None]] = [(host, None) for host in started["hosts"]]
    order += [
        (s["host"], {"host": s["host"], "status": SKIPPED, "reason": s["reason"]})
        for s in [*started["skipped"], *not_run]
    ]
    order.sort(key=lambda item: item[0])
    for host, skipped in order:
        if skipped is not None:
            yield skipped
            continue
        if host in results:
            result = results[host]
            entry = {"host": host, "status": outcome(result), "result": result_document(result)}
        else:
            entry = {"host": host, "status": PENDING, "result": None}
        if host in notes:  # what the master knew at submit time (not connected, ...)
            entry["note"] = notes[host]
        yield entry


def jobs_list_document(body: dict[str, Any]) -> dict[str, Any]:
    """`jobs list --json`, from a JOBS_REPLY body."""
    jobs = []
    for row in body["jobs"]:
        summary = {
            "hosts": row["hosts"],
            "changed": row["changed"],
            "ok": row["ok"],
            "failed": row["failed"],
            NO_RESPONSE: row["no_response"],
            PENDING: row["pending"],
        }
        jobs.append({**_job_fields(row), "summary": summary})
    return {"format": FORMAT, "jobs": jobs}


def host_outcome(host: dict[str, Any]) -> str:
    """The outcome of one host of a JOB_REPLY: pending until it has a result or
    reached the deadline."""
    if host["result"] is None and host["status"] != NO_RESPONSE:
        return PENDING
    return outcome(host["result"])


def job_show_document(body: dict[str, Any]) -> dict[str, Any]:
    """`jobs show --json`, from a JOB_REPLY body with every host."""
    hosts = [job_show_host(h) for h in body["hosts"]]
    return {
        **job_show_fields(body["job"]),
        "hosts": hosts,
        "summary": counts(h["status"] for h in hosts),
    }


def job_show_fields(job: dict[str, Any]) -> dict[str, Any]:
    """`jobs show --json` but its hosts and summary (written as the hosts come)."""
    return {"format": FORMAT, **_job_fields(job)}


def job_show_host(host: dict[str, Any]) -> dict[str, Any]:
    """One host of `jobs show --json`, from one of a JOB_REPLY."""
    return {
        "host": host["host"],
        "status": host_outcome(host),
        "received": _iso_or_none(host["received"]),
        "returned": _iso_or_none(host["returned"]),
        "late": host["late"],
        "result": result_document(host["result"]),
    }


def keys_document(body: dict[str, Any]) -> dict[str, Any]:
    """`keys list --json`, from a KEYS_REPLY body."""
    return {
        "format": FORMAT,
        "master": body["master"],
        "keys": [
            {**_key(k), "refused_attempts": refused_attempts(body, k["id"])} for k in body["keys"]
        ],
        "refused": [_key(r) for r in body["refused"]],
    }


def refused_attempts(body: dict[str, Any], minion: str) -> int:
    """How often other keys have tried to connect under the id `minion`, from
    a KEYS_REPLY body."""
    return sum(r["attempts"] for r in body["refused"] if r["id"] == minion)


def _key(row: dict[str, Any]) -> dict[str, Any]:
    """A key row of KEYS_REPLY: its "id" is the "host", its times ISO 8601."""
    doc = {"host": row["id"], **{k: v for k, v in row.items() if k != "id"}}
    doc["last_seen"] = _iso_or_none(row["last_seen"])
    return doc


def check_document(
    config_dir: str | None, hosts: Iterable[str], stage: str | None, problems: Iterable[Any]
) -> dict[str, Any]:
    """`check --json`: `stage` is where checking stopped ("settings" or
    "repository"; None when all is well), `problems` are ConfigProblems,
    `hosts` the hosts compiled."""
    found = [{"file": p.file, "line": p.line, "message": p.message} for p in problems]
    return {
        "format": FORMAT,
        "ok": stage is None,
        "config_dir": config_dir,
        "stage": stage,
        "hosts": sorted(hosts),
        "problems": found,
        # check adds them when it compiled: each detected group's hosts, and
        # the hosts that reported no facts
        "detected": {},
        "no_facts": [],
    }


def show_document(host: dict[str, Any]) -> dict[str, Any]:
    """`show --json`: master/show.py to_document(), versioned."""
    return {"format": FORMAT, **host}


def error_document(
    kind: str, message: str, problems: Iterable[dict[str, Any]] = (), **extra: Any
) -> dict[str, Any]:
    """What every command prints under --json when it fails: `kind` says which
    failure (usage, config, daemon, ...), `problems` are {file, line, message}
    (line null when unknown); `extra` adds fields such as the jid of a run
    whose daemon was lost."""
    return {
        "format": FORMAT,
        **extra,
        "error": {"kind": kind, "message": message, "problems": list(problems)},
    }
