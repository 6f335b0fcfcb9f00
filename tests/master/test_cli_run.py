"""`safcm-master run` against a fake daemon that goes away in every way it can:
exit 2 only when nothing was done, exit 1 once the job may have started; and
run --json's results kept in a temporary file, not in memory."""

from __future__ import annotations

import hashlib
import io
import json
import os
import resource
import socket
import tempfile
import threading
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safcm.common.protocol import FrameReader, MsgType, encode_frame, encode_plain
from safcm.master import cli, jsonout, resultspool
from safcm.master.settings import MasterSettings
from safcm.master.tables import write_json
from tests.common.strategies import jids, minion_ids, result_bodies

JID = "20260101T000000.000001Z"
STARTED = (MsgType.RUN_STARTED, {"jid": JID, "hosts": ["web1"], "skipped": []})
ERROR = (MsgType.ERROR, {"code": "internal", "message": "boom", "problems": []})


class FakeDaemon:
    """Listens on a control socket, reads one request, sends `replies`, then
    closes, sends half a frame, or stays silent, as `then` says."""

    def __init__(self, path: str, replies: list, then: str) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(1)
        self.replies, self.then = replies, then
        self.release = threading.Event()
        self.thread = threading.Thread(target=self.serve)
        self.thread.start()

    def serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            reader = FrameReader()
            while not reader.feed(conn.recv(65536)):
                pass
            for msg_type, body in self.replies:
                conn.sendall(encode_frame(encode_plain(msg_type, body)))
            if self.then == "half a frame":
                conn.sendall(encode_frame(encode_plain(*STARTED))[:10])
            elif self.then == "silent":
                self.release.wait()

    def close(self) -> None:
        self.release.set()
        self.thread.join()
        self.listener.close()


@pytest.fixture
def daemon(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "RUN_GRACE", 0.5)  # how long the CLI waits past the timeout
    settings = tmp_path / "master.yaml"
    path = str(tmp_path / "control.sock")
    settings.write_text(f"state_dir: {tmp_path}\ncontrol_socket: {path}\n")
    fakes = []

    def start(replies: list, then: str) -> list[str]:
        fakes.append(FakeDaemon(path, replies, then))
        return ["-c", str(settings), "run", "web1", "ping", "--timeout", "1"]

    yield start
    for fake in fakes:
        fake.close()


@pytest.mark.parametrize(
    ("replies", "then", "lost"),
    [
        ([STARTED], "close", "closed the connection before the job finished"),
        ([STARTED], "silent", "lost the master daemon during the run"),
        ([STARTED], "half a frame", "lost the master daemon during the run"),
        ([STARTED, ERROR], "close", "failed during the run (boom)"),
    ],
)
def test_a_daemon_lost_after_the_job_started_is_exit_1(daemon, capsys, replies, then, lost):
    assert cli.main(daemon(replies, then)) == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert lost in err
    assert f"the job goes on: see safcm-master jobs show {JID}" in err


@pytest.mark.parametrize("then", ["close", "silent"])
def test_a_daemon_lost_before_it_confirmed_may_still_have_started_it(daemon, capsys, then):
    assert cli.main(daemon([], then)) == cli.EXIT_FAILED
    assert "it may have started: see safcm-master jobs list" in capsys.readouterr().err


def test_nothing_was_done_is_exit_2(daemon, capsys, tmp_path):
    assert cli.main(daemon([ERROR], "close")) == cli.EXIT_USAGE  # refused: nothing started
    assert "boom" in capsys.readouterr().err
    missing = tmp_path / "other.yaml"
    missing.write_text(f"state_dir: {tmp_path}\ncontrol_socket: {tmp_path}/none.sock\n")
    assert cli.main(["-c", str(missing), "run", "web1", "ping"]) == cli.EXIT_USAGE
    assert "the master daemon is not running" in capsys.readouterr().err


