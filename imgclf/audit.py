"""The audit stage's logic: which images to look at before trusting a metric, and why. It reports; it never edits.

Every labelled image (train, val and test) gets features: a pretrained backbone's (train.arch with
train.pretrained, or the audit's own audit.arch / audit.pretrained), found in the features-once store
the train stage fills, or else the trained model's own. On them (imgclf/quality.py): out-of-sample class
probabilities by K-fold logistic regression and confident learning's label issues; the k nearest
neighbours, whose distances give outliers; and near-duplicates, by those distances and by a perceptual
hash, flagged as leakage when a pair straddles train / val / test. Outputs: label_issues.csv,
near_duplicates.csv, outliers.csv, summary.json (DVC metrics) and index.html (audit_page.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from imgclf import quality
from imgclf.checkpoint import load_checkpoint
from imgclf.config import Device, param
from imgclf.errors import ConfigError
from imgclf.features import FeatureCounts, FeatureStore, feature_set_id, features_of
from imgclf.images import Geometry, load_image
from imgclf.inference import select_device
from imgclf.model import build_pretrained, check_arch
from imgclf.split_files import read_classes, read_split
from imgclf.store.layout import file_key
from imgclf.transforms import ModelInput
from imgclf.workers import pool_if_worth_it

SPLITS = ("train", "val", "test")
HASH_SET = "phash-1"  # the perceptual hashes' own set in the features store (no model: they depend on pixels alone)
MIN_IMAGES = 10  # fewer labelled images than this: too few to judge labels against each other


@dataclass(frozen=True)
class AuditConfig:
    """Params of the `audit` stage."""

    arch: str = param("train: the train stage's backbone and weights (train.arch, train.pretrained; with none, the "
                      "trained model's own features); or a torchvision or timm/<name> model with audit.pretrained")
    pretrained: str = param("the weights of audit.arch: default | a local file (ignored with arch train)")
    folds: int = param("K of the K-fold cross-validation that gives each image class probabilities from a model that "
                       "never saw it", ge=2)
    neighbors: int = param("k nearest neighbours: outlier scores average their distances", ge=1)
    duplicate_ratio: float = param("near-duplicates by features: closer than this fraction of the set's median "
                                   "nearest-neighbour distance (cleanlab's rule: 0.13)", ge=0, le=1)
    hash_bits: int = param("near-duplicates by perceptual hash: at most this many of its 64 bits apart (catches "
                           "resized and re-encoded copies)", ge=0, le=32)
    outlier_iqr: float = param("outliers: mean neighbour distance beyond the third quartile plus this many "
                               "interquartile ranges (Tukey's far-out fence: 3)", gt=0)
    page_images: int = param("images shown per section of index.html, worst first", ge=1)
    batch_size: int = param("images per forward pass when features are computed", ge=1)
    device: Device = param("auto: cuda, then mps, then cpu")
    seed: int = param("seed of the cross-validation folds", ge=0)

    def validate(self) -> None:
        """An architecture of the audit's own needs its weights; the train stage's are checked by train."""
        if self.arch != "train":
            check_arch(self.arch, "audit.arch")
            if self.pretrained not in ("default",) and not os.path.isfile(self.pretrained):
                raise ConfigError(f"audit.pretrained: with audit.arch {self.arch}, must be default or an existing "
                                  f"weights file; got '{self.pretrained}'")


@dataclass(frozen=True)
class Borrowed:
    """The train and decode params the audit reads, for the backbone's features to be the train stage's own."""

    arch: str
    pretrained: str
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None
    input_size: int
    image_size: int
    resize: str
    reducing_gap: float | None

    @classmethod
    def of(cls, params: dict) -> "Borrowed":
        """From params.yaml's data (the train and decode stages validate these same keys)."""
        train, decode = params.get("train", {}), params.get("decode", {})
        try:
            mean, std = train["mean"], train["std"]
            return cls(str(train["arch"]), str(train["pretrained"]), tuple(mean) if mean else None,
                       tuple(std) if std else None, int(train["input_size"]), int(decode["image_size"]),
                       str(decode["resize"]), None if decode["reducing_gap"] is None else float(decode["reducing_gap"]))
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"params.yaml: the audit reads train.arch, train.pretrained, train.mean, train.std, "
                              f"train.input_size, decode.image_size, decode.resize and decode.reducing_gap "
                              f"({err})") from None


@dataclass
class Backbone:
    """What the audit's features come from: a model, how its images are prepared, and the store's name for them."""

    model: object
    geometry: Geometry
    mean: Sequence[float]
    std: Sequence[float]
    set_id: str
    description: str
    caveat: str = ""


