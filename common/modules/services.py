"""The services module's wire: a host's units (common/services.py UnitSpec)
and what was done to each (ServicesResult). The schemas are common/services.py's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from safcm.common.modules import ModuleWire
from safcm.common.services import SERVICES_JOB, SERVICES_RESULT, UnitOutcome

NAME = "services"
# In sync: after files, which deliver unit files and the configuration the
# units read, so that a unit starts with its new configuration.
SYNC_ORDER = 30


def _job_problem(fields: Mapping[str, Any]) -> str | None:
    units = [u["unit"] for u in fields["units"]]
    if len(set(units)) != len(units):
        return "units: a unit is listed twice"
    return None


def _succeeded(section: Mapping[str, Any], reduced: Mapping[str, Any] | None) -> bool | None:
    return all(c["outcome"] != UnitOutcome.FAILED for c in section["changes"])


WIRE = ModuleWire(
    name=NAME,
    job_fields={"units": SERVICES_JOB},
    result_key="services",
    result_schema=SERVICES_RESULT,
    sync_order=SYNC_ORDER,
    job_problem=_job_problem,
    succeeded=_succeeded,
)
