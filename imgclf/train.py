"""The train stage's logic: its params, batches from the decoded split, balancing, optimizer, schedule, checkpoint.

The epoch loop itself (early stopping, best weights) is `imgclf/fit.py`.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import torch
import torchvision
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, RandomSampler, WeightedRandomSampler

from imgclf.augment import AugmentConfig, TrainInput
from imgclf.baseline import MIN_IMAGES, learned_nothing, prior_loss
from imgclf.batches import DecodedBatches
from imgclf.calibration import calibrate
from imgclf.checkpoint import save_checkpoint
from imgclf.config import Device, param
from imgclf.distributed import DistributedWeightedSampler, World, shard
from imgclf.ema import WeightAverage
from imgclf.errors import ConfigError, TrainingError
from imgclf.fit import FitResult, TrainingRun, all_logits, fit
from imgclf.images import Geometry
from imgclf.inference import autocast_dtype, select_device
from imgclf.mixing import BatchMix
from imgclf.model import build_model, output_layer, set_backbone_trainable
from imgclf.resume import EverySeconds, Fingerprint, StateWriter, load_state, remove_state
from imgclf.split_files import read_split
from imgclf.store import StoredSplit, paths_digest
from imgclf.transforms import IMAGENET_MEAN, IMAGENET_STD, ModelInput, memory_format


@dataclass(frozen=True)
class TrainConfig:
    """Params of the `train` stage."""

    input_size: int = param("model input side, centre-cropped from the stored images (0: decode.image_size)", ge=0)
    arch: str = param("any torchvision classification model name (resnet18, efficientnet_b0, ...)")
    pretrained: str = param("none | default (torchvision's weights) | path to a local weights file")
    batch_size: int = param("images per training step", ge=1)
    epochs: int = param("maximum number of epochs", ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = param("optimizer")
    lr: float = param("learning rate", gt=0)
    weight_decay: float = param("weight decay", ge=0)
    momentum: float = param("SGD momentum (ignored by adam and adamw)", ge=0, lt=1)
    scheduler: Literal["step", "cosine", "onecycle"] = param(
        "step: StepLR (the classic recipe); cosine: cosine annealing to 0; onecycle: OneCycleLR per batch")
    step_size: int = param("StepLR: epochs between learning-rate decays", ge=1)
    gamma: float = param("StepLR: multiplicative decay", gt=0, le=1)
    warmup_epochs: int = param("epochs of linear learning-rate warmup from lr/10 (onecycle: its rising phase)",
                              ge=0)
    freeze_epochs: int = param("epochs that train only the new output layer before the backbone is unfrozen",
                              ge=0)
    label_smoothing: float = param("CrossEntropyLoss label smoothing", ge=0, lt=1)
    mixup_alpha: float = param("mixup: Beta(alpha, alpha) mixing of image pairs in a batch (0 = off)", ge=0)
    cutmix_alpha: float = param("cutmix: Beta(alpha, alpha) box pasting between image pairs (0 = off); with "
                                "mixup also on, each batch uses one of the two (torchvision's RandomChoice)", ge=0)
    ema_decay: float = param("exponential moving average of the weights, BatchNorm buffers included (0 = off); "
                             "when on, validation, early stopping and the saved model use the average", ge=0, lt=1)
    clip_grad_norm: float = param("clip the gradients' total L2 norm to this (0 = off; unscaled first under fp16)",
                                  ge=0)
    norm_weight_decay: float | None = param("weight decay of normalisation layers' weights and of every bias "
                                            "(null: train.weight_decay, like the rest)", ge=0)
    backbone_lr_factor: float = param("the backbone's learning rate is lr x this; the new output layer's is lr "
                                      "(1.0: one learning rate)", gt=0, le=1)
    precise_bn: Literal["auto", "always", "never"] = param(
        "recompute BatchNorm statistics over training images before validating: auto does it while the running "
        "estimates cannot have converged yet (few steps, or momentum 0.01 as in MobileNetV3)")
    patience: int = param("early stopping: epochs without improvement before stopping", ge=1)
    monitor: Literal["val_loss", "val_f1"] = param("early stopping monitor (val_f1 is weighted F1)")
    dropout: float = param("dropout probability right before the new output layer", ge=0, lt=1)
    balance: Literal["sampler", "loss", "none"] = param(
        "sampler: WeightedRandomSampler; loss: weighted CrossEntropyLoss; none")
    augment: AugmentConfig = param("training augmentation")
    nproc_per_node: int = param("training processes on this machine, as torchrun's --nproc-per-node: one per GPU "
                                "(NCCL), or CPU processes (gloo); batch_size is per process", ge=1)
    compile: bool = param("wrap the model in torch.compile for training (opt-in; see the README's Speed section)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = param(
        "training autocast: auto is bf16 on CUDA GPUs with native bf16 (Ampere, sm 8.0+), fp16 with loss scaling "
        "on older ones, fp32 elsewhere; bf16/fp16 force it. Validation always runs in fp32")
    seed: int = param("seed of weights init, sampling and augmentation", ge=0)
    state_every: float = param("seconds between saves of the resume state (0: after every epoch); a killed run "
                               "loses at most this much", ge=0)
    device: Device = param("auto: cuda, then mps, then cpu; cuda:N for one GPU of several")

    def validate(self) -> None:
        """The architecture must exist in torchvision; a local weights file must exist."""
        archs = torchvision.models.list_models(module=torchvision.models)
        if self.arch not in archs:
            close = difflib.get_close_matches(self.arch, archs, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"train.arch: unknown torchvision classification model "
                              f"'{self.arch}'{hint}")
        for key in ("warmup_epochs", "freeze_epochs"):
            if getattr(self, key) >= self.epochs:
                raise ConfigError(f"train.{key}: must be < train.epochs ({self.epochs}), got {getattr(self, key)}")
        if self.pretrained not in ("none", "default") and not os.path.isfile(self.pretrained):
            raise ConfigError(f"train.pretrained: must be none, default or an existing weights "
                              f"file; '{self.pretrained}' does not exist")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch Generator for the sampler and augmentation."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def parameter_groups(cfg: TrainConfig, model: nn.Module) -> list[dict] | list[nn.Parameter]:
    """The optimizer's parameter groups: the output layer's first, then the backbone's at lr x backbone_lr_factor,
    each split into decayed weights and norm-layer weights and biases at norm_weight_decay.

    With the defaults (one learning rate, one weight decay) it is model.parameters() itself, the classic recipe.
    """
    if cfg.backbone_lr_factor == 1.0 and cfg.norm_weight_decay is None:
        return list(model.parameters())
    head = {id(p) for p in output_layer(model)[1].parameters()}
    norm_types = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm,
                  nn.modules.instancenorm._InstanceNorm)
    no_decay = set()
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            # torchvision's reference (norm_weight_decay) covers norm layers; timm also exempts every bias.
            if isinstance(module, norm_types) or name == "bias":
                no_decay.add(id(parameter))
    groups: dict[tuple[bool, bool], list] = {}
    for parameter in model.parameters():
        groups.setdefault((id(parameter) in head, id(parameter) in no_decay), []).append(parameter)
    norm_decay = cfg.weight_decay if cfg.norm_weight_decay is None else cfg.norm_weight_decay
    return [{"params": params, "lr": cfg.lr * (1.0 if is_head else cfg.backbone_lr_factor),
             "weight_decay": norm_decay if is_norm else cfg.weight_decay}
            for (is_head, is_norm), params in sorted(groups.items(), key=lambda item: (not item[0][0], item[0][1]))]


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    """Adam (the classic recipe), AdamW or SGD with momentum, as `cfg.optimizer` says (groups may set their own lr)."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def make_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer,
                   steps_per_epoch: int) -> tuple[torch.optim.lr_scheduler.LRScheduler, bool]:
    """The learning-rate schedule of `cfg.scheduler` with its warmup; returns (scheduler, steps per batch?)."""
    sched = torch.optim.lr_scheduler
    if cfg.scheduler == "onecycle":
        # OneCycleLR warms up by design; warmup_epochs sets its rising phase (default 30%, as PyTorch's).
        rising = cfg.warmup_epochs / cfg.epochs if cfg.warmup_epochs else 0.3
        # Each group peaks at its own lr (the backbone's is lr x backbone_lr_factor).
        peaks = [group["lr"] for group in optimizer.param_groups]
        return sched.OneCycleLR(optimizer, max_lr=peaks, total_steps=cfg.epochs * max(steps_per_epoch, 1),
                                pct_start=rising), True
    if cfg.scheduler == "cosine":
        main = sched.CosineAnnealingLR(optimizer, T_max=cfg.epochs - cfg.warmup_epochs)
    else:
        main = sched.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if not cfg.warmup_epochs:
        return main, False
    warmup = sched.LinearLR(optimizer, start_factor=0.1, total_iters=cfg.warmup_epochs)
    return sched.SequentialLR(optimizer, [warmup, main], milestones=[cfg.warmup_epochs]), False


