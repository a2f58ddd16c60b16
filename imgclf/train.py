"""The train stage's logic: its params, and one training run read top to bottom: set up, fit, finish.

Set-up reads the decoded split, builds the model with its weights' preprocessing, and (while the
backbone is frozen) the features computed once; fit (`imgclf/fit.py`) runs the epochs; finish
calibrates the best model, judges it against chance and writes model.pt.
"""

from __future__ import annotations

import dataclasses
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import torch
from torch import nn

from imgclf.augment.config import AugmentConfig
from imgclf.augment.input import TrainInput
from imgclf.augment.mixing import BatchMix
from imgclf.baseline import MIN_IMAGES, learned_nothing, prior_loss
from imgclf.calibration import Calibration, calibrate
from imgclf.checkpoint import save_checkpoint
from imgclf.config import Device, param
from imgclf.distributed import World
from imgclf.ema import WeightAverage
from imgclf.errors import ConfigError, TrainingError
from imgclf.features import FeatureCounts, FeatureStore, feature_set_id, features_of
from imgclf.fit import CachedFeatures, FitResult, TrainingRun, all_logits, fit
from imgclf.inference import autocast_dtype, select_device
from imgclf.model import Preprocessing, build_pretrained, check_arch, check_image_size, classifier_head
from imgclf.novelty import fit_model as fit_novelty
from imgclf.optim import make_optimizer, make_scheduler, parameter_groups
from imgclf.resume import EverySeconds, Fingerprint, StateWriter, load_state, remove_state
from imgclf.train_data import SplitData, make_bn_batches, make_train_batches, make_val_batches, read_data
from imgclf.transforms import ModelInput, memory_format


@dataclass(frozen=True)
class TrainConfig:
    """Params of the `train` stage."""

    input_size: int = param("model input side, centre-cropped from the stored images (0: decode.image_size)", ge=0)
    arch: str = param("a torchvision classification model (resnet18, efficientnet_b0, ...) or timm/<name> with "
                      "timm's names and pretrained tags (timm/tf_efficientnet_lite0, timm/resnet50.a1_in1k, ...)")
    pretrained: str = param("none | default (the architecture's default weights, through torchvision's or timm's "
                            "own download and cache) | path to a local .pth, .pt, .bin or .safetensors file")
    mean: tuple[float, float, float] | None = param("per-channel mean to normalise inputs with (null: what the "
                                                    "weights were trained with; ImageNet's from scratch)")
    std: tuple[float, float, float] | None = param("per-channel std to normalise inputs with (null: the weights')",
                                                   gt=0)
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
    freeze_epochs: int = param("epochs that train only the new output layer (the backbone frozen, in evaluation "
                               "mode) before the backbone is unfrozen; >= epochs: the head alone throughout", ge=0)
    cache_features: bool = param("while the backbone is frozen, compute each image's features once (un-augmented, "
                                 "kept by content beside DVC's cache) and train the head on them; false: every "
                                 "frozen epoch runs the augmented images through the backbone")
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
    compile: bool = param("wrap the model in torch.compile for training (opt-in; measured in docs/benchmarks.md)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = param(
        "training autocast: auto is bf16 on CUDA GPUs with native bf16 (Ampere, sm 8.0+), fp16 with loss scaling "
        "on older ones, fp32 elsewhere; bf16/fp16 force it. Validation always runs in fp32")
    seed: int = param("seed of weights init, sampling and augmentation", ge=0)
    state_every: float = param("seconds between saves of the resume state (0: after every epoch); a killed run "
                               "loses at most this much", ge=0)
    device: Device = param("auto: cuda, then mps, then cpu; cuda:N for one GPU of several")

    def validate(self) -> None:
        """The architecture must exist in torchvision or timm; a local weights file must exist."""
        check_arch(self.arch)
        if self.warmup_epochs >= self.epochs:
            raise ConfigError(f"train.warmup_epochs: must be < train.epochs ({self.epochs}), got {self.warmup_epochs}")
        if self.pretrained not in ("none", "default") and not os.path.isfile(self.pretrained):
            raise ConfigError(f"train.pretrained: must be none, default or an existing weights "
                              f"file; '{self.pretrained}' does not exist")

    @property
    def head_only(self) -> bool:
        """True when the backbone stays frozen for every epoch (freeze_epochs >= epochs)."""
        return self.freeze_epochs >= self.epochs


@dataclass(frozen=True)
class TrainedModel:
    """What train_model reports once model.pt is written: how fitting went, how it was calibrated and judged."""

    fit: FitResult
    calibration: Calibration
    val_loss: float  # calibrated (at the fitted temperature), the learned-nothing judgement's
    prior_loss: float
    features: FeatureCounts | None  # while frozen: the images whose features were computed now and reused

    @property
    def best_epoch(self) -> int:
        """The epoch whose weights were kept."""
        return self.fit.best_epoch

    @property
    def epochs_run(self) -> int:
        """How many epochs ran (fewer than train.epochs after early stopping)."""
        return self.fit.epochs_run

    @property
    def history(self) -> list[dict]:
        """Per-epoch metrics."""
        return self.fit.history


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch Generator for the sampler and augmentation."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


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


