"""Scanning, validating and splitting an ImageFolder tree."""

import subprocess
import sys
from pathlib import Path

import json

import pandas as pd
import pytest

from imgclf import split as split_module
from imgclf.split import (image_problem, inspect_file, inspect_files, scan_image_folder, split_counts,
                          stratified_split)
from imgclf.split_files import read_split
from imgclf.errors import DataError
from tests.conftest import write_png

ROOT = Path(__file__).resolve().parents[2]


def run_split(raw: Path, out: Path, cwd: Path, params: Path | None = None):
    """Run the real split stage script."""
    args = [sys.executable, str(ROOT / "stages/split.py"), "--raw", str(raw), "--out", str(out),
            "--params", str(params or ROOT / "params.yaml")]
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd)


def test_scan_lists_classes_sorted_and_ignores_hidden(image_folder):
    (image_folder / ".ipynb_checkpoints").mkdir()
    write_png(image_folder / ".ipynb_checkpoints" / "x.png", 1)
    (image_folder / "__MACOSX").mkdir()
    (image_folder / "a" / "notes.txt").write_text("hello")
    write_png(image_folder / "b" / "UPPER.PNG", 3)
    (image_folder / "a" / ".DS_Store").write_bytes(b"\0")
    scan = scan_image_folder(image_folder)
    assert scan.classes == ["a", "b", "c"]
    paths = {p for p, _ in scan.candidates}
    assert (image_folder / "b" / "UPPER.PNG").as_posix() in paths  # extensions are case-insensitive
    reasons = dict(scan.rejected)
    assert reasons[(image_folder / "a" / "notes.txt").as_posix()] == "unsupported file extension"
    assert reasons[(image_folder / "a" / ".DS_Store").as_posix()] == "hidden file"
    assert reasons[(image_folder / ".ipynb_checkpoints").as_posix()].startswith("hidden")
    assert not any(".ipynb_checkpoints/" in p for p in paths)


def test_extensions_cover_torchvisions():
    from torchvision.datasets.folder import IMG_EXTENSIONS as TORCHVISION

    from imgclf.images import IMG_EXTENSIONS
    assert set(TORCHVISION) | {".gif"} == set(IMG_EXTENSIONS)


def test_missing_or_empty_raw_folder_is_an_error(tmp_path):
    with pytest.raises(DataError, match="data folder not found"):
        scan_image_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        scan_image_folder(tmp_path / "empty")


def test_split_is_stratified_and_covers_every_class():
    files = [(f"x/{label}/{i}.png", label) for label, n in (("a", 100), ("b", 20), ("c", 3)) for i in range(n)]
    parts = stratified_split(files, ["a", "b", "c"], 0.15, 0.15, seed=1)
    counts = {name: frame["label"].value_counts().to_dict() for name, frame in parts.items()}
    assert counts["train"] == {"a": 70, "b": 14, "c": 1}
    assert counts["val"] == {"a": 15, "b": 3, "c": 1}
    assert counts["test"] == {"a": 15, "b": 3, "c": 1}
    all_paths = pd.concat(parts.values())["path"]
    assert sorted(all_paths) == sorted(p for p, _ in files) and all_paths.is_unique


def test_split_is_deterministic_and_depends_on_seed():
    files = [(f"{label}/{i}.png", label) for label in "ab" for i in range(40)]
    first = stratified_split(files, ["a", "b"], 0.15, 0.15, seed=3)
    again = stratified_split(list(reversed(files)), ["a", "b"], 0.15, 0.15, seed=3)
    other = stratified_split(files, ["a", "b"], 0.15, 0.15, seed=4)
    assert all(first[k].equals(again[k]) for k in first)
    assert not first["test"].equals(other["test"])


def test_adding_a_class_does_not_reshuffle_the_others():
    files = [(f"{label}/{i}.png", label) for label in "ab" for i in range(30)]
    before = stratified_split(files, ["a", "b"], 0.15, 0.15, seed=0)
    after = stratified_split(files + [(f"c/{i}.png", "c") for i in range(30)], ["a", "b", "c"], 0.15, 0.15, 0)
    assert before["test"]["path"].tolist() == after["test"].query("label != 'c'")["path"].tolist()


def test_too_few_images_is_a_clear_error():
    assert split_counts(3, 0.15, 0.15) == (1, 1, 1)
    with pytest.raises(DataError, match="class .b. has 2 valid distinct image"):
        stratified_split([(f"a/{i}", "a") for i in range(9)] + [("b/1", "b"), ("b/2", "b")],
                         ["a", "b"], 0.15, 0.15, 0)


