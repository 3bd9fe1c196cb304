"""Load a user's model, tensors and image folders safely (never unpickling arbitrary objects).

- :func:`load_model`: a TorchScript file, or a state dict (safetensors, or
  ``torch.load(weights_only=True)``) with an architecture: a torchvision
  classifier name or ``"package.module:callable"``; optional input
  normalisation (:class:`NormalizedModel`).
- :func:`build_architecture`, :func:`torchvision_classifiers`: the
  architectures ``load_model`` accepts.
- :func:`load_tensor`: one tensor from a safetensors or ``torch.save`` file.
- :class:`ImageFiles`: the images of a folder as a dataset, with optional labels.
"""
from captum_global.loading.images import IMAGE_EXTENSIONS, ImageFiles
from captum_global.loading.models import NormalizedModel, build_architecture, load_model, torchvision_classifiers
from captum_global.loading.tensors import load_tensor

__all__ = [
    "load_model",
    "build_architecture",
    "NormalizedModel",
    "torchvision_classifiers",
    "load_tensor",
    "ImageFiles",
    "IMAGE_EXTENSIONS",
]
