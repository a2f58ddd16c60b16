"""Scanning, validating and splitting an ImageFolder tree."""

import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from imgclf import split as split_module
from imgclf.errors import DataError
from imgclf.split import image_problem, inspect_file, inspect_files, scan_image_folder, stratified_split
from imgclf.split_files import read_split
from imgclf.template import PARAMS
from tests.conftest import write_png

ROOT = Path(__file__).resolve().parents[2]


def run_split(raw: Path, out: Path, cwd: Path, params: Path | None = None):
    """Run the real split stage script."""
    args = [sys.executable, str(ROOT / "stages/split.py"), "--raw", str(raw), "--out", str(out),
            "--params", str(params or PARAMS)]
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


@pytest.mark.parametrize("folders, message", [
    (["china"], "found 1 class folder ('china'); a classifier needs at least 2"),
    (["Cat", "cat", "dog"], "class folders 'Cat' and 'cat' differ only in case, blanks or Unicode form"),
    (["cafe\u0301", "caf\u00e9"], "differ only in case, blanks or Unicode form"),  # NFD and NFC
    (["dog", "dog "], "class folders 'dog' and 'dog ' differ only"),
    (["test", "train", "val"], "look like a data set already split into train/val/test"),
])
def test_class_folders_that_cannot_make_a_classifier_are_refused(tmp_path, folders, message):
    for k, name in enumerate(folders):
        for i in range(3):
            write_png(tmp_path / "raw" / name / f"{i}.png", 10 * k + i)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        scan_image_folder(tmp_path / "raw")


