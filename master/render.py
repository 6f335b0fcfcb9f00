"""Human output of `run` and `jobs show`: pure functions from results to text.

Every string that came from a minion (paths, diffs, trigger output, error
messages, user and group names) passes through escape() before it is
printed (paths and user and group names through escape_reported(), which
uses it): a managed host is untrusted and must not be able to move the
cursor, retitle the terminal or hide lines with control sequences.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from safcm.common.text import escape, escape_content
from safcm.common.wire import NO_RESPONSE
from safcm.master.outcomes import HostStatus

# The light commands' part of the output (master/tables.py), re-exported:
# callers use render.Style, render.render_keys, ...
from safcm.master.tables import (  # noqa: F401
    Style,
    format_time,
    render_jobs_table,
    render_keys,
    use_colour,
)

if TYPE_CHECKING:
    from safcm.common.model import ApplyResult, FileChange, FileState

# NOTE: common/model.py (the result's types) is imported by the functions that
# render a result, not here: `run` of a ping prints no file, and the model's
# dataclasses cost about 10 ms (bench/cli.py). For the same reason Tally is
# a plain class: the dataclasses module alone costs 7 ms. The tables of
# `keys list` and `jobs list`, which must load even less, are master/tables.py.

# Widest a path column is padded to before the details that follow it.
PATH_COLUMN = 40
INDENT = "    "


def escape_lines(text: str) -> list[str]:
    """Multi-line content (a diff, a trigger's output) as safe display lines."""
    return [escape_content(line) for line in text.splitlines()]


def escape_reported(name: str) -> str:
    """A path, user or group name as the minion reports it, for display.

    The minion sends what it read from the host in common/text.py's
    escape_name() form: a byte that is not UTF-8 is already \\xNN and a
    backslash already doubled. escape() would double those backslashes
    again (caf\\\\xe9.conf), so here every backslash stays as it is and
    each piece between them goes through escape(): a control character,
    ANSI sequence or bidi override still reaches the terminal only as an
    escape, and the escape_name() form shows once (caf\\xe9.conf).
    """
    return "\\".join(escape(part) for part in name.split("\\"))


# A host's outcome (master/jobstore.py outcome()), as the summary counts it.
CHANGED, OK, FAILED = HostStatus.CHANGED, HostStatus.OK, HostStatus.FAILED
_TALLY_FIELDS = {CHANGED: "changed", OK: "ok", FAILED: "failed", NO_RESPONSE: "no_response"}


def host_heading(host: str, status: str, body: dict[str, Any] | None, style: Style) -> str:
    """The host's line: its name, its outcome and how long it took.

    The outcome is worded as render_summary() counts it: "unchanged" for a
    module that reports changes (files, packages, services, sync; "ok" for
    ping and cmd), and "would change" when its sections say they were a dry
    run. Taken from the body's module and sections, not from whether it has
    a files section, so that a packages host is not "ok" in a summary of
    "unchanged" hosts.
    """
    from safcm.master import modules

    sections = modules.sections(body) if body else []
    dry = any(section.get("dry_run") for _, section in sections)
    reports_changes = body is not None and _reports_changes(body["module"])
    words = {
        CHANGED: style.yellow("would change" if dry else "changed"),
        OK: style.green("unchanged" if reports_changes else "ok"),
        FAILED: style.red("FAILED"),
        NO_RESPONSE: style.red("no response"),
    }
    heading = f"{style.bold(escape(host))}: {words.get(status, escape(status))}"
    if body:
        heading += style.dim(f" ({body['finished'] - body['started']:.2f} s)")
    return heading


def render_host(
    host: str,
    status: str,
    body: dict[str, Any] | None,
    style: Style,
    *,
    late_at: float | None = None,
) -> str:
    """One host's result: heading, then each change, diffs, triggers and errors.

    `body` is the minion's RESULT body (common/protocol.py), None for no response;
    `late_at` is when a result stored after the job's deadline arrived.
    """
    lines = [host_heading(host, status, body, style)]
    if late_at is not None:
        late = f"result arrived after the deadline, at {format_time(late_at)}"
        lines.append(f"{INDENT}{style.yellow(late)}")
    if body is None:
        return "\n".join(lines)
    if body["error"]:
        lines.append(f"{INDENT}{style.red('error:')} {escape(body['error'])}")
    from safcm.master import modules

    lines.extend(modules.render_result(body, style))
    if body.get("reduced"):
        lines.append(f"{INDENT}{style.yellow(render_reduced(body['reduced']))}")
    if body.get("resumed"):
        lines.append(f"{INDENT}{style.yellow(RESUMED_NOTE)}")
    return "\n".join(lines)


RESUMED_NOTE = (
    "resumed: the minion restarted while applying this job and finished it after; "
    "changes made before the restart are not listed"
)


def render_reduced(reduced: dict[str, Any]) -> str:
    """What a minion left out of a result too large for the wire, and why."""
    counts = [
        (reduced["diffs_omitted"], "diff"),
        (reduced["outputs_omitted"], "trigger output"),
        (reduced["changes_omitted"], "change"),
        (reduced["triggers_omitted"], "trigger run"),
    ]
    parts = [f"{n} {what}{'s' if n != 1 else ''} omitted" for n, what in counts if n]
    return f"result reduced: {', '.join(parts)} ({escape(reduced['reason'])})"


def render_apply(result: ApplyResult, style: Style) -> list[str]:
    from safcm.common.model import TriggerStatus

    lines = []
    for change in result.changes:
        lines.extend(render_change(change, result.dry_run, style))
    for failure in result.failures:
        where = f"{escape_reported(failure.path)}: " if failure.path else ""
        lines.append(f"{INDENT}{style.red('failed:')} {where}{escape(failure.reason)}")
    for run in result.triggers:
        status = {
            TriggerStatus.OK: style.green("ok"),
            TriggerStatus.WOULD_RUN: style.yellow("would run"),
            TriggerStatus.FAILED: style.red(
                "failed" if run.exit_code is None else f"failed (exit {run.exit_code})"
            ),
            TriggerStatus.TIMEOUT: style.red("timed out"),
        }[run.status]
        lines.append(f"{INDENT}trigger {style.bold(escape(run.command))}: {status}")
        lines.extend(f"{INDENT}{INDENT}{line}" for line in escape_lines(run.output))
    for owed in result.owed:
        lines.append(
            f"{INDENT}trigger {style.bold(escape(owed.command))}: {style.yellow('owed')}"
            f" (since {escape_reported(owed.path)} changed in job {escape(owed.jid)}; it runs after"
            " the next run without failure)"
        )
    return lines


# The verb of a change, by whether the path is created, replaced (another
# type), removed, or changed in place; and whether the dry run reports it.
_VERBS = {
    "create": ("created", "would create", "create"),
    "replace": ("replaced", "would replace", "replace"),
    "remove": ("removed", "would remove", "remove"),
    "change": ("changed", "would change", "change"),
}


def render_change(change: FileChange, dry_run: bool, style: Style) -> list[str]:
    """One change: what it is, its outcome (never a claim of what did not happen), its diff."""
    from safcm.common.model import Outcome

    path = escape_reported(change.path)
    old, new = change.old, change.new
    if new is None:
        kind, colour = "remove", style.red
        detail = " ".join(x for x in (str(old.type), _mode(old), _owner(old)) if x) if old else ""
    elif change.created:
        kind, colour = "create", style.green
        detail = " ".join(x for x in (str(new.type), _mode(new), _owner(new)) if x)
    else:
        replaced = old is not None and old.type != new.type
        kind, colour = ("replace", style.red) if replaced else ("change", style.yellow)
        detail = ", ".join(_differences(change))
    done, would, bare = _VERBS[kind]
    if change.outcome is Outcome.FAILED:
        verb = style.red(f"FAILED to {bare}")
    elif change.outcome is Outcome.SKIPPED:
        verb = style.red(f"skipped: {bare}")
    else:
        verb = colour(would if change.outcome is Outcome.WOULD_APPLY else done)
    lines = [f"{INDENT}{verb} {path.ljust(PATH_COLUMN)} {detail}".rstrip()]
    if change.reason:
        lines.append(f"{INDENT}{INDENT}{style.red('reason:')} {escape(change.reason)}")
    if change.diff:
        for line in escape_lines(change.diff):
            lines.append(f"{INDENT}{INDENT}{_diff_line(line, style)}")
    return lines


def _differences(change: FileChange) -> list[str]:
    from safcm.common.model import FileType, Outcome

    old, new = change.old, change.new
    if old is None or new is None:
        return []
    parts = []
    if old.type != new.type:
        # Said only of a change that happened: a failed one removed nothing.
        removed = old.type is FileType.DIR and change.outcome is Outcome.APPLIED
        parts.append(
            f"type {old.type} -> {new.type}{' (old directory removed)' if removed else ''}"
        )
    if old.type == new.type and old.mode != new.mode and new.type is not FileType.SYMLINK:
        parts.append(f"mode {old.mode:04o} -> {new.mode:04o}")
    if (old.uid, old.gid) != (new.uid, new.gid):
        parts.append(f"owner {_owner(old)} -> {_owner(new)}")
    if change.diff and old.type == new.type:
        parts.append("target" if new.type is FileType.SYMLINK else "content")
    return parts


def _mode(state: FileState) -> str:
    from safcm.common.model import FileType

    return "" if state.type is FileType.SYMLINK else f"{state.mode:04o}"


def _owner(state: FileState) -> str:
    user = escape_reported(state.user) if state.user else str(state.uid)
    group = escape_reported(state.group) if state.group else str(state.gid)
    return f"{user}:{group}"


def _diff_line(line: str, style: Style) -> str:
    if line.startswith(("+++", "---")):
        return style.bold(line)
    if line.startswith("+"):
        return style.green(line)
    if line.startswith("-"):
        return style.red(line)
    if line.startswith("@@"):
        return style.cyan(line)
    return line


class Tally:
    """Counts for the summary line of a run or a stored job."""

    __slots__ = ("changed", "failed", "no_response", "ok", "targeted")

    def __init__(self, targeted: int = 0) -> None:
        self.targeted = targeted
        self.changed = 0
        self.ok = 0
        self.failed = 0
        self.no_response = 0

    def add(self, outcome: str) -> None:
        """Count one host's outcome (outcomes.outcome())."""
        field = _TALLY_FIELDS[outcome]
        setattr(self, field, getattr(self, field) + 1)

    def as_dict(self) -> dict[str, int]:
        """The RUN_DONE summary, in the control wire's spelling (common/protocol.py)."""
        return {
            "targeted": self.targeted,
            "changed": self.changed,
            "unchanged": self.ok,
            "failed": self.failed,
            "no_response": self.no_response,
        }


def _reports_changes(module: str) -> bool:
    """Whether a job of `module` (or sync) has hosts "unchanged" rather than "ok"."""
    from safcm.master import modules

    return any(
        m.reports_changes
        for name, m in modules.modules().items()
        if name in modules.steps_of(module)
    )


def render_summary(tally: Tally, style: Style, dry_run: bool = False, module: str = "files") -> str:
    hosts = "host" if tally.targeted == 1 else "hosts"
    parts = [
        style.yellow(f"{tally.changed} {'would change' if dry_run else 'changed'}"),
        style.green(f"{tally.ok} {'unchanged' if _reports_changes(module) else 'ok'}"),
        (style.red if tally.failed else str)(f"{tally.failed} failed"),
        (style.red if tally.no_response else str)(f"{tally.no_response} no response"),
    ]
    return f"{tally.targeted} {hosts} targeted: " + ", ".join(parts)


def render_late_hint(jid: str, style: Style) -> str:
    """After a run with hosts that did not answer in time: where their results
    go if they come after all."""
    return style.dim(
        "a result that arrives after the deadline is still stored: "
        f"see safcm-master jobs show {jid}"
    )


def render_job_header(job: dict[str, Any], style: Style) -> str:
    commit = job.get("git_commit") or "(not a git repository)"
    return "\n".join(
        [
            f"{style.bold('job')} {job['jid']}",
            f"  submitted  {format_time(job['submitted'])} by {escape(job['user'])}",
            f"  target     {escape(job['target'])}",
            f"  module     {job['module']}{' (dry run)' if job['dry_run'] else ''}",
            f"  config     {escape(commit)}",
        ]
    )
