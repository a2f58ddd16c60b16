"""Several training processes (torchrun / torch.distributed): the process group, samplers that shard, launching.

One process per device: DistributedDataParallel averages the gradients, every process draws the
same epoch's sample order and trains on its own shard of it, and only the main process (global
rank 0) writes files or shows progress. `train.nproc_per_node: 1` (the default) uses none of this.
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
import sys
import uuid
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist

# A collective that waits longer than this for a dead or stuck peer fails instead of hanging.
TIMEOUT = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1  # processes on this machine (torchrun's LOCAL_WORLD_SIZE)

    @property
    def is_main(self) -> bool:
        """Only the main process writes files, logs metrics and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True under torchrun with more than one process."""
        return self.world_size > 1

    @classmethod
    def from_env(cls) -> "World":
        """Read torchrun's RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE (a plain run is rank 0 of 1)."""
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1)))

    def start(self, device: torch.device) -> None:
        """Join the process group: NCCL between GPUs, gloo on the CPU; collectives time out.

        A training process also asks Linux to kill it when its launcher dies: torch's launcher starts
        the processes in sessions of their own, so a launcher killed with SIGKILL (a lost machine,
        `kill -9`) would otherwise leave them training, and writing, on their own.
        """
        if self.distributed and not dist.is_initialized():
            die_with_parent()
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)

    def stop(self) -> None:
        """Leave the process group (NCCL warns at exit about one left open); safe to call when not in one."""
        if dist.is_initialized():
            dist.destroy_process_group()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` on every process (`value` itself without torchrun): rank 0 decides, the others follow."""
        if not self.distributed:
            return value
        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """`value` from every process, in rank order (a list of one without torchrun)."""
        if not self.distributed:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered


class DistributedWeightedSampler(torch.utils.data.Sampler[int]):
    """WeightedRandomSampler for several processes: one shared draw per epoch, a disjoint shard per rank.

    Every rank draws the same `num_samples` indices (with replacement, by `weights`) from a generator
    seeded by (seed, epoch) alone, and keeps positions rank, rank + world_size, ... of it. The union
    of the shards is exactly the draw of world_size 1. When world_size does not divide num_samples,
    the draw is padded with its own first positions so that every rank gets as many samples (and
    batches: a rank with fewer would leave the others waiting in an all-reduce); at most
    world_size - 1 samples are so repeated per epoch. With `weights=None`, a plain shuffle of
    range(num_samples) is drawn instead (balance: none), sharded the same way.
    """

    def __init__(self, weights: Sequence[float] | None, num_samples: int, *, world_size: int = 1, rank: int = 0,
                 seed: int = 0):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of {world_size}")
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self.num_samples, self.world_size, self.rank, self.seed = num_samples, world_size, rank, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw epoch `epoch`'s order next (the same value on every rank)."""
        self.epoch = epoch

    def draw(self) -> torch.Tensor:
        """This epoch's whole draw, identical on every rank, before sharding and padding."""
        generator = torch.Generator().manual_seed(hash_seed(self.seed, self.epoch))
        if self.weights is None:
            return torch.randperm(self.num_samples, generator=generator)
        return torch.multinomial(self.weights, self.num_samples, replacement=True, generator=generator)

    def __iter__(self) -> Iterator[int]:
        order = self.draw()
        padding = -len(order) % self.world_size
        order = torch.cat([order, order[:padding]])
        return iter(order[self.rank::self.world_size].tolist())

    def __len__(self) -> int:
        return -(-self.num_samples // self.world_size)


def die_with_parent() -> None:
    """Linux only: SIGKILL this process when its parent exits (prctl PR_SET_PDEATHSIG); elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the request: follow it now
        os.kill(os.getpid(), signal.SIGKILL)


def hash_seed(seed: int, epoch: int) -> int:
    """One 63-bit seed from (seed, epoch): different epochs never share a stream."""
    return (seed * 1_000_003 + epoch * 7919 + 12345) % (2 ** 63)


def shard(count: int, world: World) -> list[int]:
    """This rank's positions of range(count): rank, rank + world_size, ... (no padding: each counted once)."""
    return list(range(world.rank, count, world.world_size))


def launch(nproc_per_node: int, module: str, argv: Sequence[str], root: str | os.PathLike) -> int:
    """Run `python -m module argv` as `nproc_per_node` processes on this machine, as `torchrun --standalone` does.

    torch's own elastic launcher (what torchrun runs), in this process: a free port on localhost,
    no restarts, and when any process fails the others are stopped at once. Returns the exit
    status: 0, or the failed process's (2 for a user error, which that process has printed), and a
    process killed by a signal is reported in one line. `root` (the folder holding `module`'s package)
    goes first on the processes' PYTHONPATH, so that they run the same copy of the code as this one.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    for name in ("torch.distributed.elastic", "torch.distributed.launcher", "torch.distributed.run"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # its failure reports would bury ours
    # As torchrun: one intra-op thread per process unless the user chose, so processes share the cores.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc_per_node)))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])])
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc_per_node, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1)
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", module, *argv)
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        code = failure.exitcode
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
            print(f"error: training process of rank {rank} died ({name}); all {nproc_per_node} processes "
                  f"stopped; rerun to resume from the last completed epoch", file=sys.stderr)
            return 2
        if rank != 0 and code not in (2, 130):
            print(f"error: training process of rank {rank} failed (exit status {code}); all processes stopped",
                  file=sys.stderr)
        return code if code in (2, 130) else 2
    return 0
