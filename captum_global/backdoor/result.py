"""The result of a backdoor scan: per-class statistics, flags and suspected triggers."""
import copy
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
from torch import Tensor

__all__ = ["BackdoorScan"]


def _floats(values: Optional[Tensor], digits: int = 6) -> Optional[List[float]]:
    if values is None:
        return None
    return [round(float(v), digits) for v in values.reshape(-1).tolist()]


@dataclass
class BackdoorScan:
    """What a backdoor scan found, class by class.

    Returned by :func:`~captum_global.backdoor.scan_for_backdoor` and
    :func:`~captum_global.backdoor.neural_cleanse`. Row ``k`` of every
    per-class tensor belongs to ``classes[k]``.

    Attributes:
        method: ``"input-agnostic scan"`` or ``"neural cleanse"``.
        classes: the scanned class indices.
        statistics: name -> ``[K]`` per-class statistic the decision is
            built from (e.g. ``"mask_l1"``: the smallest mask that flips
            the inputs to the class); low means easy to reach.
        anomaly_index: ``[K]`` the MAD anomaly index of each class (for a
            combined scan, the largest of its statistics' indices on the
            low side; 0 for classes on the high side).
        flagged: the classes whose index exceeds ``threshold`` on the low
            side (too easy to reach): the suspected backdoor targets.
        threshold: the anomaly-index cut-off used.
        maps: ``[K, C, H, W]`` a picture per class (the scan's class map;
            for Neural Cleanse the reversed mask broadcast to the channels).
        trigger_masks: ``[K, H, W]`` the suspected trigger's mask per class,
            in ``[0, 1]`` (where it is stamped).
        trigger_patterns: ``[K, C, H, W]`` the suspected trigger's pattern
            per class (what is stamped there), in the input's value range.
        attack_success: ``[K]`` share of the judging inputs that the
            class's suspected trigger flips to the class (the clean inputs,
            or the noise images without them; for ``scan_for_backdoor``
            with ``held_out`` > 0 only the held-out share of them).
        localisation: name -> ``[K]`` agreement of each suspected trigger
            with the planted one, when ``trigger_mask`` was given
            (``"energy_share"``: share of the mask's mass on the region;
            ``"iou"``: IoU of the mask's top pixels with the region).
        num_evaluations: examples run through the model (forward and
            backward count as one), all classes together.
        seconds: wall time of the scan.
        settings: the options used (JSON-serialisable).
    """

    method: str
    classes: List[int]
    statistics: Dict[str, Tensor]
    anomaly_index: Tensor
    flagged: List[int]
    threshold: float
    maps: Tensor
    trigger_masks: Tensor
    trigger_patterns: Tensor
    attack_success: Tensor
    localisation: Dict[str, Tensor] = field(default_factory=dict)
    num_evaluations: int = 0
    seconds: float = 0.0
    settings: Dict[str, Any] = field(default_factory=dict)

    @property
    def suspect(self) -> int:
        """The class with the largest anomaly index (the best candidate, flagged or not)."""
        return self.classes[int(torch.argmax(self.anomaly_index))]

    @property
    def is_backdoored(self) -> bool:
        """Whether any class was flagged."""
        return bool(self.flagged)

    def as_dict(self) -> Dict[str, Any]:
        """JSON-serialisable summary (no tensors; masks and patterns are left out)."""
        return {
            "method": self.method,
            "classes": list(self.classes),
            "statistics": {k: _floats(v) for k, v in self.statistics.items()},
            "anomaly_index": _floats(self.anomaly_index, 4),
            "flagged": list(self.flagged),
            "suspect": self.suspect,
            "threshold": self.threshold,
            "attack_success": _floats(self.attack_success, 4),
            "localisation": {k: _floats(v, 4) for k, v in self.localisation.items()},
            "num_evaluations": int(self.num_evaluations),
            "seconds": round(float(self.seconds), 3),
            "settings": copy.deepcopy(self.settings),  # a copy: editing the summary leaves the result alone
        }

    def summary(self) -> str:
        """A per-class text table: statistics, anomaly index, success, localisation, flag."""
        names = list(self.statistics) + ["anomaly", "success"] + list(self.localisation)
        header = ["class"] + names + ["flag"]
        rows = []
        for k, c in enumerate(self.classes):
            cells = [str(c)]
            cells += [f"{float(v[k]):.4g}" for v in self.statistics.values()]
            cells += [f"{float(self.anomaly_index[k]):.2f}", f"{float(self.attack_success[k]):.2f}"]
            cells += [f"{float(v[k]):.2f}" for v in self.localisation.values()]
            cells.append("FLAGGED" if c in self.flagged else "")
            rows.append(cells)
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        lines = [f"{self.method}: " + (f"flagged {self.flagged}" if self.flagged else "no class flagged")
                 + f" (threshold {self.threshold:g}; suspect {self.suspect})"]
        lines.append("  ".join(h.rjust(w) for h, w in zip(header, widths)).rstrip())
        lines += ["  ".join(cell.rjust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
        return "\n".join(lines)
