"""Unit files for the services tests."""

from __future__ import annotations

from safcm.common.services import Enablement

# services.yaml's lists, as (enablement, running).
WISHES = {
    "enable": (Enablement.ENABLED, True),
    "disable": (Enablement.DISABLED, False),
    "mask": (Enablement.MASKED, False),
    "start": (None, True),
    "stop": (None, False),
}
# A service that runs until stopped.
SLEEPER = "ExecStart=/bin/sleep infinity"
# A service that cannot start: exec fails (Type=exec reports it to the start).
BROKEN = "Type=exec\nExecStart=/nonexistent/safcm-test-daemon"
# A service whose start fails in its own code.
FAILING = "Type=oneshot\nExecStart=/bin/sh -c 'echo config file missing >&2; exit 3'"


def unit_text(service: str, wanted_by: str | None = "multi-user.target") -> str:
    install = f"\n[Install]\nWantedBy={wanted_by}\n" if wanted_by else ""
    return f"[Unit]\nDescription=safcm test unit\n\n[Service]\n{service}\n{install}"
