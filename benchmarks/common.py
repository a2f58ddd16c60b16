"""What every benchmark shares: the result table, the machine line, generated image sets, timed stage runs."""

from __future__ import annotations

import functools
import io
import multiprocessing
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from imgclf.template import PARAMS, PIPELINE

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Table:
    """The rows a benchmark measured: printed as they come, and as one markdown table at the end."""

    rows: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, section: str, what: str, value: str) -> None:
        """Record one row and show it at once."""
        self.rows.append((section, what, value))
        print(f"  {section:8} {what:62} {value}", flush=True)

    def markdown(self) -> str:
        """The rows as a markdown table."""
        lines = ["| section | measurement | result |", "|---|---|---|"]
        return "\n".join(lines + [f"| {' | '.join(row)} |" for row in self.rows])


def machine_line(device: str = "cpu") -> str:
    """One line naming the machine: cores, CPU model, GPU, torch version and threads."""
    import torch

    cpu = platform.processor()
    if Path("/proc/cpuinfo").exists():
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    gpu = torch.cuda.get_device_name() if device.startswith("cuda") else "none"
    return (f"machine: {os.cpu_count()} cores ({cpu}), GPU {gpu}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads; device {device}")


@functools.cache
def _sample_photos() -> tuple[np.ndarray, ...]:
    """scikit-learn's two sample photos (shipped with it: no download), loaded once per process."""
    from sklearn.datasets import load_sample_images

    return tuple(load_sample_images().images)


def _photo(task: tuple[int, int, int, str]) -> None:
    """Write one photo-like JPEG: a random crop of a sample photo, jittered, at width x height."""
    index, width, height, path = task
    rng = np.random.default_rng(index)
    label = index % 4  # class = which photo x mirrored or not: learnable, and balanced enough
    image = Image.fromarray(_sample_photos()[label // 2])
    w, h = image.size
    crop_w = int(w * rng.uniform(0.6, 1.0))
    crop_h = int(min(h, crop_w * height / width))
    left, top = int(rng.integers(0, w - crop_w + 1)), int(rng.integers(0, h - crop_h + 1))
    image = image.crop((left, top, left + crop_w, top + crop_h)).resize((width, height), Image.Resampling.BICUBIC)
    if label % 2:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    pixels = np.asarray(image, dtype=np.float32) * rng.uniform(0.8, 1.2) + rng.normal(0, 4, (height, width, 3))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)


def write_photos(root: Path, count: int, width: int, height: int, start: int = 0) -> list[Path]:
    """`count` JPEGs under root/<class>/ (4 classes), generated on all cores."""
    tasks = []
    for index in range(start, start + count):
        path = root / f"class{index % 4}" / f"photo_{index:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        tasks.append((index, width, height, str(path)))
    with multiprocessing.get_context("fork").Pool() as pool:
        pool.map(_photo, tasks, chunksize=32)
    return [Path(t[3]) for t in tasks]


def write_tiny_pngs(root: Path, count: int, classes: int = 10) -> None:
    """`count` distinct 8x8 noise PNGs under root/<class>/, for the file-count benchmarks."""
    rng = np.random.default_rng(0)
    for k in range(classes):
        (root / f"c{k}").mkdir(parents=True, exist_ok=True)
    for index in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buffer, "PNG", compress_level=1)
        (root / f"c{index % classes}" / f"{index:06d}.png").write_bytes(buffer.getvalue())


def image_folder_files(root: Path) -> tuple[list[str], list[int], list[str]]:
    """(paths, targets, classes) of an ImageFolder tree, in ImageFolder's order."""
    from torchvision.datasets import ImageFolder

    folder = ImageFolder(str(root))
    return [p for p, _ in folder.samples], [t for _, t in folder.samples], folder.classes


