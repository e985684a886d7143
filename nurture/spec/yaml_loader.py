"""YAML loading that remembers where every node came from, and refuses hostile documents.

`load_located(text, path)` returns plain Python data plus a `Locations` map from a key path
(tuple of keys and list indices, as pydantic reports them in `loc`) to the line and column of
that node, so any validation error can be reported as `path:line:col`.

Every YAML file of a project goes through here, so this is also where a file that is valid
YAML but unreasonable is stopped, while it is still cheap to stop: nesting deeper than
`MAX_DEPTH` (every later stage walks the data recursively), aliases that expand to more than
`MAX_ALIAS_EXPANSION` values (the "billion laughs": 500 bytes that build a billion nodes), an
alias used inside the value it names (a loop), binary data and values PyYAML cannot build.
Each is a located error like any other, never an exception out of the loader.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import re

import yaml

from nurture.spec.errors import SpecError

Path_ = tuple

MAX_DEPTH = 64  # levels of nested mappings/lists; the deepest shipped journey uses 10
MAX_ALIAS_EXPANSION = 10_000  # values that aliases may add to one file, all aliases together


@dataclass
class Locations:
    file: str
    values: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path_, tuple[int, int]] = field(default_factory=dict)

    def of(self, loc: Path_, *, key: bool = False) -> tuple[int, int]:
        """Line and column of the deepest known node on `loc` (1-based)."""
        loc = tuple(loc)
        for n in range(len(loc), -1, -1):
            prefix = loc[:n]
            if key and prefix in self.keys:
                return self.keys[prefix]
            if prefix in self.values:
                return self.values[prefix]
        return (1, 1)

    def error(self, loc: Path_, message: str, hint: str = "", *, key: bool = False) -> SpecError:
        line, col = self.of(loc, key=key)
        return SpecError(self.file, line, col, message, hint)

    def child(self, prefix: Path_) -> "Locations":
        """The locations below `prefix`, re-rooted (for validating a sub-document)."""
        n = len(prefix)
        sub = Locations(self.file)
        sub.values = {k[n:]: v for k, v in self.values.items() if k[:n] == tuple(prefix)}
        sub.keys = {k[n:]: v for k, v in self.keys.items() if k[:n] == tuple(prefix)}
        return sub


def _mark(node: yaml.Node) -> tuple[int, int]:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


class _Refused(yaml.MarkedYAMLError):
    """A document this loader will not build although its syntax may be fine (too deep, too
    many aliases, a value PyYAML cannot construct): reported without the "YAML syntax error"
    prefix, because telling a marketer their syntax is wrong would send them looking for a typo."""

    def __init__(self, message: str, mark: yaml.Mark):
        super().__init__(problem=message, problem_mark=mark)


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader whose composer measures every node as it is composed.

    The composer is the only stage that sees aliases as aliases (later an alias is just the
    anchored node again) and the last stage that is linear in the size of the text, so the
    limits are enforced here: each node's expanded size and height are memoized when it is
    complete, and an alias is admitted only if what it adds stays within the limits."""

    def __init__(self, text: str):
        super().__init__(text)
        self._depth = 0  # mappings/lists open around the node being composed
        self._size: dict[int, int] = {}  # id(node) → values it stands for, aliases expanded
        self._height: dict[int, int] = {}  # id(node) → nesting levels it stands for
        self._expanded = 0  # values added by aliases so far

    def compose_node(self, parent: Any, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)
            self._admit_alias(node, event)
            return node
        level = 0 if isinstance(event, yaml.ScalarEvent) else 1
        if self._depth + level > MAX_DEPTH:
            raise _Refused(f"nesting deeper than {MAX_DEPTH} levels: flatten this part of the file", event.start_mark)
        self._depth += level
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= level
        self._measure(node)
        return node

    def _measure(self, node: yaml.Node) -> None:
        """Memoize the size and height `node` expands to; its children are measured already."""
        if isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        else:
            self._size[id(node)], self._height[id(node)] = 1, 0
            return
        self._size[id(node)] = 1 + sum(self._size[id(c)] for c in children)
        self._height[id(node)] = 1 + max((self._height[id(c)] for c in children), default=0)

    def _admit_alias(self, node: yaml.Node, event: yaml.AliasEvent) -> None:
        key = id(node)
        if key not in self._size:  # still being composed: the alias is inside its own anchor
            raise _Refused(f"alias *{event.anchor} is used inside the value it names (a loop)", event.start_mark)
        if self._depth + self._height[key] > MAX_DEPTH:
            raise _Refused(f"alias *{event.anchor} nests values deeper than {MAX_DEPTH} levels", event.start_mark)
        self._expanded += self._size[key]
        if self._expanded > MAX_ALIAS_EXPANSION:
            raise _Refused(f"aliases expand this file to more than {MAX_ALIAS_EXPANSION:,} values "
                           f"(*{event.anchor} is one too many): write the values out instead", event.start_mark)


def _construct(node: yaml.Node, loader: yaml.SafeLoader) -> Any:
    """A scalar (or a key) as Python data. PyYAML raises plain ValueErrors for values that match
    a type's pattern but are not values of it (a 2024-02-30 timestamp, a 5,000-digit integer)."""
    try:
        return loader.construct_object(node, deep=True)
    except (ValueError, TypeError, OverflowError) as exc:
        value = str(node.value)
        shown = value if len(value) <= 40 else value[:40] + "…"
        reason = str(exc).split(";")[0]  # drop Python's advice to the programmer (sys.set_int_max_str_digits)
        raise _Refused(f"cannot read the value '{shown}': {reason}", node.start_mark) from None


