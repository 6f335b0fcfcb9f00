"""Command-line options that both commands share."""

from __future__ import annotations

import argparse


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    """-v and -q for a daemon: log_level debug or warning, whatever the settings
    say; read back as `args.log_level` (None when neither is given)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "-v",
        "--verbose",
        dest="log_level",
        action="store_const",
        const="debug",
        help="log at debug level (overrides log_level)",
    )
    group.add_argument(
        "-q",
        "--quiet",
        dest="log_level",
        action="store_const",
        const="warning",
        help="log warnings and errors only (overrides log_level)",
    )
