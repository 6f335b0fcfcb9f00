"""The output of the light commands: the tables of `keys list` and `jobs list`,
times and colour for people, and the one JSON writer of every --json.

NOTE: `keys list` and `jobs list` (master/lightcli.py) import this module
and should cost little more than the interpreter (issue 10; bench/cli.py),
so it imports only modules every interpreter has loaded at start-up and
common/text.py; tests/master/test_lightcli.py checks. The rest of the human
output is master/render.py, which re-exports all of this.

Every string that came from a minion or a user (ids, targets, user names)
passes through escape() before it is printed.
"""

from __future__ import annotations

import os
import time

from safcm.common.text import escape

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (4 ms)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any, TextIO


def use_colour(stream: TextIO) -> bool:
    """Colour on a terminal, unless NO_COLOR is set to anything non-empty (no-color.org)."""
    if os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Style:
    """How output looks: with colour (SGR escape sequences) or without."""

    __slots__ = ("colour",)

    def __init__(self, colour: bool) -> None:
        self.colour = colour

    def _sgr(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.colour else text

    def bold(self, text: str) -> str:
        return self._sgr("1", text)

    def red(self, text: str) -> str:
        return self._sgr("31", text)

    def green(self, text: str) -> str:
        return self._sgr("32", text)

    def yellow(self, text: str) -> str:
        return self._sgr("33", text)

    def cyan(self, text: str) -> str:
        return self._sgr("36", text)

    def dim(self, text: str) -> str:
        return self._sgr("2", text)


def render_jobs_table(
    rows: Iterable[dict[str, Any]], style: Style, limit: int | None = None
) -> str:
    """`jobs list`: one line per job, newest first; and a line saying so
    when `limit` (the --limit asked) cut the list short, or may have."""
    header = [
        "JID",
        "SUBMITTED",
        "USER",
        "TARGET",
        "MODULE",
        "HOSTS",
        "CHANGED",
        "FAILED",
        "NO RESP",
        "PENDING",
    ]
    table = [header]
    for row in rows:
        module = row["module"] + (" (dry run)" if row["dry_run"] else "")
        table.append(
            [
                row["jid"],
                format_time(row["submitted"]),
                escape(row["user"]),
                escape(row["target"]),
                module,
                str(row["hosts"]),
                str(row["changed"]),
                str(row["failed"]),
                str(row["no_response"]),
                str(row["pending"]),
            ]
        )
    if len(table) == 1:
        return "no jobs"
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in table
    ]
    lines[0] = style.bold(lines[0])
    if limit is not None and len(table) - 1 >= limit:
        lines.append(style.dim(f"(the newest {limit} that match; --limit N for more)"))
    return "\n".join(lines)


def render_keys(body: dict[str, Any], style: Style) -> str:
    """`keys list`: the master's fingerprint, every minion key, refused keys."""
    lines = [f"master key fingerprint: {body['master']}", ""]
    if not body["keys"]:
        lines.append("no minion keys yet")
    else:
        # The REFUSED column (attempts by other keys under the id) only when there are any.
        refused = bool(body.get("refused"))
        table = [["ID", "STATE", "FINGERPRINT", "PRESENCE", *(["REFUSED"] if refused else [])]]
        for key in body["keys"]:
            if key["not_subscribed"]:
                presence = "connected, NOT SUBSCRIBED"
            elif key["connected"]:
                presence = "connected"
            elif key["last_seen"]:
                presence = f"last seen {format_time(key['last_seen'])}"
            else:
                presence = "never seen"
            row = [escape(key["id"]), key["state"], key["fingerprint"], presence]
            if refused:
                attempts = sum(r["attempts"] for r in body["refused"] if r["id"] == key["id"])
                row.append(str(attempts) if attempts else "-")
            table.append(row)
        lines.extend(_table(table, style))
    if any(key["not_subscribed"] for key in body["keys"]):
        lines += [
            "",
            style.red(
                "not subscribed: connected, but holding no subscription on the publish socket"
            ),
            style.red(
                f"(port {body['publish_port']}), so no job reaches it; can it reach that port? "
                "Its log says so too"
            ),
        ]
    if body.get("refused"):
        lines += [
            "",
            style.red("refused keys: a known id presented another key (an impersonation,"),
            style.red(
                "or a reinstalled host: then 'safcm-master keys delete ID' and accept the new key)"
            ),
        ]
        table = [["ID", "FINGERPRINT", "ATTEMPTS", "LAST ATTEMPT"]]
        for r in body["refused"]:
            table.append(
                [escape(r["id"]), r["fingerprint"], str(r["attempts"]), format_time(r["last_seen"])]
            )
        lines.extend(_table(table, style))
    return "\n".join(lines)


def _table(rows: list[list[str]], style: Style) -> list[str]:
    """Rows as aligned columns; the first row is the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines[0] = style.bold(lines[0])
    return lines


def format_time(ts: float) -> str:
    """A time for people: local, with its zone's name ("2026-12-02 01:50:11 UTC")."""
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ts))


def write_json(document: Any, out: TextIO) -> None:
    """One JSON document: indented on a terminal, compact otherwise (for jq and
    scripts; the compact form uses the C encoder, which matters at thousands
    of hosts)."""
    import json

    if out.isatty():
        json.dump(document, out, indent=2, sort_keys=True)
    else:
        out.write(json.dumps(document, sort_keys=True, separators=(",", ":")))
    out.write("\n")


def write_json_streamed(
    out: TextIO,
    fields: dict[str, Any],
    key: str,
    items: Iterable[Any],
    later: Callable[[], dict[str, Any]],
) -> None:
    """The document write_json() writes for `fields` with `key` set to the list
    of `items` and the fields `later()` returns once they are written, written
    as the items come: one at a time in memory, not the whole list. Every
    field of `later()` must sort after `key` (keys are written sorted)."""
    import json

    tty = out.isatty()

    def text(value: Any, level: int) -> str:
        if tty:
            return json.dumps(value, indent=2, sort_keys=True).replace("\n", "\n" + "  " * level)
        return json.dumps(value, sort_keys=True, separators=(",", ":"))

    pad, colon = ("\n  ", ": ") if tty else ("", ":")
    written = 0

    def member(name: str, value_text: str) -> None:
        nonlocal written
        out.write(("," if written else "") + pad + json.dumps(name) + colon + value_text)
        written += 1

    out.write("{")
    for name in sorted(n for n in fields if n < key):
        member(name, text(fields[name], 1))
    member(key, "[")
    count = 0
    for item in items:
        out.write(("," if count else "") + ("\n    " if tty else "") + text(item, 2))
        count += 1
    out.write(("\n  " if tty and count else "") + "]")
    rest = {n: v for n, v in fields.items() if n > key}
    for name, value in later().items():
        if name <= key:
            raise ValueError(f"{name!r} sorts before {key!r}: it cannot come after the items")
        rest[name] = value
    for name in sorted(rest):
        member(name, text(rest[name], 1))
    out.write(("\n" if tty else "") + "}\n")
