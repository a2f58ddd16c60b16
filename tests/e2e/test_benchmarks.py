"""Every benchmark runs at a tiny size, so that a refactor cannot break one silently (their numbers are not checked)."""

import os

import pytest

from benchmarks import gpu, imbalance, predict, recipe, resume, scale, split, train, weights
from benchmarks.common import Table


def sections(table: Table) -> set[str]:
    """The sections a benchmark reported rows for."""
    return {section for section, _, _ in table.rows}


def test_train_benchmark_runs_on_a_tiny_demo():
    table = train.main(["--datasets", "demo", "--device", "cpu", "--epochs", "1", "--batch-size", "16",
                        "--demo-per-class", "8"])
    assert sections(table) == {"train"} and len(table.rows) == 7


def test_train_benchmark_measures_what_the_stage_runs_against_a_classic_loop_with_workers(monkeypatch):
    import torch

    switched, loaders = [], []
    monkeypatch.setattr(train, "set_speed_options", switched.append)
    real_loader = train.classic_loader
    monkeypatch.setattr(train, "classic_loader", lambda *a, **k: loaders.append(real_loader(*a, **k)) or loaders[-1])
    table = train.main(["--datasets", "demo", "--device", "cpu", "--epochs", "1", "--batch-size", "16",
                        "--demo-per-class", "8", "--classic-workers", "1"])
    assert switched == [torch.device("cpu")] and [loader.num_workers for loader in loaders] == [1]
    assert "(1 loader workers)" in table.markdown()
    assert train.user_workers(torch.device("cuda")) == min(8, os.cpu_count()) > 0  # benchmarks.gpu's default
    assert train.user_workers(torch.device("cpu")) == 0


def test_gpu_benchmark_script_runs_on_the_cpu():
    table = gpu.main(["--photos", "16", "--device", "cpu", "--epochs", "1", "--image-size", "16",
                      "--batch-size", "8", "--arch", "mobilenet_v3_small"])
    assert "loader efficiency" in table.markdown()


def test_weights_benchmark():
    assert len(weights.main(["--images", "24"]).rows) == 2


def test_predict_benchmark_measures_both_model_formats():
    table = predict.main(["--images", "12", "--small", "4", "--image-size", "16"])
    measured = [what for _, what, _ in table.rows]
    for name in ("PyTorch model.pt", "ONNX Runtime model.onnx"):
        assert [f"{name}: start-up (empty folder, best of 2)", f"{name}: 4 imgs", f"{name}: 12 imgs"] == \
            [what for what in measured if what.startswith(name)]


def test_split_benchmark_measures_cost_cache_and_stability():
    table = split.main(["--photos", "12", "--images", "40", "--demo-per-class", "30"])
    values = {what: value for _, what, value in table.rows}
    assert values["split stage after adding 1 imgs (1%)"].endswith("decoded 1")
    assert values["demo +10%: earlier images that changed split"].split()[0].isdigit()


def test_noop_benchmark():
    from benchmarks import noop
    assert len(noop.main(["--sizes", "30"]).rows) == 6


def test_imbalance_study_runs_one_tiny_configuration():
    rows = imbalance.main(["--imbalances", "2", "--seeds", "1", "--configs", "1", "--epochs", "1",
                           "--max-per-class", "12"])
    assert len(rows) == 1 and len(rows[0][3]) == 1


def test_resume_benchmark():
    table = resume.main(["--epochs", "2", "--rounds", "1", "--demo-per-class", "25"])
    assert len(table.rows) == 4 and not table.rows[-1][2].strip().startswith("0.0")


def test_first_run_benchmark_times_both_sides_and_each_phase():
    from benchmarks import first_run

    table = first_run.main(["--photos", "24", "--epochs", "1", "--rounds", "1"])
    rows = {what: value for _, what, value in table.rows}
    train = next(value for what, value in rows.items() if what.startswith("train stage"))
    assert all(phase in train for phase in ("import", "set-up", "first step", "epochs", "done", "exit"))
    assert sum(what.endswith("stage (now), seconds") for what in rows) == 4


def test_cpu_bf16_benchmark_refuses_in_one_line_without_native_bf16(monkeypatch, capsys):
    from benchmarks import cpu_bf16

    monkeypatch.setattr(cpu_bf16, "cpu_native_bf16", lambda: None)
    with pytest.raises(SystemExit) as exit_info:
        cpu_bf16.main([])
    assert "no native bf16" in str(exit_info.value) and "\n" not in str(exit_info.value)


