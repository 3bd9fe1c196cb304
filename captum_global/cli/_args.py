"""Argument types, the model options shared by ``scan`` and ``explain``, and output folders (private).

Every type raises ``argparse.ArgumentTypeError`` with a message that says
what is expected, so a user mistake ends in argparse's usage message and
exit status 2. A mistake found after parsing (a file that does not fit the
architecture, a folder that exists) raises :class:`UsageError` or the
library's ``InvalidArgumentError``, which ``main`` turns into the same, its
argument names replaced by the options the user typed (:func:`cli_message`).
"""
import argparse
import json
import math
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

__all__ = [
    "UsageError", "int_in", "positive_float", "name_list", "int_list", "float_list", "shape", "existing_file",
    "existing_path", "output_folder", "image_folder", "image_tensor_file", "json_object", "arch_name",
    "add_model_options", "model_from_args", "classes_with_gradients", "prepare_output", "cli_message",
    "LIBRARY_ARGUMENTS",
    "REFERENCE_INPUT", "REFERENCE_ARCHS",
]

REFERENCE_INPUT = (3, 64, 64)
# Sides above this make a trace allocate gigabytes for nothing: layer choice
# and the methods' settings do not change with the image size beyond it.
MAX_SIDE = 4096
MAX_CHANNELS = 64


class UsageError(Exception):
    """A user mistake found after parsing; ends with the usage message and exit status 2."""


def int_in(low: int, high: Optional[int] = None, why: str = "") -> Callable[[str], int]:
    """An argparse type: an int in ``[low, high]``; ``why`` explains the bound in the message."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}" + (f" ({why})" if why else ""))
        return value
    parse.__name__ = "int"
    return parse


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _items(text: str) -> List[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _strict_items(text: str, expected: str) -> List[str]:
    """The comma-separated values of ``text``; an empty one (``0.5,,0.5``) is a mistake, not a skip."""
    values = [v.strip() for v in text.split(",")]
    if not text.strip() or any(not v for v in values):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r} (an empty value between commas)")
    return values


def name_list(choices: Sequence[str]) -> Callable[[str], List[str]]:
    """An argparse type: comma-separated names, each one of ``choices``, at least one."""
    def parse(text: str) -> List[str]:
        names = _items(text)
        unknown = [n for n in names if n not in choices]
        if not names or unknown:
            raise argparse.ArgumentTypeError(f"expected comma-separated names from {list(choices)}, "
                                             f"got {unknown or text!r}")
        return names
    parse.__name__ = "names"
    return parse


def int_list(text: str) -> List[int]:
    """An argparse type: comma-separated distinct ints >= 0."""
    values = [int_in(0)(v) for v in _strict_items(text, "distinct comma-separated class indices")]
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"expected distinct comma-separated class indices, got {text!r}")
    return values


def float_list(text: str) -> List[float]:
    """An argparse type: comma-separated finite numbers."""
    return [_finite(v) for v in _strict_items(text, "comma-separated numbers")]


def shape(text: str) -> Tuple[int, int, int]:
    """An argparse type: ``C,H,W`` with sane sizes."""
    parts = _items(text)
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected C,H,W such as 3,224,224, got {text!r}")
    c = int_in(1, MAX_CHANNELS)(parts[0])
    h, w = (int_in(1, MAX_SIDE, "larger images are not what these methods are for")(p) for p in parts[1:])
    return c, h, w


def existing_file(text: str) -> Path:
    """An argparse type: a file that exists."""
    path = Path(text)
    if path.is_dir():  # a model's snapshot folder, say: name the file in it
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; give the file in it")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    return path


def existing_path(text: str) -> Path:
    """An argparse type: a file or folder that exists."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file or folder: {text!r}")
    return path


