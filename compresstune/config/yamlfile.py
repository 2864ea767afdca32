"""A pipeline file read as YAML with limits: at most 1 MiB, UTF-8, nested at most 32 levels, aliases that expand
to at most 100,000 values, no key given twice in one mapping, ``3e-5`` read as the float it means; and the line
of every key, for messages."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from ..errors import ConfigError

MAX_FILE_BYTES = 1 << 20  # a pipeline file is a few kB
MAX_DEPTH = 32  # nesting of mappings and lists
MAX_NODES = 100_000  # values after expanding every alias (a "billion laughs" file expands to billions)


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``3e-5`` (no dot) as a string; this loader reads it as the float it means.
    Quoted strings stay strings. A key given twice in one mapping is an error naming both lines."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} appears twice in one mapping (lines {seen[key]} and {key_node.start_mark.line + 1}); "
                    "the second would silently replace the first: keep one",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def _check_shape(text: str) -> None:
    """Refuse, before building anything, YAML nested deeper than :data:`MAX_DEPTH` or whose aliases expand to more
    than :data:`MAX_NODES` values (both found without recursion on the event stream and the node graph)."""
    depth = 0
    for ev in yaml.parse(text, Loader=_Loader):
        if isinstance(ev, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise yaml.YAMLError(f"nested more than {MAX_DEPTH} levels deep (line {ev.start_mark.line + 1})")
        elif isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
    root = yaml.compose(text, Loader=_Loader)
    size: dict[int, int] = {}
    order, stack = [], [root] if root is not None else []
    while stack:  # children before parents, each node once (aliases share nodes)
        node = stack.pop()
        if id(node) in size:
            continue
        size[id(node)] = 0
        order.append(node)
        if isinstance(node, yaml.MappingNode):
            stack.extend(x for kv in node.value for x in kv)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    for node in reversed(order):
        kids = [x for kv in node.value for x in kv] if isinstance(node, yaml.MappingNode) else []
        kids = node.value if isinstance(node, yaml.SequenceNode) else kids
        size[id(node)] = min(MAX_NODES + 1, 1 + sum(size[id(k)] for k in kids))
    if root is not None and size[id(root)] > MAX_NODES:
        raise yaml.YAMLError(f"its aliases expand to more than {MAX_NODES:,} values; write the settings out plainly")


def yaml_load(text: str):
    _check_shape(text)
    return yaml.load(text, Loader=_Loader)


def read_pipeline_file(path: Path) -> tuple[str, object]:
    """(text, data) of a pipeline file; every way it cannot be read is a :class:`ConfigError` naming the line."""
    src = str(path)
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ConfigError(src, [f"the file is {path.stat().st_size:,} bytes; a pipeline file is at most 1 MiB."])
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            src, [f"line {line}: byte 0x{data[exc.start]:02x} is not UTF-8; save the pipeline file as UTF-8."]
        ) from None
    try:
        return text, yaml_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", exc)
        raise ConfigError(src, [f"{where}not valid YAML ({problem}); check indentation and quoting."]) from None


def line_map(text: str) -> dict[tuple, int]:
    """Key path -> 1-based line in the YAML text, for error messages."""
    lines: dict[tuple, int] = {}

    def walk(node, path):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                lines[path + (k.value,)] = k.start_mark.line + 1
                walk(v, path + (k.value,))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                lines[path + (i,)] = v.start_mark.line + 1
                walk(v, path + (i,))

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, ())
    return lines
