"""The reference zoo: every shipped reference model, its record and its trajectory.

:func:`reference_zoo` lists the models (clean ones from three seeds,
backdoored ones with patch, blended, SIG and colour-filter triggers, a
noisy-label and an adversarially trained one, on both architectures);
each :class:`ZooEntry` loads its model, its record and its training
trajectory. File format and training command: :mod:`captum_global.world.store`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch  # noqa: F401  (used by the doctests)
from torch import Tensor, nn

from captum_global.errors import InvalidArgumentError
from captum_global.world import store
from captum_global.world.data import CLASS_NAMES, ShapesDataset, WorldConfig
from captum_global.world.models import ARCHS, build_model
from captum_global.world.training import TRIGGER_KINDS, _training_data, settings_hash, training_settings
from captum_global.world.triggers import Trigger, make_trigger

WEIGHTS_DIR = store.WEIGHTS_DIR

# name suffix, kind, seed, settings overrides (per architecture). Seed-0
# entries without overrides are the six original models.
_BACKDOORS = {
    "vgg": [
        ("patch", 0, {}),
        ("blended", 0, {}),
        ("patch", 1, dict(target_class=3, poison_seed=1,
                          trigger=dict(kind="patch", size=4, location="top-left", seed=11))),
        ("sig", 2, dict(target_class=1, poison_seed=2,
                        trigger=dict(kind="sig", amplitude=0.08, frequency=6.0))),
        ("filter", 1, dict(target_class=4, poison_seed=1, trigger=dict(kind="filter", strength=1.0))),
    ],
    "resnet": [
        ("patch", 0, {}),
        ("blended", 0, {}),
        ("patch", 2, dict(target_class=2, poison_seed=2,
                          trigger=dict(kind="patch", size=8, location="bottom-left", seed=12))),
        ("sig", 1, dict(target_class=3, poison_seed=1,
                        trigger=dict(kind="sig", amplitude=0.08, frequency=4.0,
                                     orientation="horizontal"))),
        ("filter", 2, dict(target_class=1, poison_seed=2, trigger=dict(kind="filter", strength=1.0))),
    ],
}
# The ResNet learns slowly at first: adversarial training from the first
# step (even with the radius ramped over one epoch) kept it at chance, so it
# trains 4 clean epochs, ramps the radius over 2 and trains 4 at full radius.
_ADVERSARIAL = {"vgg": dict(epochs=5),
                "resnet": dict(epochs=10, adversarial=dict(clean_epochs=4, warmup_epochs=2))}


def _zoo_rows() -> List[Tuple[str, str, int, Dict[str, Any]]]:
    rows = []
    for arch in ARCHS:
        rows += [(arch, "clean", seed, {}) for seed in (0, 1, 2)]
        rows += [(arch, kind, seed, over) for kind, seed, over in _BACKDOORS[arch]]
        rows.append((arch, "noisy_label", 0, {}))
        rows.append((arch, "adversarial", 0, _ADVERSARIAL[arch]))
    return rows


def _describe(arch: str, kind: str, s: Dict[str, Any], trigger: Optional[Trigger]) -> str:
    net = {"vgg": "SmallVGG", "resnet": "SmallResNet"}[arch]
    head = f"{net}, {s['epochs']} epochs, seed {s['seed']}"
    if trigger is not None:
        t, p = s["target_class"], s["trigger"]
        what = trigger.describe()
        if p["kind"] == "sig":
            what = (f"SIG sinusoid over the whole image, {p.get('orientation', 'vertical')} stripes, "
                    f"{p['frequency']:g} periods, amplitude {p['amplitude']:g}")
        elif p["kind"] == "filter":
            colours = "sepia" if p.get("matrix") is None else "colour-matrix"
            what = f"{colours} filter over the whole image, strength {p['strength']:g}"
        return (f"{head}; backdoor: {what} -> class {t} ({CLASS_NAMES[t]}), "
                f"{s['poison_rate']:.0%} of the other classes' training images poisoned")
    if kind == "noisy_label":
        n = s["label_noise"]
        return (f"{head}; label noise: {n['share']:.0%} of the {CLASS_NAMES[n['source']]} "
                f"training labels flipped to {CLASS_NAMES[n['dest']]}")
    if kind == "adversarial":
        a = s["adversarial"]
        mix = "clean + PGD images" if a["with_clean"] else "PGD images"
        first = f"{a['clean_epochs']} clean epochs, then " if a.get("clean_epochs") else ""
        return (f"{head}; {first}adversarial training on {mix}, l_inf radius "
                f"{a['epsilon'] * 255:.0f}/255, {a['steps']} PGD steps")
    return f"{head}; clean training"


@dataclass(frozen=True)
class ZooEntry:
    """One model of the reference zoo.

    Attributes:
        name: unique name, ``"{arch}_{kind}"`` for seed 0, else ``"{arch}_{kind}_s{seed}"``.
        arch: ``"vgg"`` or ``"resnet"``.
        kind: ``"clean"``, ``"patch"``, ``"blended"``, ``"sig"``, ``"filter"``,
            ``"noisy_label"`` or ``"adversarial"``.
        seed: training seed (initialisation and batch order).
        target_class: the backdoor's target class (``None`` if no backdoor).
        trigger: the planted :class:`Trigger` (``None`` if no backdoor).
        twin: name of the clean model trained with the same seed (same
            initialisation and batch order), ``None`` for clean models.
        description: one line saying how the model was trained.
        settings: the full training settings (their hash names the files).
    """

    name: str
    arch: str
    kind: str
    seed: int
    target_class: Optional[int]
    trigger: Optional[Trigger] = field(repr=False)
    twin: Optional[str]
    description: str = field(repr=False)
    settings: Dict[str, Any] = field(repr=False, compare=False)

    @property
    def settings_hash(self) -> str:
        """Hash of :attr:`settings`; it names the model's files."""
        return settings_hash(self.settings)

    @property
    def shipped(self) -> bool:
        """Whether the package ships this model: weights, record and trajectory, current settings."""
        return store.valid_stem(WEIGHTS_DIR / self.name, self.settings_hash, trajectory=True)

    def record(self) -> Dict[str, Any]:
        """The JSON record: ``settings``, ``settings_hash``, ``clean_test_accuracy``,
        ``attack_success_rate`` (backdoors), ``label_noise_effect`` (noisy labels),
        ``robust_test_accuracy``, ``weights_sha256``, ``trajectory``, ``zoo``, ..."""
        return json.loads(store.json_path(store.locate(self)).read_text())

    def load(self) -> nn.Module:
        """The trained model, in eval mode.

        Examples::

            >>> model = zoo_entry("vgg_sig_s2").load()
            >>> model(torch.rand(1, 3, 64, 64)).shape
            torch.Size([1, 5])
        """
        model = build_model(self.arch, WorldConfig(**self.settings["config"]).num_classes)
        model.load_state_dict(store.load_weights(store.locate(self)))
        return model.eval()

    def trajectory(self) -> List[Dict[str, Tensor]]:
        """State dicts at the recorded epochs, in training order; the last is the final weights.

        The first point (the initialisation) is rebuilt from the seed, the
        points in between are stored in float16 and returned as float32, the
        last is exact. ``record()["trajectory"]["epochs"]`` says which epochs.

        Examples::

            >>> entry = zoo_entry("vgg_clean")
            >>> points = entry.trajectory()
            >>> len(points) == len(entry.record()["trajectory"]["epochs"])
            True
            >>> all(torch.equal(points[-1][k], v) for k, v in entry.load().state_dict().items())
            True
        """
        return store.read_trajectory(store.locate(self, trajectory=True), self.arch, self.settings)

    def training_data(self) -> ShapesDataset:
        """The exact data the model was trained on, rebuilt from its settings.

        The reference world's training split (``settings["config"]["n_train"]``
        images), poisoned with the model's trigger at its poison rate, or with
        its share of labels flipped, exactly as training saw it (same seeds).
        For methods that explain a model over its full training set, such as
        :class:`~captum_global.attr.ClassWiseSynthesis`.

        Examples::

            >>> entry = zoo_entry("vgg_patch")
            >>> data = entry.training_data()
            >>> len(data) == entry.settings["config"]["n_train"]
            True
            >>> poisoned = data.labels != zoo_entry("vgg_clean").training_data().labels
            >>> bool(poisoned.any()), bool((data.labels[poisoned] == entry.target_class).all())
            (True, True)
        """
        return _training_data(self.settings)[0]


