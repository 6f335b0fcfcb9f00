"""Daemon log lines: one line per event, escaped, with journald priorities under systemd."""

from __future__ import annotations

import os
import subprocess
import sys


def log_once(env: dict) -> str:
    code = (
        "import logging; from safcm.common import log; log.setup('debug');"
        "logging.getLogger('safcm-test').warning('peer said %s', 'hi\\nforged line\\x1b[2J')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    return proc.stderr


def test_plain_stderr_has_time_level_and_one_line():
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    line = log_once(env)
    assert line.count("\n") == 1
    assert " warning safcm-test: peer said hi\\nforged line\\x1b[2J" in line


def test_journal_stream_gets_priority_prefixes(tmp_path):
    # Point JOURNAL_STREAM at the file that is the child's stderr, as systemd would.
    out = tmp_path / "stderr"
    with open(out, "w") as f:
        st = os.fstat(f.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        code = (
            "import logging; from safcm.common import log; log.setup('info');"
            "logging.getLogger('x').error('bad'); logging.getLogger('x').info('fine')"
        )
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        subprocess.run([sys.executable, "-c", code], stderr=f, env=env, check=True, cwd=root)
    assert out.read_text() == "<3>x: bad\n<6>x: fine\n"