# ---- run --json: the results kept in a temporary file (master/resultspool.py) ----


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Digest:
    """An output stream that keeps only the SHA-256 of what was written."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()

    def write(self, text: str) -> int:
        self.hash.update(text.encode())
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def scripted_run(replies: list, options: list[str], out) -> int:
    """`run` (run_command(), as cli.main calls it) against a FakeDaemon that
    sends `replies` and closes; its exit code."""
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "control.sock")
        settings = MasterSettings(state_dir=directory, control_socket=path, job_timeout=1)
        args = cli.build_parser("run").parse_args(["run", "web*", "files", *options])
        fake = FakeDaemon(path, replies, "close")
        try:
            return cli.run_command(settings, args, out, io.StringIO())
        finally:
            fake.close()


@st.composite
def runs(draw: st.DrawFn) -> tuple[list, dict, dict, list | None, list]:
    """A run as the daemon tells it: its replies, and what run_document() is
    given for it: RUN_STARTED bodies gathered, results by host (the last
    wins), batches, hosts not run."""
    names = draw(st.lists(minion_ids, unique=True, max_size=8))
    cut1 = draw(st.integers(0, len(names)))
    cut2 = draw(st.integers(cut1, len(names)))
    hosts, skipped, not_run = names[:cut1], names[cut1:cut2], names[cut2:]
    skipped = [{"host": h, "reason": draw(st.text(min_size=1, max_size=8))} for h in skipped]
    batched = draw(st.booleans())
    not_run = [{"host": h, "reason": "not run"} for h in not_run] if batched else []
    size = draw(st.integers(1, 3)) if batched else max(1, len(hosts))
    parts = [hosts[i : i + size] for i in range(0, len(hosts), size)] or [[]]
    batch_jids = draw(st.lists(jids, unique=True, min_size=len(parts), max_size=len(parts)))
    notes = [{"host": h, "note": "not connected"} for h in hosts if draw(st.booleans())]
    started = {"jid": batch_jids[0], "hosts": hosts, "skipped": skipped, "notes": notes}
    replies, results, batches = [], {}, []
    for number, (jid, part) in enumerate(zip(batch_jids, parts, strict=True), 1):
        body = {
            "jid": jid,
            "hosts": part,
            "skipped": skipped if number == 1 else [],
            "notes": [n for n in notes if n["host"] in part],
        }
        if batched:
            body["batch"] = {"number": number, "of": len(parts)}
            batches.append({"jid": jid, "hosts": part})
        replies.append((MsgType.RUN_STARTED, body))
        # Some hosts answer (one of them maybe twice), in any order; the rest stay pending.
        answering = draw(st.lists(st.sampled_from(part), max_size=len(part) + 1)) if part else []
        for host in answering:
            result = draw(st.none() | result_bodies())
            status = "no response" if result is None else result["status"]
            replies.append(
                (
                    MsgType.RUN_HOST_RESULT,
                    {"jid": jid, "host": host, "status": status, "result": result},
                )
            )
            results[host] = result
    summary = {"targeted": len(hosts), "changed": 0, "unchanged": 0, "failed": 0}
    done: dict = {"jid": batch_jids[-1], "summary": {**summary, "no_response": 0}}
    if batched:
        done["not_run"] = not_run
    replies.append((MsgType.RUN_DONE, done))
    return replies, started, results, batches if batched else None, not_run


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(run=runs(), tty=st.booleans())
def test_run_json_writes_the_document_of_run_document(run, tty):
    """The document is written a host at a time, each result read back from
    the temporary file: the very text write_json(run_document()) gives, on a
    terminal (indented) and not (compact), hosts sorted, the last result of
    a host kept."""
    replies, started, results, batches, not_run = run
    out, whole = (Terminal(), Terminal()) if tty else (io.StringIO(), io.StringIO())
    scripted_run(replies, ["--json"], out)
    request = {"target": "web*", "group": False, "module": "files", "dry_run": False}
    write_json(jsonout.run_document(started, request, results, batches, not_run), whole)
    assert out.getvalue() == whole.getvalue()
    hosts = [h["host"] for h in json.loads(out.getvalue())["hosts"]]
    assert hosts == sorted(hosts)


# Hosts of the memory test, each with a result of about RESULT_MIB MiB (one
# diff): the run's results come to HOSTS * RESULT_MIB MiB.
HOSTS, RESULT_MIB = 40, 1


def big_result() -> dict:
    state = {"type": "file", "mode": 0o644, "uid": 0, "gid": 0, "user": "root", "group": "root"}
    diff = ("+" + "x" * 1023 + "\n") * (RESULT_MIB * 1024)
    change = {"path": "/etc/big", "created": True, "old": None, "new": state, "diff": diff}
    change.update(outcome="applied", reason="")
    apply = {"dry_run": False, "changes": [change], "triggers": [], "failures": []}
    apply.update(owed=[], duration=0.5)
    return {
        "module": "files",
        "status": "ok",
        "started": 1.0e9,
        "finished": 1.0e9 + 1,
        "apply": apply,
        "ping": None,
        "error": None,
    }


@pytest.mark.parametrize("options", [[], ["--json"]])
def test_a_run_holds_about_one_result_at_a_time(options):
    """Text prints each result and keeps none; --json keeps them in the
    temporary file, not in memory: the CLI's peak of Python memory stays
    far below the run's results, HOSTS * RESULT_MIB MiB."""
    hosts = [f"web{i:02d}" for i in range(HOSTS)]
    result = big_result()
    replies = [(MsgType.RUN_STARTED, {"jid": JID, "hosts": hosts, "skipped": []})]
    for host in reversed(hosts):
        replies.append(
            (MsgType.RUN_HOST_RESULT, {"jid": JID, "host": host, "status": "ok", "result": result})
        )
    summary = {"targeted": HOSTS, "changed": HOSTS, "unchanged": 0, "failed": 0, "no_response": 0}
    replies.append((MsgType.RUN_DONE, {"jid": JID, "summary": summary}))
    out = Digest()
    tracemalloc.start()
    try:
        assert scripted_run(replies, options, out) == cli.EXIT_OK
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < HOSTS * RESULT_MIB * 2**20 / 3, f"peak {peak / 2**20:.1f} MiB"
    if options:
        whole = io.StringIO()
        started = {"jid": JID, "hosts": hosts, "skipped": []}
        request = {"target": "web*", "group": False, "module": "files", "dry_run": False}
        write_json(jsonout.run_document(started, request, dict.fromkeys(hosts, result)), whole)
        assert out.hash.hexdigest() == hashlib.sha256(whole.getvalue().encode()).hexdigest()


