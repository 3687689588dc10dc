import pytest
import torch

from cnn_explorer.interpret.layers import stages
from cnn_explorer.models import ConvNet, count_parameters, first_conv


def small() -> ConvNet:
    return ConvNet([32, "M", 64, "M", 128, "M"], hidden=256)


def test_small_matches_the_seed_network_parameter_count():
    # conv 3->32: 3*32*9+32 = 896; 32->64: 32*64*9+64 = 18,496; 64->128: 64*128*9+128 = 73,856;
    # fc 128*4*4 -> 256: 2048*256+256 = 524,544; fc 256 -> 10: 2,570.
    assert count_parameters(small()) == 896 + 18_496 + 73_856 + 524_544 + 2_570 == 620_362


@pytest.mark.parametrize(
    ("architecture", "batch_norm", "hidden"),
    [([64, "M", 128, "M", 256, "M"], True, 512), ([32, 32, "M", 64, 64, "M", 128, 128, "M"], True, 256)],
)
def test_output_shape(architecture, batch_norm, hidden):
    net = ConvNet(architecture, hidden=hidden, batch_norm=batch_norm, num_classes=7)
    assert net(torch.zeros(3, 3, 32, 32)).shape == (3, 7)


def test_batch_norm_parameter_count():
    # One conv 3->8 without bias (BN replaces it): 3*8*9 = 216, BN weight+bias 16; fc 8*16*16 -> 4: 8,196; 4 -> 2: 10.
    net = ConvNet([8, "M"], hidden=4, num_classes=2, batch_norm=True)
    assert count_parameters(net) == 216 + 16 + 8 * 16 * 16 * 4 + 4 + 4 * 2 + 2


def test_layers_have_stable_names_and_no_inplace_relu():
    net = ConvNet([32, 32, "M", 64, "M"])
    assert stages(net, (3, 32, 32)) == ["features.conv1", "features.conv2", "features.conv3"]
    assert first_conv(net)[0] == "features.conv1.conv"
    names = dict(net.named_modules())
    assert {"features.pool1", "features.pool2", "classifier.fc1", "classifier.fc2"} <= names.keys()
    assert not any(getattr(m, "inplace", False) for m in net.modules())


@pytest.mark.parametrize("architecture", [[], ["M"], [32, "X"], [0, "M"], [8] + ["M"] * 6])
def test_bad_architecture_is_rejected(architecture):
    with pytest.raises(ValueError, match="architecture"):
        ConvNet(architecture)
