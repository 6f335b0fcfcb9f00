"""master/jobcontent.py (pure) and how the job store keeps a job's content
once and knows what each host has."""

from __future__ import annotations

import hashlib
import pickle

import pytest

from safcm.common import codec
from safcm.common.errors import SafcmError
from safcm.common.model import FileSpec, FileType
from safcm.master import jobcontent
from safcm.master.jobcontent import (
    JobParts,
    digests_of,
    manifest_of,
    unpack_manifest,
    with_content,
)
from safcm.master.jobstore import IN_CHUNK, STORE_CHUNK, JobRecord, JobStore, StoredResult
from safcm.master.outcomes import HostStatus


def spec(path: str, data: bytes = b"", type: FileType = FileType.FILE) -> FileSpec:
    mode = 0o777 if type is FileType.SYMLINK else 0o644
    return FileSpec(path=path, type=type, mode=mode, user="root", group="root", data=data)


def body(*specs: FileSpec) -> dict:
    return {
        "module": "files",
        "dry_run": False,
        "deadline": 100.0,
        "files": [s.to_wire() for s in specs],
        "absent": [],
        "purge": [],
        "secrets": [],
    }


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


SHARED = spec("/etc/motd", b"hello\n")
ONLY_WEB1 = spec("/etc/web1.conf", b"web1 only\n")
SAME_AS_MOTD = spec("/etc/issue", b"hello\n")
DIR = spec("/etc/app", type=FileType.DIR)
LINK = spec("/etc/l", b"/etc/motd", type=FileType.SYMLINK)


def test_hosts_alike_share_one_part_and_pickle_as_one():
    """What the prepare worker sends back (master/prepworker.py): a thousand
    hosts with one manifest and one include list are one HostPart and a
    thousand names, not a thousand copies of the digests."""
    parts = JobParts(100.0)
    hosts = [f"web{i}" for i in range(1000)]
    for host in hosts:
        parts.add(host, body(SHARED, ONLY_WEB1), lambda h: frozenset())
    parts.add("old", body(SHARED, ONLY_WEB1), lambda h: frozenset([sha(b"hello\n")]))
    parts.share()
    back = pickle.loads(pickle.dumps(parts))
    assert len({id(p) for p in back.hosts.values()}) == 2  # all the webs, and "old"
    assert back.hosts["web7"].include == [sha(b"hello\n"), sha(b"web1 only\n")]
    assert back.hosts["old"].include == [sha(b"web1 only\n")]
    assert [back.body(h) for h in ["web0", "old"]] == [parts.body(h) for h in ["web0", "old"]]


def test_a_manifest_leaves_out_regular_files_content_only():
    manifest, content = manifest_of(body(SHARED, DIR, LINK, SAME_AS_MOTD))
    assert [f["data"] for f in manifest["files"]] == [None, b"", b"/etc/motd", None]
    assert content == {sha(b"hello\n"): b"hello\n"}  # two files, one content
    assert digests_of(manifest) == [sha(b"hello\n")]
    full = with_content(manifest, [sha(b"hello\n")], content)
    assert full == body(SHARED, DIR, LINK, SAME_AS_MOTD)
    assert with_content(manifest, [], content) == manifest


def test_parts_store_each_manifest_and_content_once_and_include_what_a_host_lacks():
    parts = JobParts(100.0)
    known = {"web2": frozenset({sha(b"hello\n")})}
    parts.add("web1", body(SHARED, ONLY_WEB1), lambda h: known.get(h, frozenset()))
    parts.add("web2", body(SHARED), lambda h: known.get(h, frozenset()))
    parts.add("web3", body(SHARED), lambda h: known.get(h, frozenset()))
    assert len(parts.manifests) == 2  # web2 and web3 share theirs
    assert set(parts.content) == {sha(b"hello\n"), sha(b"web1 only\n")}
    assert parts.hosts["web1"].include == [sha(b"hello\n"), sha(b"web1 only\n")]
    assert parts.hosts["web2"].include == []  # it has the content already
    assert parts.hosts["web3"].include == [sha(b"hello\n")]
    assert parts.body("web1") == body(SHARED, ONLY_WEB1)
    assert parts.body("web2")["files"][0]["data"] is None
    assert parts.size("web2") < parts.size("web3") < parts.size("web1")
    web1 = parts.hosts["web1"].manifest
    assert unpack_manifest(parts.packed[web1]) == parts.manifests[web1]


@pytest.fixture
def store(conn):
    return JobStore(conn)


