"""The pool beside DVC's cache: a hard link to every shard a store used, found again after DVC deleted the output.

DVC deletes a stage's outputs before it runs the stage; the decode stage finds its earlier shards
in the pool, in this workspace or in a queued experiment's copy of it (whose config.local points at
the same cache). A link is a name, not a copy: with `cache.type: hardlink` the workspace file, DVC's
cache object and the pool's link are one file on disk.
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
from pathlib import Path

from imgclf.artifacts import atomic_path


def link(source: Path, target: Path, required: bool = True) -> None:
    """Give `source` a second name `target` (a hard link, no bytes copied); a copy across file systems.

    Without `required` (the pool) a failure only costs reuse later, so it is ignored.
    """
    if target.exists() or source == target:
        return
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(source, target)
    except OSError:
        if not required:
            return
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)


def dvc_cache_dir(root: str | os.PathLike = ".") -> Path | None:
    """The DVC cache directory of the project at `root` (`cache.dir` of .dvc/config.local or .dvc/config, relative
    to .dvc/, else .dvc/cache), or None outside a DVC project.

    A queued experiment's temporary workspace has config.local pointing at the project's cache, so it
    finds the same directory.
    """
    dvc_dir = Path(root) / ".dvc"
    if not dvc_dir.is_dir():
        return None
    cache = dvc_dir / "cache"
    for name in ("config", "config.local"):  # config.local wins, as in DVC
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        try:
            parser.read(dvc_dir / name, encoding="utf-8")
        except configparser.Error:
            continue
        value = parser.get("cache", "dir", fallback=None)
        if value:
            cache = dvc_dir / value.strip().strip("'\"")
    return cache


def find_pool(root: str | os.PathLike = ".") -> Path | None:
    """The shard pool of the DVC project at `root`: `imgclf-decoded/` inside its DVC cache directory, else None."""
    cache = dvc_cache_dir(root)
    return None if cache is None else cache / "imgclf-decoded"


def seed_pool(root: str | os.PathLike, pool: Path, output: str = "data/decoded") -> int:
    """Link the shards of the store recorded in `root`/dvc.lock from DVC's cache into the pool; returns how many.

    For a workspace whose pool lacks them (a fresh clone after `dvc pull`, a pool removed by hand):
    DVC deletes `output` before the decode stage runs, but its cache still holds the last store. Reads
    dvc.lock's md5 of `output` and that directory's manifest in the cache (files/md5/xx/rest.dir, DVC 3's
    layout); anything unexpected only means fewer shards to reuse.
    """
    import yaml

    cache = pool.parent
    try:
        lock = yaml.safe_load((Path(root) / "dvc.lock").read_text(encoding="utf-8"))
        outs = lock["stages"]["decode"]["outs"]
        digest = next(out["md5"] for out in outs if out["path"] == output)
        manifest = json.loads((cache / "files/md5" / digest[:2] / digest[2:]).read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError, StopIteration, yaml.YAMLError):
        return 0
    linked = 0
    for entry in manifest if isinstance(manifest, list) else []:
        relpath, md5 = entry.get("relpath", ""), entry.get("md5", "")
        if relpath.startswith("shards/") and len(md5) == 32 and not (pool / relpath[7:]).exists():
            source = cache / "files/md5" / md5[:2] / md5[2:]
            if source.is_file():
                link(source, pool / relpath[7:], required=False)
                linked += 1
    return linked
