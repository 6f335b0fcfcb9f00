"""What every program the minion starts for the administrator inherits from
it on purpose: its umask (trigger commands, cmd jobs, apt and dpkg,
systemctl and journalctl; each passes CHILD_UMASK to subprocess).

The daemon's own umask is private (the unit's UMask=0077), so that what it
writes (keys, spool, content cache) is root's alone whatever the code says
about a mode. Its children must not inherit that: a trigger's `touch`, a
`cmd` that writes a file, a package's maintainer script would make files
that only root can read (0600), where root's login shell makes them 0644.
"""

from __future__ import annotations

# The umask of the minion's children: Debian's default for root (login.defs,
# pam_umask), so a command does what it does in an administrator's shell.
CHILD_UMASK = 0o022
