"""Small models and helpers shared by the SISE tests."""
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Net", "TwoInputNet", "TutorialNet", "images", "Counter", "no_hooks"]


class Net(nn.Module):
    """Two conv blocks (MaxPool between) + GAP head: 4 + 6 maps at 16 px."""

    def __init__(self, classes=3):
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.block2 = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(6, classes)

    def forward(self, x):
        return self.fc(self.block2(self.pool(self.block1(x))).mean(dim=(2, 3)))


class TwoInputNet(Net):
    def forward(self, a, b):
        return super().forward(a + b)


class TutorialNet(nn.Module):
    """PyTorch's CIFAR-10 tutorial net: one shared MaxPool, functional ReLU."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        return self.fc1(torch.flatten(x, 1))


def images(n=2, seed=1, dtype=torch.float32, size=16):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)).to(dtype)


class Counter:
    """Counts examples through the model (gradient pass + masked passes)."""

    def __init__(self, model):
        self.n = 0
        self.handle = model.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.n += args[0].shape[0]


def no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
