"""dvc.yaml lists exactly the code and params each stage reads, so `dvc status` is never wrong."""

import dataclasses
import functools
import importlib
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from imgclf.template import PIPELINE

ROOT = Path(__file__).resolve().parents[2]
DVC = yaml.safe_load(PIPELINE.read_text())
STAGES = ["demo", "split", "decode", "compute_weights", "train", "evaluate", "export", "predict", "audit"]
# Each stage's params section is a config class in the module named after the stage.
CONFIGS = {"demo": "DemoConfig", "split": "SplitConfig", "decode": "DecodeConfig",
           "compute_weights": "ComputeWeightsConfig", "train": "TrainConfig", "evaluate": "EvaluateConfig",
           "export": "ExportConfig", "predict": "PredictConfig", "audit": "AuditConfig"}
TORCH_FREE = ["demo", "split", "decode", "compute_weights"]

# One process probes every stage: for each, a forked child runs the stage exactly as dvc.yaml does
# (`python -m stages.<name>`, here with --help so that it stops after its imports) and reports the project
# files it loaded and whether torch came with them. The stages without a model are probed first, before
# the parent has imported torch; then the parent imports the heavy third-party libraries once (torch's
# import costs seconds of CPU per process) and the other stages are probed from it. A third-party module
# loaded in advance cannot change which project files a stage imports; for those stages "torch" is None.
PROBE = """
import contextlib, importlib, io, json, os, runpy, sys, traceback

def probe(name, torch_preloaded):
    sys.argv = ["stage", "--help"]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            runpy.run_module("stages." + name, run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
    # Modules a stage imports only for some inputs (predict: torch for model.pt, onnxruntime for .onnx).
    for lazy in getattr(sys.modules.get("imgclf." + name), "LAZY_IMPORTS", ()):
        importlib.import_module(lazy)
    files = [m.__file__ for n, m in list(sys.modules.items()) if n.split(".")[0] in ("imgclf", "stages")]
    return {"files": files, "torch": None if torch_preloaded else "torch" in sys.modules}

def forked(name, torch_preloaded):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            payload = json.dumps(probe(name, torch_preloaded))
        except BaseException:
            payload = json.dumps({"error": traceback.format_exc()})
        with os.fdopen(write, "w") as out:
            out.write(payload)
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as got:
        payload = got.read()
    os.waitpid(pid, 0)
    return json.loads(payload)

import numpy, PIL.Image, yaml, tqdm  # shared by every stage
found = {name: forked(name, False) for name in %(light)r}
assert "torch" not in sys.modules and not any(n.split(".")[0] in ("imgclf", "stages") for n in sys.modules)
import torch, torchvision, pandas, sklearn.metrics, onnxruntime
found.update({name: forked(name, True) for name in %(heavy)r})
print(json.dumps(found))
"""


@functools.cache
def all_stage_imports() -> dict[str, dict]:
    """stage_imports of every stage, from one probing process (see PROBE)."""
    heavy = [name for name in STAGES if name not in TORCH_FREE]
    done = subprocess.run([sys.executable, "-c", PROBE % {"light": TORCH_FREE, "heavy": heavy}], capture_output=True,
                          text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    for name in STAGES:
        assert "error" not in found[name], found[name]["error"]
        found[name]["files"] = {Path(f).resolve().relative_to(ROOT).as_posix() for f in found[name]["files"]}
    return found


def stage_imports(name: str) -> dict:
    """{"files": the repository files the stage imports, "torch": whether torch was imported}."""
    return all_stage_imports()[name]


def test_stage_names_match_scripts_modules_and_sections():
    assert list(DVC["stages"]) == STAGES
    for name, stage in DVC["stages"].items():
        assert stage["cmd"].startswith(f"python -m stages.{name} ")
        assert (ROOT / "stages" / f"{name}.py").exists() and (ROOT / "imgclf" / f"{name}.py").exists()
        assert dataclasses.is_dataclass(getattr(importlib.import_module(f"imgclf.{name}"), CONFIGS[name]))


@pytest.mark.parametrize("name", STAGES)
def test_code_deps_are_exactly_the_modules_the_stage_imports(name):
    imported = stage_imports(name)["files"]
    deps = DVC["stages"][name]["deps"]
    listed = {d for d in deps if isinstance(d, str) and d.startswith(("imgclf/", "stages/"))}
    assert listed == imported | {f"stages/{name}.py"}


@pytest.mark.parametrize("name", TORCH_FREE)
def test_stages_without_a_model_do_not_import_torch(name):
    assert stage_imports(name)["torch"] is False


# Keys a stage reads from another stage's section: model.onnx does predict's test-time augmentation; the audit's
# features are those of the train stage's backbone, on images prepared as train's are.
BORROWED = {"export": ["predict.tta"],
            "audit": ["train.arch", "train.pretrained", "train.mean", "train.std", "train.input_size",
                      "decode.image_size", "decode.resize", "decode.reducing_gap"]}


@pytest.mark.parametrize("name", STAGES)
def test_params_are_exactly_the_section_keys(name):
    listed = [key for key in DVC["stages"][name]["params"] if key not in BORROWED.get(name, [])]
    config = getattr(importlib.import_module(f"imgclf.{name}"), CONFIGS[name])
    fields = [f.name for f in dataclasses.fields(config)]
    assert listed == [name] or sorted(listed) == sorted(f"{name}.{f}" for f in fields)


@pytest.mark.parametrize("name", STAGES)
def test_argparse_defaults_match_dvc_yaml(name):
    """Running a script without flags does what `dvc repro` runs."""
    parser = importlib.import_module(f"stages.{name}").build_parser()
    flags = shlex.split(DVC["stages"][name]["cmd"])[3:]
    assert flags, name
    assert parser.parse_args(flags) == parser.parse_args([])
