"""The cmd module's wire: an argv to run on each host (Salt's cmd.run), and
what it did: its status, exit code, stdout and stderr (each capped), and
its duration."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from safcm.common.modules import ModuleWire
from safcm.common.protocol import MAX_JOB_TIMEOUT, MAX_REASON_CHARS
from safcm.common.schema import Bool, Float, Int, List, Map, OneOf, Optional, Str

NAME = "cmd"

# Bytes of stdout, and of stderr, a result keeps; the rest is counted. Both
# travel to the master and into its job history, for every host.
OUTPUT_MAX = 64 * 1024
# Most arguments, and longest argument in characters: what a command line
# of a few pages needs (Linux allows 128 KiB per argument).
MAX_ARGS = 1024
MAX_ARG_CHARS = 128 * 1024
# Seconds the job's deadline leaves after the command's timeout: for the
# kill, and for the result to reach the master before it says "no response".
REPORT_MARGIN = 10.0
# The command's timeout, in seconds: that of the run (--timeout), so that
# the job, which waits REPORT_MARGIN longer, still fits an envelope's life.
MIN_TIMEOUT = 1.0
MAX_TIMEOUT = MAX_JOB_TIMEOUT - 2 * REPORT_MARGIN


class CmdStatus:
    """How a command ended (the result's "status")."""

    OK = "ok"  # exited 0
    FAILED = "failed"  # exited with another status
    KILLED = "killed"  # killed by a signal (see "signal"), not by us
    TIMED_OUT = "timed out"  # killed, with its whole process group, at the timeout
    NOT_STARTED = "not started"  # could not be started (see "error")
    WOULD_RUN = "would run"  # a dry run: nothing was run

    ALL = (OK, FAILED, KILLED, TIMED_OUT, NOT_STARTED, WOULD_RUN)
    SUCCEEDED = (OK, WOULD_RUN)


def _succeeded(section: Mapping[str, Any], reduced: Mapping[str, Any] | None) -> bool:
    return section["status"] in CmdStatus.SUCCEEDED


_ARGV = List(Str(MAX_ARG_CHARS), MAX_ARGS, min_items=1)
_OUTPUT = Str(OUTPUT_MAX)  # decoded as UTF-8, a bad byte replaced: never more characters

WIRE = ModuleWire(
    name=NAME,
    job_fields={
        "cmd": Map(
            {
                "argv": _ARGV,
                # run as /bin/sh -c with the arguments joined by spaces
                "shell": Bool(),
                "timeout": Float(MIN_TIMEOUT, MAX_TIMEOUT),
            }
        ),
    },
    result_key="cmd",
    result_schema=Map(
        {
            "argv": _ARGV,  # what was run: with shell, /bin/sh -c and the command
            "status": OneOf(CmdStatus.ALL),
            "exit_code": Optional(Int(0, 255)),  # set when it exited
            "signal": Optional(Str(32)),  # killed or timed out: the signal's name
            "error": Optional(Str(MAX_REASON_CHARS)),  # not started: why
            "stdout": _OUTPUT,
            "stdout_omitted": Int(0, 2**62),  # bytes of it beyond OUTPUT_MAX
            "stderr": _OUTPUT,
            "stderr_omitted": Int(0, 2**62),
            "timeout": Float(MIN_TIMEOUT, MAX_TIMEOUT),
            "duration": Float(0, 1e9),  # seconds
        }
    ),
    # The RUN's options: the command; its timeout is the run's --timeout.
    options=Map({"argv": _ARGV, "shell": Bool()}),
    succeeded=_succeeded,
    # No sync_order: a command is not part of a host's configuration.
)
