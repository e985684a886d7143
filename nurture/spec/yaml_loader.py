"""YAML loading that remembers where every node came from.

`load_located(text, path)` returns plain Python data plus a `Locations` map from a key path
(tuple of keys and list indices, as pydantic reports them in `loc`) to the line and column of
that node, so any validation error can be reported as `path:line:col`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from nurture.spec.errors import SpecError

Path_ = tuple


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


def _build(node: yaml.Node, path: Path_, locs: Locations, loader: yaml.SafeLoader) -> Any:
    locs.values[path] = _mark(node)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        out: dict = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise yaml.constructor.ConstructorError(None, None, "a key must be a plain value",
                                                        key_node.start_mark)
            key = str(key) if not isinstance(key, str) else key
            locs.keys[path + (key,)] = _mark(key_node)
            out[key] = _build(value_node, path + (key,), locs, loader)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(child, path + (i,), locs, loader) for i, child in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


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


def load_located(text: str, file: str) -> tuple[Any, Locations, list[SpecError]]:
    """Parse YAML text; returns (data, locations, errors). Syntax errors come back as errors."""
    locs = Locations(file)
    errors: list[SpecError] = []
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None, locs, errors
            _DuplicateKeyChecker.check(node, file, errors)
            data = _build(node, (), locs, loader)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        errors.append(SpecError(file, line, col, f"YAML syntax error: {problem}"))
        return None, locs, errors
    return data, locs, errors
