"""safcm-master's entry point: the light commands answered at once, the rest by master/cli.py.

`keys list` and `jobs list` (with --json and the filters) and `--version`
are what administrators and their scripts run most, and each should cost
little more than the interpreter: at most 2x `python -c pass` (issue 10;
bench/cli.py measures it, for a checkout and for an installed wheel). The
full command line costs about 25 ms more than that in imports alone:
argparse (with re and enum), msgpack, typing. So the console script enters
here; this module reads such a command line itself, reads the settings
file only for where the control socket is, speaks the control socket with
common/lightwire.py, and prints with master/tables.py.

NOTE: this is a shortcut, never a second command line. It answers only what
it is sure of and hands everything else to master/cli.py untouched: another
command, --help, an option it does not know, an abbreviation or an attached
value argparse would take (`--js`, `-cFILE`), a value that argparse would
refuse or read as an option, a settings file beyond the plain form or with
a value it cannot vouch for, a daemon it cannot reach, a reply it does not
expect. Nothing is printed before it is sure, so the full command line says
what it always says. An error after the request was sent (the daemon's
ERROR, no answer in time) is reported by the full command line's error
handling (cli.guarded), as if it had happened there. Import nothing here at
module level beyond the modules every interpreter has loaded at start-up
and safcm's light ones; tests/master/test_lightcli.py checks what these
commands load, and that both ways print the same bytes.
"""

from __future__ import annotations

import _socket
import os
import sys
import time

from safcm.common.errors import DaemonError, ProtocolError, RemoteError, SafcmError, UsageError
from safcm.common.lightwire import (
    CONNECT_TIMEOUT,
    DEFAULT_LIST_LIMIT,
    ERROR,
    JOB_OUTCOMES,
    JOBS,
    JOBS_REPLY,
    KEYS,
    KEYS_REPLY,
    MAX_JOB_TIMEOUT,
    MAX_JOBS_LISTED,
    MAX_NAME_CHARS,
    MAX_TARGET_CHARS,
    MAX_TIME,
    MIN_JOB_TIMEOUT,
    NO_ANSWER,
    FrameReader,
    pack_request,
    unpack_reply,
)
from safcm.common.version import VERSION
from safcm.master.tables import Style, render_jobs_table, render_keys, use_colour, write_json

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (4 ms)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

EXIT_OK = 0
# Seconds the CLI waits for the answer to keys and jobs requests.
REQUEST_TIMEOUT = 60.0
# Bytes read from the daemon per recv(): a `keys list` of a thousand minions.
READ_CHUNK = 256 * 1024

# The light commands and their options, each with whether it takes a value:
# the names master/cli.py gives them (tests/master/test_lightcli.py checks).
# -c/--config is taken anywhere, as argparse takes it.
_COMMANDS: dict[tuple[str, str], dict[str, bool]] = {
    ("keys", "list"): {"--json": False},
    ("jobs", "list"): {
        "--json": False,
        "--host": True,
        "--target": True,
        "--limit": True,
        "--since": True,
        "--until": True,
        "--module": True,
        "--status": True,
        "--user": True,
    },
}
# The values of --module that this module vouches for: a module it does not
# know goes the full way, where argparse knows every one.
_MODULES = ("files", "ping")

# Where master/settings.py looks by default, and the defaults the control
# socket's path and the port check depend on. Restated (that module loads
# typing for its NamedTuple); tests/master/test_lightcli.py checks they agree.
DEFAULT_CONFIG_PATH = "/etc/safcm/master.yaml"
_DEFAULT_STATE_DIR = "/var/lib/safcm-master"
_DEFAULT_PORTS = {"publish_port": 4505, "return_port": 4506, "key_port": 4507}
# A larger settings file is left to the full reader (the example is 2 KB).
_MAX_PLAIN_SETTINGS_BYTES = 64 * 1024
# Values that leave a key at its default (common/settings.py _UNSET).
_UNSET = ("", "~", "null", "Null", "NULL")


