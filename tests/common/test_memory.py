"""The C heap's settings for the master (common/memory.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# What the check prints when the heap kept the freed block at its top.
KEPT = "kept"

# In a process of its own: mallopt() holds for the whole process, and a
# fresh heap has no free block elsewhere that malloc() could take instead.
CHECK = textwrap.dedent(
    f"""
    import ctypes

    from safcm.common import memory

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
            "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    libc.mallinfo2.restype = MallInfo2
    memory.map_large_blocks()
    size = memory.MMAP_THRESHOLD // 2
    block = libc.malloc(size)
    libc.free(block)
    print({KEPT!r} if libc.mallinfo2().keepcost >= size else "trimmed")
    """
)


def test_a_block_below_the_mmap_threshold_does_not_grow_and_shrink_the_heap_each_time():
    # Before, fixing the mmap threshold left the trim threshold at 128 KiB:
    # each free() of such a block gave the heap's top back to the system,
    # and the next malloc() asked for it again (each msgpack.packb() did).
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == KEPT, done.stdout + done.stderr
