"""benchmarks.recipe's data set (regions of scikit-learn's sample photos): deterministic, valid for the split stage."""

import hashlib

from benchmarks.recipe import VARIANTS, base_config, region_classes, variant_config, write_regions
from imgclf.split import split_image_folder


def digests(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.jpg"))}


def test_regions_are_twelve_classes_inside_the_photos():
    regions = region_classes()
    assert len(regions) == 12 and len({name for name, _, _ in regions}) == 12
    for _, photo, (left, top, right, bottom) in regions:
        assert 0 <= left < right <= 640 and 0 <= top < bottom <= 427 and photo in (0, 1)


def test_the_data_set_is_deterministic_from_its_seed_and_the_split_stage_takes_every_image(tmp_path):
    classes = write_regions(tmp_path / "a", per_class=4, size=24, seed=0)
    write_regions(tmp_path / "b", per_class=4, size=24, seed=0)
    write_regions(tmp_path / "c", per_class=4, size=24, seed=1)
    first = digests(tmp_path / "a")
    assert len(first) == 48 and first == digests(tmp_path / "b") and first != digests(tmp_path / "c")
    result = split_image_folder(tmp_path / "a", 0.25, 0.25, 42, workers=1)
    assert result.classes == sorted(classes) and not result.rejected  # no two images alike, none unreadable
    assert sum(len(rows) for rows in result.parts.values()) == 48


def test_variants_change_only_what_they_name():
    base = base_config(epochs=4)
    assert base.augment.hflip and base.patience == 4 and base.monitor == "val_f1" and base.device == "cpu"
    assert variant_config(base, VARIANTS["baseline"], 10) == base
    assert variant_config(base, VARIANTS["classic"], 10).augment.hflip is False
    modern = variant_config(base, VARIANTS["modern"], 10)
    assert modern.augment.policy == "trivial_wide" and modern.augment.rotation == 0 and modern.cutmix_alpha == 1.0
    assert modern.ema_decay == 0.9 and modern.scheduler == "cosine" and modern.lr == base.lr