class _Decline(Exception):
    """This module is not sure: the full command line takes the command."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    code = light_main(argv)
    if code is not None:
        return code
    from safcm.master import cli

    return cli.main(argv)


def light_main(argv: list[str]) -> int | None:
    """The exit code of a light command, after its output; None (having
    printed nothing) if master/cli.py must take the command line."""
    if argv == ["--version"]:
        try:
            sys.stdout.write(f"safcm-master {VERSION}\n")
            sys.stdout.flush()
        except BrokenPipeError as e:
            return _report(e, False)
        return EXIT_OK
    line = read_command_line(argv)
    if line is None:
        return None
    config, command, options = line
    as_json = "--json" in options
    try:
        path = control_path(config)
        if path is None:
            return None
        return _answer(path, command, options, as_json)
    except _Decline:
        return None
    except (SafcmError, BrokenPipeError, KeyboardInterrupt) as e:
        return _report(e, as_json)


def _report(error: BaseException, as_json: bool) -> int:
    """Say what the full command line says of `error`, and return its exit code."""
    from safcm.master import cli

    def fail() -> int:
        raise error

    return cli.guarded(fail, as_json)


# ---- the command line ----


def read_command_line(
    argv: list[str],
) -> tuple[str | None, tuple[str, str], dict[str, str]] | None:
    """The settings file (-c), the command and its options ({name: value};
    "" for a flag) of a light command line, exactly as argparse reads it;
    None for anything else."""
    config = None
    words: list[str] = []
    options: dict[str, str] = {}
    args = iter(argv)
    for word in args:
        name, equals, value = word.partition("=")
        if word in ("-c", "--config") or (name == "--config" and equals):
            if not equals:
                value = next(args, "")
            if not _plain_value(value) or config is not None:
                return None
            config = value
        elif word.startswith("-"):
            known = _COMMANDS.get((words[0], words[1])) if len(words) == 2 else None
            if known is None or name not in known or name in options:
                return None
            if known[name]:
                if not equals:
                    value = next(args, "")
                if not _plain_value(value):
                    return None
                options[name] = value
            elif equals:
                return None  # argparse: "ignored explicit argument"
            else:
                options[name] = ""
        else:
            words.append(word)
            if len(words) > 2:
                return None
    command = (words[0], words[1]) if len(words) == 2 else None
    if command not in _COMMANDS:
        return None
    return config, (words[0], words[1]), options


def _plain_value(value: str) -> bool:
    """A value argparse takes as it is: not empty, not like an option."""
    return value != "" and not value.startswith("-")


def _jobs_list_request(options: dict[str, str]) -> dict[str, Any]:
    """The JOBS request of `jobs list`, as master/cli.py jobs_command() makes it;
    _Decline for values argparse would refuse, UsageError as jobs_command()."""
    limit = options.get("--limit")
    if limit is not None and not (limit.isascii() and limit.isdigit() and int(limit) >= 1):
        raise _Decline
    if options.get("--module", _MODULES[0]) not in _MODULES:
        raise _Decline
    if options.get("--status", JOB_OUTCOMES[0]) not in JOB_OUTCOMES:
        raise _Decline
    host = options.get("--host")
    if host is not None:
        # common/ids.py loads hashlib and re: only for a --host.
        from safcm.common.ids import minion_id_problem

        if problem := minion_id_problem(host):
            raise UsageError(f"--host: {problem}")
    check_list_arguments(
        DEFAULT_LIST_LIMIT if limit is None else int(limit),
        options.get("--target"),
        options.get("--user"),
    )
    args = _Arguments({name[2:]: options.get(name) for name in _COMMANDS[("jobs", "list")]})
    return {
        "action": "list",
        "host": host,
        "target": options.get("--target"),
        "limit": DEFAULT_LIST_LIMIT if limit is None else int(limit),
        "jid": None,
        **list_filters(args, time.time()),
    }


class _Arguments:
    """What argparse makes of a command line, for list_filters(): the options as attributes."""

    def __init__(self, values: dict[str, str | None]) -> None:
        self.__dict__.update(values)


def check_list_arguments(limit: int, target: str | None, user: str | None) -> None:
    """UsageError, in the user's words, for a `jobs list` --limit, --target
    or --user the daemon would refuse (common/protocol.py JOBS)."""
    if not 1 <= limit <= MAX_JOBS_LISTED:
        raise UsageError(
            f"--limit must be from 1 to {MAX_JOBS_LISTED}, got {limit}; "
            "--since, --until, --host and --status narrow the list"
        )
    for name, value, longest in (
        ("target", target, MAX_TARGET_CHARS),
        ("user", user, MAX_NAME_CHARS),
    ):
        if value is not None and not 1 <= len(value) <= longest:
            raise UsageError(
                f"--{name} must be 1 to {longest} characters, this one has {len(value)}"
            )


def list_filters(args: Any, now: float) -> dict[str, Any]:
    """The filters of `jobs list` as JOBS request fields: those given only.
    `args` has since, until, module, status and user (None: not given)."""
    filters: dict[str, Any] = {}
    for name in ("since", "until"):
        text = getattr(args, name)
        if text is not None:
            try:
                filters[name] = parse_when(text, now)
            except ValueError as e:
                raise UsageError(f"--{name}: {e}") from None
            if not 0 <= filters[name] <= MAX_TIME:
                raise UsageError(f"--{name}: {text!r} is before 1970 or too far ahead")
    if "since" in filters and "until" in filters and filters["since"] > filters["until"]:
        raise UsageError("--until is before --since")
    for name in ("module", "status", "user"):
        if getattr(args, name) is not None:
            filters[name] = getattr(args, name)
    return filters


def parse_when(text: str, now: float) -> float:
    """A point in time (unix time) from the command line, judged at `now`:

    - a duration back from now, as in the settings files: 30m, 2h, 7d, 90 (seconds);
    - a date and time, ISO 8601: 2026-12-02T01:00, 2026-12-02 01:00:30, 2026-12-02
      (midnight); local time unless it ends in Z or an offset (+01:00);
    - a time of day, today: 01:00, 13:45:10 (local, or with Z or an offset).

    ValueError says what was expected.
    """
    import datetime

    from safcm.common import settings as common_settings

    text = text.strip()
    try:
        return now - common_settings.duration(text)
    except common_settings.BadValue:
        pass
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        try:
            clock = datetime.time.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"{text!r} is neither a time (2026-12-02T01:00, 01:00) nor a duration"
                " back from now (30m, 2h, 7d)"
            ) from None
        # Today in the time's own zone, or the local one (then both are naive).
        today = datetime.datetime.fromtimestamp(now, clock.tzinfo).date()
        moment = datetime.datetime.combine(today, clock)
    # A naive time is local (astimezone() takes it so); an aware one keeps its zone.
    return moment.astimezone().timestamp() if moment.tzinfo is None else moment.timestamp()


# ---- the settings: where the control socket is ----


def control_path(config: str | None) -> str | None:
    """The control socket's path as master/settings.py reads the settings file
    `config` (or the default one), if this module is sure of it: a plain
    file (common/settings.py _flat_entries) of known keys, each value one
    the full parser accepts. None for anything else: the full reader reads it
    and reports its problems."""
    path = config
    if path is None:
        if not os.path.exists(DEFAULT_CONFIG_PATH):
            return _DEFAULT_STATE_DIR + "/control.sock"
        path = DEFAULT_CONFIG_PATH
    try:
        with open(path, "rb") as f:
            text = f.read(_MAX_PLAIN_SETTINGS_BYTES + 1).decode("ascii")
    except (OSError, UnicodeDecodeError):
        return None
    if len(text) > _MAX_PLAIN_SETTINGS_BYTES:
        return None
    return plain_control_path(text)


def plain_control_path(text: str) -> str | None:
    """control_path() of settings already read: None unless sure."""
    if not text.isascii() or not text.replace("\n", "").isprintable():
        return None
    values: dict[str, str] = {}
    for line in text.split("\n"):
        entry = _plain_entry(line)
        if entry is None:
            return None
        key, value = entry
        if not key:
            continue  # a blank line or a comment
        check = _SURE.get(key)
        if check is None or key in values:
            return None
        values[key] = value
        if value in _UNSET:
            continue  # the default
        if not check(value):
            return None
    ports = [
        default if values.get(k, "") in _UNSET else int(values[k])
        for k, default in _DEFAULT_PORTS.items()
    ]
    if len(set(ports)) != len(ports):
        return None
    socket = values.get("control_socket", "")
    if socket not in _UNSET:
        return os.path.normpath(socket)
    state_dir = values.get("state_dir", "")
    if state_dir in _UNSET:
        state_dir = _DEFAULT_STATE_DIR
    return os.path.normpath(state_dir) + "/control.sock"


_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz_")
_VALUE_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_./")
_VALUE_CHARS = _VALUE_FIRST | frozenset(":+-")


def _plain_entry(line: str) -> tuple[str, str] | None:
    """(key, value) of a plain settings line, ("", "") for a blank line or a
    comment, None for any other line: common/settings.py's _FLAT_SKIP and
    _FLAT_ENTRY, without the re module (7 ms)."""
    rest = line.lstrip(" ")
    if not rest or rest.startswith("#"):
        return "", ""
    key, colon, rest = line.partition(":")
    if not colon or not key or not _KEY_CHARS.issuperset(key):
        return None
    if not rest:
        return key, ""
    if not rest.startswith(" "):
        return None
    rest = rest.lstrip(" ")
    if not rest or rest.startswith("#"):
        return key, ""
    value, _, after = rest.partition(" ")
    after = after.lstrip(" ")
    if after and not after.startswith("#"):
        return None
    if value[0] not in _VALUE_FIRST or not _VALUE_CHARS.issuperset(value) or value[-1] == ":":
        return None
    return key, value


# Checks that a value is one master/settings.py accepts: each says yes only
# where the full parser surely does (and no where it might not). Every key
# of master.yaml; a key not here leaves the file to the full reader.
def _port(v: str) -> bool:
    return v.isdigit() and 1 <= int(v) <= 65535


def _positive_int(v: str) -> bool:
    return v.isdigit() and int(v) >= 1


def _absolute_path(v: str) -> bool:
    return v.startswith("/")


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _seconds(v: str) -> float | None:
    """The seconds of a duration common/settings.py duration() surely
    accepts, or None."""
    unit = _DURATION_UNITS.get(v[-1], 1)
    number = v[:-1] if v[-1] in _DURATION_UNITS else v
    whole, dot, fraction = number.partition(".")
    if not (whole.isdigit() and (not dot or fraction.isdigit())):
        return None
    seconds = float(number) * unit
    return seconds if seconds > 0 else None


def _duration(v: str) -> bool:
    return _seconds(v) is not None


def _job_timeout(v: str) -> bool:
    seconds = _seconds(v)
    return seconds is not None and MIN_JOB_TIMEOUT <= seconds <= MAX_JOB_TIMEOUT


_SIZE_UNITS = frozenset(
    ["", "B"] + [u + i + b for u in "KMG" for i in ("", "I") for b in ("", "B")]
)


def _size(v: str) -> bool:
    digits = v.rstrip("KMGIBkmgib")
    return digits.isdigit() and v[len(digits) :].upper() in _SIZE_UNITS and int(digits) > 0


def _ipv4(v: str) -> bool:
    parts = v.split(".")
    return len(parts) == 4 and all(
        p.isdigit() and len(p) <= 3 and (p == "0" or p[0] != "0") and int(p) <= 255 for p in parts
    )


def _group_name(v: str) -> bool:
    return (
        len(v) <= 32
        and v[0] in "abcdefghijklmnopqrstuvwxyz_"
        and all(c in "abcdefghijklmnopqrstuvwxyz0123456789_-" for c in v[1:])
    )


def _one_of(*words: str) -> Callable[[str], bool]:
    return lambda v: v.lower() in words


_SURE: dict[str, Callable[[str], bool]] = {
    "interface": _ipv4,
    "publish_port": _port,
    "return_port": _port,
    "key_port": _port,
    "max_connections": _positive_int,
    "result_quota": _size,
    "state_dir": _absolute_path,
    # common/settings.py store(): sqlite or a PostgreSQL URI (the CLI's
    # control socket does not depend on it)
    "store": lambda v: v == "sqlite" or v.startswith(("postgresql://", "postgres://")),
    "config_dir": _absolute_path,
    "auto_accept": _one_of("true", "false"),
    "job_timeout": _job_timeout,
    "keep_jobs": _duration,
    "admin_group": _group_name,
    "control_socket": _absolute_path,
    "log_level": _one_of("debug", "info", "warning", "error"),
}


# ---- the request and its answer ----


def _answer(path: str, command: tuple[str, str], options: dict[str, str], as_json: bool) -> int:
    keys = command == ("keys", "list")
    if keys:
        frame = pack_request(KEYS, {"action": "list", "ids": []})
    else:
        request = _jobs_list_request(options)
        frame = pack_request(JOBS, request)
    body = _ask(path, frame, KEYS_REPLY if keys else JOBS_REPLY)
    out = sys.stdout
    if as_json:
        from safcm.master import jsonout

        write_json(jsonout.keys_document(body) if keys else jsonout.jobs_list_document(body), out)
    else:
        style = Style(use_colour(out))
        if keys:
            out.write(render_keys(body, style))
        else:
            out.write(render_jobs_table(body["jobs"], style, request["limit"]))
        out.write("\n")
    # Now, not at exit: a reader gone away (| head) is then a BrokenPipeError
    # that cli.guarded() reports as the full command line does.
    out.flush()
    return EXIT_OK


def _ask(path: str, frame: bytes, reply_code: int) -> dict[str, Any]:
    """The body of the daemon's one reply of type `reply_code` to `frame`.
    RemoteError for its ERROR, DaemonError if it does not answer in time,
    _Decline for anything else (the full command line asks again, and says
    what happened: the light commands change nothing)."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(path)
        except OSError:
            raise _Decline from None
        # Not contextlib.suppress: contextlib loads collections and functools (3 ms).
        try:  # noqa: SIM105
            sock.sendall(frame)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused at once: its ERROR is still there to read
        sock.settimeout(REQUEST_TIMEOUT)
        reader = FrameReader()
        frames: list[bytes] = []
        while not frames:
            try:
                data = sock.recv(READ_CHUNK)
            except TimeoutError:
                raise DaemonError(NO_ANSWER) from None
            except ConnectionResetError:
                data = b""
            if not data:
                raise _Decline  # closed without an answer
            frames = reader.feed(data)
        code, body = unpack_reply(frames[0])
    except ProtocolError:
        raise _Decline from None
    finally:
        sock.close()
    if code == ERROR:
        raise RemoteError(body["code"], body["message"], body["problems"])
    if code != reply_code:
        raise _Decline
    return body


if __name__ == "__main__":
    sys.exit(main())
