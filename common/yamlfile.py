"""The repository's YAML files, parsed into small typed nodes that keep their line.

PyYAML's constructor loses line numbers, lets a duplicate key silently win and
guesses types (0644 becomes 420, `no` becomes False). So we stop at PyYAML's
node graph (each node records its start mark) and convert it ourselves:

- every scalar stays the exact text the administrator wrote (`YScalar.text`):
  a mode `0644`, a host `123` or a trigger `true` mean what they say;
- a mapping keeps its entries in file order with the line of each key, and a
  duplicate key is a problem naming both lines;
- only the standard YAML tags are accepted, so `!!python/...` is refused even
  though we never construct objects.

Problems are appended to a caller's list (`Problems`); parsing goes on where it
can, so one run reports everything wrong in a file.

The node graph comes from libyaml's parser and composer (C) when PyYAML was
built with it, else from PyYAML's pure-Python ones; both give the same graph
(tag, text and line of every node) for every document the C parser takes.
The C parser's words for a syntax error are not PyYAML's, so on any error
the document is parsed again in Python, whose message is the one reported.
Where the two parsers are known to disagree (tabs, a byte order mark after
the start, ...), the document goes to the Python parser alone: see `_C_DIFFERS`.

A hostile document is bounded the same way on both paths: nesting deeper
than MAX_DEPTH and aliases that expand to more than MAX_ALIAS_NODES nodes
refuse the whole document, with one problem.
"""

from __future__ import annotations

import os
import re
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

# Containers within containers, the document's root at depth 1. The
# repository format nests at most 5 deep (groups.yaml: NAME -> detect -> FACT
# -> list of values); 50 leaves room for any hand-written file and keeps the
# pure-Python composer (3 stack frames per level) far from Python's recursion
# limit, which a deeper document would hit as a RecursionError.
MAX_DEPTH = 50

# Nodes that aliases may add to a document, over the nodes it holds itself.
# A 1 KiB "billion laughs" document (aliases of aliases) expands to 10**9
# nodes; 100,000 takes well under a second to convert and still lets a
# groups.yaml reuse a list of 5,000 hosts 20 times.
MAX_ALIAS_NODES = 100_000

# Where libyaml's parser takes a document PyYAML's refuses, or reads it
# differently (found by tests/common/test_yamlfile_parity.py), the document
# goes to the Python parser alone:
# - a tab after a value or a colon ("a: b<TAB>"), which PyYAML refuses;
# - a byte order mark at the start of a later line: skipped by libyaml,
#   part of the key for PyYAML;
# - NEL, LS, PS or a CR alone: line breaks both, not always counted alike;
# - a comment right after a block scalar's header ("|#c"), which PyYAML refuses;
# - a tag ("!x", "!!str", "! "): handles of odd characters, and where an
#   empty tagged value starts (the repository format uses no tags).
# A document without a final newline goes there too: the two give an empty
# value at the end of the stream different lines. And one more, seen only in
# the graph (see _misread_by_c): "?" within a plain scalar of a flow
# collection ends the scalar for PyYAML alone ("[web?]" is an error there).
_C_DIFFERS = re.compile("[\t\ufeff\x85\u2028\u2029!]|\r(?!\n)|[|>][-+0-9]*#")


# libyaml's loader if PyYAML was built with it; None for the pure-Python one.
_CLoader: type[yaml.CSafeLoader] | None = (
    yaml.CSafeLoader if getattr(yaml, "__with_libyaml__", False) else None
)


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


