"""How a job's host fared, in the one spelling of every output: changed, ok,
failed, no response, pending.

Shared by the job history (master/jobstore.py, which re-exports all of it)
and the CLI's output (master/render.py, master/jsonout.py). NOTE: light on
purpose, like master/client.py: `jobs list` imports it, and must not pay for
the job store's sqlite3 or the wire's schemas.
"""

from __future__ import annotations

import enum

from safcm.common.lightwire import (
    DEFAULT_LIST_LIMIT,  # noqa: F401  (re-exported)
    NO_RESPONSE,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (4 ms)
if TYPE_CHECKING:
    from typing import Any

# A host that has neither a result nor reached its job's deadline (jobs show, --status).
PENDING = "pending"


class HostStatus(enum.StrEnum):
    OK = "ok"  # succeeded, nothing changed
    CHANGED = "changed"  # succeeded and changed something (or would, in a dry run)
    FAILED = "failed"  # the minion reported a failure


def host_status(result: dict[str, Any], changes: int | None = None) -> HostStatus:
    """What a minion's RESULT body amounts to: failed, changed or ok.
    `changes`: its change_count(), if the caller has it already."""
    if result["status"] != "ok":
        return HostStatus.FAILED
    if changes is None:
        changes = change_count(result)
    return HostStatus.CHANGED if changes else HostStatus.OK


def change_count(result: dict[str, Any]) -> int:
    """How many paths a minion's RESULT body reports changed, also those a
    reduced result left out (minion/results.py fit())."""
    from safcm.master import modules  # not at the top: see the NOTE above

    return modules.change_count(result)


def outcome(result: dict[str, Any] | None) -> str:
    """host_status(), or NO_RESPONSE ("no response") for a host without a result."""
    return NO_RESPONSE if result is None else host_status(result)


# Every outcome a job's host can have, in the order they are reported.
OUTCOMES = (HostStatus.CHANGED, HostStatus.OK, HostStatus.FAILED, NO_RESPONSE, PENDING)
