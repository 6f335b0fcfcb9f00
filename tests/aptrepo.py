"""A local apt repository for the packages tests: tiny .deb files, no network.

The packages are built with dpkg-deb in a temporary directory, indexed with
apt-ftparchive (apt-utils) and reached through an apt configuration file of
their own (APT_CONFIG, the minion's `apt_config` setting): its own
sources.list, package lists and cache, so the machine's sources and lists
are neither read nor changed. dpkg's database is the machine's: the
packages are really installed, which is why every name starts with
`safcm-test-` and `purge_test_packages()` removes them all again.

apt and dpkg lock the machine: these tests never run in parallel with each
other, and wait (bounded) for a lock another process holds.
"""

from __future__ import annotations

import os
import subprocess
import time

PREFIX = "safcm-test-"
# Seconds to wait for the dpkg lock another apt or dpkg holds.
LOCK_WAIT = 60.0


class AptRepo:
    def __init__(self, base: str) -> None:
        self.base = base
        self.pool = os.path.join(base, "repo")
        self.build = os.path.join(base, "build")
        for d in (self.pool, self.build, f"{base}/lists/partial", f"{base}/cache/archives/partial"):
            os.makedirs(d, exist_ok=True)
        os.makedirs(f"{base}/sources.list.d", exist_ok=True)
        with open(f"{base}/sources.list", "w") as f:
            f.write(f"deb [trusted=yes] file:{self.pool} ./\n")
        self.apt_config = f"{base}/apt.conf"
        with open(self.apt_config, "w") as f:
            f.write(
                f'Dir::Etc::SourceList "{base}/sources.list";\n'
                f'Dir::Etc::SourceParts "{base}/sources.list.d";\n'
                f'Dir::State::Lists "{base}/lists";\n'
                f'Dir::Cache "{base}/cache";\n'
                # The temporary directory is not readable by apt's _apt user.
                'APT::Sandbox::User "root";\n'
            )

    def add(
        self,
        name: str,
        version: str,
        *,
        depends: str | None = None,
        postinst_exit: int | None = None,
    ) -> None:
        """Build safcm-test-NAME at VERSION into the pool (publish() indexes it)."""
        package = PREFIX + name
        root = os.path.join(self.build, f"{package}_{version}")
        os.makedirs(f"{root}/DEBIAN")
        os.makedirs(f"{root}/usr/share/doc/{package}")
        control = (
            f"Package: {package}\nVersion: {version}\nArchitecture: all\n"
            "Maintainer: safcm tests <root@localhost>\n"
            f"Description: safcm test package {name}\n"
        )
        if depends is not None:
            control += f"Depends: {depends}\n"
        with open(f"{root}/DEBIAN/control", "w") as f:
            f.write(control)
        if postinst_exit is not None:
            with open(f"{root}/DEBIAN/postinst", "w") as f:
                f.write(
                    f"#!/bin/sh\necho 'postinst of {package} fails' >&2\nexit {postinst_exit}\n"
                )
            os.chmod(f"{root}/DEBIAN/postinst", 0o755)
        with open(f"{root}/usr/share/doc/{package}/version", "w") as f:
            f.write(version + "\n")
        subprocess.run(
            ["dpkg-deb", "--root-owner-group", "-Zgzip", "-b", root, self.pool],
            check=True,
            capture_output=True,
        )

    def remove_version(self, name: str, version: str) -> None:
        os.unlink(os.path.join(self.pool, f"{PREFIX}{name}_{version}_all.deb"))

    def publish(self) -> None:
        """Index the pool and read the index into this repository's own lists."""
        packages = subprocess.run(
            ["apt-ftparchive", "packages", "."],
            cwd=self.pool,
            check=True,
            capture_output=True,
        ).stdout
        with open(os.path.join(self.pool, "Packages"), "wb") as f:
            f.write(packages)
        subprocess.run(
            ["apt-get", "-q", "update"],
            env={**os.environ, "APT_CONFIG": self.apt_config, "LC_ALL": "C.UTF-8"},
            check=True,
            capture_output=True,
        )


def installed_test_packages() -> dict[str, str]:
    """safcm-test-* packages dpkg knows as present: name -> "status version"."""
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package}\t${Status}\t${Version}\n", PREFIX + "*"],
        check=False,
        capture_output=True,
        text=True,
    ).stdout
    found = {}
    for line in out.splitlines():
        name, status, version = line.split("\t")
        if not status.endswith((" not-installed", " config-files")):
            found[name] = f"{status.split()[-1]} {version}"
    return found


def purge_test_packages() -> None:
    """Purge every safcm-test-* package, whatever its state; waits for the dpkg lock."""
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package}\n", PREFIX + "*"],
        check=False,
        capture_output=True,
        text=True,
    ).stdout
    names = [n for n in out.split() if n.startswith(PREFIX)]
    if not names:
        return
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        ran = subprocess.run(
            ["dpkg", "--purge", "--force-all", *names],
            check=False,
            capture_output=True,
            text=True,
        )
        if ran.returncode == 0 or "lock" not in ran.stderr or time.monotonic() > deadline:
            break
        time.sleep(0.5)  # another apt or dpkg holds the lock: poll until it is free
    left = installed_test_packages()
    if left:
        raise RuntimeError(f"test packages left installed: {left}; dpkg said: {ran.stderr}")
