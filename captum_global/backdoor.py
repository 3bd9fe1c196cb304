"""Backdoor-trigger discovery with input-agnostic saliency.

Both global methods of this package claim to reveal planted triggers: a
backdoored model associates its target class with a small, fixed pattern,
so the class's input-agnostic map concentrates on that pattern wherever it
is. :func:`scan_for_backdoor` turns that into a scan a defender can run
without knowing where the trigger is: one map per class, a per-class
statistic, and Neural Cleanse's median-absolute-deviation anomaly index
over classes. When the trigger's region *is* known (the reference world's
planted triggers), the same scan also reports each map's energy on it.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from captum_global._maps import to_heatmap
from captum_global._model_state import preserved_model_state
from captum_global.attr import InputAgnosticSaliency
from captum_global.metrics import flag_anomalies, mad_anomaly_index, trigger_energy_share

__all__ = ["BackdoorScan", "scan_for_backdoor", "energy_concentration"]


def energy_concentration(maps: Tensor, top_fraction: float = 0.02) -> Tensor:
    """Share of each map's energy held by its ``top_fraction`` hottest pixels.

    A trigger is small and fixed, so a class map that has learnt it puts a
    large share of its energy on few pixels; a map of a natural class is
    spread over shapes that move around. Needs no knowledge of the trigger.
    """
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    heat = to_heatmap(maps, sign="absolute").flatten(1)
    k = max(1, int(round(top_fraction * heat.shape[1])))
    total = heat.sum(1).clamp(min=1e-12)
    return heat.topk(k, dim=1).values.sum(1) / total


@dataclass
class BackdoorScan:
    """Result of :func:`scan_for_backdoor`.

    Attributes:
        classes: the scanned class indices.
        maps: ``[num_classes, C, H, W]`` input-agnostic map per class.
        statistic: ``[num_classes]`` the trigger-agnostic statistic
            (:func:`energy_concentration` of each map).
        anomaly_index: ``[num_classes]`` MAD anomaly index of ``statistic``.
        flagged: classes whose statistic is an anomaly above the median.
        trigger_energy: ``[num_classes]`` share of each map's energy on the
            known trigger region, when ``trigger_mask`` was given.
        num_evaluations: model evaluations the scan spent.
    """

    classes: List[int]
    maps: Tensor
    statistic: Tensor
    anomaly_index: Tensor
    flagged: List[int]
    trigger_energy: Optional[Tensor] = None
    num_evaluations: int = 0
    settings: Dict = field(default_factory=dict)

    @property
    def suspect(self) -> int:
        """The class with the most concentrated map (flagged or not)."""
        return self.classes[int(self.statistic.argmax())]

    def as_dict(self) -> Dict:
        out = {
            "classes": self.classes, "statistic": self.statistic.tolist(),
            "anomaly_index": self.anomaly_index.tolist(), "flagged": self.flagged, "suspect": self.suspect,
            "num_evaluations": self.num_evaluations, "settings": self.settings,
        }
        if self.trigger_energy is not None:
            out["trigger_energy"] = self.trigger_energy.tolist()
        return out


def scan_for_backdoor(
    model: nn.Module,
    example_input: Tensor,
    classes: Optional[Sequence[int]] = None,
    distribution: Union[str, Tensor] = "uniform",
    trigger_mask: Optional[Tensor] = None,
    threshold: float = 2.0,
    top_fraction: float = 0.02,
    seed: int = 0,
    show_progress: bool = False,
    **saliency_kwargs,
) -> BackdoorScan:
    """Scan a classifier for a planted trigger with input-agnostic saliency.

    Args:
        model: the classifier to scan.
        example_input: one input ``[1, C, H, W]`` (or a batch); only its
            shape, dtype and device are used.
        classes: class indices to scan; default all classes of the model.
        distribution: what the class perturbations are optimised over:
            ``"uniform"``/``"gaussian"`` noise, or a tensor of clean inputs
            (what a defender with a little clean data would use).
        trigger_mask: optional ``[H, W]`` bool region of a known trigger, to
            also report each map's energy on it (evaluation only).
        threshold: anomaly-index cut-off (2, as Neural Cleanse).
        top_fraction: pixel share used by :func:`energy_concentration`.
        seed: seed of the saliency optimisation.
        show_progress: progress bar of the optimisation.
        **saliency_kwargs: passed to
            :meth:`InputAgnosticSaliency.attribute` (``n_steps``,
            ``samples_per_step``, ``radius``, ...).

    Returns:
        BackdoorScan.

    Examples::

        >>> import torch
        >>> from captum_global.backdoor import scan_for_backdoor
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
        ...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> scan = scan_for_backdoor(net, torch.zeros(1, 3, 16, 16), n_steps=3, samples_per_step=2)
        >>> scan.maps.shape, len(scan.statistic)
        (torch.Size([3, 3, 16, 16]), 3)
    """
    if classes is None:
        with preserved_model_state(model), torch.no_grad():
            num_classes = model(example_input[:1]).shape[-1]
        classes = list(range(num_classes))
    classes = [int(c) for c in classes]
    if len(classes) < 3:
        raise ValueError(f"classes must hold at least 3 classes for an anomaly index over classes, got {classes}")
    saliency = InputAgnosticSaliency(model)
    probe = example_input[:1].expand(len(classes), *example_input.shape[1:])
    maps = saliency.attribute(probe, target=classes, distribution=distribution, seed=seed,
                              show_progress=show_progress, **saliency_kwargs)
    statistic = energy_concentration(maps, top_fraction)
    flagged = flag_anomalies(statistic, threshold=threshold, direction="high")
    energy = None
    if trigger_mask is not None:
        energy = trigger_energy_share(maps, trigger_mask, sign="absolute")
    return BackdoorScan(
        classes=classes, maps=maps.detach(), statistic=statistic, anomaly_index=mad_anomaly_index(statistic),
        flagged=[c for c, f in zip(classes, flagged.tolist()) if f], trigger_energy=energy,
        num_evaluations=saliency.last_num_evaluations,
        settings={"distribution": distribution if isinstance(distribution, str) else "tensor of inputs",
                  "top_fraction": top_fraction, "seed": seed, **saliency_kwargs},
    )