def run_stage(stage: str, args: list[str], cwd: Path) -> tuple[float, int, str]:
    """Run `python -m stages.<stage> args` of this checkout in the folder `cwd`: (seconds, peak RSS in MiB, output).

    Never in the checkout itself: a stage there would open its DVC project (DVCLive does, to name an
    experiment) and write into the user's workspace.
    """
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over fork and exec, so a child of a
    # large benchmark process would report at least that process's size.
    # A stage leaves by os._exit after a clean finish (errors.leave_now): the peak is printed there too.
    probe = ("import os, re, runpy, sys; sys.argv = sys.argv[1:]\n"
             "def peak():\n    hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
             "    print('PEAK_KIB', hwm, file=sys.stderr, flush=True)\n"
             "leave = os._exit\n"
             "os._exit = lambda code: (peak(), leave(code))\n"
             "try:\n    runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
             "finally:\n    peak()")
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run([sys.executable, "-c", probe, f"stages.{stage}", *args], cwd=cwd, capture_output=True,
                          text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"stages.{stage} {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    peak = int(re.search(r"PEAK_KIB (\d+)", done.stderr).group(1)) // 1024
    return seconds, peak, done.stdout + done.stderr


class Project:
    """A git + DVC repository holding a copy of this pipeline (without the demo stage), for timing `dvc`."""

    def __init__(self, repo: Path, params: dict | None = None):
        import shutil

        import yaml

        self.repo = repo
        self.dvc = str(Path(sys.executable).with_name("dvc"))
        self.env = {**os.environ, "DVC_NO_ANALYTICS": "1",
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        shutil.rmtree(repo, ignore_errors=True)
        repo.mkdir(parents=True)
        for name in (".dvcignore", ".gitignore"):
            shutil.copy(ROOT / name, repo / name)
        for folder in ("stages", "imgclf"):
            shutil.copytree(ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
        pipeline = yaml.safe_load(PIPELINE.read_text())
        del pipeline["stages"]["demo"]  # your own images, as in the README
        (repo / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
        values = yaml.safe_load(PARAMS.read_text())
        for section, changes in (params or {}).items():
            values[section].update(changes)
        (repo / "params.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
        self.sh("git", "init", "-q")
        self.sh("git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "--allow-empty", "-m", "init")
        self.sh(self.dvc, "init", "-q")

    def sh(self, *cmd: str) -> float:
        """Run a command in the repository; return its wall time in seconds."""
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=self.repo, capture_output=True, text=True, env=self.env)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
        return time.perf_counter() - start

    def dvc_run(self, *args: str) -> float:
        """Run `dvc args...`; return its wall time in seconds."""
        return self.sh(self.dvc, *args)


def params_file(work: Path, device: str = "cpu") -> Path:
    """A copy of the repository's params.yaml in `work`, with every stage's device set to `device`."""
    path = work / "params.yaml"
    path.write_text((PARAMS).read_text().replace("device: auto", f"device: {device}"))
    return path


def prepare_demo(work: Path, **demo_changes) -> tuple[list[str], list[int]]:
    """The demo (params.yaml's section with `demo_changes`) written, split and decoded as the pipeline does.

    Into work/raw, work/split and work/decoded; returns (classes, training images per class).
    """
    import dataclasses

    from imgclf.compute_weights import count_labels
    from imgclf.config import load_section
    from imgclf.decode import DecodeConfig, decode_split
    from imgclf.demo import DemoConfig, write_demo
    from imgclf.split import SplitConfig, split_image_folder, write_split

    params = PARAMS
    demo = dataclasses.replace(load_section(params, "demo", DemoConfig), **demo_changes)
    split = load_section(params, "split", SplitConfig)
    write_demo(demo, work / "raw", work / "predict")
    result = split_image_folder(work / "raw", split.val, split.test, split.seed)
    write_split(work / "split", result.parts, result.classes)
    decode_split(work / "split", work / "decoded", load_section(params, "decode", DecodeConfig))
    return result.classes, count_labels([label for _, label in result.parts["train"]], result.classes)
