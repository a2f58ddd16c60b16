"""The decode stage and its store: pixels equal to what evaluate and predict decode; only new images decoded;
old shards never rewritten; clear errors; a full disk leaves the previous store whole."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import imgclf.decode
import imgclf.store.writer
from imgclf.batches import ImageListDataset
from imgclf.decode import DecodeConfig, decode_split
from imgclf.errors import DataError
from imgclf.images import Geometry
from imgclf.store.layout import read_meta
from imgclf.store.reader import StoredSplit
from imgclf.template import PARAMS
from tests.conftest import write_png

ROOT = Path(__file__).resolve().parents[2]
RAW = DecodeConfig(12, "crop", "raw", 90, None)


def write_split(folder: Path, train: list, val: list) -> Path:
    """split/train.csv and val.csv listing `train` and `val` paths (label `a`)."""
    split = folder / "split"
    split.mkdir(parents=True, exist_ok=True)
    for name, paths in (("train", train), ("val", val)):
        (split / f"{name}.csv").write_text("path,label\n" + "".join(f"{p},a\n" for p in paths))
    return split


def images(folder: Path, start: int, stop: int, size=(20, 14)) -> list[str]:
    """PNGs of distinct content, non-square (so that crop and squash differ)."""
    out = []
    for i in range(start, stop):
        path = write_png(folder / f"img{i:03d}.png", i, size=size[0])
        from PIL import Image
        Image.open(path).resize(size).save(path)
        out.append(str(path))
    return out


def snapshot(folder: Path) -> dict[str, bytes]:
    """{relative path: bytes} of every file under `folder`."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_decoded_rows_equal_the_files_decoded_on_the_fly(tmp_path):
    paths = images(tmp_path / "img", 0, 70)  # >= 64: a pool
    split = write_split(tmp_path, paths[:60], paths[60:])
    decode_split(split, tmp_path / "decoded", RAW, workers=2)
    stored = StoredSplit(tmp_path / "decoded", "train", paths[:60])
    assert stored.shape == (60, 3, 12, 12) and len(stored) == 60
    dataset = ImageListDataset(paths, [0] * 70, Geometry(12, 12, "crop"))  # what evaluate reads
    batch = stored[np.array([0, 33, 59])]
    assert batch.dtype == np.uint8 and batch.flags.c_contiguous
    assert all(torch.equal(torch.from_numpy(batch[k]), dataset[i][0]) for k, i in enumerate((0, 33, 59)))
    # Centre-cropped to a smaller model input exactly as evaluate and predict crop their files.
    cropped = StoredSplit(tmp_path / "decoded", "val", paths[60:], input_size=8)[np.arange(10)]
    assert all(np.array_equal(cropped[k], Geometry(12, 8, "crop").load(paths[60 + k])) for k in range(10))


def test_jpeg_storage_is_smaller_and_close(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 64)[None, :, None] * np.ones((48, 1, 3)) * [1, 0.6, 0.3]
    paths = []
    for i in range(6):
        path = tmp_path / f"p{i}.jpg"
        Image.fromarray(np.clip(ramp + rng.normal(0, 3, (48, 64, 3)) + 5 * i, 0, 255).astype(np.uint8)).save(path)
        paths.append(str(path))
    split = write_split(tmp_path, paths[:4], paths[4:])
    raw = decode_split(split, tmp_path / "raw", DecodeConfig(32, "crop", "raw", 90, None), workers=1)
    jpeg = decode_split(split, tmp_path / "jpeg", DecodeConfig(32, "crop", "jpeg", 90, None), workers=1)
    assert jpeg["bytes"] < raw["bytes"]
    exact = StoredSplit(tmp_path / "raw", "train", paths[:4])[np.arange(4)].astype(int)
    lossy = StoredSplit(tmp_path / "jpeg", "train", paths[:4])[np.arange(4)].astype(int)
    assert np.abs(exact - lossy).mean() < 3  # q90, 4:4:4: a few grey levels at most
    pillow = StoredSplit(tmp_path / "jpeg", "train", paths[:4])
    pillow._decode_jpegs = None  # the reader without torchvision (Pillow): the same pixels
    assert np.abs(pillow[np.arange(4)].astype(int) - lossy).max() <= 1


