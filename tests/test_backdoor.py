"""Backdoor scanning: the concentration statistic and the scan's contract."""
import pytest
import torch
from torch import nn

from captum_global.backdoor import energy_concentration, scan_for_backdoor


def _tiny(num_classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(24, num_classes))


def test_energy_concentration_by_hand():
    maps = torch.zeros(2, 1, 10, 10)
    maps[0, 0, 0, 0] = 3.0          # all energy on one pixel
    maps[0, 0, 5, 5] = 1.0
    maps[1] = 1.0                   # spread evenly
    share = energy_concentration(maps, top_fraction=0.01)   # top 1 pixel of 100
    assert torch.allclose(share, torch.tensor([0.75, 0.01]))
    with pytest.raises(ValueError, match="top_fraction"):
        energy_concentration(maps, top_fraction=0.0)


def test_concentration_ignores_scale_and_sign():
    maps = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(energy_concentration(maps), energy_concentration(-5.0 * maps))


def test_scan_contract_and_model_untouched():
    model = _tiny().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trigger = torch.zeros(12, 12, dtype=torch.bool)
    trigger[-3:, -3:] = True
    scan = scan_for_backdoor(model, torch.zeros(1, 3, 12, 12), trigger_mask=trigger, n_steps=3,
                             samples_per_step=2)
    assert scan.classes == [0, 1, 2, 3]
    assert scan.maps.shape == (4, 3, 12, 12)
    assert scan.statistic.shape == scan.anomaly_index.shape == scan.trigger_energy.shape == (4,)
    assert ((scan.trigger_energy >= 0) & (scan.trigger_energy <= 1)).all()
    assert scan.suspect == int(scan.statistic.argmax())
    assert set(scan.flagged) <= set(scan.classes)
    assert scan.num_evaluations > 0
    assert set(scan.as_dict()) >= {"statistic", "anomaly_index", "flagged", "suspect", "trigger_energy"}
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_scan_is_deterministic_under_seed():
    model = _tiny()
    a = scan_for_backdoor(model, torch.zeros(1, 3, 12, 12), n_steps=2, samples_per_step=2, seed=3)
    b = scan_for_backdoor(model, torch.zeros(1, 3, 12, 12), n_steps=2, samples_per_step=2, seed=3)
    assert torch.equal(a.maps, b.maps)


def test_scan_needs_three_classes():
    with pytest.raises(ValueError, match="classes"):
        scan_for_backdoor(_tiny(), torch.zeros(1, 3, 12, 12), classes=[0, 1], n_steps=1)