def _build_zoo() -> Tuple[ZooEntry, ...]:
    entries = []
    for arch, kind, seed, over in _zoo_rows():
        s = training_settings(arch, kind, seed=seed, **over)
        name = f"{arch}_{kind}" + ("" if seed == 0 else f"_s{seed}")
        trigger = make_trigger(s["trigger"], s["config"]["image_size"]) if s["trigger"] else None
        twin = None if kind == "clean" else f"{arch}_clean" + ("" if seed == 0 else f"_s{seed}")
        entries.append(ZooEntry(
            name=name, arch=arch, kind=kind, seed=seed,
            target_class=s["target_class"] if kind in TRIGGER_KINDS else None,
            trigger=trigger, twin=twin, description=_describe(arch, kind, s, trigger),
            settings=s))
    return tuple(entries)


_ZOO: Optional[Tuple[ZooEntry, ...]] = None


def reference_zoo() -> List[ZooEntry]:
    """Every model of the reference zoo (see ``docs/use/world.md`` for the table).

    Examples::

        >>> zoo = reference_zoo()
        >>> sorted({e.kind for e in zoo})
        ['adversarial', 'blended', 'clean', 'filter', 'noisy_label', 'patch', 'sig']
        >>> [e.name for e in zoo if e.target_class == 3]
        ['vgg_patch_s1', 'resnet_sig_s1']
    """
    global _ZOO
    if _ZOO is None:
        _ZOO = _build_zoo()
    return list(_ZOO)


