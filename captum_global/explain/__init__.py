"""Explain a dataset, not one batch.

- :func:`explain_dataset`: run any attribution (ours or Captum's, by name or
  object) over a dataset, a DataLoader, a tensor or an image folder, write
  one safetensors shard per batch plus ``index.json``, resume after an
  interruption, and share the shards among ``torch.distributed`` processes.
- :func:`read_explanations` / :class:`Explanations`: read such a folder.
- :func:`method_names`: the attribution names accepted.

The on-disk format is described in :mod:`captum_global.explain.files`.
"""
from captum_global.explain._methods import method_names
from captum_global.explain.dataset import explain_dataset
from captum_global.explain.files import FORMAT, INDEX_FILE, Explanations, read_explanations, shard_file_name

__all__ = [
    "explain_dataset",
    "read_explanations",
    "Explanations",
    "method_names",
    "shard_file_name",
    "FORMAT",
    "INDEX_FILE",
]
