"""The results of `run --json`, kept in a temporary file until the run is done.

`run --json` prints one document when the run is done, its hosts sorted by
host, and the results come as the hosts answer, in any order. Held in
memory, the results of 10,000 hosts of a files create (their diffs) would
cost the CLI over a GiB. So each result is written, as it comes, to an
anonymous temporary file (unlinked at once: it goes with the process,
however that ends), and only a few bytes per host stay in memory: where its
result is, and its outcome for the summary. The document is then written a
host at a time (jsonout.run_hosts(), tables.write_json_streamed()), each
result read back when its turn comes: the CLI holds about one result at a
time.

A result is stored as msgpack (common/codec.py), the form it came in over
the control socket, so it reads back equal to what came: the same lists,
str, bytes and floats.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from safcm.common import codec
from safcm.common.errors import ScratchFileError
from safcm.master.outcomes import outcome


class _Spooled(NamedTuple):
    """Where a host's result is in the file, and its outcome."""

    offset: int
    length: int
    status: str


class ResultSpool(Mapping[str, dict[str, Any] | None]):
    """Host -> result (None: no response), as a dict of them would be, with
    the results in a temporary file. A host added again keeps its last
    result, as a dict would. Close it (it is a context manager): that frees
    the file."""

    def __init__(self) -> None:
        try:
            # Unlinked at once (O_TMPFILE where the system has it), in TMPDIR.
            self.file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        except OSError as e:
            raise ScratchFileError(
                f"cannot make a temporary file for the results in {tempfile.gettempdir()}: "
                f"{e.strerror}"
            ) from e
        self.index: dict[str, _Spooled] = {}

    def add(self, host: str, result: dict[str, Any] | None) -> None:
        data = codec.pack(result)
        try:
            offset = self.file.seek(0, os.SEEK_END)
            self.file.write(data)
        except OSError as e:
            raise ScratchFileError(f"cannot write the result of {host}: {e.strerror}") from e
        self.index[host] = _Spooled(offset, len(data), outcome(result))

    def statuses(self) -> dict[str, str]:
        """Each host's outcome, without reading a result back."""
        return {host: spooled.status for host, spooled in self.index.items()}

    def __getitem__(self, host: str) -> dict[str, Any] | None:
        spooled = self.index[host]
        try:
            self.file.seek(spooled.offset)
            data = self.file.read(spooled.length)
        except OSError as e:
            raise ScratchFileError(f"cannot read back the result of {host}: {e.strerror}") from e
        if len(data) != spooled.length:
            raise ScratchFileError(f"the result of {host} was cut short in the temporary file")
        result: dict[str, Any] | None = codec.unpack_own(data)
        return result

    def __contains__(self, host: object) -> bool:
        return host in self.index

    def __iter__(self) -> Iterator[str]:
        return iter(self.index)

    def __len__(self) -> int:
        return len(self.index)

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> ResultSpool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