def output_folder(text: str) -> Path:
    """An argparse type: a folder to write to (it may not exist yet): not empty, not a file, not under a file."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a folder path, got an empty value")
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a folder")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} cannot be made: {str(parent)!r} is a file, not a folder")
    return path


def json_object(text: str) -> Dict[str, Any]:
    """An argparse type: a JSON object (lists become tuples, as Captum wants window shapes)."""
    def non_finite(word: str) -> None:  # Python's json reads NaN and Infinity; no setting wants them
        raise argparse.ArgumentTypeError(f"must hold finite numbers, got {word} in {text!r}")

    def finite_float(word: str) -> float:
        value = float(word)
        if not math.isfinite(value):  # 1e999 overflows to infinity
            non_finite(word)
        return value

    try:
        value = json.loads(text, parse_constant=non_finite, parse_float=finite_float)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"n_steps\": 32}}': {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object {{...}}, got {text!r}")

    def tuples(v: Any) -> Any:
        return tuple(tuples(x) for x in v) if isinstance(v, list) else v
    return {k: tuples(v) for k, v in value.items()}


_ENTRY_POINT = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
# Reference architectures, usable as the architecture of a user's state dict too.
REFERENCE_ARCHS = {"vgg": "captum_global.world.models:SmallVGG", "resnet": "captum_global.world.models:SmallResNet"}


def arch_name(text: str) -> str:
    """An argparse type: ``vgg``/``resnet``, a torchvision classifier name, or ``module:callable``."""
    if text in REFERENCE_ARCHS or _ENTRY_POINT.match(text):
        return text
    from captum_global.loading import torchvision_classifiers

    names = torchvision_classifiers()
    if text not in names:
        import difflib

        close = difflib.get_close_matches(text, names, n=4)
        raise argparse.ArgumentTypeError(
            f"{text!r} is not 'vgg', 'resnet', a torchvision classification model"
            + (f" (did you mean {close}?)" if close else "") + " nor 'package.module:callable'")
    return text


def add_model_options(parser: argparse.ArgumentParser, default_variant: str) -> None:
    """The options that choose the model: a reference model, or a user's file."""
    group = parser.add_argument_group("model", "a reference model (default), or your own with --model")
    group.add_argument("--reference", metavar="NAME",
                       help="a model of the reference zoo by name, e.g. vgg_patch or resnet_sig_s1 (an unknown name "
                            "lists them all); the same as --arch/--variant for the six original models")
    group.add_argument("--model", type=existing_file, metavar="FILE",
                       help="your model: a TorchScript file, or a state dict (.safetensors, or a torch.save file "
                            "of tensors, read with weights_only=True) with --arch; never unpickled")
    group.add_argument("--arch", type=arch_name, default=None,
                       help="without --model: the reference architecture, vgg (default) or resnet. With a state "
                            "dict: a torchvision name (resnet18, ...), vgg/resnet (the reference architectures) "
                            "or package.module:callable returning the nn.Module")
    group.add_argument("--variant", choices=["clean", "patch", "blended"], default=None,
                       help=f"reference model variant (default {default_variant}); not with --model")
    group.add_argument("--num-classes", type=int_in(2, 100_000), metavar="K",
                       help="classes of your model (passed to the architecture, checked on its output)")
    group.add_argument("--input-shape", type=shape, metavar="C,H,W",
                       help="shape of one input of your model (required with --model), e.g. 3,224,224")
    group.add_argument("--mean", type=float_list, help="per-channel mean your model normalises with, "
                                                       "e.g. 0.485,0.456,0.406; inputs stay in [0, 1]")
    group.add_argument("--std", type=float_list, help="per-channel std your model normalises with")
    group.add_argument("--value-range", type=float_list, metavar="LOW,HIGH",
                       help="raw input range your model expects, e.g. 0,255 (inputs stay in [0, 1])")
    parser.set_defaults(default_variant=default_variant)


def reference_models() -> Dict[str, Tuple[Callable[[], Any], Any]]:
    """Shipped reference models by name: ``name -> (load, planted trigger or None)``.

    The reference zoo when this version has one, else the six original
    models ``{vgg,resnet}_{clean,patch,blended}``.
    """
    from captum_global import world

    zoo = getattr(world, "reference_zoo", None)
    if zoo is not None:
        return {entry.name: (entry.load, entry.trigger) for entry in zoo()}
    from captum_global.world import VARIANTS, load_reference_model, reference_trigger

    return {f"{arch}_{variant}": ((lambda a=arch, v=variant: load_reference_model(a, v)),
                                  None if variant == "clean" else reference_trigger(variant))
            for arch in REFERENCE_ARCHS for variant in VARIANTS}


