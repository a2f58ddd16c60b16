"""The audit: confident learning finds planted label errors, nearest neighbours find copies and outliers, perceptual
hashes find resized re-encoded copies, sets too small are skipped in one line, and it never edits the data."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from imgclf import quality
from imgclf.audit import AuditConfig, Borrowed, label_issues, neighbour_findings, run_audit
from imgclf.audit_page import render
from imgclf.config import load_section
from imgclf.errors import ConfigError
from imgclf.template import PARAMS
from tests.conftest import write_png


def config(**changes) -> AuditConfig:
    import dataclasses

    return dataclasses.replace(load_section(PARAMS, "audit", AuditConfig), device="cpu", **changes)


def clusters(per_class=40, classes=4, dims=32, seed=0):
    """Features of well-separated classes (a centre each, noise around it), and their labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (classes, dims)) * 4
    labels = np.repeat(np.arange(classes), per_class)
    return centres[labels] + rng.normal(0, 1, (len(labels), dims)), labels


def frame(labels, splits=None):
    return pd.DataFrame({"path": [f"img{i:03d}.png" for i in range(len(labels))], "target": labels,
                         "label": [f"c{t}" for t in labels],
                         "split": splits if splits is not None else ["train"] * len(labels)})


def test_confident_learning_finds_planted_label_errors_and_suggests_the_true_class():
    features, labels = clusters()
    noisy = labels.copy()
    flipped = np.arange(0, len(labels), 16)  # 10 of 160
    noisy[flipped] = (noisy[flipped] + 1) % 4
    found = label_issues(frame(noisy), features, [f"c{k}" for k in range(4)], config(), print)
    assert list(found.columns) == ["path", "label", "suggested", "score"]
    assert set(found["path"]) == {f"img{i:03d}.png" for i in flipped}
    truth = {f"img{i:03d}.png": f"c{labels[i]}" for i in flipped}
    assert all(truth[row.path] == row.suggested for row in found.itertuples())
    assert found["score"].is_monotonic_increasing  # worst (least self-confident) first


def test_the_thresholds_are_per_class_as_confident_learning_defines_them():
    probabilities = np.array([[0.6, 0.4], [0.7, 0.3], [0.45, 0.55], [0.2, 0.8], [0.5, 0.5]])
    labels = np.array([0, 0, 0, 1, 1])
    # t0 = mean(0.6, 0.7, 0.45) = 0.583, t1 = mean(0.8, 0.5) = 0.65: row 2 (labelled 0) reaches neither t0 nor t1
    # (no confident class: not an issue); row 4 (labelled 1) reaches neither; nothing else is confused.
    issue, suggested, score = quality.confident_learning(probabilities, labels)
    assert issue.tolist() == [False] * 5 and score.tolist() == [0.6, 0.7, 0.45, 0.8, 0.5]
    probabilities[2] = [0.3, 0.7]  # now confidently class 1
    issue, suggested, _ = quality.confident_learning(probabilities, labels)
    assert issue.tolist() == [False, False, True, False, False] and suggested[2] == 1


def test_nearest_neighbours_are_exact():
    rng = np.random.default_rng(1)
    unit = quality.unit_rows(rng.normal(size=(300, 16)))
    indices, distances = quality.nearest(unit, 5, block=64)
    full = 1 - unit @ unit.T
    np.fill_diagonal(full, np.inf)
    assert np.array_equal(indices, np.argsort(full, axis=1)[:, :5])
    assert np.allclose(distances, np.sort(full, axis=1)[:, :5], atol=1e-5)


def test_copies_across_splits_are_leaks_and_an_image_unlike_the_rest_is_an_outlier():
    features, labels = clusters(per_class=30)
    features = np.vstack([features, features[5] + 1e-3, np.tile([50.0, -50.0], 16)[None, :]])
    labels = np.concatenate([labels, [labels[5], 0]])
    splits = ["train"] * 120 + ["test", "train"]
    duplicates, outliers = neighbour_findings(frame(labels, splits), features, None, config(), print)
    assert list(duplicates.columns) == ["path_a", "path_b", "split_a", "split_b", "distance"]
    first = duplicates.iloc[0]
    assert {first.path_a, first.path_b} == {"img005.png", "img120.png"} and first.split_b == "test"
    assert first.distance < 1e-4
    assert outliers.iloc[0]["path"] == "img121.png" and list(outliers.columns) == ["path", "score"]