def test_adding_and_removing_images_decodes_only_new_ones_and_keeps_old_shards(tmp_path, monkeypatch):
    paths = images(tmp_path / "img", 0, 30)
    out = tmp_path / "decoded"
    first = decode_split(write_split(tmp_path, paths[:24], paths[24:]), out, RAW, workers=1)
    assert (first["decoded"], first["reused"]) == (30, 0)
    before = snapshot(out / "shards")
    inodes = {p.name: p.stat().st_ino for p in (out / "shards").iterdir()}

    more = images(tmp_path / "img", 30, 33)  # +10%, and a renamed copy of an old image
    (tmp_path / "img/renamed.png").write_bytes(Path(paths[0]).read_bytes())
    grown = decode_split(write_split(tmp_path, paths[:24] + more + [str(tmp_path / "img/renamed.png")], paths[24:]),
                         out, RAW, workers=1)
    assert (grown["decoded"], grown["reused"]) == (3, 30)
    after = snapshot(out / "shards")
    assert {k: v for k, v in after.items() if k in before} == before  # old shards: same names, same bytes
    assert all((out / "shards" / name).stat().st_ino == inode for name, inode in inodes.items())
    assert len(after) == len(before) + 2  # one new shard and its keys

    # Removing a few images decodes nothing and keeps the shards; removing most moves the rest, decoding nothing.
    monkeypatch.setattr(imgclf.decode, "_encoded", lambda task: pytest.fail("decoded again"))
    shrunk = decode_split(write_split(tmp_path, paths[:20] + more, paths[24:]), out, RAW, workers=1)
    assert (shrunk["decoded"], shrunk["copied"]) == (0, 0) and snapshot(out / "shards") == after
    tiny = decode_split(write_split(tmp_path, paths[:3], paths[24:26]), out, RAW, workers=1)
    assert tiny["decoded"] == 0 and tiny["copied"] == 5
    assert tiny["bytes"] < shrunk["bytes"] / 2  # the mostly-dead shards were dropped
    stored = StoredSplit(out, "train", paths[:3])[np.arange(3)]
    assert all(np.array_equal(stored[i], Geometry(12, 12, "crop").load(paths[i])) for i in range(3))


def test_byte_identical_images_are_stored_once(tmp_path):
    paths = images(tmp_path / "img", 0, 4)
    copies = []
    for i in range(3):
        copy = tmp_path / f"copy{i}.png"
        copy.write_bytes(Path(paths[0]).read_bytes())
        copies.append(str(copy))
    result = decode_split(write_split(tmp_path, paths[:3] + copies, paths[3:]), tmp_path / "d", RAW, workers=1)
    assert result["decoded"] == 4 and result["train"] == 6
    assert read_meta(tmp_path / "d")["splits"]["train"]["distinct"] == 3


def test_changed_params_decode_again_and_drop_the_old_shards(tmp_path):
    paths = images(tmp_path / "img", 0, 6)
    split = write_split(tmp_path, paths[:4], paths[4:])
    decode_split(split, tmp_path / "d", RAW, workers=1)
    old = set(snapshot(tmp_path / "d/shards"))
    lines = []
    again = decode_split(split, tmp_path / "d", DecodeConfig(12, "squash", "raw", 90, None), workers=1,
                         say=lines.append)
    assert again["decoded"] == 6 and not old & set(snapshot(tmp_path / "d/shards"))
    assert lines == [f"note: decode params changed since {tmp_path / 'd'} was written: every image is decoded again"]
    squashed = StoredSplit(tmp_path / "d", "train", paths[:4])[np.arange(1)]
    assert np.array_equal(squashed[0], Geometry(12, 12, "squash").load(paths[0]))


