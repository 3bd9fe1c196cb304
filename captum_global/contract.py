"""The rules every attribution of this package follows, for authors of new ones.

A perturbation method written with these parts accepts and refuses what
SISE, RISE and the metrics do, with the same errors:

- **targets**: :func:`parse_target` reads every target format Captum
  accepts (int, negative int, tuple, list, list of tuples, tensor) and
  refuses the rest with an error naming ``target``; the returned
  :class:`TargetIndex` selects the target scores of a model output;
- **chunked scoring**: :func:`score_all` / :func:`iter_scores` run the model
  on many perturbed copies of a few inputs, a chunk at a time, routing each
  copy's target and per-example forward arguments
  (:func:`index_additional_args`), and raise
  :class:`~captum_global.errors.NonFiniteOutputError` on a non-finite score;
  the chunk size never changes the result;
- **seeding**: :func:`check_seed`, :func:`make_generator` (a private
  generator, so the global RNG is never consumed),
  :func:`seeded_global_rng` and :func:`preserved_global_rng` (for code that
  can only draw from the global RNG: it is restored afterwards, also on
  error);
- **argument checks**: ``check_*`` accept Python and NumPy numbers alike,
  never a bool where a number is meant, refuse NaN and infinity, and raise
  :class:`~captum_global.errors.InvalidArgumentError` naming the argument;
- **model state**: :func:`preserved_model_state` runs the model in eval
  mode (so BatchNorm statistics do not move) and restores every
  ``training`` and ``requires_grad`` flag on exit, also on error; a
  :class:`HookBag` removes the hooks it registered, also on error;
  :func:`find_module` resolves a layer given as a module or a dotted name.

Examples::

    >>> import torch
    >>> from captum_global.contract import parse_target, score_all
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> x = torch.rand(2, 4)
    >>> targets = parse_target(-1, num_examples=2)  # class 2 for both
    >>> def build(flat):  # copy i zeroes feature i % 4 of example i // 4
    ...     examples = flat // 4
    ...     copies = x[examples].clone()
    ...     copies[torch.arange(len(flat)), flat % 4] = 0
    ...     return copies, examples
    >>> scores = score_all(model, 8, build, targets, chunk_size=3)
    >>> scores.shape
    torch.Size([8])
    >>> torch.allclose(scores, score_all(model, 8, build, targets, chunk_size=8))
    True
"""
from captum_global._checks import (
    check_bool,
    check_choice,
    check_finite,
    check_finite_output,
    check_inputs,
    check_int,
    check_model_output,
    check_model_weights,
    check_module,
    check_number,
    check_tensor,
    check_value_range,
)
from captum_global._model_state import HookBag, find_module, preserved_model_state
from captum_global._scoring import ScoredChunk, index_additional_args, iter_scores, score_all
from captum_global._seeding import check_seed, make_generator, preserved_global_rng, seeded_global_rng
from captum_global._targets import TargetIndex, parse_target

__all__ = [
    "parse_target",
    "TargetIndex",
    "score_all",
    "iter_scores",
    "ScoredChunk",
    "index_additional_args",
    "check_seed",
    "make_generator",
    "seeded_global_rng",
    "preserved_global_rng",
    # argument checks, alphabetical
    "check_bool",
    "check_choice",
    "check_finite",
    "check_finite_output",
    "check_inputs",
    "check_int",
    "check_model_output",
    "check_model_weights",
    "check_module",
    "check_number",
    "check_tensor",
    "check_value_range",
    "preserved_model_state",
    "HookBag",
    "find_module",
]