def open_split(decoded_dir: str | os.PathLike, split: str, paths: Sequence[str], input_size: int) -> StoredSplit:
    """A split of the decode stage's store, centre-cropped to `input_size` (0: the stored size), checked."""
    images = StoredSplit(decoded_dir, split, paths_digest(list(paths)))
    if input_size > images.stored_size:
        raise ConfigError(f"train.input_size: {input_size} px is larger than the stored images "
                          f"(decode.image_size {images.stored_size}); set it to at most that, or 0")
    return images.cropped(input_size or images.stored_size)


def check_image_size(model: nn.Module, arch: str, image_size: int) -> None:
    """Refuse, before any training, an architecture that cannot take `image_size` images (ViT wants its own size)."""
    needed = getattr(model, "image_size", None)  # torchvision's VisionTransformer declares it
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(2, 3, image_size, image_size))
    except Exception as err:  # the architecture's own complaint, e.g. "Wrong image height! Expected 224 but got 64"
        size = f"{needed} px" if needed else "a larger size"
        raise ConfigError(f"train.arch: {arch} cannot take {image_size} px images ({str(err).splitlines()[0][:120]}); "
                          f"it needs {size}: set decode.image_size accordingly") from None


def make_train_batches(images: np.ndarray, targets: Sequence[int], balance: str, batch_size: int,
                       class_weights: Sequence[float], generator: torch.Generator,
                       device: torch.device, world: World = World(), seed: int = 0) -> DecodedBatches:
    """Training batches; with balance=sampler, drawn by a WeightedRandomSampler (with replacement).

    In one process that is torch's WeightedRandomSampler (or RandomSampler) drawing from `generator`,
    the classic recipe. Under DDP each process takes its shard of one shared draw per epoch, seeded
    by `seed` and the epoch (DistributedWeightedSampler); `batch_size` is per process.
    """
    # Per-sample weights from the known targets: no image is decoded to find its label.
    sample_weights = [class_weights[t] for t in targets] if balance == "sampler" else None
    if world.distributed:
        sampler = DistributedWeightedSampler(sample_weights, len(targets), world_size=world.world_size,
                                             rank=world.rank, seed=seed)
    elif sample_weights is not None:
        sampler = WeightedRandomSampler(torch.tensor(sample_weights, dtype=torch.double), num_samples=len(targets),
                                        replacement=True, generator=generator)
    else:
        sampler = RandomSampler(range(len(targets)), generator=generator)
    # A last batch of one image breaks BatchNorm in training mode; drop it only in that case.
    drop_last = len(sampler) % batch_size == 1 and len(sampler) > 1
    return DecodedBatches(images, targets, BatchSampler(sampler, batch_size, drop_last),
                          pin_memory=device.type == "cuda")


