"""The files module's wire: a host's files, and what applying them did
(common/model.py ApplyResult). Its schemas are common/protocol.py's."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from safcm.common.model import FileType, TriggerStatus
from safcm.common.modules import ModuleWire
from safcm.common.protocol import (
    ABSENT_SPEC,
    APPLY_RESULT,
    FILE_SPEC,
    MAX_FILES,
    PATH_SCHEMA,
)
from safcm.common.schema import List

NAME = "files"
# In sync: after packages (which may create users, directories and the
# services a file configures), before services (which read the files).
SYNC_ORDER = 20


def _job_problem(fields: Mapping[str, Any]) -> str | None:
    for f in fields["files"]:
        if (f["type"] == FileType.FILE) != (f["digest"] is not None):
            return f"{f['path']}: a digest is set exactly for a file"
        if f["data"] is None and f["digest"] is None:
            return f"{f['path']}: a directory or symlink needs its data"
        if (
            f["data"] is not None
            and f["digest"] is not None
            and (hashlib.sha256(f["data"]).digest() != f["digest"])
        ):
            return f"{f['path']}: the content does not match its digest"
    return None


def _succeeded(apply: Mapping[str, Any], reduced: Mapping[str, Any] | None) -> bool | None:
    ok = not apply["failures"] and all(
        t["status"] in (TriggerStatus.OK, TriggerStatus.WOULD_RUN) for t in apply["triggers"]
    )
    # A failed trigger may be among the runs a reduced result left out.
    if ok and reduced is not None and reduced["triggers_omitted"] > 0:
        return None
    return ok


WIRE = ModuleWire(
    name=NAME,
    job_fields={
        "files": List(FILE_SPEC, MAX_FILES),
        "absent": List(ABSENT_SPEC, MAX_FILES),  # paths that must not exist
        "purge": List(PATH_SCHEMA, MAX_FILES),  # directories whose undeclared entries go
        "secrets": List(PATH_SCHEMA, MAX_FILES),  # content never shown (paths and below)
    },
    result_key="apply",
    result_schema=APPLY_RESULT,
    sync_order=SYNC_ORDER,
    job_problem=_job_problem,
    succeeded=_succeeded,
)
