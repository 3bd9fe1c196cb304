"""Small reference CNNs for the shapes world, and random torchvision models.

Two families with different block structure, so layer-wise methods are
exercised on both: :class:`SmallVGG` (plain conv blocks closed by
max-pooling) and :class:`SmallResNet` (BatchNorm, residual BasicBlocks,
stride-2 down-sampling). Both take unnormalised ``[0, 1]`` images and use
plain, non-inplace ``nn.ReLU`` modules so forward hooks see every
activation.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from captum_global.errors import InvalidArgumentError

ARCHS = ("vgg", "resnet")
TORCHVISION_NAMES = (
    "resnet18", "resnet50", "vgg11", "vgg16", "densenet121",
    "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny",
)


class SmallVGG(nn.Module):
    """VGG-style CNN: blocks of (conv-BN-ReLU) x 2 + MaxPool, then GAP + linear.

    Submodules are named ``features.block{i}.{conv1,bn1,relu1,conv2,bn2,relu2,pool}``
    so layers can be addressed by name (e.g. ``"features.block3.relu2"``).

    Args:
        num_classes: number of output logits.
        widths: output channels of each block.
    """

    def __init__(self, num_classes: int = 5, widths: Sequence[int] = (8, 16, 32, 64)) -> None:
        super().__init__()
        blocks = _named()
        c_in = 3
        for i, c in enumerate(widths):
            blocks[f"block{i + 1}"] = nn.Sequential(_named(
                conv1=nn.Conv2d(c_in, c, 3, padding=1, bias=False),
                bn1=nn.BatchNorm2d(c), relu1=nn.ReLU(),
                conv2=nn.Conv2d(c, c, 3, padding=1, bias=False),
                bn2=nn.BatchNorm2d(c), relu2=nn.ReLU(),
                pool=nn.MaxPool2d(2),
            ))
            c_in = c
        self.features = nn.Sequential(blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.flatten(self.pool(self.features(x))))


class BasicBlock(nn.Module):
    """ResNet BasicBlock: two 3x3 conv-BN with an identity or 1x1 projected skip."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )
        else:
            self.downsample = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.downsample(x))


class SmallResNet(nn.Module):
    """ResNet-style CNN: stride-2 stem, stages of BasicBlocks (stride-2 between), GAP, linear.

    Submodules: ``stem`` (stride-2 conv-BN-ReLU), ``layer1`` ... ``layer{k}`` (each a
    ``nn.Sequential`` of :class:`BasicBlock`), ``pool``, ``fc``.

    Args:
        num_classes: number of output logits.
        widths: channels of each stage; stages after the first down-sample by 2.
        blocks_per_stage: BasicBlocks per stage.
    """

    def __init__(self, num_classes: int = 5, widths: Sequence[int] = (16, 32, 64, 96),
                 blocks_per_stage: int = 1) -> None:
        super().__init__()
        self.stem = nn.Sequential(_named(
            # Stride-2 stem (as in torchvision ResNets) keeps CPU training cheap.
            conv=nn.Conv2d(3, widths[0], 3, stride=2, padding=1, bias=False),
            bn=nn.BatchNorm2d(widths[0]), relu=nn.ReLU(),
        ))
        c_in = widths[0]
        for i, c in enumerate(widths):
            stride = 1 if i == 0 else 2
            blocks = [BasicBlock(c_in if j == 0 else c, c, stride if j == 0 else 1)
                      for j in range(blocks_per_stage)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            c_in = c
        self.num_stages = len(widths)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(self.flatten(self.pool(x)))


def _named(**modules: nn.Module):
    from collections import OrderedDict
    return OrderedDict(modules)


def build_model(arch: str, num_classes: int = 5) -> nn.Module:
    """Build an untrained reference model, ``arch`` in ``("vgg", "resnet")``.

    Examples::

        >>> import torch
        >>> from captum_global.world import build_model
        >>> model = build_model("resnet")
        >>> model(torch.rand(2, 3, 64, 64)).shape
        torch.Size([2, 5])
    """
    if arch == "vgg":
        return SmallVGG(num_classes)
    if arch == "resnet":
        return SmallResNet(num_classes)
    raise InvalidArgumentError(f"arch must be one of {ARCHS}, got {arch!r}")


def torchvision_model(name: str, num_classes: int = 1000) -> nn.Module:
    """A torchvision classifier with RANDOM weights, in eval mode.

    For shape, speed and API tests only: no weights are downloaded.
    ``name`` in :data:`TORCHVISION_NAMES`.
    """
    import torchvision.models as tvm

    if name not in TORCHVISION_NAMES:
        raise InvalidArgumentError(f"name must be one of {TORCHVISION_NAMES}, got {name!r}")
    model = getattr(tvm, name)(weights=None, num_classes=num_classes)
    return model.eval()