def make_val_batches(images: np.ndarray, targets: Sequence[int], batch_size: int,
                     device: torch.device, world: World = World()) -> DecodedBatches:
    """Validation batches in file order, never augmented; under DDP this process's shard (no padding)."""
    positions = shard(len(targets), world)
    return DecodedBatches(images, targets, BatchSampler(positions, batch_size, False),
                          pin_memory=device.type == "cuda")


def make_bn_batches(images: np.ndarray, targets: Sequence[int], batch_size: int, device: torch.device,
                    world: World, seed: int) -> DecodedBatches:
    """Training images for precise BN: centre-cropped, never augmented, in one fixed shuffled order (this rank's shard).

    Shuffled because the split lists images class by class: batches of one class each would average
    within-class variances only, and BatchNorm would divide by far too small a deviation. The order
    comes from its own seeded permutation, so no random number of the training run is drawn.
    """
    order = np.random.default_rng(seed).permutation(len(targets))
    positions = [int(order[i]) for i in shard(len(targets), world)]
    drop_last = len(positions) % batch_size == 1 and len(positions) > 1  # a batch of one: as make_train_batches
    return DecodedBatches(images, targets, BatchSampler(positions, batch_size, drop_last),
                          pin_memory=device.type == "cuda")


def training_device(cfg: TrainConfig, world: World) -> torch.device:
    """The device this process trains on: `cfg.device`, or under DDP on CUDA the local rank's GPU.

    Refused in one line, before any process starts: more processes on this machine than visible
    GPUs (NCCL needs one GPU per process; rank 1 would fail in CUDA with "invalid device ordinal"),
    and `cuda:N` with several processes on this machine (each takes its own GPU, so one pinned GPU
    cannot be honoured). With one process per machine (torchrun over machines) `cuda:N` is that
    machine's GPU N.
    """
    device = select_device(cfg.device)
    if device.type != "cuda" or not world.distributed:
        return device
    processes = world.local_world_size
    if processes > 1 and cfg.device.startswith("cuda:"):
        raise ConfigError(f"train.device: {cfg.device} pins one GPU, but each of the {processes} training "
                          f"processes on this machine (train.nproc_per_node) takes a GPU of its own; "
                          f"set train.device: cuda (or auto)")
    gpus = torch.cuda.device_count()
    if processes > gpus:
        visible = f"{gpus} {'is' if gpus == 1 else 'are'} visible"
        raise ConfigError(f"train.nproc_per_node: {processes} training processes on this machine need {processes} "
                          f"GPUs (NCCL: one per process), but {visible}; set train.nproc_per_node: {gpus}, "
                          f"or train.device: cpu for CPU processes (gloo)")
    return device if processes == 1 and device.index is not None else torch.device("cuda", world.local_rank)


