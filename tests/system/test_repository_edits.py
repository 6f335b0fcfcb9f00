"""The master keeps the repository it loaded (master/repocache.py): a run
with nothing changed does not read it again, and a run after an edit applies
the edit."""

from __future__ import annotations

import os
import time

from safcm.master.repocache import RACY_WINDOW_NS, walk_tree
from safcm.master.sandbox import wait_for
from tests.system.conftest import SETTLE, changed_paths, enrol, logged, run_json

FLAGS = "etc/app/feature-flags.conf"  # web1's own file in the example repository


def test_a_run_after_an_edit_applies_it(sandbox):
    enrol(sandbox, "web1")
    # The master keeps a load only once the tree is older than the racy
    # window (it was copied when the sandbox was made): wait for that clock
    # condition, so that the edit below is judged against a kept load.
    walked = walk_tree(sandbox.config_dir)
    assert walked is not None
    wait_for(
        lambda: time.time_ns() > walked.newest_ns + RACY_WINDOW_NS,
        SETTLE,
        "the repository to be older than the racy window",
    )
    code, doc = run_json(sandbox, "web1", "files")
    assert code == 0, doc
    logged(sandbox.master, f"repository {sandbox.config_dir} loaded (")
    code, doc = run_json(sandbox, "web1", "files")
    assert code == 0 and changed_paths(doc, "web1") == []
    logged(sandbox.master, f"repository {sandbox.config_dir} unchanged: not read again")

    # The same size, and the old mtime put back: only ctime tells.
    source = os.path.join(sandbox.config_dir, "web1", "files", FLAGS)
    before = os.stat(source)
    with open(source, "rb") as f:
        old = f.read()
    new = old.replace(b"new_checkout = on", b"new_checkout = no")
    assert len(new) == len(old) and new != old
    with open(source, "wb") as f:
        f.write(new)
    os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))

    code, doc = run_json(sandbox, "web1", "files")
    assert code == 0, doc
    assert changed_paths(doc, "web1") == ["/" + FLAGS]
    with open(os.path.join(sandbox.root("web1"), FLAGS), "rb") as f:
        assert f.read() == new
