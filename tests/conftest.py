"""Suite-wide settings.

One torch thread: on a shared two-core machine, two threads per process
contend with every other job and small autograd calls run tens of times
slower; one thread is both faster and steadier.
"""
import torch

torch.set_num_threads(1)