def test_a_perceptual_hash_finds_a_resized_re_encoded_copy_and_not_a_different_photo(tmp_path):
    from sklearn.datasets import load_sample_images

    from imgclf.audit import gray32

    china, flower = load_sample_images().images
    Image.fromarray(china).save(tmp_path / "china.jpg", quality=95)
    Image.fromarray(china).resize((320, 214)).save(tmp_path / "small.jpg", quality=50)
    Image.fromarray(flower).save(tmp_path / "flower.jpg", quality=95)
    hashes = np.stack([quality.perceptual_hash(gray32(str(tmp_path / name)))
                       for name in ("china.jpg", "small.jpg", "flower.jpg")])
    assert [(i, j) for i, j, _ in quality.hash_pairs(hashes, 4)] == [(0, 1)]
    assert quality.hash_pairs(hashes, 64)[-1][:2] == (1, 2)  # every pair, at the widest


def test_too_few_images_or_a_single_class_are_skipped_in_one_line_each():
    said = []
    features, labels = clusters(per_class=4, classes=3)
    label_issues(frame(labels), features, ["c0", "c1", "c2"], config(folds=5), said.append)
    assert said == ["label issues: 4-fold cross-validation instead of audit.folds 5: class 'c0' has 4 images"]
    said.clear()
    one = label_issues(frame(np.zeros(12, int)), features[:12], ["c0"], config(), said.append)
    assert one.empty and said == ["label issues skipped: a single class, nothing to confuse it with"]
    said.clear()
    labels = np.array([0] * 10 + [1])
    label_issues(frame(labels), features[:11], ["c0", "c1"], config(), said.append)
    assert said == ["label issues skipped: too few images to judge (11 in all, 1 in class 'c1'; every class needs 2)"]
    said.clear()
    duplicates, outliers = neighbour_findings(frame(labels[:2]), features[:2], None, config(), said.append)
    assert duplicates.empty and outliers.empty and said[0].startswith("near-duplicates and outliers skipped")


def test_an_audit_arch_of_its_own_needs_weights_and_a_real_name():
    with pytest.raises(ConfigError, match="audit.arch: unknown torchvision"):
        config(arch="resnet").validate()
    with pytest.raises(ConfigError, match="audit.pretrained: with audit.arch resnet18, must be default or an existing"):
        config(arch="resnet18", pretrained="nowhere.pth").validate()
    with pytest.raises(ConfigError, match="the audit reads train.arch"):
        Borrowed.of({"train": {"arch": "resnet18"}})


def test_the_audit_of_a_split_writes_its_findings_and_touches_no_image(prepared, tmp_path):
    """On the trained model's own features (train.pretrained none): a caveat line, then the lists and the page."""
    import yaml

    from imgclf.train import train_model
    from tests.conftest import tiny_train_config

    classes = json.loads((prepared / "split/classes.json").read_text())
    test_rows = [f"{write_png(prepared / 'test' / f'{c}{i}.png', 100 * k + 50 + i)},{c}"
                 for k, c in enumerate("abc") for i in range(2)]
    (prepared / "split/test.csv").write_text("path,label\n" + "\n".join(test_rows) + "\n")
    train_model(tiny_train_config(epochs=1), prepared / "split/train.csv", prepared / "split/val.csv",
                prepared / "decoded", classes, [1.0, 1.0, 1.0], prepared / "model.pt")
    before = {p: p.read_bytes() for p in prepared.rglob("*.png")}
    said = []
    borrowed = Borrowed.of(yaml.safe_load(PARAMS.read_text()))  # train.pretrained none: the model's own features
    result = run_audit(config(), borrowed, prepared / "split", prepared / "model.pt", tmp_path / "store", said.append)
    assert said[0].startswith("note: the audit's features are the trained model's own (train.pretrained is none)")
    assert said[1].endswith(f"{len(result.images)} computed, 0 reused")
    rows = sum(len((prepared / f"split/{name}.csv").read_text().splitlines()) - 1 for name in ("train", "val", "test"))
    assert result.summary["images"] == len(result.images) == rows
    assert {"label_issues", "near_duplicate_pairs", "leaked_pairs", "test_images_with_train_duplicate",
            "outliers"} <= set(result.summary)
    again = run_audit(config(), borrowed, prepared / "split", prepared / "model.pt", tmp_path / "store", said.append)
    assert said[-1].endswith(f"0 computed, {len(result.images)} reused") and again.summary == {
        **result.summary, "features_computed": 0, "features_reused": len(result.images)}
    page = render(result, None, None, 8)
    assert page.count('<div id="') == 5 and "http" not in page
    assert {p: p.read_bytes() for p in prepared.rglob("*.png")} == before  # it reports, never edits
