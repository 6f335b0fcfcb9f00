"""minion/content.py: the content cache on real files, and its pure eviction plan."""

from __future__ import annotations

import os

import pytest

from safcm.common.errors import StateFileError
from safcm.minion.content import (
    CONTENT_DIR,
    MAX_ENTRY_BYTES,
    TOUCH_INTERVAL,
    ContentCache,
    Entry,
    digest_of,
    plan_evictions,
    resolve,
)


@pytest.fixture
def cache(tmp_path):
    c = ContentCache(str(tmp_path))
    yield c
    c.close()


def entry_path(cache: ContentCache, data: bytes) -> str:
    return os.path.join(cache.path, digest_of(data).hex())


def test_put_then_get(cache, tmp_path):
    digest = cache.put(b"hello\n")
    assert digest == digest_of(b"hello\n")
    assert cache.get(digest) == b"hello\n"
    assert cache.get(digest_of(b"other")) is None
    assert os.stat(tmp_path / CONTENT_DIR).st_mode & 0o777 == 0o700
    assert os.stat(entry_path(cache, b"hello\n")).st_mode & 0o777 == 0o600
    # A second cache over the same directory finds the entry.
    again = ContentCache(str(tmp_path))
    assert again.get(digest) == b"hello\n" and again.size == 6
    again.close()


def flip(path: str) -> None:
    with open(path, "wb") as f:
        f.write(b"hellO\n")


def tear(path: str) -> None:  # a crash left it empty
    with open(path, "wb"):
        pass


def plant_symlink(path: str) -> None:
    os.unlink(path)
    os.symlink("/etc/passwd", path)


@pytest.mark.parametrize("damage", [flip, tear, plant_symlink, os.unlink])
def test_a_damaged_entry_is_dropped_and_reported_missing(cache, damage):
    digest = cache.put(b"hello\n")
    path = entry_path(cache, b"hello\n")
    damage(path)
    assert cache.get(digest) is None
    assert not os.path.lexists(path) and cache.size == 0


def test_an_oversized_entry_is_not_read(cache):
    digest = cache.put(b"x")
    with open(entry_path(cache, b"x"), "wb") as f:
        f.truncate(MAX_ENTRY_BYTES + 1)
    assert cache.get(digest) is None


def test_least_recently_used_entries_go_first(tmp_path):
    cache = ContentCache(str(tmp_path), budget=25)
    a, b = cache.put(b"a" * 10), cache.put(b"b" * 10)
    os.utime(entry_path(cache, b"a" * 10), (1000, 1000))  # a: long unused
    os.utime(entry_path(cache, b"b" * 10), (2000, 2000))
    cache.close()
    cache = ContentCache(str(tmp_path), budget=25)  # with these times
    assert cache.get(a) == b"a" * 10  # a used now: b is the oldest
    cache.put(b"c" * 10)  # 30 bytes > 25: one entry goes
    assert cache.get(b) is None and cache.get(a) is not None and cache.size == 20
    cache.close()


def test_a_use_stamps_an_entry_only_when_its_time_is_older_than_the_interval(tmp_path):
    cache = ContentCache(str(tmp_path))
    fresh, old = cache.put(b"fresh"), cache.put(b"old")
    recent = os.stat(entry_path(cache, b"fresh")).st_mtime - TOUCH_INTERVAL / 2
    os.utime(entry_path(cache, b"fresh"), (recent, recent))
    os.utime(entry_path(cache, b"old"), (1000, 1000))
    cache.close()
    cache = ContentCache(str(tmp_path))
    assert cache.get(fresh) == b"fresh" and cache.get(old) == b"old"
    assert cache.put(b"fresh") == fresh and cache.put(b"old") == old
    # Stamped again only when stale: two syscalls per file and job saved.
    assert os.stat(entry_path(cache, b"fresh")).st_mtime == recent
    assert os.stat(entry_path(cache, b"old")).st_mtime > 1000
    assert cache.entries[old.hex()].used > 1000
    cache.close()


def test_the_size_follows_every_put_drop_and_eviction(tmp_path):
    cache = ContentCache(str(tmp_path), budget=35)
    digests = [cache.put(bytes([i]) * 10) for i in range(5)]  # two go over budget
    with open(entry_path(cache, bytes([4]) * 10), "wb") as f:
        f.write(b"damaged!!!")
    assert cache.get(digests[4]) is None  # damaged: dropped
    cache.put(b"x" * 10)  # the same content again changes nothing
    cache.put(b"x" * 10)
    assert cache.size == sum(e.size for e in cache.entries.values()) == 30
    assert cache.size == sum(os.path.getsize(os.path.join(cache.path, n)) for n in cache.entries)
    cache.close()


def test_evictions_plan():
    entries = [Entry("x", 5, 3.0), Entry("y", 5, 1.0), Entry("z", 5, 2.0), Entry("w", 5, 1.0)]
    assert [e.name for e in plan_evictions(entries, 10)] == ["w", "y"]
    assert plan_evictions(entries, 20) == []
    assert [e.name for e in plan_evictions(entries, 0)] == ["w", "y", "z", "x"]


def test_temporaries_of_a_crash_are_removed(tmp_path):
    ContentCache(str(tmp_path)).close()
    leftover = tmp_path / CONTENT_DIR / ".new-0123456789abcdef"
    leftover.write_bytes(b"half")
    cache = ContentCache(str(tmp_path))
    assert not leftover.exists() and cache.entries == {}
    cache.close()


@pytest.mark.parametrize("mode", [0o755, 0o770])
def test_a_cache_directory_others_can_reach_is_refused(tmp_path, mode):
    os.mkdir(tmp_path / CONTENT_DIR, mode)
    os.chmod(tmp_path / CONTENT_DIR, mode)
    with pytest.raises(StateFileError, match="mode 0700"):
        ContentCache(str(tmp_path))


def test_a_symlinked_cache_directory_is_refused(tmp_path):
    os.mkdir(tmp_path / "elsewhere", 0o700)
    os.symlink(tmp_path / "elsewhere", tmp_path / CONTENT_DIR)
    with pytest.raises(StateFileError, match="cannot open the content cache"):
        ContentCache(str(tmp_path))


def test_resolve_fills_from_the_cache_and_keeps_what_came(cache):
    kept = cache.put(b"cached\n")
    files = [
        {"path": "/a", "type": "file", "digest": digest_of(b"new\n"), "data": b"new\n"},
        {"path": "/b", "type": "file", "digest": kept, "data": None},
        {"path": "/c", "type": "file", "digest": digest_of(b"lost"), "data": None},
        {"path": "/d", "type": "file", "digest": digest_of(b"lost"), "data": None},
        {"path": "/e", "type": "dir", "digest": None, "data": b""},
    ]
    assert resolve(files, cache) == [digest_of(b"lost")]  # once, though two files need it
    assert files[1]["data"] == b"cached\n"
    assert files[2]["data"] is None
    assert cache.get(digest_of(b"new\n")) == b"new\n"  # kept for the next job
    cache.put(b"lost")
    assert resolve(files, cache) == []
    assert files[2]["data"] == files[3]["data"] == b"lost"