def backbone(cfg: AuditConfig, borrowed: Borrowed, model_path: str | os.PathLike, classes: Sequence[str]) -> Backbone:
    """The audit's backbone: a pretrained one (the train stage's, or audit.arch's), else the trained model itself."""
    arch, pretrained = (borrowed.arch, borrowed.pretrained) if cfg.arch == "train" else (cfg.arch, cfg.pretrained)
    if pretrained == "none":
        model, meta = load_checkpoint(model_path)
        geometry = Geometry.of(meta)
        set_id = feature_set_id(model, meta["arch"], {**geometry.metadata(), "pixels": "exact"}, meta["mean"],
                                meta["std"])
        caveat = ("note: the audit's features are the trained model's own (train.pretrained is none): label errors it "
                  "learned from its training images are partly hidden from it; set audit.arch and audit.pretrained "
                  "to a pretrained backbone for an independent look")
        return Backbone(model, geometry, meta["mean"], meta["std"], set_id, f"the trained model {model_path}", caveat)
    model, preprocessing = build_pretrained(arch, len(classes), 0.0, pretrained)
    mean = borrowed.mean if cfg.arch == "train" and borrowed.mean else preprocessing.mean
    std = borrowed.std if cfg.arch == "train" and borrowed.std else preprocessing.std
    geometry = Geometry(borrowed.image_size, borrowed.input_size or borrowed.image_size, borrowed.resize,
                        borrowed.reducing_gap)
    # Named as the train stage names its frozen backbone's features (raw storage: exact pixels), to find them.
    set_id = feature_set_id(model, arch, {**geometry.metadata(), "pixels": "exact"}, mean, std)
    return Backbone(model.eval(), geometry, mean, std, set_id, f"{arch} ({pretrained})")


def labelled_images(split_dir: str | os.PathLike) -> tuple[pd.DataFrame, list[str]]:
    """Every row of the train, val and test CSVs (path, label, target, split), and the classes."""
    split_dir = Path(split_dir)
    classes = read_classes(split_dir / "classes.json")
    frames = [read_split(split_dir / f"{name}.csv", classes).assign(split=name) for name in SPLITS]
    return pd.concat(frames, ignore_index=True), classes


def content_keys(paths: Sequence[str]) -> list[bytes]:
    """SHA-256 of each file's bytes (the stores' keys), read on all cores."""
    pool = pool_if_worth_it(os.cpu_count() or 1, len(paths))
    try:
        found = list(pool.imap(file_key, paths, chunksize=64) if pool else map(file_key, paths))
    finally:
        if pool:
            pool.terminate()
    for path, (key, problem) in zip(paths, found):
        if key is None:
            raise ConfigError(f"{path}: cannot read ({problem}); it was there when the split stage ran: rerun "
                              f"`dvc repro`")
    return [key for key, _ in found]


class FileImages:
    """images[rows] -> uint8 n x 3 x I x I of image files, prepared by `geometry` (as evaluate reads its images)."""

    def __init__(self, paths: Sequence[str], geometry: Geometry):
        self.paths, self.geometry = list(paths), geometry

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, rows) -> np.ndarray:
        return np.stack([self.geometry.load(self.paths[int(row)]) for row in rows])


def gray32(path: str) -> np.ndarray:
    """A file as the 32 x 32 greyscale image a perceptual hash reads (JPEGs decoded at a reduced scale)."""
    from PIL import Image

    image = load_image(path, draft=lambda size: (64, 64)).convert("L")
    return np.asarray(image.resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)


def perceptual_hashes(paths: Sequence[str], keys: Sequence[bytes], store_root) -> np.ndarray:
    """Each file's 64-bit perceptual hash (bools), kept in the features store beside the features."""
    store = FeatureStore(store_root, HASH_SET)
    missing = list(dict.fromkeys(k for k in keys if k not in store.found))
    if missing:
        first = {}
        for path, key in zip(paths, keys):
            first.setdefault(key, path)
        store.add(missing, np.stack([quality.perceptual_hash(gray32(first[k])) for k in missing]).astype(np.float32))
    return np.stack([store.found[k] > 0.5 for k in keys]) if len(keys) else np.zeros((0, 64), bool)


def image_features(net: Backbone, paths: Sequence[str], keys: Sequence[bytes], store_root, batch_size: int,
                   device) -> tuple[np.ndarray, FeatureCounts]:
    """The backbone's features of every image: from the store, or computed once for the images it lacks."""
    model = net.model.to(device)
    return features_of(model, FileImages(paths, net.geometry), keys, ModelInput(net.mean, net.std, device),
                       FeatureStore(store_root, net.set_id), batch_size, desc="audit features") \
        if len(paths) else (np.zeros((0, 1), np.float32), FeatureCounts(0, 0))


