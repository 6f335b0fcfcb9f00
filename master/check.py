"""`safcm-master check [HOST...]`: validate master.yaml and the whole
configuration repository, and compile every host (or the named ones), without
a daemon and without touching any host. Every problem is printed with its
file and line; exit 0 when there is none, 2 otherwise. With --json, one
document on stdout (docs/schema/check.json) says the same.

What it proves is what `run ... files` would prove before sending anything:
the repository loads, and each host's file list and units compile
(templates rendered, conflicts ranked). Detected problems are the same objects the
daemon reports (common/errors.py ConfigProblem), so the messages are too.

Each host is compiled with the facts it last reported (read from the
master's database, master/facts.py), as a run would: the groups detected
from facts are listed with their hosts, marked as detected, since what puts
a host in one is the host's own claim.
"""

from __future__ import annotations

import json
from typing import TextIO

from safcm.common.errors import ConfigError, ConfigProblem, SafcmError
from safcm.common.text import escape
from safcm.master import facts, jsonout
from safcm.master import settings as master_settings
from safcm.master.compiler import compile_hosts
from safcm.master.modules import Request
from safcm.master.modules.services import compile_units
from safcm.master.repository import load_repository

EXIT_OK, EXIT_PROBLEMS = 0, 2


def check(
    settings_path: str | None, hosts: list[str], out: TextIO, err: TextIO, *, as_json: bool = False
) -> int:
    """Check the settings at `settings_path` (None: the defaults), then their
    config_dir, compiling `hosts` (every host of hosts.yaml if empty)."""
    try:
        if settings_path is None:
            settings = master_settings.MasterSettings()
            name = master_settings.DEFAULT_SETTINGS_NAME
        else:
            settings, name = master_settings.load(settings_path), settings_path
        # What the daemon refuses at start-up, in the same words.
        master_settings.check_startup(settings, name)
    except ConfigError as e:
        if as_json:
            return _json(out, jsonout.check_document(None, [], "settings", e.problems))
        return _report(e.problems, err, "the settings have errors")
    try:
        host_facts = facts.host_facts(facts.read_facts(settings.state_dir, settings.store))
    except SafcmError as e:
        print(
            f"safcm-master: warning: {escape(str(e))}; groups detected from facts are left out",
            file=err,
        )
        host_facts = {}
    try:
        repo = load_repository(settings.config_dir)
        targets = hosts or list(repo.hosts)
        configs = compile_hosts(repo, targets, host_facts)
        # services.yaml, with the hosts' facts as a run compiles it
        compile_units(repo, targets, Request(None, 0.0, False, host_facts))
    except ConfigError as e:
        if as_json:
            document = jsonout.check_document(settings.config_dir, [], "repository", e.problems)
            return _json(out, document)
        return _report(e.problems, err, f"the repository {settings.config_dir} has errors")
    detected = {
        name: sorted(h for h, c in configs.items() if name in c.detected)
        for name in sorted(repo.detected)
    }
    no_facts = sorted(h for h, c in configs.items() if c.facts is None)
    if as_json:
        document = jsonout.check_document(settings.config_dir, targets, None, [])
        document.update({"detected": detected, "no_facts": no_facts})
        return _json(out, document)
    for name, members in detected.items():
        held = ", ".join(escape(h) for h in members) if members else "no host"
        print(f"group {escape(name)} (detected from facts): {held}", file=out)
    if detected and no_facts:
        print(
            f"reported no facts yet, so in no detected group: {', '.join(map(escape, no_facts))}",
            file=out,
        )
    print(
        f"{escape(settings.config_dir)}: ok; {len(targets)} host"
        f"{'' if len(targets) == 1 else 's'} compiled",
        file=out,
    )
    return EXIT_OK


def _json(out: TextIO, document: dict[str, object]) -> int:
    out.write(json.dumps(document, sort_keys=True) + "\n")
    return EXIT_OK if document["ok"] else EXIT_PROBLEMS


def _report(problems: list[ConfigProblem], err: TextIO, what: str) -> int:
    print(f"safcm-master: {what}:", file=err)
    for problem in problems:
        print(f"  {escape(str(problem))}", file=err)
    return EXIT_PROBLEMS
