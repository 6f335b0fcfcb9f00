"""A result larger than the wire allows still reaches the master: the minion
leaves out detail, says so, and the master shows what was left out."""

from __future__ import annotations

import os

from safcm.common.protocol import MAX_RESULT_BYTES
from safcm.minion.diff import DIFF_TEXT_MAX
from tests.system.conftest import by_host, enrol, jobs_show, run_json

# Files whose every line changes, so each diff is cut at DIFF_TEXT_MAX; enough
# of them that the diffs alone are over MAX_RESULT_BYTES (the job itself,
# about 40 MB, stays below MAX_JOB_BYTES).
LINES = 800
FILES = MAX_RESULT_BYTES // DIFF_TEXT_MAX + 100


def content(version: str, i: int) -> bytes:
    return b"".join(
        b"%s line %05d of file %05d, padding text\n" % (version.encode(), n, i)
        for n in range(LINES)
    )


def test_a_result_over_the_wire_limit_is_reduced_not_lost(sandbox):
    files = os.path.join(sandbox.config_dir, "web1", "files", "big")
    os.makedirs(files)
    # Heartbeats slower than the tests' usual 0.2 s: the master, busy for a
    # second opening and storing 64 MB, would otherwise miss three in a row,
    # and the minion would reconnect (dropping the result on the way) again
    # and again.
    enrol(sandbox, "web1", heartbeat_interval=2.0)
    root = os.path.join(sandbox.root("web1"), "big")
    os.makedirs(root)
    for i in range(FILES):
        with open(os.path.join(files, f"f{i:05d}"), "wb") as f:
            f.write(content("new", i))
        with open(os.path.join(root, f"f{i:05d}"), "wb") as f:
            f.write(content("old", i))

    code, doc = run_json(sandbox, "web1", "files", "--timeout", "120")
    assert code == 0, doc
    host = by_host(doc)["web1"]
    assert host["status"] == "changed"
    reduced = host["result"]["reduced"]
    assert reduced["diffs_omitted"] > 0
    assert reduced["reason"].startswith("too large: ")
    # Every change is still reported; only some diffs were left out.
    assert reduced["changes_omitted"] == 0
    changed = {c["path"] for c in host["result"]["apply"]["changes"]}
    assert {f"/big/f{i:05d}" for i in range(FILES)} <= changed
    with open(os.path.join(root, "f00000"), "rb") as f:
        assert f.read() == content("new", 0)

    stored = jobs_show(sandbox, doc["jid"])["hosts"][0]
    assert stored["status"] == "changed" and stored["result"]["reduced"] == reduced
    human = sandbox.cli("jobs", "show", doc["jid"]).stdout
    assert f"result reduced: {reduced['diffs_omitted']} diffs omitted (too large: " in human
