"""Model building: head replacement across architectures and loading a local weights file."""

import pytest
import torch
import torchvision
from torch import nn

from imgclf.errors import ConfigError, DataError
from imgclf.inference import select_device
from imgclf.model import build_model, replace_head


# One small model per head layout: `fc` (resnet), Dropout -> Linear in `classifier` (mobilenet),
# `fc` after a conv trunk (shufflenet), a bare `classifier` Linear (densenet).
@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small", "shufflenet_v2_x0_5", "densenet121"])
def test_head_replaced_for_any_family(arch):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=7, dropout=0.3).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears[-1].out_features == 7


def test_dropout_goes_before_the_output_layer_once():
    resnet = build_model("resnet18", 4, dropout=0.25)
    assert isinstance(resnet.fc, nn.Sequential)
    assert isinstance(resnet.fc[0], nn.Dropout) and resnet.fc[0].p == 0.25
    assert isinstance(resnet.fc[1], nn.Linear) and resnet.fc[1].out_features == 4
    # efficientnet already has Dropout -> Linear: its p is set, no second dropout is stacked.
    effnet = build_model("efficientnet_b0", 4, dropout=0.4)
    assert [type(m) for m in effnet.classifier] == [nn.Dropout, nn.Linear]
    assert effnet.classifier[0].p == 0.4
    assert isinstance(build_model("resnet18", 4, dropout=0.0).fc, nn.Linear)


def test_model_without_linear_head_is_a_config_error():
    with pytest.raises(ConfigError, match="no final Linear layer"):
        replace_head(torchvision.models.squeezenet1_0(), 3, 0.0)


def test_local_pretrained_weights_are_loaded(tmp_path):
    torch.manual_seed(1)
    source = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    model = build_model("resnet18", 5, 0.2, pretrained=str(path))
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert torch.equal(model.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)
    assert model.fc[1].out_features == 5
    # A fresh model differs, so the equality above is the file's doing.
    assert not torch.equal(build_model("resnet18", 5, 0.2).conv1.weight, source.conv1.weight)


def test_wrong_weights_file_is_a_clear_error(tmp_path):
    path = tmp_path / "mobilenet.pth"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), path)
    with pytest.raises(DataError, match=r"do not fit the architecture \(missing conv1.weight, bn1.weight, bn1.bias "
                                        r"and 97 more; unexpected features"):
        build_model("resnet18", 3, 0.0, pretrained=str(path))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="not a loadable weights file"):
        build_model("resnet18", 3, 0.0, pretrained=str(tmp_path / "junk.pth"))


def test_select_device():
    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            select_device("cuda")