class _Refused(Exception):
    """The whole document is refused (too deep, aliases expand too far)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(line, message)
        self.line = line
        self.message = message


def _too_deep(line: int) -> _Refused:
    return _Refused(line, f"YAML nested more than {MAX_DEPTH} deep")


class _MarkedLoader(yaml.SafeLoader):
    """A SafeLoader used only up to the composer: nodes carry their start marks.

    Its composer recurses per level, so it refuses a document nested deeper
    than MAX_DEPTH before Python's recursion limit does.
    """

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                # check_event() left the node's first event in current_event.
                raise _too_deep(self.current_event.start_mark.line + 1)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _compose_c(loader_class: type[yaml.CSafeLoader], text: str) -> yaml.Node | None:
    """The document's node graph from libyaml; raises yaml.YAMLError (or
    UnicodeEncodeError, for a lone surrogate) on any error."""
    loader = loader_class(text)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


def _compose_python(text: str) -> yaml.Node | None:
    """The document's node graph from PyYAML's parser; raises yaml.YAMLError
    on a syntax error, _Refused for a document nested too deep."""
    loader = _MarkedLoader(text)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


def parse_yaml(text: str, file: str, problems: Problems) -> YNode | None:
    """Parse one YAML document; None for an empty document, on a syntax error
    or for a document refused as a whole."""
    first = len(problems)
    try:
        root = _compose(text, file, problems)
        if root is None:
            return None
        # The two limits are checked on the node graph, the same for both
        # parsers: the C one composes a deeper document without complaint.
        distinct = _count_nodes(root)
        return _Converter(file, problems, distinct + MAX_ALIAS_NODES).convert(root, 1)
    except _Refused as e:
        del problems[first:]  # what was found before no longer matters
        problems.add(file, e.line, e.message)
        return None


def _compose(text: str, file: str, problems: Problems) -> yaml.Node | None:
    """The node graph; None (after a problem) on a syntax error."""
    if _CLoader is not None and text.endswith("\n") and not _C_DIFFERS.search(text):
        try:
            root = _compose_c(_CLoader, text)
        except (yaml.YAMLError, UnicodeEncodeError):
            pass  # parsed again below, for PyYAML's words and marks
        else:
            if "?" not in text or root is None or not _misread_by_c(root):
                return root
    try:
        return _compose_python(text)
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


def _misread_by_c(root: yaml.Node) -> bool:
    """True if a plain scalar within a flow collection holds a "?": libyaml
    reads `[web?, db?]` as two values, PyYAML refuses it. (Quoted, or in
    block context, a "?" reads the same in both.)"""
    seen: set[int] = set()
    todo = [root]
    while todo:
        node = todo.pop()
        if not isinstance(node, yaml.CollectionNode) or id(node) in seen:
            continue
        seen.add(id(node))
        children = (
            [n for pair in node.value for n in pair]
            if isinstance(node, yaml.MappingNode)
            else node.value
        )
        if node.flow_style and any(
            isinstance(n, yaml.ScalarNode) and not n.style and "?" in n.value for n in children
        ):
            return True
        todo.extend(children)
    return False


def _count_nodes(root: yaml.Node) -> int:
    """The distinct nodes of the graph; raises _Refused for nesting deeper
    than MAX_DEPTH.

    Nodes are visited depth first in document order and an alias follows its
    anchor, so each node is first met where it is written: its depth there
    is the depth the Python composer refuses, and the first one too deep is
    the one it names.
    """
    seen: set[int] = set()
    todo: list[tuple[yaml.Node, int]] = [(root, 1)]
    while todo:
        node, depth = todo.pop()
        if id(node) in seen:
            continue  # an alias, or `&a [*a]`
        seen.add(id(node))
        if depth > MAX_DEPTH:
            raise _too_deep(_line(node))
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        else:
            continue
        todo.extend((child, depth + 1) for child in reversed(children))
    return len(seen)


class _Converter:
    """Turns one document's node graph into YNodes, expanding its aliases."""

    def __init__(self, file: str, problems: Problems, budget: int) -> None:
        self.file = file
        self.problems = problems
        self.budget = budget  # nodes left to convert, aliases expanded
        self.stack: set[int] = set()  # ids of the containers being converted

    def convert(self, node: yaml.Node, depth: int) -> YNode | None:
        """The node as a YNode; None (after a problem) for one that cannot be
        used at all. Raises _Refused when aliases nest or expand too far."""
        line = _line(node)
        if id(node) in self.stack:
            # `&a [*a]`: an alias inside its own anchor would recurse forever.
            self.problems.add(self.file, line, "recursive YAML alias")
            return None
        self.budget -= 1
        if self.budget < 0:
            raise _Refused(line, f"YAML aliases expand to more than {MAX_ALIAS_NODES} nodes")
        if depth > MAX_DEPTH:
            # Only an alias gets here (_count_nodes checked where nodes are
            # written): `&b [*a]`, `&c [*b]`, ... nest one level per anchor.
            raise _too_deep(line)
        if isinstance(node, yaml.ScalarNode):
            if node.tag not in _SCALAR_TAGS:
                self.problems.add(self.file, line, f"unsupported YAML tag {node.tag!r}")
            return YScalar(node.value, line)
        if node.tag not in (_SEQ_TAG, _MAP_TAG):
            self.problems.add(self.file, line, f"unsupported YAML tag {node.tag!r}")
        self.stack.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                items = [self.convert(n, depth + 1) for n in node.value]
                return YSeq([i for i in items if i is not None], line)
            if isinstance(node, yaml.MappingNode):
                return self._convert_map(node, depth)
        finally:
            self.stack.discard(id(node))
        self.problems.add(self.file, line, f"unsupported YAML node {type(node).__name__}")
        return None

    def _convert_map(self, node: yaml.MappingNode, depth: int) -> YMap:
        items: list[tuple[YScalar, YNode]] = []
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = self.convert(key_node, depth + 1)
            if key is None:
                continue
            if not isinstance(key, YScalar):
                self.problems.add(
                    self.file, key.line, f"a key must be a single value, not {kind_of(key)}"
                )
                continue
            if key.text in first_line:
                self.problems.add(
                    self.file,
                    key.line,
                    f"duplicate key {key.text!r} (first at line {first_line[key.text]})",
                )
                continue
            first_line[key.text] = key.line
            value = self.convert(value_node, depth + 1)
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
