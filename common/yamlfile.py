"""The repository's YAML files, parsed into small typed nodes that keep their line.

PyYAML's constructor loses line numbers, lets a duplicate key silently win and
guesses types (0644 becomes 420, `no` becomes False). So we stop at PyYAML's
node graph (composed by a SafeLoader subclass, which records each node's start
mark) and convert it ourselves:

- every scalar stays the exact text the administrator wrote (`YScalar.text`):
  a mode `0644`, a host `123` or a trigger `true` mean what they say;
- a mapping keeps its entries in file order with the line of each key, and a
  duplicate key is a problem naming both lines;
- only the standard YAML tags are accepted, so `!!python/...` is refused even
  though we never construct objects.

Problems are appended to a caller's list (`Problems`); parsing goes on where it
can, so one run reports everything wrong in a file.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

import yaml

from safcm.common.errors import ConfigProblem

# Every node tag that the YAML 1.1 resolver of a SafeLoader can produce, plus
# the explicit standard tags an administrator might write. Anything else is a
# custom tag, which the repository format has no use for.
_STANDARD_TAG_PREFIX = "tag:yaml.org,2002:"
_SCALAR_TAGS = frozenset(
    _STANDARD_TAG_PREFIX + t
    for t in ("str", "int", "float", "bool", "null", "timestamp", "binary", "value", "merge")
)
_SEQ_TAG = _STANDARD_TAG_PREFIX + "seq"
_MAP_TAG = _STANDARD_TAG_PREFIX + "map"


@dataclass(frozen=True, slots=True)
class YScalar:
    """A scalar exactly as written (quotes removed, escapes resolved)."""

    text: str
    line: int  # 1-based


@dataclass(frozen=True, slots=True)
class YSeq:
    items: list[YNode]
    line: int


@dataclass(frozen=True, slots=True)
class YMap:
    items: list[tuple[YScalar, YNode]]  # in file order, duplicates already removed
    line: int


YNode = YScalar | YSeq | YMap

KIND_NAMES = {YScalar: "a single value", YSeq: "a list", YMap: "a mapping"}


def kind_of(node: YNode) -> str:
    """What a node is, for "must be X, not Y" messages."""
    if isinstance(node, YScalar) and node.text == "":
        return "an empty value"
    return KIND_NAMES[type(node)]


class Problems(list[ConfigProblem]):
    """The problems found so far in one load or compilation, in the order found."""

    def add(self, file: str, line: int | None, message: str) -> None:
        self.append(ConfigProblem(file, line, message))

    def by_file(self) -> list[ConfigProblem]:
        """The problems grouped by file (in order of each file's first problem),
        by line within a file; problems on one line keep the order found."""
        first: dict[str, int] = {}
        for p in self:
            first.setdefault(p.file, len(first))
        return sorted(self, key=lambda p: (first[p.file], p.line or 0))


class _MarkedLoader(yaml.SafeLoader):
    """A SafeLoader used only up to the composer: nodes carry their start marks."""


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def parse_yaml(text: str, file: str, problems: Problems) -> YNode | None:
    """Parse one YAML document; None for an empty document or on a syntax error."""
    loader = _MarkedLoader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = None if mark is None else mark.line + 1
        reason = e.problem or e.context or "invalid YAML"
        if e.problem and e.context and e.problem.startswith("but "):
            # PyYAML splits "expected a single document, but found another" in two.
            reason = f"{e.context}, {e.problem}"
        elif e.problem and e.context and e.context_mark and e.context_mark.line + 1 != line:
            # "found unexpected end of stream" is more useful with where the quote began.
            reason += f" ({e.context} at line {e.context_mark.line + 1})"
        problems.add(file, line, f"YAML syntax error: {reason}")
        return None
    except yaml.YAMLError as e:
        problems.add(file, None, f"YAML error: {e}")
        return None
    finally:
        loader.dispose()
    if root is None:
        return None
    return _convert(root, file, problems, set())


def _convert(node: yaml.Node, file: str, problems: Problems, stack: set[int]) -> YNode | None:
    """The node as a YNode; None (after a problem) for one that cannot be used at all."""
    line = _line(node)
    if id(node) in stack:
        # `&a [*a]`: an alias inside its own anchor would recurse forever.
        problems.add(file, line, "recursive YAML alias")
        return None
    if isinstance(node, yaml.ScalarNode):
        if node.tag not in _SCALAR_TAGS:
            problems.add(file, line, f"unsupported YAML tag {node.tag!r}")
        return YScalar(node.value, line)
    if node.tag not in (_SEQ_TAG, _MAP_TAG):
        problems.add(file, line, f"unsupported YAML tag {node.tag!r}")
    stack.add(id(node))
    try:
        if isinstance(node, yaml.SequenceNode):
            items = [_convert(n, file, problems, stack) for n in node.value]
            return YSeq([i for i in items if i is not None], line)
        if isinstance(node, yaml.MappingNode):
            return _convert_map(node, file, problems, stack)
    finally:
        stack.discard(id(node))
    problems.add(file, line, f"unsupported YAML node {type(node).__name__}")
    return None


def _convert_map(node: yaml.MappingNode, file: str, problems: Problems, stack: set[int]) -> YMap:
    items: list[tuple[YScalar, YNode]] = []
    first_line: dict[str, int] = {}
    for key_node, value_node in node.value:
        key = _convert(key_node, file, problems, stack)
        if key is None:
            continue
        if not isinstance(key, YScalar):
            problems.add(file, key.line, f"a key must be a single value, not {kind_of(key)}")
            continue
        if key.text in first_line:
            problems.add(
                file,
                key.line,
                f"duplicate key {key.text!r} (first at line {first_line[key.text]})",
            )
            continue
        first_line[key.text] = key.line
        value = _convert(value_node, file, problems, stack)
        if value is not None:
            items.append((key, value))
    return YMap(items, _line(node))


def read_regular_file(path: str, dir_fd: int | None = None) -> bytes:
    """Read a regular file without following a symlink and without blocking on a FIFO.

    `path` is relative to `dir_fd` if given. Raises OSError; a file that is
    not regular (symlink, FIFO, device, socket) raises OSError with a reason
    the caller reports as is.
    """
    # O_NOFOLLOW: the repository's symlinks are data, never followed.
    # O_NONBLOCK: opening a FIFO must not hang the compiler.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(path, flags, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"not a regular file ({describe_mode(st.st_mode)})")
        chunks = []
        while chunk := os.read(fd, max(st.st_size, 1 << 16)):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def describe_mode(st_mode: int) -> str:
    """Name a file type for an error message."""
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(st_mode):
            return name
    return f"an unknown file type {stat.S_IFMT(st_mode):#o}"


def load_yaml_file(root: str, relpath: str, problems: Problems) -> YNode | None:
    """Load `root/relpath` if it exists; None if it is missing, empty or broken.

    Problems name `relpath` (repo-relative). A symlink or other non-regular
    file is a problem, never followed.
    """
    full = os.path.join(root, relpath)
    try:
        st = os.lstat(full)
    except FileNotFoundError:
        return None
    except OSError as e:
        problems.add(relpath, None, f"cannot read: {e.strerror}")
        return None
    if not stat.S_ISREG(st.st_mode):
        problems.add(relpath, None, f"must be a regular file, not {describe_mode(st.st_mode)}")
        return None
    try:
        data = read_regular_file(full)
    except OSError as e:
        problems.add(relpath, None, f"cannot read: {e.strerror or e}")
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        problems.add(relpath, line, f"not valid UTF-8 (byte {data[e.start]:#04x})")
        return None
    return parse_yaml(text, relpath, problems)
