"""The photo recipe's training parts against their references: MixUp/CutMix (torchvision v2), EMA
(torch.optim.swa_utils), precise BN, gradient clipping under loss scaling, parameter groups, and the
class-prior baseline a model must beat."""


import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchvision.transforms import v2

from imgclf.augment.mixing import BatchMix, cutmix_box, mixed_loss
from imgclf.ema import WeightAverage
from imgclf.fit import TrainingRun, train_one_epoch
from imgclf.optim import make_optimizer, make_scheduler, parameter_groups
from imgclf.precise_bn import batch_norms, recompute_statistics, statistics_stale
from tests.conftest import tiny_train_config


def batch(n=6, classes=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 10, generator=generator), torch.arange(n) % classes


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_mixup_images_and_loss_equal_torchvision(monkeypatch, smoothing):
    images, labels = batch()
    torch.manual_seed(3)
    expected, soft = v2.MixUp(alpha=0.4, num_classes=3)(images, labels)
    lam = float(soft[0, labels[0]])  # neighbours have different classes: the own class's weight is lam
    mix = BatchMix(0.4, 0.0, torch.Generator().manual_seed(0))
    monkeypatch.setattr(mix, "_beta", lambda alpha: lam)
    mixed, partners, got_lam = mix(images, labels)
    torch.testing.assert_close(mixed, expected)
    logits = torch.randn(6, 3)
    criterion = nn.CrossEntropyLoss(label_smoothing=smoothing)
    torch.testing.assert_close(mixed_loss(criterion, logits, labels, partners, got_lam),
                               F.cross_entropy(logits, soft, label_smoothing=smoothing))


def test_cutmix_box_and_loss_equal_torchvision():
    images, labels = batch()
    for seed in range(20):
        torch.manual_seed(seed)
        expected, soft = v2.CutMix(alpha=1.0, num_classes=3)(images, labels)
        torch.manual_seed(seed)  # replay torchvision's draws: lam, then the centre x, y
        lam = float(torch.distributions.Beta(torch.tensor([1.0]), torch.tensor([1.0])).sample(()))
        center_x, center_y = int(torch.randint(10, size=(1,))), int(torch.randint(8, size=(1,)))
        x1, y1, x2, y2, adjusted = cutmix_box(lam, center_x, center_y, 8, 10)
        mixed = images.clone()
        mixed[..., y1:y2, x1:x2] = images.roll(1, 0)[..., y1:y2, x1:x2]
        torch.testing.assert_close(mixed, expected)
        assert adjusted == pytest.approx(float(soft[0, labels[0]]))
        logits = torch.randn(6, 3)
        torch.testing.assert_close(mixed_loss(nn.CrossEntropyLoss(), logits, labels, labels.roll(1, 0), adjusted),
                                   F.cross_entropy(logits, soft))


def test_batch_mix_draws_from_its_generator_and_mixes_consistently():
    images, labels = batch(8)
    mix = BatchMix(0.2, 1.0, torch.Generator().manual_seed(0))
    kinds, lams = set(), []
    for _ in range(40):
        mixed, partners, lam = mix(images, labels)
        assert torch.equal(partners, labels.roll(1, 0)) and 0 <= lam <= 1
        rolled = images.roll(1, 0)
        if torch.allclose(mixed, lam * images + (1 - lam) * rolled, atol=1e-6):
            kinds.add("mixup")
        else:  # every pixel is its own or its partner's; lam is the own pixels' share
            kinds.add("cutmix")
            taken = (mixed != images).any(1)
            assert torch.equal(torch.where(taken[:, None], rolled, images), mixed)
            assert lam == pytest.approx(1 - taken[0].float().mean().item())
        lams.append(lam)
    assert kinds == {"mixup", "cutmix"}  # RandomChoice of the two
    again = BatchMix(0.2, 1.0, torch.Generator().manual_seed(0))
    assert [again(images, labels)[2] for _ in range(40)] == lams  # the generator alone decides
    off = BatchMix(0.0, 0.0, torch.Generator())
    assert not off.active


def small_bn_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))


def test_ema_equals_swa_utils_including_batchnorm_buffers():
    model = small_bn_model()
    model(torch.rand(2, 3, 8, 8))  # materialise the lazy layer
    ours = WeightAverage(model, 0.9, warmup=False)
    reference = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    reference.update_parameters(model)  # its first update copies; ours starts as the copy
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(5):
        loss = model(torch.rand(4, 3, 8, 8)).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ours.update(model)
        reference.update_parameters(model)
    theirs = dict(reference.module.state_dict())
    compared = 0
    for name, value in ours.module.state_dict().items():
        if value.is_floating_point():  # num_batches_tracked: swa_utils lerps a count; ours copies it
            torch.testing.assert_close(value, theirs[name])
            compared += 1
    assert compared == 8  # conv w/b, bn w/b and running mean/var, linear w/b
    assert not torch.equal(ours.module[1].running_mean, model[1].running_mean)


def test_ema_warmup_follows_timms_rule():
    average = WeightAverage(nn.Linear(1, 1), 0.999)
    decays = []
    for _ in range(3):
        decays.append(average.current_decay())
        average.update(nn.Linear(1, 1))
    assert decays == pytest.approx([1 / 10, 2 / 11, 3 / 12])
    average.updates = 10**6
    assert average.current_decay() == 0.999


