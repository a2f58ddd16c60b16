"""A user's first run, end to end, against the classic hand-written script; and where each stage's time goes.

    python -m benchmarks.first_run                          # 600 1024x768 photos, resnet18, 64 px, batch 32, 2 epochs
    python -m benchmarks.first_run --before /tmp/before     # also an older checkout's stages/ and imgclf/, side by side

Per round, one after the other on the same photos: the classic script (benchmarks.classic_first_run,
one process: split, weights, 2 epochs with validation, save), the pipeline's first run (`dvc repro -s`
split, decode, compute_weights, train, in a fresh git + DVC repository), and then each of the train,
evaluate, export and predict stages run once more directly, timestamped: import (from the process
start), set-up, first step, epochs, save (calibration, checkpoint, DVCLive), exit (last line to
process end). Medians over the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.common import Project, Table, machine_line, write_photos

# Runs `python -m <stage> args` as the program (fast exit included) and timestamps its phases.
PROBE = r'''
import importlib, json, os, sys, time
marks = [("start", float(os.environ["FIRST_RUN_T0"]))]
def mark(name):
    marks.append((name, time.time()))
def dump():
    with open(os.environ["FIRST_RUN_MARKS"], "w") as handle:
        json.dump(marks, handle)
leave = os._exit
def timed_exit(code):
    mark("done"); dump(); leave(code)
os._exit = timed_exit
name = sys.argv[1]; sys.argv = [name] + sys.argv[2:]
module = importlib.import_module(name)
mark("import")
if name == "stages.train":
    import imgclf.fit, imgclf.train
    from torch.optim.optimizer import register_optimizer_step_post_hook
    epoch, fit, hooks = imgclf.fit.run_epoch, imgclf.train.fit, []
    def run_epoch(*args, **kwargs):
        if len(marks) == 2:
            mark("set-up")
        return epoch(*args, **kwargs)
    def first_step(optimizer, args, kwargs):
        mark("first step"); hooks.pop().remove()
    def timed_fit(*args, **kwargs):
        result = fit(*args, **kwargs); mark("epochs"); return result
    imgclf.fit.run_epoch, imgclf.train.fit = run_epoch, timed_fit
    hooks.append(register_optimizer_step_post_hook(first_step))
sys.modules["__main__"].main = module.main  # the stage is the program, as under `python -m`
module.main()
mark("done"); dump()
'''
PHASES = {"stages.train": ["import", "set-up", "first step", "epochs", "done"]}


def timed_stage(repo: Path, cmd: str, env: dict) -> dict[str, float]:
    """Run a dvc.yaml command through PROBE; seconds per phase, `exit` from its last mark to the process end."""
    argv = shlex.split(cmd)[2:]  # drop `python -m`
    marks_file = repo / "marks.json"
    t0 = time.time()
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=repo, capture_output=True, text=True,
                          env={**env, "FIRST_RUN_T0": repr(t0), "FIRST_RUN_MARKS": str(marks_file)})
    end = time.time()
    if done.returncode != 0:
        raise RuntimeError(f"{cmd} failed:\n{done.stdout}\n{done.stderr}")
    marks = json.loads(marks_file.read_text())
    phases = {name: at - before for (_, before), (name, at) in zip(marks, marks[1:])}
    phases["exit"] = end - marks[-1][1]
    phases["total"] = end - t0
    if "set-up" in phases:
        phases["to first step"] = dict(marks)["set-up"] - t0
    return phases


def make_project(repo: Path, code: Path, photos: Path, params: dict) -> Project:
    """A fresh git + DVC repository with `code`'s stages/, imgclf/, pipeline (no demo) and params, and the photos."""
    project = Project(repo, params)
    for folder in ("stages", "imgclf"):
        shutil.rmtree(repo / folder)
        shutil.copytree(code / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    pipeline = yaml.safe_load((code / "imgclf/template/pipeline.yaml").read_text())
    del pipeline["stages"]["demo"]
    (repo / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    values = yaml.safe_load((code / "imgclf/template/params.yaml").read_text())  # that version's keys
    for section, changes in params.items():
        values[section].update(changes)
    (repo / "params.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
    shutil.copytree(photos, repo / "data/raw", copy_function=os.link)
    predict = repo / "data/predict"
    predict.mkdir(parents=True)
    for path in sorted(photos.rglob("*.jpg"))[:32]:
        os.link(path, predict / path.name)
    return project


def first_run(project: Project) -> float:
    """`dvc repro -s` of split, decode, compute_weights and train, one after the other: seconds in all."""
    return sum(project.dvc_run("repro", "-s", stage) for stage in ("split", "decode", "compute_weights", "train"))


def best_val_f1(repo: Path) -> float:
    """The train stage's best epoch's validation F1, from its DVCLive history."""
    rows = (repo / "dvclive/plots/metrics/val_f1.tsv").read_text().splitlines()[1:]
    return max(float(row.split("\t")[-1]) for row in rows)


def main(argv: list[str] | None = None) -> Table:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=600, help="1024x768 JPEGs")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--before", type=Path, default=None,
                        help="a folder holding an older version's stages/ and imgclf/ (e.g. from `git archive`)")
    args = parser.parse_args(argv)
    print(machine_line(), flush=True)
    root = Path(__file__).resolve().parents[1]
    variants = {"now": root, **({"before": args.before.resolve()} if args.before else {})}
    params = {"decode": {"image_size": args.image_size},
              "train": {"epochs": args.epochs, "batch_size": args.batch_size, "patience": args.epochs,
                        "device": "cpu"},
              **{stage: {"device": "cpu"} for stage in ("evaluate", "predict")}}
    times: dict[str, list[float]] = {"classic": [], "floor": []}
    f1s: dict[str, list[float]] = {}  # best epoch's validation F1 (weighted), each side on its own split
    phases: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="imgclf-bench-") as tmp:
        work = Path(tmp)
        write_photos(work / "photos", args.photos, 1024, 768)
        for _ in range(args.rounds):
            start = time.perf_counter()
            classic = subprocess.run([sys.executable, "-m", "benchmarks.classic_first_run", str(work / "photos"),
                                      str(work / "classic.pt"), "--epochs", str(args.epochs), "--image-size",
                                      str(args.image_size), "--batch-size", str(args.batch_size)], cwd=root,
                                     check=True, capture_output=True, text=True)
            times["classic"].append(time.perf_counter() - start)
            f1s.setdefault("classic", []).append(max(float(line.split("val_f1")[1]) for line in
                                                     classic.stdout.splitlines() if "val_f1" in line))
            print(f"classic script: {times['classic'][-1]:.1f} s, best val F1 {f1s['classic'][-1]:.4f}", flush=True)
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import torch, torchvision"], check=True)
            times["floor"].append(time.perf_counter() - start)
            print(f"import torch, torchvision: {times['floor'][-1]:.2f} s", flush=True)
            for name, code in variants.items():
                project = make_project(work / f"repo_{name}", code, work / "photos", params)
                times.setdefault(name, []).append(first_run(project))
                f1s.setdefault(name, []).append(best_val_f1(project.repo))
                print(f"first run ({name}): {times[name][-1]:.1f} s, best val F1 {f1s[name][-1]:.4f}", flush=True)
                stages = yaml.safe_load((project.repo / "dvc.yaml").read_text())["stages"]
                for stage in ("train", "evaluate", "export", "predict"):
                    phases.setdefault((name, stage), []).append(
                        timed_stage(project.repo, stages[stage]["cmd"], project.env))
                    print(f"{stage} ({name}): {phases[name, stage][-1]}", flush=True)
    med = {name: statistics.median(values) for name, values in times.items()}
    table = Table()
    label = f"{args.photos} photos 1024x768, resnet18, {args.image_size} px, batch {args.batch_size}, " \
            f"{args.epochs} epochs, median of {args.rounds}"
    f1 = {name: statistics.median(values) for name, values in f1s.items()}
    table.add("first run", f"{label}: classic script, one process",
              f"{med['classic']:6.1f} s  (best val F1 {f1['classic']:.4f})")
    for name in variants:
        table.add("first run", f"{label}: `dvc repro -s` split, decode, compute_weights, train ({name})",
                  f"{med[name]:6.1f} s  ({med['classic'] / med[name]:.2f}x classic; best val F1 {f1[name]:.4f})")
    table.add("first run", "`python -c 'import torch, torchvision'` (the floor of a torch stage's start-up)",
              f"{med['floor']:6.2f} s")
    for (name, stage), runs in phases.items():
        keys = list(dict.fromkeys(k for run in runs for k in run))
        row = "  ".join(f"{k} {statistics.median(run[k] for run in runs):.2f}" for k in keys)
        table.add("first run", f"{stage} stage ({name}), seconds", row)
    print("\n" + table.markdown())
    return table


if __name__ == "__main__":
    main()
