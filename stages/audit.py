"""Stage `audit`: label issues, near-duplicates across splits, outliers and the predictions to review, in
reports/audit/ (three CSVs, summary.json, index.html). It reports; it never moves, deletes or relabels an image."""

import argparse
import os
from pathlib import Path

from imgclf.artifacts import write_csv, write_json, write_text
from imgclf.audit import AuditConfig, Borrowed, run_audit
from imgclf.audit_page import render
from imgclf.config import load_section, read_params
from imgclf.entry import stage_main
from imgclf.store.pool import dvc_cache_dir


def build_parser() -> argparse.ArgumentParser:
    """The stage's flags: the params file and its input and output paths (defaults match dvc.yaml)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml",
                        help="params file (section `audit`, and the train and decode keys that name the backbone)")
    parser.add_argument("--split", default="data/split", help="input: train.csv, val.csv, test.csv, classes.json")
    parser.add_argument("--model", default="models/model.pt",
                        help="input: the trained model (its features, when train.pretrained is none)")
    parser.add_argument("--test-predictions", default="reports/test_predictions.csv",
                        help="input: evaluate's rows (the page's test mistakes)")
    parser.add_argument("--predictions", default="reports/predictions.csv",
                        help="input: predict's rows (the page's unknown and uncertain predictions)")
    parser.add_argument("--out", default="reports/audit", help="output folder")
    parser.add_argument("--features", default=None,
                        help="where features are kept between runs (default: imgclf-features in the DVC cache, as "
                             "the train stage's; none outside a DVC project)")
    return parser


@stage_main
def main() -> None:
    """Parse paths, load params.yaml's `audit` section (and the backbone's train/decode keys), audit, write."""
    args = build_parser().parse_args()
    cfg = load_section(args.params, "audit", AuditConfig)
    borrowed = Borrowed.of(read_params(args.params))
    cache = dvc_cache_dir(os.environ.get("DVC_ROOT", "."))
    store = Path(args.features) if args.features else (cache / "imgclf-features" if cache else None)
    result = run_audit(cfg, borrowed, args.split, args.model, store)
    out = Path(args.out)
    write_csv(out / "label_issues.csv", result.label_issues)
    write_csv(out / "near_duplicates.csv", result.near_duplicates)
    write_csv(out / "outliers.csv", result.outliers)
    write_json(out / "summary.json", result.summary)
    write_text(out / "index.html", render(result, args.test_predictions, args.predictions, cfg.page_images))
    s = result.summary
    print(f"audit of {s['images']} images: {s['label_issues']} likely label errors, {s['near_duplicate_pairs']} "
          f"near-duplicate pairs ({s['leaked_pairs']} across splits; {s['test_images_with_train_duplicate']} test "
          f"images with a near-duplicate in train), {s['outliers']} outliers; open {out / 'index.html'}")


if __name__ == "__main__":
    main()