def model_from_args(args: argparse.Namespace):
    """``(model, description, input_shape, trigger)``; ``trigger`` is the planted one of a reference model."""
    if args.model is None:
        user_only = [flag for flag, value in (("--num-classes", args.num_classes), ("--input-shape", args.input_shape),
                                             ("--mean", args.mean), ("--std", args.std),
                                             ("--value-range", args.value_range)) if value is not None]
        if user_only:
            raise UsageError(f"{', '.join(user_only)} describe your own model: give it with --model FILE")
        if args.reference is not None:
            if args.arch is not None or args.variant is not None:
                raise UsageError("--reference names the model: leave out --arch and --variant")
            name = args.reference
        else:
            arch = args.arch or "vgg"
            if arch not in REFERENCE_ARCHS:
                raise UsageError(f"--arch {arch} without --model: the reference architectures are vgg and resnet")
            name = f"{arch}_{args.variant or args.default_variant}"
        known = reference_models()
        if name not in known:
            raise UsageError(f"--reference {name!r} is not a shipped reference model; known: {sorted(known)}")
        load, trigger = known[name]
        return load().eval(), {"reference": name}, REFERENCE_INPUT, trigger
    if args.reference is not None:
        raise UsageError("--reference and --model both name a model: give one")
    if args.variant is not None:
        raise UsageError("--variant chooses a reference model; it does not apply to --model")
    if args.input_shape is None:
        raise UsageError("--input-shape C,H,W is required with --model (e.g. --input-shape 3,224,224)")
    if args.value_range is not None and len(args.value_range) != 2:
        raise UsageError(f"--value-range takes LOW,HIGH, got {args.value_range}")
    from captum_global.loading import load_model

    arch = REFERENCE_ARCHS.get(args.arch, args.arch)
    model = load_model(args.model, arch=arch, num_classes=args.num_classes, input_shape=args.input_shape,
                       mean=args.mean, std=args.std,
                       value_range=tuple(args.value_range) if args.value_range else None)
    description = {"file": args.model.name, "arch": args.arch, "num_classes": args.num_classes,
                   "input_shape": list(args.input_shape), "mean": args.mean, "std": args.std,
                   "value_range": args.value_range}
    return model, description, tuple(args.input_shape), None


def image_folder(path: Path, option: str, input_shape: Sequence[int], labels: Optional[Path] = None):
    """The images of a folder as the model takes them (resized, 1 or 3 channels), with ``labels`` if given."""
    from captum_global.loading import ImageFiles

    channels, height, width = input_shape
    if channels not in (1, 3):  # not the loader's "channels must be 1 or 3": the user gave --input-shape
        raise UsageError(f"{option} {str(path)!r} is a folder of images, which have 1 or 3 channels, but "
                         f"--input-shape {channels},{height},{width} takes {channels}: give a tensor file "
                         f"[N, {channels}, {height}, {width}] instead")
    return ImageFiles(path, size=(height, width), channels=channels, labels=labels)


