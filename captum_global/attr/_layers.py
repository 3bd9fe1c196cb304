"""Find the block outputs of a CNN: one layer per spatial resolution.

Multi-layer methods such as SISE read the model at the end of every
convolutional block. We find those layers from one traced forward pass (no
name patterns, so it works on models we have never seen):

1. Hooks record, for every submodule call, when it starts and ends, its input
   and output tensors and their spatial size ``(h, w)``.
2. A *down-sampling* is a call whose spatial output is smaller than its
   spatial input by a stride (a side shrinks to 2/3 or less, so the border a
   valid convolution trims is not one) and that contains no smaller such call (a max-pool, a
   strided convolution, or a block using ``F.max_pool2d`` inside). A
   down-sampling no module made (``F.max_pool2d`` in the model's own
   ``forward``) shows as a call reading a spatial input that no module
   returned, smaller than the last spatial output before it.
3. The layer picked for a down-sampling is the outermost module that returned
   the tensor it reads (so ``layer1`` rather than ``layer1.1.relu`` in a
   ResNet; for in-place activations the module that returned it last).
4. Stage hoisting: when the down-sampling sits inside a larger module that
   takes its input at the same resolution and does only point-wise work there
   before down-sampling (1x1 convolutions, norms, activations: an
   EfficientNet/MobileNet expansion, a ConvNeXt down-sampling LayerNorm, a
   DenseNet transition), we pick the module feeding that stage instead: the
   block output, not the first step of the next stage.
   A reduction block with parallel branches, one down-sampling right at its
   input (Inception's ``Mixed_6a``), ends the block at its input for all its
   branches.
5. The last block: the outermost module returning the last spatial output
   (``> 1x1``), if a convolution runs at that resolution (so VGG's pooled
   ``7x7`` maps, which no convolution produces, are not a block); hoisted as
   in 4 when it is the point-wise start of a stage whose strided convolution
   goes down to ``1x1`` (a MobileNet on 32 px inputs).

Down-samplings that read the model input itself have no layer to pick.
Outputs ``1x1`` (global pooling, squeeze-and-excitation branches) and 4-D
tensors that are not ``[N, C, h, w]`` images (ConvNeXt's channels-last
permutes) are ignored: a spatial output has ``h <= H``, ``w <= W`` and about
the input's aspect ratio.
"""
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import torch
from torch import Tensor, nn

from captum_global._compat import format_additional_forward_args, format_inputs
from captum_global._model_state import HookBag, preserved_model_state
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError

__all__ = ["find_block_outputs", "select_sise_layers", "BlockOutput", "eager_module", "check_layer_map"]


def eager_module(model: nn.Module, argument: str = "model", method: str = "this method") -> nn.Module:
    """The module whose layers forward hooks can read.

    ``torch.compile`` returns a wrapper (``OptimizedModule``) around the
    original module (``_orig_mod``): hooks are read on that original module,
    which shares the wrapper's weights and submodules. TorchScript modules
    (``torch.jit.script`` / ``torch.jit.trace``) run their submodules inside a
    compiled graph, where forward hooks are refused (scripted) or never
    called (traced): they are refused with a message saying so.
    """
    if isinstance(model, torch.jit.ScriptModule):
        raise InvalidArgumentTypeError(
            f"{argument} is a TorchScript module ({type(model).__name__}): {method} reads the activations of "
            "its layers with forward hooks, and a TorchScript module runs its layers inside a compiled graph "
            "where hooks are refused (torch.jit.script) or never called (torch.jit.trace). Pass the eager "
            "nn.Module instead (the model before scripting or tracing, or rebuilt from its state dict); "
            "torch.compile'd models are supported"
        )
    original = getattr(model, "_orig_mod", None)
    if type(model).__name__ == "OptimizedModule" and isinstance(original, nn.Module):
        return original
    return model


