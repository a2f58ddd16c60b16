"""dvc.yaml lists exactly the code and params each stage reads, so `dvc status` is never wrong."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from imgclf import config

ROOT = Path(__file__).resolve().parents[2]
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
SECTIONS = {"demo": config.DemoConfig, "split": config.SplitConfig,
            "decode": config.DecodeConfig, "compute_weights": config.ComputeWeightsConfig,
            "train": config.TrainConfig,
            "evaluate": config.EvaluateConfig, "predict": config.PredictConfig}

IMPORTED = """
import importlib.util, json, sys
sys.path.insert(0, {root!r})
spec = importlib.util.spec_from_file_location("stage", {script!r})
spec.loader.exec_module(importlib.util.module_from_spec(spec))
print(json.dumps(sorted(m.__file__ for name, m in sys.modules.items() if name.split(".")[0] == "imgclf")))
"""


def test_stage_names_match_scripts_and_sections():
    assert list(DVC["stages"]) == ["demo", "split", "decode", "compute_weights", "train", "evaluate", "predict"]
    for name, stage in DVC["stages"].items():
        assert stage["cmd"].startswith(f"python stages/{name}.py ")
        assert (ROOT / "stages" / f"{name}.py").exists()


@pytest.mark.parametrize("name", SECTIONS)
def test_code_deps_are_exactly_the_modules_the_stage_imports(name):
    script = str(ROOT / "stages" / f"{name}.py")
    out = subprocess.run([sys.executable, "-c", IMPORTED.format(root=str(ROOT), script=script)],
                         capture_output=True, text=True, check=True).stdout
    imported = {Path(f).relative_to(ROOT).as_posix() for f in json.loads(out)}
    deps = DVC["stages"][name]["deps"]
    listed = {d for d in deps if isinstance(d, str) and d.startswith(("imgclf/", "stages/"))}
    assert listed == imported | {f"stages/{name}.py"}


@pytest.mark.parametrize("name", SECTIONS)
def test_params_are_exactly_the_section_keys(name):
    listed = DVC["stages"][name]["params"]
    fields = [f.name for f in dataclasses.fields(SECTIONS[name])]
    assert listed == [name] or sorted(listed) == sorted(f"{name}.{f}" for f in fields)


def test_argparse_defaults_match_dvc_yaml():
    """Running a script without flags does what `dvc repro` runs."""
    for name, stage in DVC["stages"].items():
        flags = stage["cmd"].split()[2:]
        pairs = dict(zip(flags[::2], flags[1::2]))
        source = (ROOT / "stages" / f"{name}.py").read_text()
        for flag, value in pairs.items():
            assert f'"{flag}", default="{value}"' in source, (name, flag)