def image_tensor_file(path: Path, option: str, input_shape: Sequence[int], limit: Optional[int] = None):
    """The ``[N, C, H, W]`` images of a tensor file (its first ``limit``), checked as the
    commands take them: at least one, the model's input shape, floating point, finite, in ``[0, 1]``."""
    import torch

    from captum_global.loading import IMAGE_EXTENSIONS, load_tensor

    if path.suffix.lower() in IMAGE_EXTENSIONS:
        raise UsageError(f"{option} {str(path)!r} is one image file; give the folder that holds the images, or a "
                         "tensor file [N, C, H, W]")
    images = load_tensor(path, option, dims=(4,))
    if not images.is_floating_point():  # not cast: 8-bit pixels would fail the range check misleadingly,
        # 0/1 integers or booleans would pass it, and a complex cast drops the imaginary part
        hint = "; divide 8-bit images by 255" if images.dtype == torch.uint8 else ""
        raise UsageError(f"{option} holds {str(images.dtype).replace('torch.', '')} values; it must hold "
                         f"floating-point images in [0, 1]{hint}")
    images = images[:limit].float()
    if images.shape[0] == 0:
        raise UsageError(f"{option} {str(path)!r} holds no images (shape {tuple(images.shape)})")
    if tuple(images.shape[1:]) != tuple(input_shape):
        raise UsageError(f"{option} holds images of shape {tuple(images.shape[1:])}, the model takes "
                         f"{tuple(input_shape)}")
    if not bool(torch.isfinite(images).all()):
        raise UsageError(f"{option} holds NaN or infinite values; it must hold finite images in [0, 1]")
    if images.min() < 0 or images.max() > 1:
        # --mean/--std/--value-range map [0, 1] to what the model expects
        raise UsageError(f"{option} must hold finite images in [0, 1], got values in "
                         f"[{images.min().item():.4g}, {images.max().item():.4g}]; give --mean/--std or "
                         "--value-range for a model that expects normalised inputs")
    return images


# A library error that reaches the command line names the library's argument (``std[0] must be > 0``,
# ``path: ...``, ``arch='x' given but ...``); each command maps those names to the option the user typed,
# here and only here, so no call site translates its own messages.
_MODEL_ARGUMENTS = {"path": "--model", "arch": "--arch", "num_classes": "--num-classes",
                    "input_shape": "--input-shape", "mean": "--mean", "std": "--std", "value_range": "--value-range"}
LIBRARY_ARGUMENTS: Dict[str, Dict[str, str]] = {
    "scan": {**_MODEL_ARGUMENTS, "images": "--clean", "clean_inputs": "--clean", "classes": "--classes",
             "n_steps": "--steps", "n_epochs": "--steps", "threshold": "--threshold", "seed": "--seed"},
    # "target: label 7 of example 1 ..." is a label of the --labels file (target="labels"), not --target
    "explain": {"target: label": "--labels: label", **_MODEL_ARGUMENTS, "method": "--method",
                "images": "--images", "data": "--images", "labels": "--labels", "target": "--target", "out": "--out",
                "layer": "--layer", "attribute_kwargs": "--method-args", "batch_size": "--batch-size",
                "seed": "--seed", "num_workers": "--workers"},
    "layers": {"arch": "model", "channels": "--channels"},
    "demo": {"archs": "--archs", "n_images": "--images", "methods": "--methods", "out": "--out"},
}
_QUOTED = re.compile(r"""((?<!\w)'(?:[^'\\]|\\.)*'|(?<!\w)"(?:[^"\\]|\\.)*")""")  # not "file's"
_LEADING = re.compile(r"^(?P<name>[A-Za-z_]\w*)(?P<index>\[[^\]]*\])?(?P<sep>[=: ]|$)")


