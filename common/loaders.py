"""THE YAML and JSON readers of temponas: bounded by :mod:`common.limits`, errors in one line.

Every config/YAML the project reads goes through :func:`load_yaml` / :func:`parse_yaml`
(``yaml.SafeLoader`` underneath: plain data only, never Python objects), every JSON input
through :func:`load_json` / :func:`parse_json`. A document that is too large, nested too deep,
whose aliases expand to too many values or (YAML) that repeats a key is refused with a
:class:`ConfigError` naming the file, the line and the key, before anything is built from it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from common.errors import ConfigError
from common.limits import MAX_JSON_BYTES, MAX_NESTING, MAX_YAML_BYTES, MAX_YAML_VALUES

__all__ = ["load_json", "load_yaml", "parse_json", "parse_yaml", "read_text"]

_MERGE_TAG = "tag:yaml.org,2002:merge"


def read_text(path: str | Path, max_bytes: int, what: str = "file") -> str:
    """The UTF-8 text of ``path``, refused (one line) when larger than ``max_bytes``."""
    p = Path(path)
    try:
        size = os.stat(p).st_size
        if p.is_dir():
            raise ConfigError(f"{p}: is a directory, expected a {what}")
        if size > max_bytes:
            raise ConfigError(f"{p}: {size:,} bytes, more than the {max_bytes:,} a {what} may "
                              f"have (see docs/limits.md)")
        with open(p, encoding="utf-8") as f:
            text = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise ConfigError(f"{p}: cannot read (no such {what})") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a UTF-8 text file") from None
    if len(text) > max_bytes:  # grew while read (a pipe, a device): the same bound
        raise ConfigError(f"{p}: more than the {max_bytes:,} bytes a {what} may have")
    return text


# ---- YAML -----------------------------------------------------------------------------------

class _BoundedLoader(yaml.SafeLoader):
    """``SafeLoader`` that refuses deep nesting while composing, counts values after alias
    expansion before constructing, and refuses repeated mapping keys."""

    def __init__(self, stream: str, source: str) -> None:
        super().__init__(stream)
        self.source = source
        self.depth = 0

    def _fail(self, node_or_mark: Any, what: str) -> ConfigError:
        mark = getattr(node_or_mark, "start_mark", node_or_mark)
        line = f": line {mark.line + 1}" if mark is not None else ""
        return ConfigError(f"{self.source}{line}: {what}")

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        self.depth += 1
        try:
            if self.depth > MAX_NESTING:
                raise self._fail(self.peek_event().start_mark,
                                 f"nested deeper than {MAX_NESTING} levels (see docs/limits.md)")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def compose_document(self) -> Node:
        node = super().compose_document()
        _check_expansion(node, self)
        return node

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG or not isinstance(key_node, ScalarNode):
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise self._fail(key_node, f"duplicate key {key!r} (first on line "
                                               f"{seen[key]}); a mapping names each key once")
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for kv in node.value for n in kv]
    return []


def _check_expansion(root: Node | None, loader: _BoundedLoader) -> None:
    """Refuse a document whose aliases expand to more than :data:`MAX_YAML_VALUES` values or
    nest (through aliases) deeper than :data:`MAX_NESTING`, or that refers to itself.

    Iterative, memoized per node: linear in the size of the document as written."""
    if root is None:
        return
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            kids = _children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            on_path.discard(key)
            if size[key] > MAX_YAML_VALUES:
                raise loader._fail(node, f"its aliases (*name) expand to more than "
                                         f"{MAX_YAML_VALUES:,} values (see docs/limits.md)")
            if depth[key] > MAX_NESTING:
                raise loader._fail(node, f"its aliases (*name) nest deeper than {MAX_NESTING} "
                                         f"levels (see docs/limits.md)")
            continue
        if key in size:
            continue
        if key in on_path:
            raise loader._fail(node, "an alias (*name) refers to the mapping or list that "
                                     "contains it (a recursive document)")
        on_path.add(key)
        stack.append((node, True))
        for k in _children(node):
            if id(k) not in size:
                if id(k) in on_path:
                    raise loader._fail(k, "an alias (*name) refers to the mapping or list that "
                                          "contains it (a recursive document)")
                stack.append((k, False))


def parse_yaml(text: str, source: str) -> Any:
    """The plain data of the YAML document ``text`` (``source`` names it in errors)."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{source}: {len(text):,} characters, more than the "
                          f"{MAX_YAML_BYTES:,} a YAML file may have (see docs/limits.md)")
    loader = _BoundedLoader(text, source)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        pos = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(f"{source}: malformed YAML{pos} ({problem})") from None
    except RecursionError:  # belt and braces: the nesting bound comes first
        raise ConfigError(f"{source}: nested too deeply") from None
    finally:
        loader.dispose()


def load_yaml(path: str | Path, what: str = "YAML file") -> Any:
    """:func:`parse_yaml` of the file ``path`` (at most :data:`MAX_YAML_BYTES`)."""
    return parse_yaml(read_text(path, MAX_YAML_BYTES, what), str(path))


# ---- JSON -----------------------------------------------------------------------------------

def _json_depth_ok(data: Any) -> bool:
    stack = [(data, 1)]
    while stack:
        x, d = stack.pop()
        if isinstance(x, (dict, list)):
            if d > MAX_NESTING:
                return False
            stack.extend((v, d + 1) for v in (x.values() if isinstance(x, dict) else x))
    return True


def parse_json(text: str, where: str, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """``json.loads(text)`` bounded in size and nesting; errors are one line naming ``where``."""
    if len(text) > max_bytes:
        raise ConfigError(f"{where}: {len(text):,} characters of JSON, more than the "
                          f"{max_bytes:,} allowed (see docs/limits.md)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where}: not valid JSON ({e.msg} at line {e.lineno} column "
                          f"{e.colno})") from None
    except RecursionError:
        data = None
        ok = False
    else:
        ok = _json_depth_ok(data)
    if not ok:
        raise ConfigError(f"{where}: JSON nested deeper than {MAX_NESTING} levels "
                          f"(see docs/limits.md)")
    return data


def load_json(path: str | Path, where: str | None = None, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """:func:`parse_json` of the file ``path``."""
    return parse_json(read_text(path, max_bytes, "JSON file"), where or str(path), max_bytes)