def test_ddp_freeze_benchmark_times_both_mechanisms():
    from benchmarks import ddp_freeze

    table = ddp_freeze.main(["--steps", "2", "--warmup", "1", "--image-size", "16", "--batch-size", "4"])
    measured = [what.split(": ", 1)[1] for _, what, _ in table.rows]
    assert measured == ["rebuild DDP", "find_unused_parameters", "rebuild DDP", "find_unused_parameters",
                        "building a DDP (the rebuild, once per change)"]


def test_scale_benchmark_measures_growth_disk_and_the_data_path(tmp_path):
    table = scale.main(["--sizes", "150", "--data-only", "0", "--work", str(tmp_path)])
    values = {what: value for _, what, value in table.rows}
    first = values["150: first `dvc repro -s decode`: whole / stage / DVC (stage CPU)"]
    grown = values["150: +1%: `dvc repro -s decode`: whole / stage / DVC (stage CPU)"]
    decoded = first.split("decoded ")[1].split(",")[0]
    assert f"reused {decoded}," in grown  # nothing decoded twice
    ratio = values["150: after +1%: decoded data on disk (workspace + DVC cache, all versions) / one copy"]
    assert float(ratio.split("=")[1].strip().rstrip("x")) < 1.15


def test_augment_benchmark_times_each_batched_op_against_torchvision():
    from benchmarks import augment

    table = augment.main(["--sizes", "16", "--batch", "4", "--repeats", "1"])
    assert table.rows and all(row[2] for row in table.rows)


def test_the_benchmark_runs_tiny_with_both_budgets():
    tables = recipe.main(["--seeds", "1", "--epochs", "2", "--variants", "baseline,modern", "--per-class", "5",
                          "--file-size", "24", "--image-size", "16", "--set", "arch=shufflenet_v2_x0_5"])
    assert [row["variant"] for row in tables["equal_epochs"]] == ["baseline", "modern"]
    assert [row["variant"] for row in tables["equal_time"]] == ["baseline", "modern"]


def test_features_benchmark_times_the_three_train_runs():
    from benchmarks import features

    table = features.main(["--photos", "24", "--epochs", "2", "--image-size", "32"])
    values = {what.split(": ", 1)[1]: value for _, what, value in table.rows}
    assert "features 0 computed" in values["features once, again (train.lr changed)"]
    assert "features none" in values["through the frozen backbone, every epoch"]
    assert values["through the backbone / features once"].strip().endswith("x")


def test_guard_benchmark_refuses_noise_and_counts_it():
    from benchmarks import guard

    table = guard.main(["--seeds", "2", "--sizes", "20", "--classes", "2", "--demo-seeds", "0", "--photo-seeds", "1"])
    rows = {what: value for _, what, value in table.rows}
    noise = next(value for what, value in rows.items() if what.startswith("noise, 2 classes"))
    assert noise.split()[0] == "refused" and "2 seeds" in next(w for w in rows if w.startswith("noise"))
    assert any(what.startswith("600 real photos") for what in rows)


def test_audit_benchmark_scores_every_list_at_a_tiny_size():
    from benchmarks import audit

    table = audit.main(["--per-class", "12", "--scale", "500", "--scratch-epochs", "1", "--image-size", "32"])
    measured = [what for _, what, _ in table.rows]
    assert sum("label issues" in what for what in measured) == 3  # 5%, 10%, and the scratch model's features
    assert sum("unknown" in section for section, _, _ in table.rows) == 2
    assert sum(section == "scale" for section, _, _ in table.rows) == 3


def test_transfer_benchmark_runs_dvc_repro_for_each_way_it_is_given():
    from benchmarks import transfer

    table = transfer.main(["--per-class", "6", "--sizes", "32", "--head-epochs", "2", "--finetune-epochs", "1",
                           "--ways", "head,fine"])
    rows = {what.split(": ", 1)[1]: value for _, what, value in table.rows}
    assert list(rows) == [transfer.WAYS["head"], transfer.WAYS["fine"], "try first"]
    assert all("dvc repro" in value or value.startswith("failed: ") for what, value in rows.items()
               if what != "try first")
    assert "(best epoch" in rows[transfer.WAYS["head"]] and "of 2)" in rows[transfer.WAYS["head"]]
