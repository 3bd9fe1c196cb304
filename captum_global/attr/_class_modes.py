"""The modes of a class, as the model sees them (private helper of class-wise synthesis).

With ``match="clusters"``, each class's real examples are split into as
many groups as there are synthetic images per class, and each synthetic
image imitates its group instead of the whole class. The groups are
k-means clusters (cosine) of the *features the model's last linear layer
reads* (its penultimate activations), at the model's own weights: the
examples the model treats alike share a cluster. A class made of two
populations, such as the images of another class relabelled into it
(noisy labels) or triggered images of other classes (a backdoor), then
gets its own synthetic image for each.

Features are read in one forward pass over the data (held in memory: one
vector per example, gathered across processes under torch.distributed);
k-means runs identically on every process (seeded), so N processes agree.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from captum_global._checks import check_model_output
from captum_global._model_state import HookBag
from captum_global.attr._checkpoints import own_weights
from captum_global.attr._gradient_matching import first_batch, make_loader, stream_class_features, validate_classes
from captum_global.attr.classwise_types import WeightPoint
from captum_global.errors import InvalidArgumentError

__all__ = ["cluster_assigner", "fit_centroids", "nearest", "penultimate"]


def _last_linear(model: nn.Module, point: WeightPoint, example: Tensor):
    """The last ``nn.Linear`` the forward pass calls (None if there is none)."""
    called: List[nn.Module] = []
    with HookBag() as bag, torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                bag.add(module.register_forward_pre_hook(lambda mod, args: called.append(mod)))
        functional_call(model, point, (example.clone(),))
    return called[-1] if called else None


def penultimate(model: nn.Module, point: WeightPoint, example: Tensor) -> Callable[[Tensor], Tensor]:
    """A function from inputs to the features the last linear layer reads
    (flattened; the logits when the model has no linear layer)."""
    layer = _last_linear(model, point, example[:1])

    @torch.no_grad()
    def features(x: Tensor) -> Tensor:
        if layer is None:
            return check_model_output(functional_call(model, point, (x.clone(),)), "model").flatten(1)
        seen: List[Tensor] = []
        with HookBag() as bag:
            bag.add(layer.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach())))
            functional_call(model, point, (x.clone(),))
        return seen[-1].flatten(1)

    return features


def _normalised(x: Tensor) -> Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def fit_centroids(features: Dict[int, Tensor], k: int, classes: Sequence[int], seed: int,
                  iterations: int = 50) -> Dict[int, Tensor]:
    """``{class: [k, D]}`` k-means centroids (cosine: features normalised),
    k-means++ seeding from a private generator; an emptied cluster is moved
    to the example farthest from its centroid."""
    centroids = {}
    for c in classes:
        x = _normalised(features[c].double())
        if len(x) < k:
            raise InvalidArgumentError(
                f"match='clusters' splits each class into images_per_class={k} groups, but class {c} "
                f"has only {len(x)} examples")
        gen = torch.Generator().manual_seed(seed + 104_729 * int(c))
        chosen = [int(torch.randint(len(x), (1,), generator=gen))]
        for _ in range(1, k):
            d2 = torch.cdist(x, x[chosen]).min(1).values ** 2
            chosen.append(int(torch.multinomial(d2 / d2.sum(), 1, generator=gen)) if d2.sum() > 0 else len(chosen))
        centre = x[chosen].clone()
        for _ in range(iterations):
            dist = torch.cdist(x, centre)
            assign = dist.argmin(1)
            new = centre.clone()
            for j in range(k):
                members = assign == j
                if members.any():
                    new[j] = x[members].mean(0)
                else:
                    new[j] = x[dist.min(1).values.argmax()]
            if torch.equal(new, centre):
                break
            centre = new
        centroids[c] = _normalised(centre)
    return centroids


def nearest(features: Tensor, centroids: Tensor) -> Tensor:
    """Cluster id of each feature vector."""
    return torch.cdist(_normalised(features.double()), centroids).argmin(1)


def cluster_assigner(model: nn.Module, data, classes, k: int, batch_size: int, seed: int):
    """``assign(x, c)``: the group of each class-c example, from k-means of
    the model's penultimate features over ``data`` (one forward pass)."""
    own = own_weights(model)
    example = first_batch(make_loader(data, batch_size)[0])
    weight = next(model.parameters())
    example = example.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        num_outputs = check_model_output(functional_call(model, own, (example[:1].clone(),)), "model").shape[-1]
    classes = tuple(range(num_outputs)) if classes is None else tuple(classes)
    validate_classes(classes, num_outputs)
    features = penultimate(model, own, example)
    found = stream_class_features(model, data, classes, features, batch_size, weight.dtype, weight.device,
                                  num_outputs)
    centroids = fit_centroids(found, k, classes, seed)
    return lambda x, c: nearest(features(x).cpu(), centroids[c])