def test_a_store_of_the_old_format_is_decoded_once_with_one_line(tmp_path):
    paths = images(tmp_path / "img", 0, 6)
    out = tmp_path / "decoded"
    out.mkdir()
    np.save(out / "train.npy", np.zeros((4, 3, 12, 12), np.uint8))  # imgclf.decoded/1
    (out / "meta.json").write_text(json.dumps({"format": "imgclf.decoded/1", "image_size": 12, "splits": {}}))
    with pytest.raises(DataError, match=r"meta.json: written by an earlier version of this pipeline "
                                        r"\(format imgclf.decoded/1\); run the decode stage"):
        StoredSplit(out, "train", paths[:4])  # what train says until the decode stage runs
    lines = []
    result = decode_split(write_split(tmp_path, paths[:4], paths[4:]), out, RAW, workers=1, say=lines.append)
    assert result["decoded"] == 6 and len(lines) == 1
    assert lines[0].startswith(f"note: {out} was written by an earlier version of this pipeline (format "
                               f"imgclf.decoded/1): every image is decoded once more")
    assert not (out / "train.npy").exists()
    assert StoredSplit(out, "train", paths[:4]).shape == (4, 3, 12, 12)


def test_a_file_broken_since_the_split_is_named_and_the_store_is_untouched(tmp_path):
    paths = images(tmp_path / "img", 0, 5)
    out = tmp_path / "decoded"
    decode_split(write_split(tmp_path, paths[:3], paths[3:]), out, RAW, workers=1)
    before = snapshot(out)
    gone = tmp_path / "img/gone.png"
    gone.write_bytes(b"not an image any more")
    with pytest.raises(DataError, match=r"gone.png: cannot decode .*run `dvc repro` again"):
        decode_split(write_split(tmp_path, paths[:3] + [str(gone)], paths[3:]), out, RAW, workers=1)
    assert snapshot(out) == before  # no shard, no temporary file, the same index and meta


def full_disk_after(monkeypatch, writes: int) -> None:
    """Make the store's writes fail with ENOSPC after `writes` successful ones (a full file system)."""
    real, count = imgclf.store.writer._write_all, [0]

    def write(handle, data):
        count[0] += 1
        if count[0] > writes:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(handle, data)

    monkeypatch.setattr(imgclf.store.writer, "_write_all", write)


def test_running_out_of_disk_is_one_line_and_the_previous_store_stays_whole(tmp_path, monkeypatch):
    paths = images(tmp_path / "img", 0, 40)
    out = tmp_path / "decoded"
    decode_split(write_split(tmp_path, paths[:8], paths[8:10]), out, RAW, workers=1)
    before = snapshot(out)
    full_disk_after(monkeypatch, 5)
    with pytest.raises(DataError) as err:
        decode_split(write_split(tmp_path, paths[:36], paths[36:]), out, RAW, workers=1)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{out}: not enough disk space to decode 30 new images")
    # 30 images of 3 x 12 x 12 bytes, with the 10% margin: 13.9 KiB, and where.
    assert "the store needs about 13.9 KiB more in " + str(out.resolve()) in message
    assert snapshot(out) == before  # nothing half-written: no partial shard, no temporary file


def test_too_little_free_space_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    paths = images(tmp_path / "img", 0, 10)
    monkeypatch.setattr(imgclf.decode, "free_bytes", lambda directory: 1000)
    with pytest.raises(DataError, match=r"not enough disk space to decode 10 new images: the store needs about "
                                        r"4.6 KiB more in .* and the file system has 1000 B free"):
        decode_split(write_split(tmp_path, paths[:8], paths[8:]), tmp_path / "decoded", RAW, workers=1)
    assert not (tmp_path / "decoded").exists()


