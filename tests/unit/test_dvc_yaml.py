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
STAGES = ["demo", "split", "decode", "compute_weights", "train", "evaluate", "export", "predict"]
# Each stage's params section is a config class in the module named after the stage.
CONFIGS = {"demo": "DemoConfig", "split": "SplitConfig", "decode": "DecodeConfig",
           "compute_weights": "ComputeWeightsConfig", "train": "TrainConfig", "evaluate": "EvaluateConfig",
           "export": "ExportConfig", "predict": "PredictConfig"}
TORCH_FREE = ["demo", "split", "decode", "compute_weights"]

# Runs a stage exactly as dvc.yaml does (`python -m stages.<name>`, here with --help so that it stops
# after its imports) and reports the project files it loaded and whether torch came with them.
IMPORTED = """
import contextlib, io, json, runpy, sys
sys.argv = ["stage", "--help"]
try:
    with contextlib.redirect_stdout(io.StringIO()):
        runpy.run_module("stages.{name}", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
# Modules a stage imports only for some inputs (predict: torch for model.pt, onnxruntime for .onnx).
import importlib
for lazy in getattr(sys.modules.get("imgclf.{name}"), "LAZY_IMPORTS", ()):
    importlib.import_module(lazy)
files = [m.__file__ for n, m in list(sys.modules.items()) if n.split(".")[0] in ("imgclf", "stages")]
print(json.dumps({{"files": files, "torch": "torch" in sys.modules}}))
"""


@functools.cache
def all_stage_imports() -> dict[str, dict]:
    """stage_imports of every stage, probed by processes started together: each pays torch's import
    (seconds), so side by side on several cores they take a fraction of their one-after-another time."""
    probes = {name: subprocess.Popen([sys.executable, "-c", IMPORTED.format(name=name)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=ROOT) for name in STAGES}
    found = {}
    for name, probe in probes.items():
        out, err = probe.communicate()
        assert probe.returncode == 0, err
        found[name] = json.loads(out)
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


# Keys a stage reads from another stage's section: model.onnx does predict's test-time augmentation.
BORROWED = {"export": ["predict.tta"]}


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
