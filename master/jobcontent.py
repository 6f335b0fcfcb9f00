"""A job's content, stored once, and what each host's envelope carries of it.

A files job is, for each host, a JOB body: a manifest (every path with its
type, mode, owners, triggers and, for a regular file, the SHA-256 of its
content) and the content itself. Hosts share most content (a group's files),
and a host that ran a job before has most of it already (the minion keeps
what it received: minion/content.py). So the master keeps apart:

    manifests   one per distinct host body, content left out (data None)
    content     each distinct file content of the job, once, by digest
    include     per host: the digests its envelope carries, those it lacks

A host is taken to have the content of the last files job it completed
(KnownContent: a result that was not an error means the minion had every
content of that job, and its cache keeps it); everything else is included.
If the host lacks more than the master thought (its cache was cleared), the
minion asks for it (CONTENT_REQUEST), and gets only content of its own job.

Envelopes are sealed from this when they are published (master/publish.py),
not when the job is submitted: sealing is randomised anyway, so each
publish of the same jid may be a fresh envelope. Everything here is pure.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from safcm.common import codec
from safcm.common.model import FileType
from safcm.common.protocol import MAX_BODY_DEPTH


def manifest_of(
    body: dict[str, Any], bare: dict[int, tuple[Any, Any]] | None = None
) -> tuple[dict[str, Any], dict[bytes, bytes]]:
    """Split a full JOB body into its manifest (regular files' data left out)
    and its content by digest (shared by the bodies that share the list: not
    to be changed). A job without files (ping) is its own manifest.
    `bare` keeps the manifest form of each file map and of each list of them
    by id (with the map or list, so the id stays its own): bodies that share
    file maps or whole lists (master/modules/files.py) share their manifest
    forms too."""
    manifest = dict(body)
    content: dict[bytes, bytes] = {}
    if "files" not in body:
        return manifest, content
    bare = {} if bare is None else bare
    known = bare.get(id(body["files"]))
    if known is None:
        files = []
        for f in body["files"]:
            if f["type"] == FileType.FILE:
                content[f["digest"]] = f["data"]
                form = bare.get(id(f))
                if form is None:
                    form = bare[id(f)] = (f, {**f, "data": None})
                files.append(form[1])
            else:
                files.append(f)
        known = bare[id(body["files"])] = (body["files"], (files, content))
    manifest["files"], content = known[1]
    return manifest, content


def digests_of(manifest: Mapping[str, Any]) -> list[bytes]:
    """The content digests a manifest names, each once, in file order."""
    files = manifest.get("files", [])
    return list(dict.fromkeys(f["digest"] for f in files if f["digest"] is not None))


def with_content(
    manifest: Mapping[str, Any], include: Iterable[bytes], content: Mapping[bytes, bytes]
) -> dict[str, Any]:
    """The JOB body to seal for one host: the manifest, with the content of
    the digests in `include` filled in."""
    wanted = set(include)
    body = dict(manifest)
    if "files" not in manifest:
        return body
    body["files"] = [
        {**f, "data": content[f["digest"]]} if f["digest"] in wanted else f
        for f in manifest["files"]
    ]
    return body


def pack_manifest(
    manifest: Mapping[str, Any], packed_files: bytes | None = None
) -> tuple[str, bytes]:
    """(digest in hex, msgpack bytes) of a manifest: hosts with equal
    manifests share one stored copy. `packed_files`: its "files" packed
    already (manifests that share the list pack it once)."""
    # Manifests are built by one code path (FileSpec.to_wire() in the same
    # order), so equal manifests pack to equal bytes without sorting keys.
    if packed_files is None:
        data = codec.pack(manifest)
    else:
        data = codec.pack_with(manifest, "files", packed_files)
    return hashlib.sha256(data).hexdigest(), data


def body_bytes(
    manifest_bytes: int, include: Iterable[bytes], content: Mapping[bytes, bytes]
) -> int:
    """About the packed size of the body with `include` filled in: the
    manifest plus each content and its msgpack header (at most 5 bytes)."""
    return manifest_bytes + sum(len(content[d]) + 5 for d in include)


# Bytes of packed bodies with content that a job keeps for the hosts to
# come (JobParts.packed_body()): a first run's one body per group of hosts
# is then checked and packed once, not once per host. They copy content the
# job holds anyway (JobParts.content), for as long as the job is open, so
# the bound is small: a larger body's check and pack cost little beside
# sealing it (bench/crypto.py: 1 MiB seals at about 240 a second).
FULL_BODIES_BYTES = 8 * 1024 * 1024


@dataclass
class HostPart:
    """What one host's envelope is made of."""

    manifest: str  # digest of its manifest (JobParts.manifests)
    include: list[bytes]  # content digests its envelope carries


@dataclass
class JobParts:
    """One job, as stored and published."""

    deadline: float
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)  # digest -> manifest
    packed: dict[str, bytes] = field(default_factory=dict)  # digest -> msgpack of it
    content: dict[bytes, bytes] = field(default_factory=dict)  # digest -> data
    hosts: dict[str, HostPart] = field(default_factory=dict)
    # manifest digest -> that manifest packed as a body (packed_body())
    _bare: dict[str, bytes] = field(default_factory=dict)
    # (manifest digest, include) -> that body packed, the oldest first, and
    # their bytes (packed_body())
    _full: dict[tuple[str, tuple[bytes, ...]], bytes] = field(default_factory=dict)
    _full_bytes: int = 0
    # id of a body's file map or list of them -> (it, its manifest form), and
    # id of a manifest's list of files -> (it, packed), while hosts are added
    _bare_files: dict[int, tuple[Any, Any]] = field(default_factory=dict)
    _packed_files: dict[int, tuple[Any, bytes]] = field(default_factory=dict)
    # (id of such a list, the rest of the manifest packed) -> pack_manifest() of it
    _manifest_of: dict[tuple[int, bytes], tuple[str, bytes]] = field(default_factory=dict)

    def add(
        self, host: str, body: dict[str, Any], known: Callable[[str], frozenset[bytes]]
    ) -> HostPart:
        """Add `host` with its full JOB body; `known(host)` names the content
        it is taken to have."""
        manifest, content = manifest_of(body, self._bare_files)
        if "files" in manifest:
            # Hosts with one list of files mostly have one manifest: it is
            # packed and hashed once, by the list and the rest of the body
            # as it is placed around the files (their place kept).
            files = manifest["files"]
            rest = codec.pack({k: None if k == "files" else v for k, v in manifest.items()})
            same = self._manifest_of.get((id(files), rest))
            if same is None:
                seen = self._packed_files.get(id(files))
                if seen is None:
                    seen = self._packed_files[id(files)] = (files, codec.pack(files))
                same = self._manifest_of[(id(files), rest)] = pack_manifest(manifest, seen[1])
            digest, packed = same
        else:
            digest, packed = pack_manifest(manifest)
        if digest not in self.manifests:
            self.manifests[digest] = manifest
            self.packed[digest] = packed
        self.content.update(content)
        have = known(host)
        part = HostPart(digest, [d for d in digests_of(manifest) if d not in have])
        self.hosts[host] = part
        return part

    def share(self) -> None:
        """Hosts with one manifest and one include list share one HostPart,
        so a 10,000-host job pickles (master/prepworker.py) as a few parts
        and 10,000 names, not 10,000 lists of digests. Nothing changes a
        HostPart once it is added. Called once every host is added: what
        adding kept to share file maps goes (it would pickle content twice)."""
        self._bare_files.clear()
        self._packed_files.clear()
        self._manifest_of.clear()
        shared: dict[tuple[str, tuple[bytes, ...]], HostPart] = {}
        for host, part in self.hosts.items():
            self.hosts[host] = shared.setdefault((part.manifest, tuple(part.include)), part)

    def body(self, host: str) -> dict[str, Any]:
        part = self.hosts[host]
        return with_content(self.manifests[part.manifest], part.include, self.content)

    def packed_body(self, host: str, pack: Callable[[dict[str, Any]], bytes]) -> bytes:
        """body(host) packed by `pack`. A body without content (the host has it
        all: a no-op run) is packed once for every host with that manifest;
        one with content once for the hosts with the same manifest and
        content (a first run), while the latest such bodies, up to
        FULL_BODIES_BYTES, are kept."""
        part = self.hosts[host]
        if not part.include:
            packed = self._bare.get(part.manifest)
            if packed is None:
                packed = self._bare[part.manifest] = pack(self.manifests[part.manifest])
            return packed
        key = (part.manifest, tuple(part.include))
        packed = self._full.get(key)
        if packed is None:
            packed = pack(self.body(host))
            while self._full and self._full_bytes + len(packed) > FULL_BODIES_BYTES:
                self._full_bytes -= len(self._full.pop(next(iter(self._full))))
            if len(packed) <= FULL_BODIES_BYTES:
                self._full[key] = packed
                self._full_bytes += len(packed)
        return packed

    def size(self, host: str) -> int:
        part = self.hosts[host]
        return body_bytes(len(self.packed[part.manifest]), part.include, self.content)


def unpack_manifest(data: bytes) -> dict[str, Any]:
    """A stored manifest (pack_manifest()) back as a JOB body without content."""
    manifest: dict[str, Any] = codec.unpack(data, max_depth=MAX_BODY_DEPTH)
    return manifest
