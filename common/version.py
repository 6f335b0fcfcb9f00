"""The version of safcm that is running, as daemons report it to each other.

The one place it is written: pyproject.toml reads it from here (dynamic
version), so the commands need no package metadata lookup at start-up
(importlib.metadata costs about 25 ms, a tenth of a CLI call).
"""

VERSION = "0.1.0"
