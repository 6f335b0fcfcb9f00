"""msgpack with strict limits: the only place that turns wire bytes into objects.

`unpack()` never raises anything but ProtocolError, whatever the bytes. It
works in two passes:

1. A structural scan (`_scan`) walks the msgpack headers without building
   anything. It refuses ext types (timestamps included), the reserved byte
   0xc1, nesting deeper than `max_depth`, a container that claims more items
   than there are bytes left, truncation and trailing bytes. This pass exists
   because msgpack's C unpacker preallocates every list at the length its
   header claims, before reading the items: a 3 KB frame of nested
   "array of 65535" headers made it allocate about 80 MB. After the scan,
   preallocation is bounded by max_depth * the byte length of the frame.
2. msgpack itself, with raw=False (str is UTF-8 text, bytes are bytes),
   strict_map_key=True and length limits, builds the objects.

`pack()` is the inverse; `canonical_pack()` sorts map keys so that a value
has exactly one encoding, for signing. `unpack_own()` reads back what
pack() wrote to a file of this process's own (master/resultspool.py).
common/lightwire.py decodes the same way in plain Python, for the light
commands, which must not load msgpack.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgpack

from safcm.common import lightwire
from safcm.common.errors import ProtocolError

# The limits of what the unpacker builds (strings, lists, maps), shared with
# the light commands' decoder, which makes the same checks.
MAX_SCALAR_BYTES = lightwire.MAX_SCALAR_BYTES
MAX_LIST_ITEMS = lightwire.MAX_LIST_ITEMS
MAX_MAP_ENTRIES = lightwire.MAX_MAP_ENTRIES

# Byte lengths of the fixed-size msgpack types in 0xc0..0xdf, header included:
# nil, false, true, float32/64, uint8..64, int8..64.
_FIXED = {
    0xC0: 1,
    0xC2: 1,
    0xC3: 1,
    0xCA: 5,
    0xCB: 9,
    0xCC: 2,
    0xCD: 3,
    0xCE: 5,
    0xCF: 9,
    0xD0: 2,
    0xD1: 3,
    0xD2: 5,
    0xD3: 9,
}
# str8/16/32 and bin8/16/32: the width of their length field.
_SIZED = {0xD9: 1, 0xDA: 2, 0xDB: 4, 0xC4: 1, 0xC5: 2, 0xC6: 4}
# array16/32 and map16/32: (width of the count field, objects per counted item).
_CONTAINERS = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}
# ext8/16/32 and fixext1..16 (the timestamp type is one of these).
_EXT = frozenset({0xC7, 0xC8, 0xC9, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8})


def _scan(data: bytes, max_depth: int) -> None:
    """Check the msgpack structure of `data` without building any object."""
    n = len(data)
    i = 0
    stack: list[int] = []  # items still to read in each enclosing container
    todo = 1  # items still to read at the current level: one top-level object
    while True:
        if todo == 0:
            if not stack:
                break
            todo = stack.pop()
            continue
        if i >= n:
            raise ProtocolError("message is truncated")
        b = data[i]
        todo -= 1
        if b <= 0x7F or b >= 0xE0:  # positive and negative fixint
            i += 1
            continue
        if b >= 0xA0 and b <= 0xBF:  # fixstr
            i += 1 + (b & 0x1F)
            continue
        if b <= 0x8F:  # fixmap
            count = 2 * (b & 0x0F)
            i += 1
        elif b <= 0x9F:  # fixarray
            count = b & 0x0F
            i += 1
        elif b in _FIXED:
            i += _FIXED[b]
            continue
        elif b in _SIZED:
            width = _SIZED[b]
            i += 1 + width + int.from_bytes(data[i + 1 : i + 1 + width], "big")
            continue
        elif b in _CONTAINERS:
            width, per_item = _CONTAINERS[b]
            if i + 1 + width > n:
                raise ProtocolError("message is truncated")
            count = per_item * int.from_bytes(data[i + 1 : i + 1 + width], "big")
            i += 1 + width
        elif b in _EXT:
            raise ProtocolError("message contains a msgpack ext type, which is not allowed")
        else:  # 0xc1, never used by msgpack
            raise ProtocolError(f"message contains the invalid msgpack byte {b:#04x}")
        # Only containers reach here.
        if len(stack) + 1 > max_depth:
            raise ProtocolError(f"message is nested deeper than {max_depth} levels")
        # Every item takes at least one byte, so a count beyond the bytes left is a lie.
        if count > n - i:
            raise ProtocolError(f"a container claims {count} items but only {n - i} bytes follow")
        stack.append(todo)
        todo = count
    if i > n:
        raise ProtocolError("message is truncated")
    if i < n:
        raise ProtocolError(f"{n - i} unexpected bytes after the message")


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ProtocolError("message contains a msgpack ext type, which is not allowed")


def unpack(data: bytes, *, max_depth: int) -> Any:
    """Decode one msgpack object from `data`; raise ProtocolError for anything invalid."""
    if not isinstance(data, bytes):
        raise ProtocolError(f"expected bytes, got {type(data).__name__}")
    _scan(data, max_depth)
    return _unpackb(data, max_list=MAX_LIST_ITEMS, max_map=MAX_MAP_ENTRIES)


def unpack_flat(data: bytes, *, max_items: int) -> Any:
    """Decode one msgpack object whose lists and maps hold at most `max_items`
    items each; ProtocolError for anything else, as unpack().

    For small messages of a known, nearly flat shape (a heartbeat), without
    unpack()'s structural scan: with every container this small, what
    msgpack preallocates is bounded by the bytes themselves, and msgpack
    refuses ext types, bad bytes, truncation, trailing bytes and nesting
    beyond its own stack. Deeper nesting than unpack() allows is the schema's
    to refuse (a flat one does)."""
    if not isinstance(data, bytes):
        raise ProtocolError(f"expected bytes, got {type(data).__name__}")
    return _unpackb(data, max_list=max_items, max_map=max_items)


def unpack_unscanned(data: bytes) -> Any:
    """unpack() without its structural scan, for what the CLI's own master
    sends over the control socket (root's, or the admin group's): the scan
    guards a daemon against a peer's lying counts and deep nesting, and costs
    as much as the decoding (a files create's result of 122 KB: most of the
    CLI's decoding, bench/runjson.py). msgpack's own limits still hold (no
    ext types, scalar and container sizes, its stack), and every failure is
    a ProtocolError."""
    if not isinstance(data, bytes):
        raise ProtocolError(f"expected bytes, got {type(data).__name__}")
    return _unpackb(data, max_list=MAX_LIST_ITEMS, max_map=MAX_MAP_ENTRIES)


def _unpackb(data: bytes, *, max_list: int, max_map: int) -> Any:
    """msgpack's decoding with our limits: no ext types, str map keys, scalars
    of at most MAX_SCALAR_BYTES, lists and maps of at most `max_list` and
    `max_map` items; every failure a ProtocolError."""
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            ext_hook=_refuse_ext,
            max_str_len=MAX_SCALAR_BYTES,
            max_bin_len=MAX_SCALAR_BYTES,
            max_array_len=max_list,
            max_map_len=max_map,
            max_ext_len=0,
        )
    except ProtocolError:
        raise
    except (ValueError, TypeError, OverflowError, RecursionError, msgpack.UnpackException) as e:
        # ValueError covers msgpack's limit, format and stack errors and
        # UnicodeDecodeError; TypeError an unhashable map key.
        raise ProtocolError(f"message is not valid msgpack: {type(e).__name__}") from None


def pack(obj: Any) -> bytes:
    """Encode `obj` (str, bytes, int, float, bool, None, lists and str-keyed dicts)."""
    try:
        data: bytes = msgpack.packb(obj, use_bin_type=True, strict_types=False)
        return data
    except (TypeError, ValueError, OverflowError) as e:
        # ValueError includes UnicodeEncodeError from a str with a lone surrogate.
        raise ProtocolError(f"value cannot be encoded as msgpack: {e}") from None


def pack_with(obj: Mapping[str, Any], key: str, packed: bytes) -> bytes:
    """pack(obj), with the value of `key` given already packed (`packed` is
    pack(obj[key])): a map's encoding is its header and then each key and
    value in order, so a large value that many maps share is packed once."""
    head: bytes = msgpack.Packer(use_bin_type=True, strict_types=False).pack_map_header(len(obj))
    return head + b"".join(pack(k) + (packed if k == key else pack(v)) for k, v in obj.items())


def unpack_own(data: bytes) -> Any:
    """Decode what pack() wrote, read back from a file only this process can
    reach: msgpack's decoding as unpack() does it (str, bytes, lists, str
    keys), so a value comes back equal to the one packed, without
    unpack()'s scan and limits, which are for bytes from a peer (the scan
    costs twice the decoding)."""
    return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)


def _sorted(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _sorted(obj[k]) for k in sorted(obj)}
    if isinstance(obj, list | tuple):
        return [_sorted(v) for v in obj]
    return obj


def canonical_pack(obj: Any) -> bytes:
    """Encode `obj` with every map's keys sorted: one value, one encoding (for signatures)."""
    return pack(_sorted(obj))
