"""From the demo to your own images: remove the demo stage, its digits and its params, in one command.

`python -m imgclf.own_data` (run in the project's root) leaves a pipeline whose `data/raw` and
`data/predict` are folders you fill and track with `dvc add` (README, "Using your own images"):

- `dvc.yaml` loses the `demo` stage block, and nothing else (a text edit, so the diff is those lines);
- `params.yaml` loses the `demo:` section; `dvc.lock` loses the demo's entry, when there is one;
- `data/.gitignore` loses the demo's outputs (`dvc add` writes its own lines back, which a second run keeps);
- the files the demo wrote (`data/raw/<digit>/digit_NNNN.png`, `data/predict/image_NNNN.png`) are
  deleted, and anything else in those folders is kept and listed, so no image of yours is lost;
- `data/raw/` and `data/predict/` exist afterwards (empty unless you had put files there), so that
  `dvc add data/raw data/predict` works even with nothing to predict.

Running it again does nothing. Only the standard library and PyYAML: it needs no model stack.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

from imgclf.artifacts import write_text
from imgclf.entry import stage_main
from imgclf.errors import DataError

DEMO_STAGE = "demo"
DEMO_OUTPUTS = ("data/raw", "data/predict")
# Exactly the names imgclf.demo.write_demo gives its files.
DEMO_FILES = (re.compile(r"data/raw/\d/digit_\d{4}\.png"), re.compile(r"data/predict/image_\d{4}\.png"))


def remove_block(text: str, key: str, indent: str) -> tuple[str, bool]:
    """`text` without the YAML mapping entry `key` at `indent` (its comment lines above and its body).

    The block ends at the next line at the same or a lower indentation; the blank lines that ended
    it go with it. Returns (new text, whether the key was found).
    """
    lines = text.splitlines(keepends=True)
    head = re.compile(rf"^{re.escape(indent)}{re.escape(key)}:\s*(#.*)?$")
    start = next((i for i, line in enumerate(lines) if head.match(line.rstrip("\n"))), None)
    if start is None:
        return text, False
    end = start + 1
    while end < len(lines):
        line = lines[end]
        if line.strip() and not line.startswith(indent + " ") and not line.startswith(indent + "\t"):
            break  # a sibling, a parent key or a comment at the block's own level
        end += 1
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1  # keep the blank lines that separate the next block
    while end < len(lines) and not lines[end].strip():
        end += 1  # ... but only one set of them
    first = start
    while first > 0 and lines[first - 1].startswith(indent + "#"):
        first -= 1  # the block's own comment lines
    return "".join(lines[:first] + lines[end:]), True


def remove_demo_files(root: Path) -> tuple[int, list[str]]:
    """Delete the files the demo wrote under its output folders; return (deleted, other files kept)."""
    deleted, kept = 0, []
    for output in DEMO_OUTPUTS:
        folder = root / output
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if path.is_file() or path.is_symlink():
                relative = path.relative_to(root).as_posix()
                if any(pattern.fullmatch(relative) for pattern in DEMO_FILES):
                    path.unlink()
                    deleted += 1
                else:
                    kept.append(relative)
        for path in sorted(folder.rglob("*"), reverse=True):  # the digit folders the demo made, now empty
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
    return deleted, kept


def switch_to_own_data(root: str | Path = ".") -> list[str]:
    """Turn the demo project at `root` into one for the user's own images; return what was done, a line each."""
    root = Path(root)
    done = []
    if not (root / "dvc.yaml").is_file():
        raise DataError(f"{root / 'dvc.yaml'}: not found (run this in the project's root folder)")
    # The stage is a block indented under `stages:` in dvc.yaml; its params a top-level section.
    for path, indent, what in ((root / "dvc.yaml", "  ", "stage"), (root / "params.yaml", "", "section")):
        text, found = remove_block(path.read_text(encoding="utf-8"), DEMO_STAGE, indent) if path.is_file() \
            else ("", False)
        if found:
            write_text(path, text)
            done.append(f"{path}: removed the `{DEMO_STAGE}` {what}")
    lock = root / "dvc.lock"
    if lock.is_file():
        data = yaml.safe_load(lock.read_text(encoding="utf-8")) or {}
        if DEMO_STAGE in (data.get("stages") or {}):
            del data["stages"][DEMO_STAGE]
            write_text(lock, yaml.safe_dump(data, sort_keys=False))
            done.append(f"{lock}: removed the `{DEMO_STAGE}` entry")
    ignore = root / "data" / ".gitignore"
    # The demo's output lines go, but not those `dvc add data/raw data/predict` wrote back for the user's own
    # data (it writes data/raw.dvc beside them): a second run must not let `git add -A` take the images.
    names = {"/" + Path(output).name for output in DEMO_OUTPUTS if not (root / f"{output}.dvc").exists()}
    if ignore.is_file() and names:
        lines = ignore.read_text(encoding="utf-8").splitlines()
        keep = [line for line in lines if line.strip() not in names]
        if keep != lines:
            write_text(ignore, "".join(line + "\n" for line in keep))
    deleted, kept = remove_demo_files(root)
    if deleted:
        done.append(f"deleted the demo's {deleted} images from {' and '.join(DEMO_OUTPUTS)}")
    if kept and done:  # said once, when the demo goes; a second run has nothing to say
        done.append(f"kept {len(kept)} files that the demo did not write, e.g. {kept[0]}")
    for output in DEMO_OUTPUTS:
        (root / output).mkdir(parents=True, exist_ok=True)
    return done


@stage_main
def main() -> None:
    """Run the switch in the current folder (or --root) and say what was done and what comes next."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=".", help="the project's root folder (where dvc.yaml is)")
    args = parser.parse_args()
    done = switch_to_own_data(args.root)
    if not done:
        print("nothing to do: this project has no demo stage, params or images left")
        return
    for line in done:
        print(line)
    print("next: put your images in data/raw/<class>/ (and any to classify in data/predict/), then "
          "`dvc add data/raw data/predict` and `dvc repro`", file=sys.stdout)


if __name__ == "__main__":
    main()
