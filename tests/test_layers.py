"""Block discovery (captum_global.attr.sise.find_block_outputs): one layer per convolutional block."""
import os
import sys

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
import torch.nn.functional as F
from torch import nn

from captum_global.attr import select_sise_layers
from captum_global.attr.sise import find_block_outputs

sys.path.insert(0, os.path.dirname(__file__))
from _sise_nets import TutorialNet  # noqa: E402

tvm = torchvision.models


def _meta(ctor, px):
    """Torchvision models on the meta device: shapes without weights or compute."""
    with torch.device("meta"):
        net = ctor().eval()
        x = torch.zeros(1, 3, px, px)
    return net, x


ZOO = {
    "resnet18": (tvm.resnet18, 64, ["relu", "layer1", "layer2", "layer3", "layer4"]),
    "resnet50": (tvm.resnet50, 224, ["relu", "layer1", "layer2", "layer3", "layer4"]),
    # VGG16: the ReLU after conv1_2, conv2_2, conv3_3, conv4_3, conv5_3 (the paper's choice)
    "vgg16": (tvm.vgg16, 224, ["features.3", "features.8", "features.15", "features.22", "features.29"]),
    "vgg11": (tvm.vgg11, 64, ["features.1", "features.4", "features.9", "features.14", "features.19"]),
    # transitions are part of the next stage: the dense block outputs are picked
    "densenet121": (tvm.densenet121, 64, [
        "features.relu0", "features.denseblock1", "features.denseblock2", "features.denseblock3", "features",
    ]),
    # inverted residuals: the block feeding a strided stage, not its 1x1 expansion
    "mobilenet_v3_small": (tvm.mobilenet_v3_small, 64, [
        "features.0", "features.1", "features.3", "features.8", "features",
    ]),
    "efficientnet_b0": (tvm.efficientnet_b0, 64, [
        "features.1", "features.2", "features.3", "features.5", "features",
    ]),
    # ConvNeXt: the stage outputs, not the LayerNorm that opens each down-sampling layer
    "convnext_tiny": (tvm.convnext_tiny, 64, ["features.1", "features.3", "features.5", "features"]),
}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_torchvision_zoo(name):
    ctor, px, expected = ZOO[name]
    net, x = _meta(ctor, px)
    assert select_sise_layers(net, x) == expected


def test_shapes_and_order_resnet50():
    net, x = _meta(tvm.resnet50, 224)
    blocks = find_block_outputs(net, x)
    assert [b.shape for b in blocks] == [
        (64, 112, 112), (256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)
    ]
    name, module, shape = blocks[1]
    assert module is net.layer1 and name == "layer1"


class TinyVGG(nn.Module):
    def __init__(self, widths=(4, 6, 8)):
        super().__init__()
        layers, c = [], 3
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 3))

    def forward(self, x):
        return self.head(self.features(x))


class Block(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1, stride=stride)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.conv(x) + self.skip(x))


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True))
        self.pool = nn.MaxPool2d(2)
        self.stage1 = nn.Sequential(Block(4, 4, 1), Block(4, 4, 1))
        self.stage2 = nn.Sequential(Block(4, 8, 2), Block(8, 8, 1))
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        x = self.stage2(self.stage1(self.pool(self.stem(x))))
        return self.fc(x.mean(dim=(2, 3)))  # functional global pooling


@settings(max_examples=8, deadline=None)
@given(widths=st.lists(st.integers(1, 5), min_size=1, max_size=3))
def test_tiny_vgg_picks_relu_before_each_pool(widths):
    net = TinyVGG(widths)
    names = select_sise_layers(net, torch.rand(1, 3, 16, 16))
    # the last ReLU of each block, i.e. the input of its MaxPool
    assert names == [f"features.{5 * i + 3}" for i in range(len(widths))]


def test_tiny_resnet_strided_stages_and_functional_pooling():
    blocks = find_block_outputs(TinyResNet(), torch.rand(1, 3, 16, 16))
    # in-place ReLU: the activation that returned the stem output last, then the stage outputs
    assert [(b.name, b.shape) for b in blocks] == [
        ("stem", (4, 16, 16)), ("stage1", (4, 8, 8)), ("stage2", (8, 4, 4))
    ]


def test_reference_world_models():
    world = pytest.importorskip("captum_global.world")
    x = torch.rand(1, 3, 64, 64)
    assert select_sise_layers(world.build_model("vgg"), x) == [
        f"features.block{i}.relu2" for i in range(1, 5)
    ]
    # the stride-2 stem and layer1 share a resolution: layer1 closes that block
    assert select_sise_layers(world.build_model("resnet"), x) == ["layer1", "layer2", "layer3", "layer4"]


