"""The ping module's wire: no job fields; the minion's version and clock."""

from __future__ import annotations

from safcm.common.modules import ModuleWire
from safcm.common.protocol import PING_RESULT

NAME = "ping"

WIRE = ModuleWire(name=NAME, job_fields={}, result_key="ping", result_schema=PING_RESULT)