def cached_features(cfg: TrainConfig, world: World, model: nn.Module, data: SplitData, preprocessing: Preprocessing,
                    prepare: ModelInput, features_dir: str | os.PathLike | None, class_weights: Sequence[float],
                    generator: torch.Generator, device: torch.device) -> tuple[CachedFeatures, FeatureCounts]:
    """The frozen backbone's features of every training and validation image, from the store or computed once.

    Rank 0 computes and stores what is missing; under DDP the other ranks then read the store (or,
    without one, compute their own).
    """
    store_id = feature_set_id(model, cfg.arch, data.pixels, preprocessing.mean, preprocessing.std)
    tables, counts = {}, FeatureCounts(0, 0)
    for rank_zero_turn in (True, False):  # rank 0 first, the others once it has written what they read
        if world.is_main == rank_zero_turn:
            store = FeatureStore(features_dir, store_id)
            for split, images in (("train", data.cropped_train), ("val", data.val_images)):
                tables[split], done = features_of(model, images, images.content_keys(), prepare, store,
                                                  cfg.batch_size, desc=f"features {split}")
                counts += done
        world.broadcast(None)
    train_batches = make_train_batches(tables["train"], data.train["target"], cfg.balance, cfg.batch_size,
                                       class_weights, generator, device, world, cfg.seed)
    val_batches = make_val_batches(tables["val"], data.val["target"], cfg.batch_size, device, world)
    return CachedFeatures(train_batches, val_batches), counts


def build_run(cfg: TrainConfig, world: World, device: torch.device, model: nn.Module, data: SplitData,
              prepare: ModelInput, class_weights: Sequence[float], generator: torch.Generator,
              features: CachedFeatures | None) -> TrainingRun:
    """Batches, loss, optimizer, schedule and the recipe's parts around `model`, as one TrainingRun."""
    train_batches = make_train_batches(data.train_images, data.train["target"], cfg.balance, cfg.batch_size,
                                       class_weights, generator, device, world, cfg.seed)
    val_batches = make_val_batches(data.val_images, data.val["target"], cfg.batch_size, device, world)
    loss_weights = torch.tensor(class_weights, dtype=torch.float32, device=device) if cfg.balance == "loss" else None
    optimizer = make_optimizer(cfg, parameter_groups(cfg, model))
    scheduler, per_batch = make_scheduler(cfg, optimizer, len(train_batches))
    return TrainingRun(
        model=model, train_batches=train_batches, val_batches=val_batches, prepare=prepare,
        criterion=nn.CrossEntropyLoss(weight=loss_weights, label_smoothing=cfg.label_smoothing),
        optimizer=optimizer, scheduler=scheduler, device=device, precision=cfg.precision,
        train_input=TrainInput(cfg.augment, prepare, data.cropped_train.shape[-1], generator),
        scheduler_per_batch=per_batch, generator=generator, world=world, compile=cfg.compile,
        mix=BatchMix(cfg.mixup_alpha, cfg.cutmix_alpha, generator),
        ema=WeightAverage(model, cfg.ema_decay) if cfg.ema_decay else None, clip_grad_norm=cfg.clip_grad_norm,
        precise_bn=cfg.precise_bn, features=features,
        bn_batches=make_bn_batches(data.cropped_train, data.train["target"], cfg.batch_size, device, world, cfg.seed))


def resume_point(cfg: TrainConfig, world: World, device: torch.device, data: SplitData, classes: Sequence[str],
                 class_weights: Sequence[float], inputs: Sequence[Path], state_path: str | os.PathLike | None,
                 say: Callable[..., None]) -> tuple[dict | None, EverySeconds | None]:
    """(the saved state to resume from or None, the writer of the next states) for a run with a state path.

    Rank 0 decides and the others follow, receiving its state: on machines without a shared .cache,
    ranks deciding alone would start at different epochs and wait on each other.
    """
    if state_path is None:
        return None, None
    dtype = autocast_dtype(cfg.precision, device) or torch.float32
    fingerprint = Fingerprint.of(dataclasses.asdict(cfg), inputs,
                                 setup={"device": device.type, "autocast": str(dtype).removeprefix("torch.")},
                                 classes=list(classes), class_weights=list(class_weights), world_size=world.world_size)
    resume_from = world.broadcast(load_state(state_path, fingerprint) if world.is_main else None)
    if resume_from is not None:
        say(f"resuming from epoch {resume_from['epoch']} of {cfg.epochs} (saved in {state_path})")
    return resume_from, EverySeconds(StateWriter(state_path, fingerprint), cfg.state_every) if world.is_main else None