@dataclass
class BlockOutput:
    """One selected layer: dotted name, module and its output shape ``[C, h, w]``."""

    name: str
    module: nn.Module
    shape: Tuple[int, ...]

    def __iter__(self):  # lets callers unpack ``name, module, shape``
        return iter((self.name, self.module, self.shape))


@dataclass
class _Call:
    name: str
    module: nn.Module
    start: int
    end: int = -1
    inp: Optional[Tensor] = None
    out: Optional[Tensor] = None
    in_hw: Optional[Tuple[int, int]] = None
    out_hw: Optional[Tuple[int, int]] = None
    in_version: Optional[int] = None
    passthrough: bool = False  # returned its input object untouched (an identity)

    def contains(self, other: "_Call") -> bool:
        return self.start < other.start and other.end < self.end


def _input_aspect(h: int, w: int, image_hw: Tuple[int, int]) -> bool:
    """Whether an ``h x w`` map has about the input's aspect ratio (up to the rounding of
    strided layers). A channels-last ``[N, h, w, C]`` tensor (a Swin or ConvNeXt token
    map) read as ``[N, C, h, w]`` gives ``(w, C)``, far from it."""
    H, W = image_hw
    return abs(h * W - w * H) <= max(H, W) * 2


def _spatial_hw(t: Any, image_hw: Tuple[int, int]) -> Optional[Tuple[int, int]]:
    if not isinstance(t, Tensor) or t.dim() != 4:
        return None
    h, w = int(t.shape[2]), int(t.shape[3])
    H, W = image_hw
    if h > H or w > W or h * w <= 1:
        return None
    if not _input_aspect(h, w, image_hw):
        return None
    return h, w


def check_layer_map(name: str, output: Any, image_hw: Tuple[int, int]) -> Tensor:
    """``output`` of the layer ``name`` if it is an ``[N, C, h, w]`` map of the ``H x W`` input.

    A 4-D tensor whose last two dimensions do not have about the input's aspect
    ratio is not such a map: most often a transformer's channels-last
    ``[N, h, w, C]`` tokens (Swin, a ConvNeXt block's inner permute), whose
    "channels" would be image rows. Maps larger than the input are accepted
    (a model that upsamples its input first).
    """
    if not isinstance(output, Tensor) or output.dim() != 4:
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise InvalidArgumentError(f"layers: {name!r} must return an [N, C, h, w] map, got {shape}")
    h, w = int(output.shape[2]), int(output.shape[3])
    if not _input_aspect(h, w, image_hw):
        raise InvalidArgumentError(
            f"layers: {name!r} returns shape {tuple(output.shape)}, which is not an [N, C, h, w] map of the "
            f"{image_hw[0]}x{image_hw[1]} input: its last two dimensions {(h, w)} do not have the input's aspect "
            "ratio (a channels-last [N, h, w, C] token map, as in Swin transformers?); pick a layer that returns "
            "[N, C, h, w] maps (select_sise_layers lists the automatic choice)"
        )
    return output


def _version(t: Optional[Tensor]) -> Optional[int]:
    """The version counter of ``t`` (None for no tensor, or an inference tensor, which has none)."""
    if t is None or t.is_inference():
        return None
    return t._version


def _first_tensor(args: Any) -> Optional[Tensor]:
    for a in args if isinstance(args, (tuple, list)) else (args,):
        if isinstance(a, Tensor):
            return a
    return None


def _is_spatial_conv(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.conv._ConvNd) and any(k > 1 for k in m.kernel_size)