def test_image_problem_decodes_fully(tmp_path):
    good = write_png(tmp_path / "good.png", 1, size=64)
    data = good.read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "page.jpg").write_text("<html>not an image</html>")
    assert image_problem(good) is None
    assert image_problem(tmp_path / "empty.jpg") == "empty file"
    assert image_problem(tmp_path / "truncated.png")  # Pillow's verify() would miss this one
    assert image_problem(tmp_path / "page.jpg").startswith("UnidentifiedImageError")
    # The parallel path gives the same answers as the serial one.
    paths = [str(tmp_path / n) for n in ("good.png", "truncated.png", "empty.jpg", "page.jpg")] * 20
    assert inspect_files(paths, workers=2) == [inspect_file(p) for p in paths]
    assert [problem for problem, _ in inspect_files(paths, workers=1)] == [image_problem(p) for p in paths]


def test_split_stage_writes_whole_byte_identical_outputs(tmp_path, image_folder):
    (image_folder / "b" / "broken.png").write_bytes(b"\x89PNG garbage")
    (image_folder / "readme.md").write_text("about the data")
    first, second = tmp_path / "s1", tmp_path / "s2"
    for out in (first, second):
        result = run_split(image_folder, out, tmp_path)
        assert result.returncode == 0, result.stderr
    for name in ("train.csv", "val.csv", "test.csv", "rejected.csv", "classes.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert (first / "classes.json").read_text().split() == ["[", '"a",', '"b",', '"c"', "]"]
    rejected = pd.read_csv(first / "rejected.csv")
    assert set(rejected["path"].map(lambda p: Path(p).name)) == {"broken.png", "readme.md"}
    listed = pd.concat([pd.read_csv(first / f"{n}.csv") for n in ("train", "val", "test")])
    every_file = {p.as_posix() for p in image_folder.rglob("*") if p.is_file()}
    assert set(listed["path"]) | set(rejected["path"]) == every_file
    assert len(listed) + len(rejected) == len(every_file)  # exactly one place each
    assert not list(first.glob(".*tmp"))  # no temporary files left behind


def test_split_stage_errors_on_class_without_valid_images(tmp_path, image_folder):
    (image_folder / "d").mkdir()
    (image_folder / "d" / "bad.jpg").write_text("nope")
    result = run_split(image_folder, tmp_path / "out", tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: {image_folder / 'd'}: class folder has no valid image"
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_read_split_keeps_labels_as_strings(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("path,label\nx/0/1.png,0\nx/10/2.png,10\n")
    frame = read_split(path, ["0", "10"])
    assert frame["label"].tolist() == ["0", "10"] and frame["target"].tolist() == [0, 1]
    with pytest.raises(DataError, match="not among the model's classes"):
        read_split(path, ["0", "1"])


def test_validation_cache_decodes_only_new_or_changed_files(tmp_path, image_folder, monkeypatch):
    cache = tmp_path / "cache/validation.json"
    decoded = []
    real = split_module.image_problem
    monkeypatch.setattr(split_module, "image_problem", lambda path: decoded.append(Path(path).name) or real(path))
    first = split_module.split_image_folder(image_folder, 0.2, 0.2, seed=0, workers=1, cache_path=cache)
    assert len(decoded) == 25 and cache.exists()

    decoded.clear()
    again = split_module.split_image_folder(image_folder, 0.2, 0.2, seed=0, workers=1, cache_path=cache)
    assert decoded == [] and all(first.parts[n].equals(again.parts[n]) for n in first.parts)

    write_png(image_folder / "c" / "c_new.png", 999)
    (image_folder / "a" / "a00.png").write_bytes(b"not a png any more")  # same path, new size
    decoded.clear()
    changed = split_module.split_image_folder(image_folder, 0.2, 0.2, seed=0, workers=1, cache_path=cache)
    assert sorted(decoded) == ["a00.png", "c_new.png"]
    assert "a/a00.png" in changed.rejected["path"].iloc[0]

    cache.write_text("{ damaged")
    decoded.clear()
    split_module.split_image_folder(image_folder, 0.2, 0.2, seed=0, workers=1, cache_path=cache)
    assert len(decoded) == 26  # a damaged cache is ignored, then rewritten
    assert json.loads(cache.read_text())["key"] == split_module.VALIDATION_CACHE_KEY
