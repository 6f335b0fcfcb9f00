"""The version of safcm that is running, as daemons report it to each other."""

from importlib import metadata

try:
    VERSION = metadata.version("safcm")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    VERSION = "0.1.0+source"