def test_stage_refuses_a_missing_split_in_one_line(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(PARAMS.read_text())
    result = subprocess.run([sys.executable, str(ROOT / "stages/decode.py"), "--params", str(params), "--split",
                             str(tmp_path / "nosplit"), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"error: {tmp_path / 'nosplit' / 'train.csv'}: split file not found " \
                                    f"(run the split stage first)"
    assert not (tmp_path / "out").exists()


def test_prepared_store_counts(prepared):
    meta = read_meta(prepared / "decoded")
    assert meta["image_size"] == 16 and set(meta["splits"]) == {"train", "val"}
    assert {name: info["count"] for name, info in meta["splits"].items()} == {
        name: len((prepared / f"split/{name}.csv").read_text().splitlines()) - 1 for name in ("train", "val")}


def test_the_pool_brings_back_shards_after_the_output_is_deleted_and_lets_go_of_unused_ones(tmp_path):
    """DVC deletes data/decoded before the stage runs: the pool (beside DVC's cache) still has every shard."""
    import shutil

    paths = images(tmp_path / "img", 0, 12)
    out, pool = tmp_path / "decoded", tmp_path / "cache/imgclf-decoded"
    decode_split(write_split(tmp_path, paths[:8], paths[8:10]), out, RAW, workers=1, pool=pool)
    shard = next((out / "shards").glob("*.bin"))
    assert (pool / shard.name).stat().st_ino == shard.stat().st_ino  # a second name, not a copy
    shutil.rmtree(out)  # what DVC does before it runs the stage
    again = decode_split(write_split(tmp_path, paths[:10], paths[10:]), out, RAW, workers=1, pool=pool)
    assert (again["decoded"], again["reused"]) == (2, 10)
    assert (out / "shards" / shard.name).stat().st_ino == shard.stat().st_ino

    # A shard no split uses any more leaves the pool once the pool holds its last link (after `dvc gc`);
    # while DVC's cache still links it (an earlier data version), it stays, costing nothing.
    keep = tmp_path / "cache/files/object"
    keep.parent.mkdir(parents=True)
    os.link(pool / shard.name, keep)
    other = DecodeConfig(12, "squash", "raw", 90, None)
    decode_split(write_split(tmp_path, paths[:2], paths[2:4]), out, other, workers=1, pool=pool)
    assert (pool / shard.name).exists()
    keep.unlink()
    decode_split(write_split(tmp_path, paths[:2], paths[2:4]), out, other, workers=1, pool=pool)
    assert not (pool / shard.name).exists() and not (out / "shards" / shard.name).exists()


def test_a_full_disk_while_meta_json_is_written_leaves_the_previous_store_readable(tmp_path, monkeypatch):
    """meta.json is the one commit point: the new indexes have new names, so the old meta.json still fits."""
    paths = images(tmp_path / "img", 0, 12)
    out = tmp_path / "decoded"
    decode_split(write_split(tmp_path, paths[:6], paths[6:8]), out, RAW, workers=1)
    meta = (out / "meta.json").read_bytes()
    expected = StoredSplit(out, "train", paths[:6])[np.arange(6)]

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(imgclf.store.writer, "write_json", full)
    with pytest.raises(DataError, match="not enough disk space to decode 4 new images"):
        decode_split(write_split(tmp_path, paths[:10], paths[10:]), out, RAW, workers=1)
    assert (out / "meta.json").read_bytes() == meta
    assert np.array_equal(StoredSplit(out, "train", paths[:6])[np.arange(6)], expected)


def test_reducing_gap_is_a_store_param_and_a_store_from_before_it_reads_as_its_legacy_decode(tmp_path):
    """reducing_gap changes an entry's pixels (JPEGs), so it names the shards; old metas read as their decode."""
    import json

    paths = images(tmp_path / "img", 0, 4)
    split = write_split(tmp_path, paths[:2], paths[2:])
    decode_split(split, tmp_path / "d", DecodeConfig(12, "squash", "raw", 90, 2.0), workers=1)
    assert StoredSplit(tmp_path / "d", "train", paths[:2]).params.reducing_gap == 2.0
    lines = []
    again = decode_split(split, tmp_path / "d", DecodeConfig(12, "squash", "raw", 90, None), workers=1,
                         say=lines.append)
    assert again["decoded"] == 4 and "decode params changed" in lines[0]
    meta_path = tmp_path / "d/meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["params"]["reducing_gap"]  # as a store written before the param
    meta_path.write_text(json.dumps(meta))
    assert StoredSplit(tmp_path / "d", "train", paths[:2]).params.reducing_gap == 1.0  # squash's earlier decode