def _trace(model: nn.Module, inputs: Tuple[Tensor, ...], args: Optional[Tuple]) -> List[_Call]:
    image_hw = (int(inputs[0].shape[-2]), int(inputs[0].shape[-1]))
    calls: List[_Call] = []
    clock = [0]
    stack: List[_Call] = []

    def pre(name):
        def hook(module, args_):
            clock[0] += 1
            call = _Call(name, module, clock[0])
            call.inp = _first_tensor(args_)
            call.in_version = _version(call.inp)
            call.in_hw = _spatial_hw(call.inp, image_hw)
            stack.append(call)

        return hook

    def post(module, args_, output):
        clock[0] += 1
        call = stack.pop()
        call.end = clock[0]
        call.out = output if isinstance(output, Tensor) else None
        # an in-place op returns its input too, but bumps its version counter
        call.passthrough = call.out is not None and call.out is call.inp and _version(call.out) == call.in_version
        call.out_hw = _spatial_hw(output, image_hw)
        calls.append(call)

    # outside inference mode: its tensors have no version counter, which tells in-place ops apart
    with HookBag() as bag, preserved_model_state(model), torch.inference_mode(False), torch.no_grad():
        for name, m in model.named_modules():
            if m is model:
                continue
            bag.add(m.register_forward_pre_hook(pre(name)))
            bag.add(m.register_forward_hook(post))
        # copies: a model that changes its input in place must not change the caller's tensor
        model(*(t.clone() if isinstance(t, Tensor) else t for t in inputs), *(args or ()))
    return calls


def _shared(calls: List[_Call], module: nn.Module) -> bool:
    """Whether ``module`` runs more than once per forward pass (it cannot be hooked for one block)."""
    return sum(c.module is module for c in calls) > 1


def _producer(calls: List[_Call], tensor: Tensor, before: Optional[int] = None) -> Optional[_Call]:
    """The call that returned ``tensor`` last (outermost container or in-place op).

    A module called more than once per forward pass (a shared activation,
    such as EfficientNet-Lite's one ``_swish``, or the tutorial nets' one
    ``pool``) cannot be hooked for one block only, so we step back to the
    call that produced its input: the pre-activation of that block. A tensor
    that no module returned was made by a functional op (``F.relu``): its
    producer is the module that ran last before it with an output of the
    same shape (the pre-activation), once a convolution has run. Identity-like
    calls that return their input unchanged are skipped in favour of the
    block that made the tensor. A shared module is never the answer.
    """
    found = [c for c in calls if c.out is tensor]
    # identity-like calls (a padding module set to Identity) hand the tensor
    # through: the block that made it is the real producer
    found = [c for c in found if not c.passthrough] or found
    if not found:
        return _latest_before(calls, tensor, before)
    pick = max(found, key=lambda c: c.end)
    if _shared(calls, pick.module):
        if pick.inp is not None and pick.inp is not tensor:
            return _producer(calls, pick.inp, pick.start)
        return None
    return pick


def _latest_before(calls: List[_Call], tensor: Tensor, before: Optional[int]) -> Optional[_Call]:
    """The last single-use call ending before ``before`` whose output has ``tensor``'s shape."""
    if before is None:
        return None
    first_conv = min((c.end for c in calls if isinstance(c.module, nn.modules.conv._ConvNd)), default=None)
    if first_conv is None:
        return None
    candidates = [
        c for c in calls
        if c.out is not None and c.end < before and c.end >= first_conv and not c.passthrough
        and tuple(c.out.shape) == tuple(tensor.shape) and not _shared(calls, c.module)
    ]
    return max(candidates, key=lambda c: c.end) if candidates else None