def _build(node: yaml.Node, path: Path_, locs: Locations, loader: yaml.SafeLoader) -> Any:
    locs.values[path] = _mark(node)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        out: dict = {}
        for key_node, value_node in node.value:
            key = _construct(key_node, loader)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise yaml.constructor.ConstructorError(None, None, "a key must be a plain value",
                                                        key_node.start_mark)
            key = str(key) if not isinstance(key, str) else key
            locs.keys[path + (key,)] = _mark(key_node)
            out[key] = _build(value_node, path + (key,), locs, loader)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(child, path + (i,), locs, loader) for i, child in enumerate(node.value)]
    return _construct(node, loader)


class _DuplicateKeyChecker:
    @staticmethod
    def check(node: yaml.Node, file: str, errors: list[SpecError]) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    if key_node.value in seen:
                        line, col = _mark(key_node)
                        errors.append(SpecError(file, line, col, f"duplicate key '{key_node.value}'"))
                    seen[key_node.value] = key_node
                _DuplicateKeyChecker.check(value_node, file, errors)
        elif isinstance(node, yaml.SequenceNode):
            for child in node.value:
                _DuplicateKeyChecker.check(child, file, errors)


def _unreadable(text: str, file: str, exc: yaml.reader.ReaderError) -> SpecError:
    """A character YAML does not allow, located by counting lines up to it (the reader only
    knows its offset). A NUL almost always means a binary file saved under a .yaml name."""
    position = max(0, min(int(exc.position), len(text)))
    line = text.count("\n", 0, position) + 1
    col = position - (text.rfind("\n", 0, position) + 1) + 1
    char = exc.character if isinstance(exc.character, str) else chr(exc.character)
    if char == "\x00":
        message = "the file contains a NUL byte (binary data?): save it as plain UTF-8 text"
    else:
        message = f"the file contains the character U+{ord(char):04X}, which YAML does not allow"
    return SpecError(file, line, col, message)


# PyYAML's parser messages, said the way a person editing a journey file thinks about it. The
# original message follows in brackets, so nothing a search engine would find is lost.
_PLAIN = (
    (re.compile(r"expected <block end>, but found '(<block mapping start>|<block sequence start>|\?|-)'"),
     "this line is indented differently from the lines above it: keys of one mapping (and items of one "
     "list) start in the same column"),
    (re.compile(r"expected ',' or '\}', but got '<stream end>'"), "a '{' is never closed: add the '}'"),
    (re.compile(r"expected ',' or '\]', but got '<stream end>'"), "a '[' is never closed: add the ']'"),
    (re.compile(r"expected ',' or '\}', but got"), "a { … } mapping is not closed with '}' or its entries are "
     "not separated by commas; quote a value that contains { } [ ] , : ? or # (e.g. \"Still thinking?\")"),
    (re.compile(r"expected ',' or '\]', but got"), "a [ … ] list is not closed with ']' or its items are not "
     "separated by commas; quote an item that contains { } [ ] , : or #"),
    (re.compile(r"mapping values are not allowed here"), "a second ': ' on this line: quote the value if it "
     "contains a colon (e.g. subject: \"Hello: news\"), or start the nested mapping on a new, indented line"),
    (re.compile(r"found character '\\t' that cannot start any token"), "a tab character: YAML indents with "
     "spaces only"),
    (re.compile(r"found unexpected end of stream"), "a quote is never closed: add the closing ' or \""),
    (re.compile(r"could not find expected ':'"), "a key without ':' (write `key: value`), or a quoted text "
     "that runs over several lines"),
    (re.compile(r"found undefined alias"), "an alias (*name) without an anchor (&name) before it"),
)


def plain_problem(problem: str) -> str:
    """A YAML parser message in plain words, the parser's own text kept in brackets."""
    for pattern, plain in _PLAIN:
        if pattern.search(problem):
            return f"{plain} [{problem}]"
    return problem


def _marked_error(exc: yaml.MarkedYAMLError, file: str) -> SpecError:
    mark = exc.problem_mark or exc.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    if isinstance(exc, _Refused):
        return SpecError(file, line, col, str(exc.problem))
    problem = exc.problem or exc.context or "invalid YAML"
    return SpecError(file, line, col, f"YAML syntax error: {plain_problem(problem)}")


def load_located(text: str, file: str) -> tuple[Any, Locations, list[SpecError]]:
    """Parse YAML text; returns (data, locations, errors). Syntax errors, unreadable characters
    and documents beyond the limits above come back as errors."""
    locs = Locations(file)
    errors: list[SpecError] = []
    try:
        loader = _BoundedLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None, locs, errors
            _DuplicateKeyChecker.check(node, file, errors)
            data = _build(node, (), locs, loader)
        finally:
            loader.dispose()
    except yaml.reader.ReaderError as exc:
        return None, locs, [_unreadable(text, file, exc)]
    except yaml.MarkedYAMLError as exc:
        errors.append(_marked_error(exc, file))
        return None, locs, errors
    return data, locs, errors