def label_issues(images: pd.DataFrame, features: np.ndarray, classes: Sequence[str], cfg: AuditConfig,
                 say: Callable[[str], None]) -> pd.DataFrame:
    """path, label, suggested, score (the label's out-of-sample probability), worst first; empty when the set cannot
    be judged, which `say` explains in one line."""
    columns = ["path", "label", "suggested", "score"]
    counts = images["target"].value_counts()
    if len(counts) < 2:
        say("label issues skipped: a single class, nothing to confuse it with")
        return pd.DataFrame(columns=columns)
    if len(images) < MIN_IMAGES or counts.min() < 2:
        small = counts.idxmin()
        say(f"label issues skipped: too few images to judge ({len(images)} in all, {counts.min()} in class "
            f"'{classes[small]}'; every class needs 2)")
        return pd.DataFrame(columns=columns)
    folds = cfg.folds
    if counts.min() < folds:
        folds = int(counts.min())
        say(f"label issues: {folds}-fold cross-validation instead of audit.folds {cfg.folds}: class "
            f"'{classes[counts.idxmin()]}' has {counts.min()} images")
    labels = images["target"].to_numpy()
    probabilities = quality.out_of_sample_probabilities(features, labels, folds, cfg.seed)
    issue, suggested, score = quality.confident_learning(probabilities, labels)
    found = pd.DataFrame({"path": images["path"], "label": images["label"],
                          "suggested": [classes[k] for k in suggested], "score": score.round(6)})[issue]
    return found.sort_values(["score", "path"], kind="stable").reset_index(drop=True)


def neighbour_findings(images: pd.DataFrame, features: np.ndarray, hashes: np.ndarray, cfg: AuditConfig,
                       say: Callable[[str], None]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(near_duplicates: path_a, path_b, split_a, split_b, distance, leaks first; outliers: path, score, worst
    first)."""
    pairs_columns, outlier_columns = ["path_a", "path_b", "split_a", "split_b", "distance"], ["path", "score"]
    if len(images) < 3:
        say(f"near-duplicates and outliers skipped: {len(images)} images are too few to have neighbours")
        return pd.DataFrame(columns=pairs_columns), pd.DataFrame(columns=outlier_columns)
    unit = quality.unit_rows(features)
    indices, distances = quality.nearest(unit, cfg.neighbors)
    pairs = quality.near_duplicate_pairs(indices, distances, cfg.duplicate_ratio, hashes, cfg.hash_bits)
    paths, splits = images["path"].to_numpy(), images["split"].to_numpy()
    rows = [(paths[i], paths[j], splits[i], splits[j],
             round(float(1 - unit[i] @ unit[j]) if np.isnan(gap) else gap, 6)) for (i, j), gap in pairs.items()]
    duplicates = pd.DataFrame(rows, columns=pairs_columns)
    duplicates["leak"] = duplicates["split_a"] != duplicates["split_b"]
    duplicates = duplicates.sort_values(["leak", "distance", "path_a"], ascending=[False, True, True], kind="stable")
    scores = quality.outlier_scores(distances)
    fence = quality.far_out(scores, cfg.outlier_iqr)
    flagged = scores > fence
    outliers = pd.DataFrame({"path": paths[flagged], "score": scores[flagged].round(6)})
    outliers = outliers.sort_values(["score", "path"], ascending=[False, True], kind="stable")
    return duplicates.drop(columns="leak").reset_index(drop=True), outliers.reset_index(drop=True)


def summary(images: pd.DataFrame, issues: pd.DataFrame, duplicates: pd.DataFrame, outliers: pd.DataFrame,
            counts: FeatureCounts) -> dict:
    """summary.json, the DVC metrics: counts of each finding, the leaks, and how the features were found."""
    leaked = duplicates[duplicates["split_a"] != duplicates["split_b"]]
    test_in_train = set()
    for row in leaked.itertuples(index=False):
        if {row.split_a, row.split_b} == {"train", "test"}:
            test_in_train.add(row.path_a if row.split_a == "test" else row.path_b)
    return {"images": len(images), "label_issues": len(issues), "near_duplicate_pairs": len(duplicates),
            "leaked_pairs": len(leaked), "test_images_with_train_duplicate": len(test_in_train),
            "outliers": len(outliers), "features_computed": counts.computed, "features_reused": counts.reused}


@dataclass
class AuditResult:
    """Everything the audit writes: its three lists, the summary, and what index.html shows."""

    images: pd.DataFrame
    label_issues: pd.DataFrame
    near_duplicates: pd.DataFrame
    outliers: pd.DataFrame
    summary: dict
    backbone: str


def run_audit(cfg: AuditConfig, borrowed: Borrowed, split_dir: str | os.PathLike, model_path: str | os.PathLike,
              store_root: str | os.PathLike | None, say: Callable[[str], None] = print) -> AuditResult:
    """Audit every labelled image of the split: features (stored, or computed for new images only), then label
    issues, near-duplicates and outliers; what is skipped for want of images is said in one line each."""
    images, classes = labelled_images(split_dir)
    net = backbone(cfg, borrowed, model_path, classes)
    if net.caveat:
        say(net.caveat)
    paths = images["path"].tolist()
    keys = content_keys(paths)
    features, counts = image_features(net, paths, keys, store_root, cfg.batch_size, select_device(cfg.device))
    say(f"audit features from {net.description}: {counts.computed} computed, {counts.reused} reused")
    hashes = perceptual_hashes(paths, keys, store_root)
    issues = label_issues(images, features, classes, cfg, say)
    duplicates, outliers = neighbour_findings(images, features, hashes, cfg, say)
    return AuditResult(images, issues, duplicates, outliers, summary(images, issues, duplicates, outliers, counts),
                       net.description)
