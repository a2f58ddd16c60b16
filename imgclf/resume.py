"""The train stage's resumable state: everything an interrupted run needs to continue bit-exactly, saved every
epoch or every `train.state_every` seconds (EverySeconds).

It lives outside DVC's outputs (DVC deletes those before a stage runs), in `.cache/` (never
committed), and is keyed by a fingerprint of the train params and the stage's input files: a run
with other params or inputs starts fresh and says why. Only the latest state is kept; a completed
run removes it. It is loaded with `weights_only=True` only: a file carrying pickled code is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.serialization import config as serialization_config
from tqdm import tqdm

from imgclf.artifacts import atomic_path

FORMAT = "imgclf.train_state/1"


@dataclass
class Fingerprint:
    """What a state belongs to: the train params, the SHA-256 of each input file, and the device set-up.

    `setup` holds what the params leave open (`device: auto`, `precision: auto`): the device kind and
    the autocast dtype actually used. A state from another set-up is not resumed: its random states,
    loss scaler and numerics belong to that device (a CPU state has no CUDA generator, a bf16 run no
    GradScaler state), and no resume across devices could be exact anyway.
    """

    params: dict
    inputs: dict[str, str]
    setup: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, params: dict, input_files: Sequence[str | os.PathLike], setup: dict[str, str] | None = None,
           **values: Any) -> "Fingerprint":
        """Hash `input_files` (small ones: the split CSVs, the decoded arrays' index) and JSON `values`."""
        inputs = {}
        for path in input_files:
            digest = hashlib.sha256(Path(path).read_bytes()).hexdigest() if Path(path).exists() else "missing"
            inputs[Path(path).as_posix()] = digest
        for name, value in values.items():
            inputs[name] = hashlib.sha256(json.dumps(value, sort_keys=True).encode("utf-8")).hexdigest()
        return cls(json.loads(json.dumps(params)), inputs, dict(setup or {}))

    def differences(self, other: "Fingerprint") -> list[str]:
        """What differs from `other`, in words: `train.lr`, `input data/split/train.csv`, ..."""
        keys = sorted(set(self.params) | set(other.params))
        changed = [f"train.{k}" for k in keys if self.params.get(k) != other.params.get(k)]
        names = sorted(set(self.inputs) | set(other.inputs))
        changed += [f"input {n}" for n in names if self.inputs.get(n) != other.inputs.get(n)]
        kinds = list(dict.fromkeys([*self.setup, *other.setup]))  # device, then autocast: as recorded
        return changed + [f"{k} ({other.setup.get(k, 'unknown')} -> {self.setup.get(k, 'unknown')})" for k in kinds
                          if self.setup.get(k) != other.setup.get(k)]


def rng_states(generator: torch.Generator | None, device: torch.device = torch.device("cpu")) -> dict[str, Any]:
    """Every random number generator training draws from: torch (dropout), CUDA, NumPy, Python, the sampler's.

    On CUDA, the generator of the training `device` alone: not one per visible GPU
    (`get_rng_state_all`), which a machine with fewer GPUs visible could not restore.
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    # NumPy's and Python's states as tensors and lists: weights_only loading accepts nothing else.
    states = {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos,
                                                         has_gauss, gauss],
              "python": list(random.getstate())}
    if generator is not None:
        states["generator"] = generator.get_state()
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def restore_rng_states(states: dict[str, Any], generator: torch.Generator | None,
                       device: torch.device = torch.device("cpu")) -> None:
    """Put every generator back where rng_states() found it (CUDA's: on this run's training `device`)."""
    torch.set_rng_state(states["torch"])
    if generator is not None:
        generator.set_state(states["generator"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if device.type == "cuda" and isinstance(states.get("cuda"), torch.Tensor):
        torch.cuda.set_rng_state(states["cuda"], device)


def save_state(path: str | os.PathLike, fingerprint: Fingerprint, state: dict) -> None:
    """Write the state atomically: a kill while writing leaves the previous state whole.

    Not fsync'ed, unlike the stage's artifacts: the state is a cache. After a power loss it may be
    damaged, and is then ignored with a warning (load_state); forcing ~170 MB to disk every epoch
    would cost the demo a sixth of its training time.
    """
    # No CRC32 per record either: it doubles the time of a save; a torn file cannot appear (the rename)
    # and a damaged one fails to load and is ignored. Only the train stage saves meanwhile, never
    # concurrently (StateWriter.wait() comes first), so the global switch is safe to flip here.
    crc = serialization_config.save.compute_crc32
    serialization_config.save.compute_crc32 = False
    try:
        with atomic_path(path) as tmp:
            torch.save({"format": FORMAT, "params": fingerprint.params, "inputs": fingerprint.inputs,
                        "setup": fingerprint.setup, **state}, tmp)
    finally:
        serialization_config.save.compute_crc32 = crc


def load_state(path: str | os.PathLike, fingerprint: Fingerprint, quiet: bool = False) -> dict | None:
    """The saved state if it belongs to `fingerprint`; otherwise None, with one line saying why (unless `quiet`)."""
    say = (lambda text: None) if quiet else tqdm.write
    path = Path(path)
    if not path.exists():
        return None
    try:
        with warnings.catch_warnings():  # torch's own warnings about a foreign file: ours says it in one line
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
        saved = Fingerprint(data["params"], data["inputs"], data.get("setup", {}))
    except Exception as err:  # unreadable, foreign or pickled code: never fatal, never executed
        say(f"warning: {path}: ignored, not a resumable training state "
                   f"({str(err).splitlines()[0][:120] if str(err) else type(err).__name__}); starting fresh")
        return None
    changed = fingerprint.differences(saved)
    if changed:
        say(f"not resuming from {path}: {', '.join(changed[:5])} changed since it was saved; starting fresh")
        return None
    return data


class StateWriter:
    """Saves each epoch's state in a background thread, so that training does not wait for the disk.

    The tensors are copied first (training goes on changing them in place); one write at a time,
    each atomic, so a kill at any moment leaves the previous complete state.
    """

    def __init__(self, path: str | os.PathLike, fingerprint: Fingerprint):
        self.path, self.fingerprint = path, fingerprint
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def __call__(self, state: dict) -> None:
        """Start writing `state` (after the previous write has finished)."""
        self.wait()
        # Training changes the weights and the optimizer's moments in place: copy them. The best
        # weights are a copy already, replaced (never changed) when a better epoch comes.
        snapshot = {**_detached_copy({k: v for k, v in state.items() if k != "stopper"}),
                    "stopper": state["stopper"]}

        def write() -> None:
            try:
                save_state(self.path, self.fingerprint, snapshot)
            except BaseException as err:  # re-raised in the training thread by wait()
                self.error = err

        self.thread = threading.Thread(target=write, name="save-train-state")
        self.thread.start()

    def wait(self) -> None:
        """Block until the last write is on disk; raise its error, if any."""
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.error is not None:
            error, self.error = self.error, None
            raise error


class EverySeconds:
    """The `save_state` given to fit(): passes an epoch's state on to `save` only when a kill before the
    next save would otherwise lose more than `seconds` of training (`train.state_every`).

    Saved when the time since the last save (or since the start) plus one more epoch, as long as the
    last one, would exceed `seconds`: short epochs are saved about every `seconds`, epochs of
    more than `seconds / 2` every epoch, and with `seconds` 0 every epoch. A saved state is the whole
    state of its epoch, so a resumed run is as exact as with every epoch saved; a kill loses at most
    about `seconds` (as epochs vary, up to their variation more). The last epoch follows the same rule:
    a completed run removes the state anyway, and only a kill during the calibration could use it.
    """

    def __init__(self, save: Callable[[dict], None], seconds: float,
                 clock: Callable[[], float] = time.monotonic):
        self.save, self.seconds, self.clock = save, seconds, clock
        self.last_save = self.last_epoch = clock()

    def __call__(self, state: dict) -> None:
        now = self.clock()
        epoch_seconds, self.last_epoch = now - self.last_epoch, now
        if self.seconds <= 0 or now - self.last_save + epoch_seconds > self.seconds:
            self.save(state)
            self.last_save = self.clock()  # the save's own time (the copy) counts towards the next interval
            self.last_epoch = self.last_save

    def wait(self) -> None:
        """The wrapped writer's wait(), if it has one."""
        getattr(self.save, "wait", lambda: None)()


def _detached_copy(value: Any) -> Any:
    """`value` with every tensor cloned to the CPU (containers copied, everything else shared)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: _detached_copy(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_detached_copy(item) for item in value)
    return value


def remove_state(path: str | os.PathLike) -> None:
    """Remove the state of a completed run."""
    Path(path).unlink(missing_ok=True)
