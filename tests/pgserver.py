"""A real PostgreSQL server for tests and benchmarks, from Debian's packages.

The server runs as the unprivileged `postgres` user (PostgreSQL refuses to run
as root) in a temporary directory, listens on 127.0.0.1 on a free port and on a
Unix socket inside that directory, and requires a password (scram-sha-256), so
that the store's way of finding its password is exercised as in production.

    with PgServer.start() as pg:
        pg.dsn         # "postgresql://safcm@127.0.0.1:PORT/safcm"
        pg.env()       # PGPASSFILE for libpq, so no password is in the DSN
        pg.create_database("other")

It is stopped with `pg_ctl stop -m immediate` and its directory removed, also
when a test fails. Nothing here talks to the machine's own clusters.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass

# The role and database the tests use.
USER = "safcm"
DATABASE = "safcm"
# The system account that owns and runs the server; Debian's postgresql
# package creates it.
SERVER_ACCOUNT = "postgres"
# Seconds pg_ctl waits for the server to accept connections or to stop.
PG_CTL_WAIT_S = 60


class PgUnavailable(Exception):
    """This machine cannot run a PostgreSQL server (no binaries or account)."""


def bin_dir() -> str:
    """Debian's newest PostgreSQL server binaries, e.g. /usr/lib/postgresql/15/bin."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(p.split("/")[-3]) if p.split("/")[-3].isdigit() else 0,
    )
    if not found:
        raise PgUnavailable("no PostgreSQL server: install Debian's postgresql package")
    return os.path.dirname(found[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgServer:
    base: str
    port: int
    password: str
    _bin: str

    @property
    def data_dir(self) -> str:
        return os.path.join(self.base, "data")

    @property
    def passfile(self) -> str:
        return os.path.join(self.base, "pgpass")

    @property
    def dsn(self) -> str:
        return self.dsn_for(DATABASE)

    def dsn_for(self, database: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def env(self) -> dict[str, str]:
        """libpq's variables that let a client log in without a password in its DSN."""
        return {"PGPASSFILE": self.passfile}

    @classmethod
    def start(cls) -> PgServer:
        try:
            account = pwd.getpwnam(SERVER_ACCOUNT)
        except KeyError:
            raise PgUnavailable(f"no {SERVER_ACCOUNT!r} account to run the server") from None
        pg_bin = bin_dir()
        base = tempfile.mkdtemp(prefix="safcm-pg-", dir="/tmp")
        os.chmod(base, 0o755)
        server = cls(base, free_port(), secrets.token_hex(16), pg_bin)
        try:
            server._init(account)
            server._run(
                "pg_ctl",
                "-D",
                server.data_dir,
                "-l",
                os.path.join(server.data_dir, "server.log"),
                "-w",
                "-t",
                str(PG_CTL_WAIT_S),
                "-o",
                f"-p {server.port} -k {server.data_dir} -c listen_addresses=127.0.0.1",
                "start",
            )
            server.create_database(DATABASE)
        except BaseException:
            server.stop()
            raise
        return server

    def _init(self, account: pwd.struct_passwd) -> None:
        os.mkdir(self.data_dir, 0o700)
        os.chown(self.data_dir, account.pw_uid, account.pw_gid)
        pwfile = os.path.join(self.base, "initdb.pw")
        with open(pwfile, "w") as f:
            f.write(self.password + "\n")
        os.chown(pwfile, account.pw_uid, account.pw_gid)
        self._run(
            "initdb",
            "-D",
            self.data_dir,
            "-U",
            USER,
            "--pwfile",
            pwfile,
            "--auth",
            "scram-sha-256",
            "-E",
            "UTF8",
            "--locale",
            "C.UTF-8",
        )
        os.unlink(pwfile)
        # libpq refuses a password file that others can read.
        with open(self.passfile, "w") as f:
            f.write(f"127.0.0.1:{self.port}:*:{USER}:{self.password}\n")
        os.chmod(self.passfile, 0o600)

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            ["runuser", "-u", SERVER_ACCOUNT, "--", os.path.join(self._bin, tool), *args],
            check=False,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            cwd=self.base,
        )
        if done.returncode != 0:
            failure = f"{tool} failed ({done.returncode}): {done.stderr.strip()}"
            raise RuntimeError(f"{failure}\n{self.log()}")

    def create_database(self, name: str) -> None:
        # psql runs as the caller, over TCP like the store, with the password
        # file; only the server itself runs as the server account.
        done = subprocess.run(
            [
                os.path.join(self._bin, "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                USER,
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                f'CREATE DATABASE "{name}"',
            ],
            check=False,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env={**os.environ, **self.env()},
        )
        if done.returncode != 0:
            raise RuntimeError(f"creating database {name} failed: {done.stderr.strip()}")

    def restart(self) -> None:
        """Stop the server abruptly (its clients' connections break) and start it again."""
        self._run(
            "pg_ctl",
            "-D",
            self.data_dir,
            "-l",
            os.path.join(self.data_dir, "server.log"),
            "-m",
            "immediate",
            "-w",
            "-t",
            str(PG_CTL_WAIT_S),
            "-o",
            f"-p {self.port} -k {self.data_dir} -c listen_addresses=127.0.0.1",
            "restart",
        )

    def log(self) -> str:
        try:
            with open(os.path.join(self.data_dir, "server.log")) as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if os.path.exists(os.path.join(self.data_dir, "postmaster.pid")):
            subprocess.run(
                [
                    "runuser",
                    "-u",
                    SERVER_ACCOUNT,
                    "--",
                    os.path.join(self._bin, "pg_ctl"),
                    "-D",
                    self.data_dir,
                    "-m",
                    "immediate",
                    "-w",
                    "-t",
                    str(PG_CTL_WAIT_S),
                    "stop",
                ],
                check=False,
                stdin=subprocess.DEVNULL,
                capture_output=True,
            )
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PgServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