def set_speed_options(device: torch.device) -> None:
    """What the train stage switches on for speed on `device` (benchmarks.train measures the same)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick its fastest kernels


def train_model(cfg: TrainConfig, train_csv: str | os.PathLike, val_csv: str | os.PathLike,
                decoded_dir: str | os.PathLike, classes: Sequence[str], class_weights: Sequence[float],
                model_path: str | os.PathLike, on_epoch: Callable[[dict], None] = lambda metrics: None,
                state_path: str | os.PathLike | None = None) -> FitResult:
    """Train `cfg.arch` on the decoded split, keep the best epoch's weights, and write them to `model_path`.

    With `state_path`, the whole training state is saved there after every epoch (or every
    `cfg.state_every` seconds, resume.EverySeconds); a later call with
    the same params, inputs and device set-up resumes from it (bit-exact on the CPU), and a completed
    run removes it. Under torchrun (several processes) only rank 0 writes, prints and calls
    `on_epoch`, and rank 0 alone decides whether to resume (the others receive its state).
    """
    world = World.from_env()
    device = training_device(cfg, world)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # NCCL and broadcast_object_list use the current GPU
    world.start(device)
    try:
        return _train(cfg, world, device, train_csv, val_csv, decoded_dir, classes, class_weights, model_path,
                      on_epoch, state_path)
    finally:
        world.stop()  # on every exit path: an error, Ctrl-C, or done (NCCL warns about a group left open)


def _train(cfg: TrainConfig, world: World, device: torch.device, train_csv: str | os.PathLike,
           val_csv: str | os.PathLike, decoded_dir: str | os.PathLike, classes: Sequence[str],
           class_weights: Sequence[float], model_path: str | os.PathLike, on_epoch: Callable[[dict], None],
           state_path: str | os.PathLike | None) -> FitResult:
    """train_model's work once the process group (if any) is joined."""
    say = print if world.is_main else (lambda *args, **kwargs: None)
    # Rank 0 of any world seeds as a single process does; other ranks draw their own augmentation.
    generator = seed_everything(cfg.seed + world.rank)
    train_frame, val_frame = read_split(train_csv, classes), read_split(val_csv, classes)
    cropped_train = open_split(decoded_dir, "train", train_frame["path"], cfg.input_size)  # N x 3 x I x I, checked
    image_size = cropped_train.shape[-1]
    # A random resized crop takes its boxes from the whole stored image and resizes them to image_size.
    train_images = open_split(decoded_dir, "train", train_frame["path"], 0) if cfg.augment.crop_scale < 1 \
        else cropped_train
    train_batches = make_train_batches(train_images, train_frame["target"], cfg.balance, cfg.batch_size,
                                       class_weights, generator, device, world, cfg.seed)
    val_images = open_split(decoded_dir, "val", val_frame["path"], cfg.input_size)
    val_batches = make_val_batches(val_images, val_frame["target"], cfg.batch_size, device, world)
    prepare = ModelInput(IMAGENET_MEAN, IMAGENET_STD, device)

    model = build_model(cfg.arch, len(classes), cfg.dropout, cfg.pretrained)
    check_image_size(model, cfg.arch, image_size)
    model = model.to(device, memory_format=memory_format(device))

    def stepped_model() -> nn.Module:
        """What the optimizer steps: DDP over the parameters that train now (averaging their gradients over
        the processes, from rank 0's weights), compiled if asked; the compiled wrapper shares its parameters
        with `model`, which is what gets saved."""
        stepped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
            if world.distributed else model
        return torch.compile(stepped) if cfg.compile else stepped  # opt-in (see docs/benchmarks.md)

    def set_frozen(frozen: bool) -> nn.Module | None:
        """Freeze or unfreeze the backbone; under DDP a changed trainable set gets a new DDP (measured in
        docs/distributed.md: a rebuild per change costs nothing per step, find_unused_parameters costs every step)."""
        before = [parameter.requires_grad for parameter in model.parameters()]
        set_backbone_trainable(model, not frozen)
        changed = before != [parameter.requires_grad for parameter in model.parameters()]
        return stepped_model() if changed and world.distributed else None

    loss_weights = torch.tensor(class_weights, dtype=torch.float32, device=device) if cfg.balance == "loss" else None
    criterion = nn.CrossEntropyLoss(weight=loss_weights, label_smoothing=cfg.label_smoothing)
    optimizer = make_optimizer(cfg, parameter_groups(cfg, model))
    scheduler, per_batch = make_scheduler(cfg, optimizer, len(train_batches))
    set_speed_options(device)

    dtype = autocast_dtype(cfg.precision, device) or torch.float32
    processes = f", {world.world_size} processes of batch {cfg.batch_size}" if world.distributed else ""
    say(f"training {cfg.arch} on {device} ({dtype}) "
        f"with {len(train_frame)} train / {len(val_frame)} val images at {image_size} px, "
        f"{len(classes)} classes{processes}")
    run = TrainingRun(model=stepped_model(), train_batches=train_batches,
                      val_batches=val_batches, prepare=prepare, criterion=criterion, optimizer=optimizer,
                      scheduler=scheduler, device=device, precision=cfg.precision,
                      train_input=TrainInput(cfg.augment, prepare, image_size, generator),
                      scheduler_per_batch=per_batch, set_frozen=set_frozen, generator=generator,
                      world=world, eval_model=model if world.distributed else None,
                      mix=BatchMix(cfg.mixup_alpha, cfg.cutmix_alpha, generator),
                      ema=WeightAverage(model, cfg.ema_decay) if cfg.ema_decay else None,
                      clip_grad_norm=cfg.clip_grad_norm, precise_bn=cfg.precise_bn,
                      bn_batches=make_bn_batches(cropped_train, train_frame["target"], cfg.batch_size, device,
                                                 world, cfg.seed))
    resume_from, writer = None, None
    if state_path is not None:
        fingerprint = Fingerprint.of(dataclasses.asdict(cfg), [train_csv, val_csv, Path(decoded_dir) / "meta.json"],
                                     setup={"device": device.type, "autocast": str(dtype).removeprefix("torch.")},
                                     classes=list(classes), class_weights=list(class_weights),
                                     world_size=world.world_size)
        # Rank 0 decides and the others follow, receiving its state: on machines without a shared
        # .cache, ranks deciding alone would start at different epochs and wait on each other.
        resume_from = world.broadcast(load_state(state_path, fingerprint) if world.is_main else None)
        if resume_from is not None:
            say(f"resuming from epoch {resume_from['epoch']} of {cfg.epochs} (saved in {state_path})")
        writer = EverySeconds(StateWriter(state_path, fingerprint), cfg.state_every) if world.is_main else None
    try:
        result = fit(run, epochs=cfg.epochs, patience=cfg.patience, monitor=cfg.monitor,
                     freeze_epochs=cfg.freeze_epochs, on_epoch=on_epoch if world.is_main else lambda metrics: None,
                     resume_from=resume_from,
                     save_state=None if state_path is None else (writer or (lambda state: None)))
    finally:
        if writer is not None:
            writer.wait()  # the last epoch's state is whole on disk, even after Ctrl-C
    if run.ema is not None:
        model.load_state_dict(run.ema.module.state_dict())  # the best epoch's average is the model
    # Temperature scaling on the validation set, in float32: the best model's confidences made to mean what they say.
    val_logits, val_targets = all_logits(model, val_batches, prepare, device, "calibrate", world)
    result.calibration = calibrate(val_logits, val_targets)
    result.temperature = result.calibration.temperature
    # Judged at the fitted temperature: an accurate but overconfident model has a large raw loss, yet learned.
    val_loss = torch.nn.functional.cross_entropy(val_logits / result.calibration.fitted, val_targets).item()
    prior = prior_loss(train_frame["target"], val_targets.numpy(), len(classes))
    reason = learned_nothing(val_loss, prior, val_logits.argmax(1).numpy(), val_targets.numpy(), classes)
    if reason is not None and len(val_targets) < MIN_IMAGES:
        say(f"warning: on only {len(val_targets)} validation images the best model looks as if it learned nothing "
            f"({reason}); with fewer than {MIN_IMAGES} that cannot be told apart from chance, so it is kept")
    elif reason is not None:
        raise TrainingError(f"train: the best model (epoch {result.best_epoch} of {result.epochs_run}) learned nothing "
                            f"on the {len(val_targets)} validation images: {reason}; no model was written. Try more "
                            f"epochs, another train.lr, train.pretrained, a larger decode.image_size, or "
                            f"train.precise_bn: always")
    if world.is_main:
        geometry = Geometry(train_images.stored_size, image_size, train_images.params.resize,
                            train_images.params.reducing_gap)
        save_checkpoint(model_path, model, arch=cfg.arch, classes=list(classes), **geometry.metadata(),
                        mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), dropout=cfg.dropout,
                        params=dataclasses.asdict(cfg), best_epoch=result.best_epoch,
                        epochs_run=result.epochs_run, temperature=result.temperature,
                        val_loss_calibrated=val_loss, prior_loss=prior, val_images=len(val_targets))
    say(f"best epoch {result.best_epoch} of {result.epochs_run} ({cfg.monitor} {result.best_value:.4f}); "
        f"{result.calibration.describe()}; "
        f"wrote {model_path}")
    if state_path is not None and world.is_main:
        remove_state(state_path)  # the run is complete: nothing to resume
    return result