def find_block_outputs(
    model: nn.Module, example_input: Any, additional_forward_args: Any = None
) -> List[BlockOutput]:
    """The layer at the end of each convolutional block of ``model``.

    Runs one forward pass on ``example_input`` (a ``[N, C, H, W]`` tensor or a
    tuple of inputs; one example is enough) with hooks on every submodule; see
    the module docstring for the rule. The model's ``training`` and
    ``requires_grad`` flags are restored and no hook is left behind.

    Args:
        model: the network (an ``nn.Module``).
        example_input: input with the spatial size the model will be explained at.
        additional_forward_args: extra arguments to the forward call.

    Returns:
        list of :class:`BlockOutput` ``(name, module, shape)``, ordered from the
        input to the output; ``shape`` is the output's ``[C, h, w]``.

    A model made by ``torch.compile`` is traced through its original module (the
    names are the original module's); a TorchScript model is refused (its
    layers cannot be hooked).

    Raises:
        InvalidArgumentError: (a ``ValueError``) when the model has no spatial
            layer at all.
    """
    if not isinstance(model, nn.Module):
        raise InvalidArgumentTypeError(f"model must be an nn.Module to find its layers, got {type(model).__name__}")
    model = eager_module(model, "model", "finding the block outputs")
    inputs = format_inputs(example_input)
    if not isinstance(inputs[0], Tensor) or inputs[0].dim() != 4:
        raise InvalidArgumentError(
            "example_input must be an image batch [N, C, H, W], got "
            + (f"shape {tuple(inputs[0].shape)}" if isinstance(inputs[0], Tensor) else type(inputs[0]).__name__)
        )
    calls = _trace(model, inputs, format_additional_forward_args(additional_forward_args))
    drops = [c for c in calls if c.in_hw and c.out_hw and _down_samples(c.in_hw, c.out_hw)]
    minimal = [d for d in drops if not any(d.contains(o) for o in drops)]
    found: List[Tuple[_Call, _Call]] = []
    for d in sorted(minimal, key=lambda c: c.start):
        pick = _producer(calls, d.inp, d.start)
        # hoist out of stages that only do point-wise work before down-sampling
        stages = [
            s for s in calls
            if s.contains(d) and s.in_hw == d.in_hw and s.inp is not None
            and pick is not None and s.start < pick.start
        ]
        for s in sorted(stages, key=lambda c: c.start):
            inner = [c for c in calls if s.contains(c) and c.end < d.start]
            if not any(_is_spatial_conv(c.module) for c in inner):
                pick = _producer(calls, s.inp, s.start)
                break
        if pick is not None and pick.out_hw is not None:
            found.append((d, pick))
    picks = _parallel_branches(calls, found) + _functional_drops(calls)
    spatial = [c for c in calls if c.out_hw is not None]
    if spatial:
        last = max(spatial, key=lambda c: c.end)
        last = _producer(calls, last.out, last.end + 1)
        last = _hoist_last(calls, last)
        convs_there = last is not None and any(
            isinstance(c.module, nn.modules.conv._ConvNd) and c.out_hw == last.out_hw for c in calls
        )
        if convs_there:
            picks.append(last)
    seen, result = set(), []
    for p in sorted(picks, key=lambda c: c.end):
        if p.name in seen:
            continue
        seen.add(p.name)
        result.append(BlockOutput(p.name, p.module, tuple(int(s) for s in p.out.shape[1:])))
    if not result:
        raise InvalidArgumentError(_no_block_message(calls, (int(inputs[0].shape[-2]), int(inputs[0].shape[-1]))))
    return result


def _down_samples(in_hw: Tuple[int, int], out_hw: Tuple[int, int]) -> bool:
    """Whether a call goes from ``in_hw`` to ``out_hw`` by a stride (a side shrinks to 2/3 or less:
    a stride of 2 always does), not by the border a valid (unpadded) convolution trims."""
    return out_hw[0] * 3 <= in_hw[0] * 2 or out_hw[1] * 3 <= in_hw[1] * 2


def _parallel_branches(calls: List[_Call], found: List[Tuple[_Call, _Call]]) -> List[_Call]:
    """The picks of ``(down-sampling, pick)`` pairs, one per block for parallel branches.

    A reduction block with parallel branches (Inception's ``Mixed_6a``) down-samples
    in several branches at once: one branch right at the block's input (whose pick is
    the module feeding the block), others after some work inside their branch. The
    block output is what feeds the block; layers inside its branches are not.
    """
    picks = []
    for d, pick in found:
        stages = [s for s in calls if s.contains(d) and s.contains(pick) and s.in_hw == d.in_hw and s.inp is not None]
        for s in sorted(stages, key=lambda c: c.start):
            feeder = _producer(calls, s.inp, s.start)
            if feeder is not None and any(s.contains(d2) and p2 is feeder for d2, p2 in found):
                pick = feeder
                break
        picks.append(pick)
    return picks


