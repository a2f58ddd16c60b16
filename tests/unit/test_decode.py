"""The decode stage: arrays equal to what evaluate and predict decode; clear errors; nothing half-written."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from imgclf.batches import ImageListDataset
from imgclf.decode import decode_images, decode_split, open_decoded, read_meta
from imgclf.errors import DataError
from imgclf.template import PARAMS
from tests.conftest import write_png

ROOT = Path(__file__).resolve().parents[2]


def test_decoded_rows_equal_the_files_decoded_on_the_fly(tmp_path):
    paths = [str(write_png(tmp_path / f"{i}.png", 10 * i, size=20 + i)) for i in range(70)]  # >= 64: a pool
    decode_images(paths, 12, tmp_path / "x.npy", workers=2)
    array = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert array.shape == (70, 3, 12, 12) and array.dtype == np.uint8
    dataset = ImageListDataset(paths, [0] * 70, 12)
    assert all(torch.equal(torch.from_numpy(np.array(array[i])), dataset[i][0]) for i in (0, 33, 69))


def test_a_file_broken_since_the_split_is_named_and_nothing_is_left(tmp_path):
    paths = [str(write_png(tmp_path / "ok.png", 1)), str(tmp_path / "gone.png")]
    (tmp_path / "gone.png").write_bytes(b"not an image any more")
    with pytest.raises(DataError, match=r"gone.png: cannot decode .*run `dvc repro` again"):
        decode_images(paths, 8, tmp_path / "out" / "train.npy", workers=1)
    assert list((tmp_path / "out").iterdir()) == []  # no array, no temporary file


def test_stage_writes_meta_and_refuses_a_missing_split(tmp_path, prepared):
    meta = read_meta(prepared / "decoded")
    assert meta["image_size"] == 16 and set(meta["splits"]) == {"train", "val"}
    paths = [line.split(",")[0] for line in (prepared / "split/train.csv").read_text().splitlines()[1:]]
    assert open_decoded(prepared / "decoded", "train", paths).shape == (len(paths), 3, 16, 16)
    with pytest.raises(DataError, match="run the decode stage first"):
        read_meta(tmp_path / "nowhere")
    params = tmp_path / "params.yaml"
    params.write_text(PARAMS.read_text())
    result = subprocess.run([sys.executable, str(ROOT / "stages/decode.py"), "--params", str(params), "--split",
                             str(tmp_path / "nosplit"), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"error: {tmp_path / 'nosplit' / 'train.csv'}: split file not found " \
                                    f"(run the split stage first)"
    assert not (tmp_path / "out").exists()


def test_decode_split_counts(tmp_path, prepared):
    counts = decode_split(prepared / "split", tmp_path / "again", 8, workers=1)
    assert counts == {name: len((prepared / f"split/{name}.csv").read_text().splitlines()) - 1
                      for name in ("train", "val")}
    assert json.loads((tmp_path / "again/meta.json").read_text())["image_size"] == 8