def test_one_class_is_refused_by_the_stage_in_one_line_before_writing(tmp_path):
    for i in range(5):
        write_png(tmp_path / "raw" / "china" / f"{i}.png", i)
    result = run_split(tmp_path / "raw", tmp_path / "out", tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"error: {tmp_path / 'raw'}: found 1 class folder ('china'); a classifier " \
                                    f"needs at least 2 (one folder per class: {tmp_path / 'raw'}/<class>/<image files>)"
    assert not (tmp_path / "out").exists()


def digest_of(path: str) -> str:
    """A stand-in content hash: the tests below give every file distinct content unless they say so."""
    return hashlib.sha256(path.encode()).hexdigest()


def split_of(files, classes=("a", "b", "c"), seed=0, val=0.15, test=0.15, digests=None) -> dict[str, str]:
    """{path: split} for (path, label) files whose content hash is `digests[path]` (default: digest_of)."""
    digests = digests or {path: digest_of(path) for path, _ in files}
    parts = stratified_split(files, list(classes), val, test, seed, digests)
    return {path: name for name, rows in parts.items() for path, _ in rows}


def class_files(label: str, n: int, start: int = 0) -> list[tuple[str, str]]:
    """n files of one class."""
    return [(f"{label}/{i}.png", label) for i in range(start, start + n)]


def test_every_file_lands_in_exactly_one_split_and_every_class_in_each():
    files = class_files("a", 100) + class_files("b", 20) + class_files("c", 3)
    parts = stratified_split(files, ["a", "b", "c"], 0.15, 0.15, 1, {p: digest_of(p) for p, _ in files})
    for rows in parts.values():
        assert {label for _, label in rows} == {"a", "b", "c"}
    all_paths = [path for rows in parts.values() for path, _ in rows]
    assert sorted(all_paths) == sorted(p for p, _ in files)  # each exactly once


def test_adding_removing_and_reordering_images_moves_no_other_image():
    files = class_files("a", 200) + class_files("b", 60) + class_files("c", 40)
    before = split_of(files)
    grown = split_of(files + class_files("a", 20, 1000) + class_files("b", 6, 1000) + class_files("c", 4, 1000))
    assert all(grown[p] == before[p] for p in before)
    kept = files[::3] + files[1::3]  # a third removed
    shrunk = split_of(kept)
    assert all(shrunk[p] == before[p] for p in shrunk)
    assert split_of(list(reversed(files))) == before


def test_a_renamed_or_moved_image_keeps_its_split():
    files = class_files("a", 50) + class_files("b", 50) + class_files("c", 50)
    digests = {p: digest_of(p) for p, _ in files}
    before = split_of(files, digests=digests)
    renamed = {p: p.replace(".png", "_renamed.png").replace("a/", "a/sub/") for p, _ in files}
    after = split_of([(renamed[p], label) for p, label in files], digests={renamed[p]: d for p, d in digests.items()})
    assert all(after[renamed[p]] == before[p] for p in before)


def test_byte_identical_copies_stay_together():
    files = class_files("a", 40) + class_files("b", 40) + class_files("c", 40)
    digests = {p: digest_of(p) for p, _ in files}
    copies = [(f"a/copy{i}.png", "a") for i in range(10)]
    digests.update({f"a/copy{i}.png": digests[f"a/{i}.png"] for i in range(10)})
    where = split_of(files + copies, digests=digests)
    assert all(where[f"a/copy{i}.png"] == where[f"a/{i}.png"] for i in range(10))


def test_the_split_does_not_depend_on_the_process_hash_seed():
    code = ("import hashlib, json; from imgclf.split import stratified_split\n"
            "files = [(f'{l}/{i}.png', l) for l in 'abc' for i in range(30)]\n"
            "d = {p: hashlib.sha256(p.encode()).hexdigest() for p, _ in files}\n"
            "parts = stratified_split(files, list('abc'), 0.15, 0.15, 7, d)\n"
            "print(json.dumps(parts))")
    outputs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2", "random")}
    assert len(outputs) == 1


@pytest.mark.parametrize("n", [20, 100, 1000])
def test_fractions_stay_within_sampling_noise(n):
    """The stated bound: |count - n * fraction| <= 3 binomial standard deviations + 1, per class and split,
    for at least 99% of classes (the counts are binomial: about 0.3% fall outside by chance), and the
    mean share over seeds equals the fraction. 200 seeds stand for 200 classes of n images.
    """
    fractions = {"train": 0.7, "val": 0.15, "test": 0.15}
    shares = {name: [] for name in fractions}
    outside = 0
    for seed in range(200):
        where = split_of(class_files("a", n), classes=("a",), seed=seed)
        for name, p in fractions.items():
            count = sum(1 for s in where.values() if s == name)
            outside += abs(count - n * p) > 3 * math.sqrt(n * p * (1 - p)) + 1
            shares[name].append(count / n)
    assert outside <= 0.01 * 200 * len(fractions)
    for name, p in fractions.items():
        assert abs(statistics.mean(shares[name]) - p) <= 4 * math.sqrt(p * (1 - p) / (200 * n)) + 0.005


def test_small_classes_get_one_image_in_every_split_and_only_they_may_move():
    for n in range(3, 12):
        for seed in range(20):
            where = split_of(class_files("a", n), classes=("a",), seed=seed)
            assert set(where.values()) == {"train", "val", "test"}, (n, seed)
    # An image moves only when the hash rule leaves its class a split short, in the smaller set or
    # the larger one: in a class big enough never to be short, nothing moves.
    moved_classes = set()
    for seed in range(40):
        small = class_files("a", 4)
        before, after = split_of(small, ("a",), seed), split_of(small + class_files("a", 1, 100), ("a",), seed)
        if any(after[p] != before[p] for p in before):
            moved_classes.add(seed)
    assert moved_classes  # tiny classes do move sometimes (documented)...
    big = class_files("a", 300)
    for seed in range(5):  # ...large ones never
        before, after = split_of(big, ("a",), seed), split_of(big + class_files("a", 1, 1000), ("a",), seed)
        assert all(after[p] == before[p] for p in before)


def test_seed_and_fractions_reshuffle():
    files = class_files("a", 200)
    base = split_of(files, ("a",))
    assert split_of(files, ("a",), seed=1) != base
    wider = split_of(files, ("a",), test=0.2, val=0.1)
    moved = [p for p in base if wider[p] != base[p]]
    # Intervals are test, val, train from 0: a larger test share takes only from val and train's edge.
    assert moved and all(wider[p] in ("test", "val") for p in moved)


def test_too_few_images_is_a_clear_error():
    files = class_files("a", 9) + class_files("b", 2)
    with pytest.raises(DataError, match="class .b. has 2 valid distinct image"):
        split_of(files, ("a", "b"))


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
    monkeypatch.setattr(split_module, "image_problem",
                        lambda path, data=None: decoded.append(Path(path).name) or real(path, data))
    first = split_module.split_image_folder(image_folder, 0.2, 0.2, seed=0, workers=1, cache_path=cache)
    assert len(decoded) == 25 and cache.exists()

    decoded.clear()
    again = split_module.split_image_folder(image_folder, 0.2, 0.2, seed=0, workers=1, cache_path=cache)
    assert decoded == [] and first.parts == again.parts

    write_png(image_folder / "c" / "c_new.png", 999)
    (image_folder / "a" / "a00.png").write_bytes(b"not a png any more")  # same path, new size
    decoded.clear()
    changed = split_module.split_image_folder(image_folder, 0.2, 0.2, seed=0, workers=1, cache_path=cache)
    assert sorted(decoded) == ["a00.png", "c_new.png"]
    assert "a/a00.png" in changed.rejected[0][0]

    cache.write_text("{ damaged")
    decoded.clear()
    split_module.split_image_folder(image_folder, 0.2, 0.2, seed=0, workers=1, cache_path=cache)
    assert len(decoded) == 26  # a damaged cache is ignored, then rewritten
    assert json.loads(cache.read_text())["key"] == split_module.VALIDATION_CACHE_KEY


def test_split_files_written_by_the_split_stage_read_back_exactly(tmp_path):
    from imgclf.split import write_split
    from imgclf.split_files import read_classes, read_split

    parts = {"train": [("raw/a/x, with comma.png", "a"), ('raw/b/"quoted".png', "b")],
             "val": [("raw/a/1.png", "a")], "test": [("raw/b/ü.png", "b")]}
    write_split(tmp_path, parts, ["a", "b"])
    assert read_classes(tmp_path / "classes.json") == ["a", "b"]
    for name, rows in parts.items():
        frame = read_split(tmp_path / f"{name}.csv", ["a", "b"])
        assert list(zip(frame["path"], frame["label"])) == rows
