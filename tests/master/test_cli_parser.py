"""The command lines of safcm-master and safcm-minion: every --help has examples
and exit codes, and building only the named subcommand parses as the whole tree."""

from __future__ import annotations

import argparse

import pytest

from safcm.common.completion import _walk
from safcm.master import cli
from safcm.minion import cli as minion_cli


def every_parser(parser: argparse.ArgumentParser, command: str):
    return list(_walk(parser, command))


@pytest.mark.parametrize(
    ("parser", "command"),
    [(cli.build_parser(), "safcm-master"), (minion_cli.build_parser(), "safcm-minion")],
)
def test_every_help_has_examples_and_exit_codes(parser, command):
    parsers = every_parser(parser, command)
    assert len(parsers) > 3
    for path, p in parsers:
        text = p.format_help()
        assert "\nexamples:\n  " in text, path
        examples = text.split("\nexamples:\n")[1].split("\n\n")[0].splitlines()
        assert 1 <= len(examples) <= 5, path
        assert all(e.strip().startswith(command) or "<(" in e for e in examples), path
        exits = text.split("\nexit codes:\n")[1]
        assert exits.startswith("  0  "), path


def test_run_help_names_every_module_and_sync_in_the_order_it_runs():
    from safcm.common.modules import sync_steps
    from safcm.master import modules

    help_line, _ = cli._COMMANDS["run"]
    assert help_line == f"run a module ({', '.join(modules.names())}) on the targeted minions"
    parsers = dict(every_parser(cli.build_parser("run"), "safcm-master"))
    [module] = [a for a in parsers["safcm-master run"]._actions if a.metavar == "MODULE"]
    for name in modules.names():
        assert f"{name}: " in module.help, name
    # sync: its steps, named in the order the minion runs them, then the triggers.
    sync = module.help.split("sync: ", 1)[1]
    steps = sync_steps()
    assert steps == ["packages", "files", "services"]
    assert [sync.index(step) for step in steps] == sorted(sync.index(step) for step in steps)
    assert sync.index(steps[-1]) < sync.index("triggers of files run last")


def test_help_keeps_the_epilog_lines():
    text = cli.build_parser().format_help()
    assert "\n  safcm-master keys list\n  safcm-master run 'web*' files --dry-run\n" in text


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["keys", "list"], "keys"),
        (["-c", "/x.yaml", "jobs", "list"], "jobs"),
        (["--config", "keys", "run"], "run"),  # the file is named keys
        (["--conf", "keys", "run"], "run"),  # an abbreviation takes a value too
        (["--config=/x.yaml", "run", "*", "ping"], "run"),
        (["-c/x.yaml", "show", "web1"], "show"),
        (["--version"], ""),
        (["-h"], ""),
        (["-c", "/x.yaml"], ""),
        (["nope"], ""),
        (["--", "keys", "list"], None),
        ([], ""),
    ],
)
def test_the_command_named(argv, command):
    assert cli._command_named(argv) == command


ARGVS = [
    ["keys", "list", "--json"],
    ["keys", "accept", "web1", "db*", "--fingerprint", "SHA256:x"],
    ["-c", "/x.yaml", "jobs", "list", "--since", "2h", "--status", "no response"],
    ["jobs", "show", "last", "-c", "/y.yaml"],
    ["run", "web*", "files", "--dry-run", "--timeout", "5m"],
    ["run", "web*", "nope"],
    ["run"],
    ["keys"],
    ["jobs", "list", "--limit", "x"],
    ["show", "web1", "--repo", "/r"],
    ["check", "web1", "db1"],
    ["daemon", "-v"],
    ["demo", "--keep"],
    ["completion", "bash"],
    ["--conf", "keys", "run", "web1", "ping"],
    ["nope"],
    ["--", "keys", "list"],
    ["-c", "/x.yaml"],
    [],
]


def parse(parser: argparse.ArgumentParser, argv: list[str]):
    try:
        return parser.parse_args(argv)
    except cli._ArgumentError as e:
        return ("error", str(e), e.parser.prog)


@pytest.mark.parametrize("argv", ARGVS, ids=" ".join)
def test_the_named_command_alone_parses_as_the_whole_tree(argv):
    assert parse(cli.build_parser(cli._command_named(argv)), argv) == parse(
        cli.build_parser(), argv
    )


def test_no_command_gets_its_arguments_when_none_is_named():
    commands = dict(every_parser(cli.build_parser(""), "safcm-master"))
    assert "safcm-master keys list" not in commands
    assert "safcm-master run" in commands


def test_only_the_named_command_gets_its_arguments():
    parser = cli.build_parser("keys")
    commands = dict(every_parser(parser, "safcm-master"))
    assert "safcm-master keys list" in commands
    assert "safcm-master jobs list" not in commands
    run = commands["safcm-master run"]
    assert not [a for a in run._actions if a.dest == "target"]