def zoo_entry(name: str) -> ZooEntry:
    """The zoo entry called ``name`` (e.g. ``"resnet_clean_s1"``)."""
    for entry in reference_zoo():
        if entry.name == name:
            return entry
    names = [e.name for e in reference_zoo()]
    raise InvalidArgumentError(f"name must be one of {names}, got {name!r}")


def _entry(arch: str, variant: str) -> ZooEntry:
    if arch not in ARCHS:
        raise InvalidArgumentError(f"arch must be one of {ARCHS}, got {arch!r}")
    names = [e.name[len(arch) + 1:] for e in reference_zoo() if e.arch == arch]
    if variant not in names:
        raise InvalidArgumentError(f"variant must be one of {names}, got {variant!r}")
    return zoo_entry(f"{arch}_{variant}")


def load_reference_model(arch: str = "vgg", variant: str = "clean") -> nn.Module:
    """Load the zoo model ``f"{arch}_{variant}"`` in eval mode (e.g. ``("vgg", "patch")``).

    Examples::

        >>> model = load_reference_model("resnet", "clean")
        >>> model(torch.rand(1, 3, 64, 64)).shape
        torch.Size([1, 5])
    """
    return _entry(arch, variant).load()


def load_reference_trajectory(arch: str = "vgg", variant: str = "clean") -> List[Dict[str, Tensor]]:
    """The training trajectory of ``f"{arch}_{variant}"``: see :meth:`ZooEntry.trajectory`."""
    return _entry(arch, variant).trajectory()


def reference_record(arch: str = "vgg", variant: str = "clean") -> Dict[str, Any]:
    """The JSON record (settings, hash, accuracies) of ``f"{arch}_{variant}"``."""
    return _entry(arch, variant).record()
