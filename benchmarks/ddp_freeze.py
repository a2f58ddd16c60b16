"""DDP with a frozen backbone: a new DDP when the trainable set changes vs one DDP with find_unused_parameters=True.

Two CPU processes (gloo) train two copies of one model on one fixed synthetic batch each, as the train stage
does with `train.freeze_epochs`: first only the output layer (frozen), then everything (unfrozen); the two
mechanisms take alternate steps, so that both see the same machine load. Median time per step of each mechanism
in each phase, and the one-off cost of building a DDP (the rebuild's whole price, once per change).
    python -m benchmarks.ddp_freeze                           # resnet18 at 32 px, batch 64: the demo's
    python -m benchmarks.ddp_freeze --steps 3 --image-size 16   # a check
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from benchmarks.common import Table, machine_line
from imgclf.model import build_model, set_backbone_trainable


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _step(model, optimizer, images, labels) -> float:
    """One training step, the processes in step (a barrier) first; its seconds."""
    dist.barrier()
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    optimizer.step()
    return time.perf_counter() - start


def _worker(rank: int, port: int, args: argparse.Namespace, out: str) -> None:
    """One of the two processes: both mechanisms side by side, step for step, in both phases; rank 0 writes."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))  # as the train stage's launcher: share the cores
    dist.init_process_group("gloo", rank=rank, world_size=2)
    generator = torch.Generator().manual_seed(rank)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=generator)
    labels = torch.randint(0, 10, (args.batch_size,), generator=generator)
    models, optimizers = {}, {}
    for mechanism in ("rebuild", "find_unused"):  # two copies of one model, one per mechanism
        torch.manual_seed(0)
        models[mechanism] = build_model(args.arch, 10, 0.2)
        optimizers[mechanism] = torch.optim.Adam(models[mechanism].parameters(), lr=5e-4)
    # find_unused: one DDP, built as the train stage builds it (everything trainable), kept through both phases.
    stepped = {"find_unused": DistributedDataParallel(models["find_unused"], find_unused_parameters=True)}
    results: dict[str, float] = {}
    for phase in ("frozen", "unfrozen"):
        for model in models.values():
            set_backbone_trainable(model, phase == "unfrozen")
        dist.barrier()
        start = time.perf_counter()
        stepped["rebuild"] = DistributedDataParallel(models["rebuild"])  # hooks for the parameters that train now
        results[f"build {phase}"] = time.perf_counter() - start
        times: dict[str, list[float]] = {name: [] for name in models}
        # Alternating steps: both mechanisms see the same machine load (other processes come and go).
        for step in range(args.warmup + args.steps):
            for name in models:
                seconds = _step(stepped[name], optimizers[name], images, labels)
                if step >= args.warmup:
                    times[name].append(seconds)
        for name, values in times.items():
            results[f"{name} {phase}"] = statistics.median(values)
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> Table:
    """Parse options, run the two processes, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64, help="per process, as train.batch_size")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per mechanism and phase (median)")
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    print(machine_line("cpu") + ", 2 processes (gloo)", flush=True)
    with tempfile.TemporaryDirectory(prefix="imgclf-ddp-") as work:
        out = str(Path(work) / "timings.json")
        torch.multiprocessing.spawn(_worker, args=(_free_port(), args, out), nprocs=2, join=True)
        results = json.loads(Path(out).read_text())
    table = Table()
    label = f"{args.arch}, {args.image_size} px, batch {args.batch_size} per process"
    for phase in ("frozen", "unfrozen"):
        rebuild, unused = results[f"rebuild {phase}"], results[f"find_unused {phase}"]
        table.add("ddp", f"{label}, {phase}: rebuild DDP", f"{rebuild * 1000:8.1f} ms/step")
        table.add("ddp", f"{label}, {phase}: find_unused_parameters", f"{unused * 1000:8.1f} ms/step  "
                  f"({unused / rebuild - 1:+.1%})")
    table.add("ddp", f"{label}: building a DDP (the rebuild, once per change)",
              f"{max(results['build frozen'], results['build unfrozen']) * 1000:8.1f} ms")
    print("\n" + table.markdown())
    return table


if __name__ == "__main__":
    main()