def open_live(directory: str | os.PathLike):
    """A DVCLive logger for a stage of a hand-written dvc.yaml (dvcyaml=False, no experiment saving)."""
    from dvclive import Live
    from scmrepo.exceptions import SCMError

    class StageLive(Live):
        """Live that tolerates a git repository without commits.

        A private hook: DVCLive 3.49's `Live._init_dvc` looks up the git HEAD for its experiment
        bookkeeping and raises `SCMError` in a repository with no commit yet (a new user's first
        `dvc repro`). Only that bookkeeping needs a commit; the metric files do not.
        tests/unit/test_train.py fails if DVCLive stops raising there or renames the hook.
        """

        def _init_dvc(self):
            try:
                super()._init_dvc()
            except SCMError:
                pass

    return StageLive(directory, dvcyaml=False, save_dvc_exp=False)


class DeferredLive:
    """open_live(directory), opened on first use: DVCLive's import and set-up (~0.4 s) come after the
    first epoch instead of before the first step. Used as a context manager, like Live itself."""

    def __init__(self, directory: str | os.PathLike):
        self.directory, self.opened = directory, None

    def __getattr__(self, name: str):
        if self.opened is None:
            self.opened = open_live(self.directory).__enter__()  # as `with` would: end() waits for __exit__
        return getattr(self.opened, name)

    def __enter__(self) -> "DeferredLive":
        return self

    def __exit__(self, *exc_info):
        return None if self.opened is None else self.opened.__exit__(*exc_info)