def cached_features_of(cfg: TrainConfig, run: TrainingRun) -> tuple[np.ndarray, np.ndarray] | None:
    """(training, validation) feature tables of the kept model when the head alone trained on them, else None."""
    if cfg.head_only and run.features is not None:
        return run.features.train_batches.images, run.features.val_batches.images
    return None


def final_val_logits(cfg: TrainConfig, run: TrainingRun) -> tuple[torch.Tensor, torch.Tensor]:
    """The kept model's float32 validation logits: on the cached features when the head alone trained, else on
    the validation images (the same numbers either way, up to float rounding: the backbone was frozen)."""
    if cfg.head_only and run.features is not None:
        head = run.head_run()
        return all_logits(classifier_head(run.model), head.val_batches, head.prepare, run.device, "calibrate",
                          run.world)
    return all_logits(run.model, run.val_batches, run.prepare, run.device, "calibrate", run.world)


def judge(cfg: TrainConfig, fitted: FitResult, logits: torch.Tensor, targets: torch.Tensor, loss: float,
          prior: float, classes: Sequence[str], say: Callable[..., None]) -> None:
    """Refuse a model that learned nothing (baseline.learned_nothing, allowing for the best of the epochs run);
    on fewer than MIN_IMAGES validation images, where that cannot be told from chance, keep it with a warning."""
    reason = learned_nothing(loss, prior, logits.argmax(1).numpy(), targets.numpy(), classes, fitted.epochs_run)
    if reason is not None and len(targets) < MIN_IMAGES:
        say(f"warning: on only {len(targets)} validation images the best model looks as if it learned nothing "
            f"({reason}); with fewer than {MIN_IMAGES} that cannot be told apart from chance, so it is kept")
    elif reason is not None:
        raise TrainingError(f"train: the best model (epoch {fitted.best_epoch} of {fitted.epochs_run}) learned nothing "
                            f"on the {len(targets)} validation images: {reason}; no model was written. Try more "
                            f"epochs, another train.lr, train.pretrained, a larger decode.image_size, more images, "
                            f"or train.precise_bn: always")


def finish(cfg: TrainConfig, run: TrainingRun, fitted: FitResult, data: SplitData, preprocessing: Preprocessing,
           classes: Sequence[str], model_path: str | os.PathLike, features: FeatureCounts | None,
           say: Callable[..., None]) -> TrainedModel:
    """Calibrate the best model on the validation set, judge it, write model.pt (rank 0), say how it went."""
    model = run.model
    if run.ema is not None:
        model.load_state_dict(run.ema.module.state_dict())  # the best epoch's average is the model
    # Temperature scaling on the validation set, in float32: the best model's confidences made to mean what they say.
    logits, targets = final_val_logits(cfg, run)
    calibration = calibrate(logits, targets)
    # Judged at the fitted temperature: an accurate but overconfident model has a large raw loss, yet learned.
    val_loss = torch.nn.functional.cross_entropy(logits / calibration.fitted, targets).item()
    prior = prior_loss(data.train["target"], targets.numpy(), len(classes))
    judge(cfg, fitted, logits, targets, val_loss, prior, classes, say)
    if run.world.is_main:
        save_checkpoint(model_path, model, arch=cfg.arch, classes=list(classes), **data.geometry.metadata(),
                        **fit_novelty(model, run.prepare, data.cropped_train, data.train["target"], data.val_images,
                                      cfg.batch_size, cfg.seed, cached_features_of(cfg, run)),
                        **preprocessing.metadata(), dropout=cfg.dropout, params=dataclasses.asdict(cfg),
                        best_epoch=fitted.best_epoch, epochs_run=fitted.epochs_run,
                        temperature=calibration.temperature, val_loss_calibrated=val_loss, prior_loss=prior,
                        val_images=len(targets))
    say(f"{best_epoch_words(cfg, fitted)}; {calibration.describe()}; wrote {model_path}")
    return TrainedModel(fitted, calibration, val_loss, prior, features)


def best_epoch_words(cfg: TrainConfig, fitted: FitResult) -> str:
    """`best epoch 6 of 6 (val_loss 0.2804)`, with a hint when the last epoch was the best: the run ended improving."""
    monitored = fitted.history[fitted.best_epoch - 1][cfg.monitor] if fitted.best_epoch else fitted.best_value
    still = "; still improving: more epochs may help" if fitted.best_epoch == fitted.epochs_run == cfg.epochs \
        and cfg.epochs > 1 else ""
    return f"best epoch {fitted.best_epoch} of {fitted.epochs_run} ({cfg.monitor} {monitored:.4g}){still}"