def test_no_spatial_layers_is_a_clear_error():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(48, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="no spatial layer"):
        select_sise_layers(mlp, torch.rand(1, 3, 4, 4))


def test_bad_example_input_rank():
    with pytest.raises(ValueError, match="example_input"):
        select_sise_layers(TinyVGG(), torch.rand(3, 16, 16))


def test_model_state_restored_and_no_hooks_left():
    net = TinyResNet().train()
    net.stem[0].weight.requires_grad_(False)
    select_sise_layers(net, torch.rand(1, 3, 16, 16))
    assert net.training and all(m.training for m in net.modules())
    assert not net.stem[0].weight.requires_grad and net.fc.weight.requires_grad
    for m in net.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


class _PassThrough(nn.Module):
    def forward(self, x):
        return x


class _SharedActivationNet(nn.Module):
    """Like EfficientNet-Lite: one activation module reused by every block,
    and identity 'padding' modules that hand their input through."""

    def __init__(self):
        super().__init__()
        self.act = nn.ReLU()
        self.pad = nn.ModuleList([_PassThrough() for _ in range(2)])
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(self.pad[0](x)))
        x = self.act(self.conv3(self.pad[1](x)))
        return self.head(x.mean((2, 3)))


def test_shared_activation_and_identity_modules_are_stepped_over():
    names = select_sise_layers(_SharedActivationNet(), torch.zeros(1, 3, 16, 16))
    # 'act' runs three times and cannot be hooked per block; 'pad.*' only hand
    # the tensor through: the pre-activation convolutions are the block outputs.
    assert names == ["conv1", "conv3"]


def test_real_efficientnet_lite0_blocks():
    photos = pytest.importorskip("captum_global.world.photos")
    if not photos.real_available():
        pytest.skip("the 'real' extra is not installed")
    names = select_sise_layers(photos.efficientnet_lite0(), torch.zeros(1, 3, 224, 224))
    assert names == ["net._blocks.0", "net._blocks.2", "net._blocks.4", "net._blocks.10", "net._bn1"]


def test_tutorial_net_shared_pool_functional_relu():
    # the shared pool cannot be hooked per block; F.relu has no module: the convolutions
    # that feed each pooling are the block outputs (where LayerGradCam works too)
    blocks = find_block_outputs(TutorialNet(), torch.rand(1, 3, 32, 32))
    assert [(b.name, b.shape) for b in blocks] == [("conv1", (6, 28, 28)), ("conv2", (16, 10, 10))]


def test_compiled_model_is_traced_through_its_original_module():
    net = TutorialNet()
    compiled = torch.compile(net, backend="eager")
    assert select_sise_layers(compiled, torch.rand(1, 3, 32, 32)) == ["conv1", "conv2"]
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


def test_torchscript_model_is_refused_with_the_reason():
    traced = torch.jit.trace(TutorialNet(), torch.rand(1, 3, 32, 32))
    with pytest.raises(TypeError, match="TorchScript module.*forward hooks.*never called"):
        select_sise_layers(traced, torch.rand(1, 3, 32, 32))


def test_inference_mode_example_input():
    with torch.inference_mode():
        x = torch.rand(1, 3, 16, 16)
        assert select_sise_layers(TinyVGG((2, 2)), x) == ["features.3", "features.8"]


class _FunctionalPoolLeNet(nn.Module):
    """The PyTorch tutorials' LeNet: it down-samples with F.max_pool2d in its own forward."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), (2, 2))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


def test_down_sampling_by_a_functional_op_in_forward_ends_a_block():
    net = _FunctionalPoolLeNet()
    found = find_block_outputs(net, torch.rand(1, 1, 32, 32))
    # 32 -> conv 28 -> pool 14 -> conv 10 -> pool 5: one block per resolution a convolution ran at
    assert [(b.name, b.shape) for b in found] == [("conv1", (6, 28, 28)), ("conv2", (16, 10, 10))]
    # a functional op on the model input itself (normalisation, resizing) is not a block end
    class Resized(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _FunctionalPoolLeNet()

        def forward(self, x):
            return self.net(F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False))
    assert [b.name for b in find_block_outputs(Resized(), torch.rand(1, 1, 64, 64))] == ["net.conv1", "net.conv2"]