def record(jid: str) -> JobRecord:
    return JobRecord(jid, 10.0, 100.0, "root", "web*", "files", False, None)


def result(jid: str, host: str, status: str = "ok") -> StoredResult:
    apply = None if status == "error" else {"dry_run": False, "changes": [], "failures": []}
    result = {"module": "files", "status": status, "apply": apply}
    return StoredResult(jid, host, HostStatus.OK, 0, result, 20.0, codec.pack(result))


def test_the_store_keeps_content_once_and_learns_what_hosts_have(store):
    first = JobParts(100.0)
    for host in ("web1", "web2"):
        first.add(host, body(SHARED, ONLY_WEB1 if host == "web1" else DIR), lambda h: frozenset())
    store.create(record("J1"), first)
    assert store.conn.execute("SELECT count(*) FROM job_content").fetchone()[0] == 2
    assert store.manifest_digests("J1", "web2") == {sha(b"hello\n")}
    assert store.manifest_digests("J1", "db1") is None
    assert store.content("J1", [sha(b"web1 only\n"), sha(b"nothing")]) == {
        sha(b"web1 only\n"): b"web1 only\n"
    }
    # Read back after a restart: what the hosts still waiting need.
    loaded = store.parts("J1")
    assert loaded.body("web1") == first.body("web1") and loaded.deadline == 100.0

    # Nothing is known before a result; a result that ran teaches the job's
    # content; an error result (the content may never have arrived) does not.
    assert store.known_content(["web1", "web2"]) == {"web1": frozenset(), "web2": frozenset()}
    store.record([], [result("J1", "web1"), result("J1", "web2", "error")], now=20)
    known = store.known_content(["web1", "web2"])
    assert known == {"web1": {sha(b"hello\n"), sha(b"web1 only\n")}, "web2": frozenset()}

    # A later job teaches its own content; an older result never goes back.
    second = JobParts(100.0)
    second.add("web1", body(SHARED), lambda h: known[h])
    assert second.hosts["web1"].include == []
    store.create(record("J2"), second)
    store.record([], [result("J2", "web1")], now=30)
    assert store.known_content(["web1"])["web1"] == {sha(b"hello\n")}
    store.conn.execute("UPDATE job_hosts SET state = 'sent' WHERE jid = 'J1'")
    store.record([], [result("J1", "web1")], now=40)  # a late result of the older job
    assert store.known_content(["web1"])["web1"] == {sha(b"hello\n")}


def test_a_body_without_content_is_packed_once_for_all_its_hosts():
    parts = JobParts(100.0)
    known = frozenset({sha(b"hello\n")})
    for host in ("web1", "web2", "web3"):
        parts.add(host, body(SHARED), lambda h: frozenset() if h == "web3" else known)
    packs = []

    def pack(b: dict) -> bytes:
        packs.append(b)
        return codec.pack(b)

    assert parts.packed_body("web1", pack) == parts.packed_body("web2", pack)
    assert len(packs) == 1 and packs[0]["files"][0]["data"] is None
    assert codec.unpack(parts.packed_body("web3", pack), max_depth=16) == body(SHARED)
    assert len(packs) == 2  # web3 lacks the content: its own body


def no_content(_host: str) -> frozenset[bytes]:
    return frozenset()


def test_a_body_with_content_is_packed_once_for_the_hosts_that_share_it(monkeypatch):
    parts = JobParts(100.0)
    for host in ("web1", "web2", "db1"):
        parts.add(host, body(SHARED, ONLY_WEB1) if host != "db1" else body(SHARED), no_content)
    packs = []

    def pack(b: dict) -> bytes:
        packs.append(b)
        return codec.pack(b)

    assert parts.packed_body("web1", pack) == parts.packed_body("web2", pack)
    assert len(packs) == 1  # a first run: one body checked and packed for both
    assert codec.unpack(parts.packed_body("db1", pack), max_depth=16) == body(SHARED)
    assert codec.unpack(parts.packed_body("web2", pack), max_depth=16) == body(SHARED, ONLY_WEB1)
    assert len(packs) == 2

    # Kept up to a bound in bytes: here one body at a time.
    monkeypatch.setattr(jobcontent, "FULL_BODIES_BYTES", len(codec.pack(body(SHARED, ONLY_WEB1))))
    parts = JobParts(100.0)
    for host in ("web1", "web2", "db1"):
        parts.add(host, body(SHARED, ONLY_WEB1) if host != "db1" else body(SHARED), no_content)
    packs.clear()
    for host in ("web1", "db1", "web2", "web1"):
        parts.packed_body(host, pack)
    assert len(packs) == 3  # db1's body pushed web1's out; web2's stayed for web1


