"""What :func:`~captum_global.explain.explain_dataset` accepts as data (private)."""
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, SequentialSampler
from torch.utils.data.dataloader import default_collate

from captum_global._checks import check_int
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError

__all__ = ["TensorItems", "as_dataset", "split_batch"]


class TensorItems(Dataset):
    """Rows of a tensor as a dataset (item ``i`` is ``tensor[i]``)."""

    def __init__(self, tensor: Tensor) -> None:
        self.tensor = tensor

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def __getitem__(self, index: int) -> Tensor:
        return self.tensor[index]


def as_dataset(data: Any, batch_size: Optional[int], image_size: Optional[Tuple[int, int]],
               num_workers: int) -> Tuple[Dataset, int, Callable, int, List[str]]:
    """``(dataset, shard size, collate_fn, num_workers, names)`` for what the caller passed."""
    from captum_global.loading import ImageFiles

    collate = default_collate
    if isinstance(data, (str, Path)):
        data = ImageFiles(data, size=image_size)
    elif isinstance(data, Tensor):
        if data.dim() < 2 or data.shape[0] == 0:
            raise InvalidArgumentError(f"data must be a batch [N, ...] with N > 0, got shape {tuple(data.shape)}")
        data = TensorItems(data)
    elif isinstance(data, DataLoader):
        if not isinstance(data.sampler, SequentialSampler) or data.batch_size is None:
            raise InvalidArgumentError(
                "data: a DataLoader must read its dataset in order (no shuffle, no custom sampler) with a "
                "batch_size, so that each shard holds the same examples when the run is resumed; pass a "
                "loader with shuffle=False or the dataset itself"
            )
        if batch_size is None:
            batch_size = data.batch_size
        collate, num_workers = data.collate_fn, max(num_workers, data.num_workers)
        data = data.dataset
    if not (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        raise InvalidArgumentTypeError(f"data must be a Dataset, a DataLoader, a tensor or an image folder, "
                                       f"got {type(data).__name__}")
    if len(data) == 0:
        raise InvalidArgumentError("data holds no examples")
    shard_size = check_int(16 if batch_size is None else batch_size, "batch_size", minimum=1)
    names = getattr(data, "names", None)
    if not (isinstance(names, (list, tuple)) and len(names) == len(data)):
        names = [str(i) for i in range(len(data))]
    return data, shard_size, collate, check_int(num_workers, "num_workers", minimum=0), [str(n) for n in names]


def split_batch(batch: Any) -> Tuple[Tensor, Optional[Tensor]]:
    """``(inputs, labels or None)`` of one collated batch."""
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], Tensor):
        labels = batch[1] if len(batch) > 1 else None
        if labels is not None and not isinstance(labels, Tensor):
            labels = torch.as_tensor(labels)
        return batch[0], labels
    raise InvalidArgumentError(f"data items must be an input tensor or (input, label, ...), "
                               f"got a batch of type {type(batch).__name__}")


