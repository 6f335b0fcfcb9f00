"""Which hosts a TARGET names. Pure: the caller passes the hosts and groups.

    web*          a glob over host ids
    web1,db1      a comma list; each item is a host id or a glob
    @web / -G web a group of the configuration repository

Only hosts listed in hosts.yaml can be targeted, and a job goes only to those
whose key is accepted. Hosts that match but are not accepted are returned as
skipped, with the reason, so the administrator sees them instead of wondering
why a host never answered.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Collection
from dataclasses import dataclass

from safcm.common.errors import UsageError

GROUP_PREFIX = "@"


@dataclass(frozen=True)
class Resolved:
    hosts: list[str]  # sorted; the job goes to these
    skipped: dict[str, str]  # host -> why it is left out


def normalise(target: str, group: bool) -> str:
    """The target as stored in the job history: '-G web' and '@web' are both '@web'."""
    target = target.strip()
    if group and not target.startswith(GROUP_PREFIX):
        return GROUP_PREFIX + target
    return target


def resolve(
    target: str,
    *,
    hosts: Collection[str],
    group_members: Callable[[str], list[str]],
    accepted: Collection[str],
    key_states: Callable[[str], str | None],
) -> Resolved:
    """Resolve a normalised target.

    `hosts` are the ids in hosts.yaml; `group_members(name)` returns a group's
    hosts or raises UsageError for an unknown group; `accepted` are the ids
    with accepted keys; `key_states(id)` gives the key state of an id, or None.
    """
    if not target:
        raise UsageError("the target is empty")
    if target.startswith(GROUP_PREFIX):
        name = target[len(GROUP_PREFIX) :]
        if not name:
            raise UsageError("'@' needs a group name, e.g. @web")
        matched = set(group_members(name))
        if not matched:
            raise UsageError(f"group {name!r} has no hosts")
    else:
        matched = set()
        for raw in target.split(","):
            item = raw.strip()
            if not item:
                raise UsageError(f"empty item in the target list {target!r}")
            hits = [h for h in hosts if fnmatch.fnmatchcase(h, item)]
            if not hits:
                raise UsageError(f"{item!r} matches no host in hosts.yaml")
            matched.update(hits)

    chosen, skipped = [], {}
    for host in sorted(matched):
        if host in accepted:
            chosen.append(host)
        else:
            state = key_states(host)
            skipped[host] = "no key has enrolled" if state is None else f"its key is {state}"
    if not chosen:
        detail = "; ".join(f"{h}: {why}" for h, why in skipped.items())
        raise UsageError(f"target {target!r} matches no accepted minion ({detail})")
    return Resolved(chosen, skipped)