def cli_message(message: str, command: str, args: Optional[argparse.Namespace] = None) -> str:
    """``message`` of a library error with the argument names of ``command``'s options (see ``LIBRARY_ARGUMENTS``).

    The argument the message starts with (``std[0] must``, ``path: ``, ``arch='x' given``) and every
    ``name=value`` outside quoted values become the option (``--std value 1 must``, ``--model: ``,
    ``--arch 'x' given``). A name whose option the message already states (``(--method-args on the
    command line)``) is left alone; a reference architecture the user named (``vgg``) is shown so, not as
    the entry point it stands for.
    """
    options = {name: option for name, option in LIBRARY_ARGUMENTS.get(command, {}).items()
               if not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", message)}
    typed = {v for v in vars(args).values() if isinstance(v, str)} if args is not None else set()
    for name in typed & set(REFERENCE_ARCHS):
        message = message.replace(repr(REFERENCE_ARCHS[name]), repr(name))
    phrase = next((key for key in options if not key.isidentifier() and message.startswith(key)), None)
    match = None if phrase else _LEADING.match(message)
    if phrase:
        message = options[phrase] + message[len(phrase):]
    elif match and match["name"] in options:
        option, index, sep = options[match["name"]], match["index"], match["sep"]
        if index:
            key = index[1:-1]
            option += f" value {int(key) + 1}" if key.isdigit() else f" entry {key}"
        message = option + (" " if sep == "=" else sep) + message[match.end():]
    names = [name for name in options if name.isidentifier()]
    if not names:
        return message
    mid = re.compile(r"(?<![\w.-])(" + "|".join(map(re.escape, names)) + r")=")
    return "".join(part if _QUOTED.fullmatch(part) else mid.sub(lambda m: options[m[1]] + " ", part)
                   for part in _QUOTED.split(message))


def classes_with_gradients(model, input_shape: Sequence[int], needed_by: str, layer: Optional[str] = None,
                           hint: str = "") -> int:
    """The model's number of classes, from a batch of 2 inputs run with gradients, as ``needed_by`` runs it.

    ``needed_by`` (``"the scan"``, ``"--method Saliency"``) takes the gradient of the scores with respect
    to the input or, given ``layer`` (a dotted module name), to that layer's output. A model that fails
    so, or whose scores do not depend on it through autograd (a forward under torch.no_grad(), a
    .detach()), is refused here, naming --model, before any work or folder: the command would end in a
    traceback, or (the scan) report triggers it could never optimise. ``hint`` ends the message.
    """
    import torch

    from captum_global.loading.tensors import _first_line

    probe = torch.full((2, *input_shape), 0.5, requires_grad=True)
    outputs: List[Any] = []

    def differentiable(module, inputs, output):  # as Captum reads a layer: its gradient from here on
        if isinstance(output, torch.Tensor) and output.is_floating_point():
            outputs.append(output.detach().requires_grad_())
            return outputs[-1]
        return None

    handle = None if layer is None else dict(model.named_modules())[layer].register_forward_hook(differentiable)
    try:
        with torch.enable_grad():
            scores = model(probe)
            wrt = outputs or [probe]
            grads = torch.autograd.grad(scores.sum(), wrt, allow_unused=True) if scores.requires_grad else [None]
    except Exception as error:  # the user's forward or its backward
        raise UsageError(f"--model: the model fails when {needed_by} runs it with gradients on inputs of shape "
                         f"{(2, *input_shape)}: {type(error).__name__}: {_first_line(error)}") from None
    finally:
        if handle is not None:
            handle.remove()
    if all(grad is None for grad in grads):
        what = "its input" if layer is None else f"layer {layer!r}"
        raise UsageError(f"--model: the model's scores do not depend on {what} through autograd (does its forward "
                         f"run under torch.no_grad() or detach a tensor?); {needed_by} needs their gradient{hint}")
    return int(scores.shape[-1])


def prepare_output(out: Path, force: bool, owned: Sequence[str]) -> None:
    """Create ``out``; refuse a non-empty one without ``--force``; with it, remove the files we write.

    Only files matching the ``owned`` glob patterns are removed, never
    anything else the folder holds. A folder that cannot be made or written
    to is refused (:class:`UsageError`) before anything is removed.
    """
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a file, not a folder")
    try:
        if out.is_dir() and any(out.iterdir()) and not force:
            raise UsageError(f"--out {str(out)!r} exists and is not empty; pass --force to overwrite it")
        out.mkdir(parents=True, exist_ok=True)
        # the files come after minutes of work: a folder we cannot write to is refused now, before
        # anything in it is removed
        with tempfile.TemporaryFile(dir=out):
            pass
        if force:
            for pattern in owned:
                for path in out.glob(pattern):
                    if path.is_file():
                        path.unlink()
    except OSError as error:  # a parent without write permission, a read-only or special file system
        reason = re.sub(r"^\[Errno \d+\] ", "", str(error))
        raise UsageError(f"--out {str(out)!r} cannot be made or written: {reason}") from None
