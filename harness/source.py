"""Spec files as plain data plus a map from every key path to its file and line.

YAML is read with ``yaml.SafeLoader`` semantics (no tags that run code). While the
document is composed we keep each node's line, so that any later error about
``params.sigma`` can be reported as ``specs/methods/otcfm.yaml:7``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.errors import Loc, SpecError

KeyPath = tuple[str | int, ...]

# Bounds on what a spec file may expand to: YAML aliases can make a 600-byte file stand for
# gigabytes ("billion laughs"), and deep nesting exhausts the parser's recursion.
MAX_NODES = 100_000  # scalars, mappings and sequences, every alias expanded
MAX_DEPTH = 64
STR_TAG, MERGE_TAG = "tag:yaml.org,2002:str", "tag:yaml.org,2002:merge"


@dataclass
class Source:
    """Data read from one place, with the location of every key path inside it."""

    data: Any
    locs: dict[KeyPath, Loc] = field(default_factory=dict)
    origin: Loc = field(default_factory=lambda: Loc("<inline>"))

    def loc(self, path: KeyPath = ()) -> Loc:
        """The location of ``path``, or of its nearest ancestor that has one."""
        path = tuple(path)
        while path:
            if path in self.locs:
                return self.locs[path]
            path = path[:-1]
        return self.locs.get((), self.origin)

    def sub(self, path: KeyPath) -> Source:
        """The part of this source below ``path``, re-rooted, as a copy (YAML aliases share
        objects, and resolution edits what it is given)."""
        data = self.data
        for key in path:
            data = data[key]
        data = copy.deepcopy(data)
        n = len(path)
        locs = {p[n:]: loc for p, loc in self.locs.items() if p[:n] == tuple(path)}
        return Source(data, locs, self.loc(path))


def display_path(path: Path) -> str:
    """Paths under the working directory are shown relative to it, as users typed them."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def parse_yaml(text: str, name: str) -> Source:
    """Parse YAML text into plain data and a location map. Errors name ``name:LINE``."""
    try:
        loader = yaml.SafeLoader(text)  # checks the characters: a NUL byte is an error here
    except yaml.reader.ReaderError as err:
        line = text[: err.position].count("\n") + 1
        char = chr(err.character) if isinstance(err.character, int) else err.character
        raise SpecError(f"character {char!r} is not allowed in YAML; remove it", Loc(name, line)) from None
    try:
        node = loader.get_single_node()
        if node is None:
            raise SpecError("the file is empty", Loc(name, 1))
        locs: dict[KeyPath, Loc] = {}
        _index(node, (), name, locs, [0])
        data = loader.construct_document(node)
    except RecursionError:
        raise SpecError(f"nested too deeply (a spec is at most {MAX_DEPTH} levels deep)", Loc(name, 0)) from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark is not None else 0
        problem = err.problem or err.context or "invalid YAML"
        raise SpecError(f"YAML syntax error: {problem}", Loc(name, line)) from None
    except yaml.YAMLError as err:
        raise SpecError(f"YAML error: {err}", Loc(name, 0)) from None
    finally:
        loader.dispose()
    return Source(data, locs, Loc(name, node.start_mark.line + 1))


def load_yaml(path: Path) -> Source:
    name = display_path(path)
    if path.is_dir():
        raise SpecError(f"is a folder; give spec files (e.g. {name}/*.yaml)", Loc(name))
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SpecError("file not found", Loc(name)) from None
    except OSError as err:
        raise SpecError(f"cannot read file: {err.strerror or err}", Loc(name)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise SpecError(f"not UTF-8 text (byte {data[err.start]:#04x}); save the spec as UTF-8", Loc(name, line)) from None
    return parse_yaml(text, name)


def _index(node: yaml.Node, path: KeyPath, name: str, locs: dict[KeyPath, Loc], count: list[int]) -> None:
    line = node.start_mark.line + 1
    count[0] += 1
    if count[0] > MAX_NODES:
        raise SpecError(f"too large: more than {MAX_NODES} values once its aliases are expanded", Loc(name, line))
    if len(path) > MAX_DEPTH:
        raise SpecError(f"nested too deeply (a spec is at most {MAX_DEPTH} levels deep)", Loc(name, line))
    locs.setdefault(path, Loc(name, line))
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise SpecError("mapping keys must be plain names", Loc(name, key_node.start_mark.line + 1))
            if key_node.tag not in (STR_TAG, MERGE_TAG):  # 1:, yes:, null: are a number, true, None
                raise SpecError(f"mapping key {key_node.value!r} is not a name (YAML reads it as "
                                f"{key_node.tag.rsplit(':', 1)[-1]}); quote it if it is one",
                                Loc(name, key_node.start_mark.line + 1))
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in seen:
                raise SpecError(
                    f"duplicate key {key!r} (first given on line {seen[key]})", Loc(name, line)
                )
            seen[key] = line
            locs[(*path, key)] = Loc(name, line)
            _index(value_node, (*path, key), name, locs, count)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index(item, (*path, i), name, locs, count)
