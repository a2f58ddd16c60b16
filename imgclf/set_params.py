"""Set params.yaml values from the command line, comments and layout kept, each edited section validated first.

    python -m imgclf.set_params decode.image_size=224 train.augment.hflip=true train.mean=[0.5,0.5,0.5]

Values are YAML (`null`, `true`, numbers, strings, `[a, b, c]`). A key params.yaml does not have, or a
value its stage would refuse, is one line naming the key, and the file is left as it was; a value that
is already set changes nothing. It is a text edit of the key's own line, so `git diff params.yaml`
shows exactly the values that changed. `dvc exp run -S key=value` does the same for one experiment.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import re
import sys
from pathlib import Path

import yaml

from imgclf.artifacts import write_text
from imgclf.config import parse_section
from imgclf.entry import stage_main
from imgclf.errors import ConfigError

LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w-]*):(?P<gap> *)(?P<value>[^#\n]*?)(?P<comment> +#.*)?$")


def section_config(section: str) -> type:
    """The config dataclass of a params section: `<Section>Config` in the module named after the stage."""
    module = importlib.import_module(f"imgclf.{section}")
    name = "".join(part.title() for part in section.split("_")) + "Config"
    return getattr(module, name)


def find_line(lines: list[str], dotted: str) -> int:
    """The index of the line that holds `dotted` (section.key or section.group.key) in a params file's lines."""
    parts, depth, start, end = dotted.split("."), 0, 0, len(lines)
    for level, part in enumerate(parts):
        found, names = None, []
        for index in range(start, end):
            match = LINE.match(lines[index].rstrip("\n"))
            if not match or len(match["indent"]) != depth:
                continue
            names.append(match["key"])
            if match["key"] == part:
                found = index
                break
        if found is None:
            prefix = ".".join(parts[:level])
            close = difflib.get_close_matches(part, names, n=1)
            hint = f" (did you mean '{'.'.join(filter(None, [prefix, close[0]]))}'?)" if close else ""
            raise ConfigError(f"{dotted}: no such key in params.yaml{hint}")
        if level == len(parts) - 1:
            return found
        start, end, depth = found + 1, end, depth + 2
        for index in range(start, len(lines)):  # the block ends at the next line as shallow as its key
            match = LINE.match(lines[index].rstrip("\n"))
            if match and len(match["indent"]) < depth:
                end = index
                break
    raise ConfigError(f"{dotted}: no such key in params.yaml")  # pragma: no cover (parts is never empty)


def _opens_a_group(lines: list[str], index: int) -> bool:
    """True when the key on lines[index] has no value of its own because keys indented under it follow (a blank
    value alone is YAML's null, as `dvc exp run -S` writes it)."""
    indent = len(lines[index]) - len(lines[index].lstrip(" "))
    for line in lines[index + 1:]:
        if line.strip() and not line.lstrip().startswith("#"):
            return len(line) - len(line.lstrip(" ")) > indent
    return False


def as_yaml(value) -> str:
    """A value as it is written on one params.yaml line."""
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("...").strip()


def set_values(path: str | Path, assignments: list[str]) -> list[str]:
    """Apply `key=value` assignments to the params file `path`; returns one line per value that changed.

    Every edited section is validated against its stage's config before the file is written.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    changed = []
    for assignment in assignments:
        key, equals, text = assignment.partition("=")
        if not equals or not key:
            raise ConfigError(f"{assignment}: expected key=value, e.g. decode.image_size=224")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"{key}: {text!r} is not a YAML value") from None
        index = find_line(lines, key)
        match = LINE.match(lines[index].rstrip("\n"))
        if not match["value"].strip() and _opens_a_group(lines, index):
            raise ConfigError(f"{key}: a group of params, not one value; set its keys one by one")
        if yaml.safe_load(match["value"]) == value:
            continue
        new = as_yaml(value)
        comment = match["comment"] or ""
        if comment:  # keep the comment's column where the new value leaves room
            comment = " " * max(1, len(match["value"]) + len(comment) - len(comment.lstrip()) - len(new)) + \
                comment.lstrip()
        lines[index] = f"{match['indent']}{match['key']}:{match['gap'] or ' '}{new}{comment}\n"
        changed.append(f"{path}: {key} {match['value'].strip() or 'null'} -> {new}")
    if not changed:
        return []
    data = yaml.safe_load("".join(lines))
    for section in dict.fromkeys(assignment.split(".")[0] for assignment in assignments):
        try:
            parse_section(data[section], section_config(section), section)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}; nothing was changed") from None
    write_text(path, "".join(lines))
    return changed


@stage_main
def main() -> None:
    """Set the values given on the command line in params.yaml (or --params), then say what changed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("assignments", nargs="+", metavar="key=value", help="e.g. decode.image_size=224")
    parser.add_argument("--params", default="params.yaml", help="the params file to edit")
    args = parser.parse_args()
    if not Path(args.params).is_file():
        raise ConfigError(f"{args.params}: not found (run this in the project's root folder)")
    changed = set_values(args.params, args.assignments)
    print("\n".join(changed) if changed else "nothing to change: every value is already set", file=sys.stdout)


if __name__ == "__main__":
    main()