def train_model(cfg: TrainConfig, train_csv: str | os.PathLike, val_csv: str | os.PathLike,
                decoded_dir: str | os.PathLike, classes: Sequence[str], class_weights: Sequence[float],
                model_path: str | os.PathLike, on_epoch: Callable[[dict], None] = lambda metrics: None,
                state_path: str | os.PathLike | None = None,
                features_dir: str | os.PathLike | None = None) -> TrainedModel:
    """Train `cfg.arch` on the decoded split, keep the best epoch's weights, and write them to `model_path`.

    With `state_path`, the whole training state is saved there after every epoch (or every
    `cfg.state_every` seconds, resume.EverySeconds); a later call with the same params, inputs and
    device set-up resumes from it (bit-exact on the CPU), and a completed run removes it.
    `features_dir` keeps the frozen backbone's features for the next run (features.FeatureStore).
    Under torchrun (several processes) only rank 0 writes, prints and calls `on_epoch`, and rank 0
    alone decides whether to resume (the others receive its state).
    """
    world = World.from_env()
    device = training_device(cfg, world)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # NCCL and broadcast_object_list use the current GPU
    world.start(device)
    try:
        return _train(cfg, world, device, Path(train_csv), Path(val_csv), Path(decoded_dir), classes, class_weights,
                      model_path, on_epoch, state_path, features_dir)
    finally:
        world.stop()  # on every exit path: an error, Ctrl-C, or done (NCCL warns about a group left open)


def _train(cfg: TrainConfig, world: World, device: torch.device, train_csv: Path, val_csv: Path, decoded_dir: Path,
           classes: Sequence[str], class_weights: Sequence[float], model_path: str | os.PathLike,
           on_epoch: Callable[[dict], None], state_path: str | os.PathLike | None,
           features_dir: str | os.PathLike | None) -> TrainedModel:
    """train_model's work once the process group (if any) is joined: set up, fit, finish."""
    say = print if world.is_main else (lambda *args, **kwargs: None)
    # Set up. Rank 0 of any world seeds as a single process does; other ranks draw their own augmentation.
    generator = seed_everything(cfg.seed + world.rank)
    # A random resized crop takes its boxes from the whole stored image and resizes them to the input size.
    data = read_data(decoded_dir, train_csv, val_csv, classes, cfg.input_size, cfg.augment.crop_scale < 1)
    model, preprocessing = build_pretrained(cfg.arch, len(classes), cfg.dropout, cfg.pretrained)
    preprocessing = dataclasses.replace(preprocessing, mean=cfg.mean or preprocessing.mean,
                                        std=cfg.std or preprocessing.std)
    image_size = data.geometry.input_size
    check_image_size(model, cfg.arch, image_size)
    model = model.to(device, memory_format=memory_format(device))
    prepare = ModelInput(preprocessing.mean, preprocessing.std, device)
    dtype = autocast_dtype(cfg.precision, device) or torch.float32
    processes = f", {world.world_size} processes of batch {cfg.batch_size}" if world.distributed else ""
    say(f"training {cfg.arch} on {device} ({dtype}) with {len(data.train)} train / {len(data.val)} val images at "
        f"{image_size} px, {len(classes)} classes{processes}; weights {cfg.pretrained}, normalised as "
        f"{preprocessing.source if not (cfg.mean or cfg.std) else 'train.mean / train.std'}")
    if preprocessing.input_size and abs(image_size - preprocessing.input_size) > preprocessing.input_size / 4:
        say(f"note: these weights were trained at {preprocessing.input_size} px; at {image_size} px they recognise "
            f"much less (set decode.image_size near {preprocessing.input_size})")
    features, counts = None, None
    if cfg.freeze_epochs and cfg.cache_features:
        features, counts = cached_features(cfg, world, model, data, preprocessing, prepare, features_dir,
                                           class_weights, generator, device)
        say(f"features of the frozen backbone: {counts.computed} computed, {counts.reused} reused")
    run = build_run(cfg, world, device, model, data, prepare, class_weights, generator, features)
    set_speed_options(device)
    resume_from, writer = resume_point(cfg, world, device, data, classes, class_weights,
                                       [train_csv, val_csv, decoded_dir / "meta.json"], state_path, say)
    # Fit.
    try:
        fitted = fit(run, epochs=cfg.epochs, patience=cfg.patience, monitor=cfg.monitor,
                     freeze_epochs=min(cfg.freeze_epochs, cfg.epochs),
                     on_epoch=on_epoch if world.is_main else lambda metrics: None, resume_from=resume_from,
                     save_state=None if state_path is None else (writer or (lambda state: None)))
    finally:
        if writer is not None:
            writer.wait()  # the last epoch's state is whole on disk, even after Ctrl-C
    # Finish.
    result = finish(cfg, run, fitted, data, preprocessing, classes, model_path, counts, say)
    if state_path is not None and world.is_main:
        remove_state(state_path)  # the run is complete: nothing to resume
    return result