@pytest.fixture
def spools(monkeypatch):
    """Every ResultSpool a run makes, kept here after the run (so that only
    close(), not the garbage collector, can have closed its file)."""
    made: list[resultspool.ResultSpool] = []

    class Recorded(resultspool.ResultSpool):
        def __init__(self) -> None:
            super().__init__()
            made.append(self)

    monkeypatch.setattr(resultspool, "ResultSpool", Recorded)
    return made


SUMMARY = {"targeted": 1, "changed": 0, "unchanged": 0, "failed": 0}
RESULT = (
    MsgType.RUN_HOST_RESULT,
    {"jid": JID, "host": "web1", "status": "no response", "result": None},
)


@pytest.mark.parametrize(
    ("replies", "then"),
    [
        ([STARTED, RESULT], "close"),
        ([STARTED, RESULT], "half a frame"),
        ([STARTED, RESULT, ERROR], "close"),
    ],
)
def test_a_run_cut_short_closes_its_temporary_file(daemon, capsys, spools, replies, then):
    """The daemon lost after a result was kept: as without the file (exit 1,
    the error document of kind lost), and the file is closed."""
    assert cli.main([*daemon(replies, then), "--json"]) == cli.EXIT_FAILED
    doc = json.loads(capsys.readouterr().out)
    assert (doc["error"]["kind"], doc["jid"]) == ("lost", JID)
    [spool] = spools
    assert "web1" in spool and spool.file.closed


def test_a_run_closes_its_temporary_file(daemon, capsys, spools):
    done = (MsgType.RUN_DONE, {"jid": JID, "summary": {**SUMMARY, "no_response": 1}})
    assert cli.main([*daemon([STARTED, RESULT, done], "close"), "--json"]) == cli.EXIT_FAILED
    assert json.loads(capsys.readouterr().out)["summary"]["no response"] == 1
    [spool] = spools
    assert spool.file.closed


@pytest.fixture
def file_size_limit():
    """Files written from now on are cut at 64 KiB (EFBIG; Python ignores SIGXFSZ)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    yield
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_a_result_that_cannot_be_kept_fails_the_run_not_the_daemon(
    daemon, capsys, spools, file_size_limit
):
    """A temporary file that takes no more (a full disk): exit 1, an error
    document that says so and names the job, which goes on; the file closed."""
    big = (
        MsgType.RUN_HOST_RESULT,
        {"jid": JID, "host": "web1", "status": "ok", "result": big_result()},
    )
    assert cli.main([*daemon([STARTED, big], "close"), "--json"]) == cli.EXIT_FAILED
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert (doc["error"]["kind"], doc["jid"]) == ("failed", JID)
    assert (
        "the results could not be kept for --json (cannot write the result of web1"
        in (doc["error"]["message"])
    )
    assert f"the job goes on: see safcm-master jobs show {JID}" in captured.err
    assert "lost the master daemon" not in captured.err
    [spool] = spools
    assert spool.file.closed


def test_no_temporary_file_is_nothing_done(tmp_path, capsys, monkeypatch):
    """Checked before the request is sent: exit 2, and the daemon (none
    runs here) is never asked."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    settings = tmp_path / "master.yaml"
    settings.write_text(f"state_dir: {tmp_path}\ncontrol_socket: {tmp_path}/none.sock\n")
    assert cli.main(["-c", str(settings), "run", "web1", "ping", "--json"]) == cli.EXIT_USAGE
    captured = capsys.readouterr()
    assert json.loads(captured.out)["error"]["kind"] == "usage"
    assert f"cannot make a temporary file for the results in {tmp_path}/missing" in captured.err
    assert "set TMPDIR" in captured.err


def test_a_result_that_cannot_be_read_back_ends_the_written_part_first(daemon, capsys, monkeypatch):
    """The document is cut short where the result could not be read back
    (its file truncated); the error document follows on a line of its own."""

    class Truncated(resultspool.ResultSpool):
        def statuses(self) -> dict[str, str]:
            self.file.truncate(0)  # as the document starts
            return super().statuses()

    monkeypatch.setattr(resultspool, "ResultSpool", Truncated)
    done = (MsgType.RUN_DONE, {"jid": JID, "summary": {**SUMMARY, "no_response": 1}})
    assert cli.main([*daemon([STARTED, RESULT, done], "close"), "--json"]) == cli.EXIT_FAILED
    written, error = capsys.readouterr().out.splitlines()
    assert written.startswith('{"dry_run":false,"format":"safcm/1","group":false,"hosts":[')
    doc = json.loads(error)
    assert (doc["error"]["kind"], doc["jid"]) == ("failed", JID)
    assert "the result of web1 was cut short in the temporary file" in doc["error"]["message"]