def _hoist_last(calls: List[_Call], last: Optional[_Call]) -> Optional[_Call]:
    """Rule 4 for the last block: when the last spatial output is the point-wise start (a 1x1
    expansion) of a stage whose strided convolution then goes down to 1x1 (an inverted residual
    of a MobileNet or EfficientNet on CIFAR-sized inputs), the block output is what feeds that
    stage. A head that ends in global pooling is not such a stage (pooling is no convolution)."""
    if last is None or last.out_hw is None:
        return last

    def to_one_pixel(c: _Call, stage: _Call) -> bool:
        return (stage.contains(c) and c.start > last.end and _is_spatial_conv(c.module)
                and c.in_hw == last.out_hw and c.out is not None and c.out.dim() == 4
                and int(c.out.shape[2]) * int(c.out.shape[3]) == 1)

    stages = [
        s for s in calls
        if s.contains(last) and s.in_hw == last.out_hw and s.out_hw is None and s.inp is not None
        and any(to_one_pixel(c, s) for c in calls)
    ]
    for s in sorted(stages, key=lambda c: c.start):
        inner = [c for c in calls if s.contains(c) and c.end <= last.end]
        if not any(_is_spatial_conv(c.module) for c in inner):
            feeder = _producer(calls, s.inp, s.start)
            return feeder if feeder is not None and feeder.out_hw is not None else last
    return last


def _no_block_message(calls: List[_Call], image_hw: Tuple[int, int]) -> str:
    """Why no block output was found, and which modules could be named instead."""
    maps = []
    for c in calls:
        if c.out is None or c.out.dim() != 4 or c.passthrough or c.name in maps:
            continue
        h, w = int(c.out.shape[2]), int(c.out.shape[3])
        if h * w > 1 and _input_aspect(h, w, image_hw):
            maps.append(c.name)
    message = (
        "model has no spatial layer to pick: no convolutional block returns an [N, C, h, w] map larger than 1x1 "
        f"for this {image_hw[0]}x{image_hw[1]} example_input"
    )
    if not maps:
        return message + ", so there are no block outputs to explain with"
    return (
        message + " (a transformer keeps its tokens channels-last or flattened). Modules that do return "
        f"[N, C, h, w] maps: {maps[:8]}; name the ones to read with SISE(model, layers=[...])"
    )


def _functional_drops(calls: List[_Call]) -> List[_Call]:
    """Block outputs before down-samplings no module made (``F.max_pool2d`` in a
    top-level ``forward``, as in the PyTorch tutorials' LeNet): a call reads a
    spatial input that no module returned, smaller than the last spatial output
    before it; the block output is that output's producer."""
    picks = []
    for c in calls:
        if c.in_hw is None or any(o.out is c.inp for o in calls):
            continue
        before = [o for o in calls if o.out_hw is not None and o.end < c.start]
        if not before:
            continue  # functional work on the model input itself (normalisation, resizing)
        last = max(before, key=lambda o: o.end)
        if _down_samples(last.out_hw, c.in_hw):
            pick = _producer(calls, last.out, c.start)
            if pick is not None and pick.out_hw is not None:
                picks.append(pick)
    return picks


def select_sise_layers(
    model: nn.Module, example_input: Any, additional_forward_args: Any = None
) -> List[str]:
    """Dotted names of the layers SISE reads by default (one per block).

    Examples::

        >>> import torch, torchvision
        >>> from captum_global.attr import select_sise_layers
        >>> net = torchvision.models.resnet18()
        >>> select_sise_layers(net, torch.zeros(1, 3, 64, 64))
        ['relu', 'layer1', 'layer2', 'layer3', 'layer4']
    """
    return [b.name for b in find_block_outputs(model, example_input, additional_forward_args)]