def fleet(n: int) -> list[str]:
    return [f"m{i:05d}" for i in range(n)]


def test_many_hosts_are_stored_in_chunks_and_read_back_in_a_few_queries(store):
    # More hosts and more contents than one chunk, one IN list: every row and
    # every content comes back, and each host's knowledge is its own.
    hosts = fleet(STORE_CHUNK * 2 + 7)
    files = [spec(f"/srv/f{i}", f"file {i}\n".encode()) for i in range(IN_CHUNK + 3)]
    first = JobParts(100.0)
    for host in hosts:
        first.add(host, body(*files), lambda h: frozenset())
    turns = []
    store.store(record("J1"), first, between=lambda: turns.append(1))
    assert len(turns) == 3  # one turn for the loop before each chunk of host rows
    # Hosts that lack all of their manifest's content store no list of it.
    assert store.conn.execute("SELECT count(include) FROM job_hosts").fetchone()[0] == 0
    store.start("J1")
    assert store.parts("J1").hosts == first.hosts
    digests = [sha(f"file {i}\n".encode()) for i in range(IN_CHUNK + 3)]
    assert store.content("J1", [*digests, sha(b"nothing")]) == {
        sha(f"file {i}\n".encode()): f"file {i}\n".encode() for i in range(IN_CHUNK + 3)
    }

    # Every other host completes J1; J2 gives the rest one file only, and all complete it.
    store.record([], [result("J1", h) for h in hosts[::2]], now=20)
    second = JobParts(100.0)
    for host in hosts[1::2]:
        second.add(host, body(files[0]), lambda h: frozenset())
    store.create(record("J2"), second)
    store.record([], [result("J2", h) for h in hosts[1::2]], now=30)
    known = store.known_content([*hosts, "new1"])
    assert known == {
        **{h: frozenset(digests) for h in hosts[::2]},
        **{h: frozenset(digests[:1]) for h in hosts[1::2]},
        "new1": frozenset(),
    }
    # What a host has is not sent again; what it lacks is stored as its list.
    third = JobParts(100.0)
    for host in hosts:
        third.add(host, body(*files[:2]), lambda h: known[h])
    store.create(record("J3"), third)
    loaded = store.parts("J3")
    assert loaded.hosts == third.hosts
    assert loaded.hosts[hosts[1]].include == [digests[1]] and loaded.hosts[hosts[0]].include == []


def test_a_job_is_there_for_no_one_until_it_is_started(store):
    hosts = fleet(STORE_CHUNK + 1)
    parts = JobParts(100.0)
    for host in hosts:
        parts.add(host, body(SHARED), lambda h: frozenset())
    store.store(record("J1"), parts)
    # Its rows are written, but nothing of it was published: a result for it
    # is for a job never sent, and neither `jobs list` nor a restart sees it.
    assert store.host_state("J1", hosts[0]) is None
    assert store.module_of("J1") is None and store.get_job("J1") is None
    assert store.list_jobs() == [] and store.open_hosts() == []
    store.start("J1")
    assert store.host_state("J1", hosts[0]) == "sent"
    assert [s.job.jid for s in store.list_jobs()] == ["J1"]
    assert len(store.open_hosts()) == len(hosts)

    # A job that will not start is removed, row by row; so is one a master
    # that stopped while storing it left behind.
    store.store(record("J2"), parts)
    store.discard("J2", hosts)
    store.store(record("J3"), parts)
    assert store.discard_unstarted() == 1
    assert [r[0] for r in store.conn.execute("SELECT DISTINCT jid FROM job_hosts")] == ["J1"]
    assert [r[0] for r in store.conn.execute("SELECT jid FROM jobs")] == ["J1"]


def test_a_store_that_fails_midway_takes_back_what_it_wrote(store):
    hosts = fleet(STORE_CHUNK * 2)
    parts = JobParts(100.0)
    for host in hosts:
        parts.add(host, body(SHARED), lambda h: frozenset())
    turns = []

    def between() -> None:  # the daemon stops after the first chunk
        turns.append(1)
        if len(turns) == 2:
            raise SafcmError("the master is stopping")

    with pytest.raises(SafcmError):
        store.store(record("J1"), parts, between=between)
    assert store.conn.execute("SELECT count(*) FROM job_hosts").fetchone()[0] == 0
    assert store.conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 0


