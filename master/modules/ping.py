"""The ping module on the master: which minions answer, and their versions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from safcm.master.modules import MasterModule

if TYPE_CHECKING:
    from safcm.master.render import Style


def render(ping: Mapping[str, Any], style: Style) -> list[str]:
    from safcm.common.text import escape
    from safcm.master.render import INDENT

    return [f"{INDENT}pong from safcm-minion {escape(ping['version'])}"]


def to_json(ping: Mapping[str, Any]) -> dict[str, Any]:
    from safcm.master.jsonout import iso_time

    return dict(ping, time=iso_time(ping["time"]))


MODULE = MasterModule(
    name="ping",
    result_key="ping",
    summary="check that the minions answer",
    compile=None,
    render=render,
    to_json=to_json,
)