def test_batchnorm_momentum_001_is_stale_after_few_steps_and_recompute_is_exact():
    model = torchvision.models.mobilenet_v3_small(num_classes=3)
    assert statistics_stale(model, steps=40, steps_per_epoch=4)  # momentum 0.01: 0.99^40 = 0.67
    assert not statistics_stale(torchvision.models.resnet18(num_classes=3), steps=500, steps_per_epoch=50)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Dropout(0.5),
                        nn.Linear(144, 3))
    data = [(torch.rand(5, 3, 8, 8) * 3 + 1, torch.zeros(5)) for _ in range(3)]
    net.train()
    dropout_draws = torch.get_rng_state()
    seen = recompute_statistics(net, data, lambda x: x)
    assert seen == 15 and net.training and torch.equal(torch.get_rng_state(), dropout_draws)
    with torch.no_grad():
        features = [net[0](images) for images, _ in data]
    expected = torch.stack([f.mean((0, 2, 3)) for f in features]).mean(0)
    torch.testing.assert_close(net[1].running_mean, expected)
    assert net[1].momentum == 0.1 and batch_norms(net) == [net[1]]


def test_clipping_under_loss_scaling_clips_the_true_gradients():
    def gradients(scaled: bool):
        torch.manual_seed(0)
        model = nn.Linear(4, 3)
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        data = [(torch.randn(8, 4) * 10, torch.randint(3, (8,)))]
        run = TrainingRun(model=model, train_batches=data, val_batches=data, prepare=lambda x: x,
                          criterion=nn.CrossEntropyLoss(), optimizer=optimizer,
                          scheduler=torch.optim.lr_scheduler.StepLR(optimizer, 1), device=torch.device("cpu"),
                          clip_grad_norm=0.5)
        if scaled:  # the scaler fp16 uses on CUDA, here on the CPU with a large scale
            run.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
        before = [p.detach().clone() for p in model.parameters()]
        train_one_epoch(run)
        return [b - p.detach() for b, p in zip(before, model.parameters())]  # lr 1: the clipped gradient

    plain, scaled = gradients(False), gradients(True)
    norm = torch.sqrt(sum((g ** 2).sum() for g in plain))
    assert norm.item() == pytest.approx(0.5, rel=1e-4)
    for a, b in zip(plain, scaled):
        torch.testing.assert_close(a, b)


def test_parameter_groups_split_head_backbone_and_norm_decay():
    model = torchvision.models.resnet18(num_classes=3)
    classic = tiny_train_config()
    assert parameter_groups(classic, model) == list(model.parameters())  # the classic single group
    config = tiny_train_config(backbone_lr_factor=0.1, norm_weight_decay=0.0, weight_decay=0.05, lr=1e-3)
    groups = parameter_groups(config, model)
    head_ids = {id(model.fc.weight), id(model.fc.bias)}
    assert {id(p) for p in groups[0]["params"]} | {id(p) for p in groups[1]["params"]} >= head_ids
    by_id = {id(p): g for g in groups for p in g["params"]}
    assert by_id[id(model.fc.weight)]["lr"] == 1e-3 and by_id[id(model.conv1.weight)]["lr"] == pytest.approx(1e-4)
    assert by_id[id(model.bn1.weight)]["weight_decay"] == 0.0 and by_id[id(model.fc.bias)]["weight_decay"] == 0.0
    assert by_id[id(model.conv1.weight)]["weight_decay"] == 0.05
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    optimizer = make_optimizer(tiny_train_config(backbone_lr_factor=0.1, scheduler="onecycle", epochs=4), groups)
    make_scheduler(tiny_train_config(scheduler="onecycle", epochs=4), optimizer, steps_per_epoch=5)
    peaks = [g["max_lr"] for g in optimizer.param_groups]
    assert max(peaks) == pytest.approx(10 * min(peaks))  # OneCycle keeps each group's own peak








def test_evaluate_refuses_a_model_that_learned_nothing_where_it_can_tell():
    from imgclf.errors import DataError
    from imgclf.evaluate import refuse_if_learned_nothing

    classes, varied = ["a", "b"], [0, 1] * 10
    bad = {"val_loss_calibrated": 0.70, "prior_loss": 0.69}
    refuse_if_learned_nothing("m.pt", {**bad, "val_images": 19}, varied, varied, classes)  # train only warned
    refuse_if_learned_nothing("m.pt", {}, varied, varied, classes)  # a model.pt from before the check
    with pytest.raises(DataError, match="m.pt: this model learned nothing .*no better than 0.6900"):
        refuse_if_learned_nothing("m.pt", {**bad, "val_images": 20}, varied, varied, classes)
    with pytest.raises(DataError, match="predicts class 'b' for every one of the 20 images"):
        refuse_if_learned_nothing("m.pt", {}, [1] * 20, varied, classes)
    refuse_if_learned_nothing("m.pt", {}, [1] * 19, varied[:19], classes)  # too few test images to tell


def test_precise_bn_skips_single_image_batches_and_keeps_the_statistics_without_any():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    before = net[1].running_mean.clone()
    assert recompute_statistics(net, [(torch.rand(1, 3, 1, 1), torch.zeros(1))], lambda x: x) == 0
    assert torch.equal(net[1].running_mean, before) and net[1].momentum == 0.1
    data = [(torch.rand(4, 3, 1, 1), torch.zeros(4)), (torch.rand(1, 3, 1, 1), torch.zeros(1))]
    assert recompute_statistics(net, data, lambda x: x) == 4