def test_hosts_share_the_wire_form_of_the_files_they_share():
    """10,000 hosts with the same files make one map per file, not one per
    file and host (bench/submit.py: the prepare worker's peak went from 875
    to 150 MiB); a file a template renders for each host is its own."""
    import pathlib

    from safcm.master.compiler import load_repository
    from safcm.master.modules import Request
    from safcm.master.modules.files import compile_files

    repo = load_repository(pathlib.Path(__file__).parent / "repos" / "templates" / "repo")
    fields = compile_files(repo, ["web1", "db1"], Request(None, 30.0, False))
    web1, db1 = ({f["path"]: f for f in fields[h]["files"]} for h in ("web1", "db1"))
    assert web1["/etc/blob"] is db1["/etc/blob"]
    assert web1["/etc/motd"] is not db1["/etc/motd"]  # rendered for each
    assert web1["/etc/motd"]["data"] != db1["/etc/motd"]["data"]
    # Their manifests share the shared file's form too; the body keeps its content.
    parts = JobParts(100.0)
    for host in ("web1", "db1"):
        parts.add(host, {"module": "files", **fields[host]}, lambda h: frozenset())
    blob = {
        h: next(
            f for f in parts.manifests[parts.hosts[h].manifest]["files"] if f["path"] == "/etc/blob"
        )
        for h in ("web1", "db1")
    }
    assert blob["web1"] is blob["db1"] and blob["web1"]["data"] is None
    assert web1["/etc/blob"]["data"] is not None


def test_parts_pickle_only_what_they_are():
    """What adding kept to share file maps is not sent back with the parts."""
    parts = JobParts(100.0)
    for i in range(50):
        parts.add(f"web{i}", body(SHARED, ONLY_WEB1), lambda h: frozenset())
    parts.share()
    bare = JobParts(parts.deadline, parts.manifests, parts.packed, parts.content, parts.hosts)
    assert len(pickle.dumps(parts)) == len(pickle.dumps(bare))


def test_hosts_in_the_same_groups_get_one_list_of_files(tmp_path):
    """compile_files gives hosts with the very same specs one list, so the
    job store packs and hashes it once; a host with other files has its own."""
    from safcm.master.compiler import load_repository
    from safcm.master.modules import Request
    from safcm.master.modules.files import compile_files

    (tmp_path / "hosts.yaml").write_text("- name: web1\n- name: web2\n- name: db1\n")
    (tmp_path / "groups.yaml").write_text("web: [web1, web2]\n")
    for path, text in (("all/files/etc/motd", "hello\n"), ("web/files/etc/web.conf", "w\n")):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    fields = compile_files(
        load_repository(tmp_path), ["web1", "web2", "db1"], Request(None, 30.0, False)
    )
    assert fields["web1"]["files"] is fields["web2"]["files"]
    assert [f["path"] for f in fields["web1"]["files"]] == [
        "/",
        "/etc",
        "/etc/motd",
        "/etc/web.conf",
    ]
    assert [f["path"] for f in fields["db1"]["files"]] == ["/", "/etc", "/etc/motd"]


def test_a_shared_list_of_files_is_packed_once_and_each_manifest_as_alone():
    """Hosts whose bodies share one list of files: the list is packed once,
    and each host's manifest is exactly what packing it alone gives, its
    digest that of those bytes; the rest of the body still tells manifests
    apart, and so does where the files sit among its keys."""
    files = body(SHARED, ONLY_WEB1)["files"]
    bodies = {
        "web1": {**body(), "files": files},
        "web2": {**body(), "files": files},
        "web3": {**body(), "files": files, "absent": [{"path": "/etc/old", "recursive": False}]},
        # The same keys and values, the files first: other bytes.
        "web4": {"files": files, **{k: v for k, v in body().items() if k != "files"}},
    }
    parts = JobParts(100.0)
    packed = []
    for host, b in bodies.items():
        parts.add(host, b, lambda h: frozenset())
        manifest, _content = manifest_of(b)
        alone = codec.pack(manifest)
        digest = parts.hosts[host].manifest
        assert parts.packed[digest] == alone
        assert digest == hashlib.sha256(alone).hexdigest()
        packed.append(digest)
    assert packed[0] == packed[1]
    assert len(set(packed)) == 3
    assert parts.content == {sha(b"hello\n"): b"hello\n", sha(b"web1 only\n"): b"web1 only\n"}
