"""compute_weights (labels read from the split CSV) vs class weights found by iterating an ImageFolder dataset.

    python -m benchmarks.weights --images 10000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import Table, image_folder_files, machine_line, write_photos
from imgclf.compute_weights import count_labels, weights_document
from imgclf.split_files import read_split


def bench_weights(table: Table, root: Path, work: Path) -> None:
    """Both ways must find the same counts; report the time of each."""
    from torchvision import datasets
    from torchvision import transforms as T

    paths, targets, classes = image_folder_files(root)
    csv = work / "train.csv"
    csv.write_text("path,label\n" + "".join(f"{p},{classes[t]}\n" for p, t in zip(paths, targets)))
    start = time.perf_counter()
    counts = count_labels(read_split(csv, classes)["label"], classes)
    weights_document(classes, counts, "inverse", 0.999)
    ours = time.perf_counter() - start

    dataset = datasets.ImageFolder(str(root), transform=T.Compose([T.Resize((64, 64)), T.ToTensor()]))
    start = time.perf_counter()
    labels = [label for _, label in dataset]  # the classic recipe: every image decoded to read its label
    classic = time.perf_counter() - start
    assert np.bincount(labels).tolist() == counts, "both ways must find the same counts"
    table.add("weights", f"compute_weights from the split CSV ({len(paths)} imgs)", f"{ours * 1000:8.1f} ms")
    table.add("weights", "class counts by iterating the dataset (classic)",
              f"{classic * 1000:8.0f} ms  ({classic / ours:.0f}x slower)")


def main(argv: list[str] | None = None) -> Table:
    """Generate `--images` 320x240 JPEGs, measure, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000)
    args = parser.parse_args(argv)
    print(machine_line(), flush=True)
    table = Table()
    with tempfile.TemporaryDirectory(prefix="imgclf-bench-") as work:
        write_photos(Path(work) / "images", args.images, 320, 240)
        bench_weights(table, Path(work) / "images", Path(work))
    print("\n" + table.markdown())
    return table


if __name__ == "__main__":
    main()
