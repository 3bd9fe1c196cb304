"""Class-wise global explanation by imitating the training run.

For each class ``c`` a small set ``S_c`` of synthetic inputs is optimised so
that training on it does what training on *all* real examples of ``c`` did
to the explained model, along the training trajectory ``theta_1 .. theta_K``
(checkpoints saved during training; the model's own weights when none are
given). Two modes:

- ``"gradient"`` (dataset condensation by gradient matching, Zhao, Mopuri &
  Bilen, ICLR 2021, at every checkpoint)::

      minimise over S:  sum_k sum_c D( grad L(S_c, c; theta_k), grad L(X_c, c; theta_k) )

  The checkpoints are fixed, so the real side of every term is a constant,
  computed once in one streaming pass over the whole dataset (see
  :mod:`captum_global.attr._gradient_matching`).
- ``"trajectory"`` (matching training trajectories, Cazenavette et al.,
  CVPR 2022): a student starts at ``theta_t``, takes a few differentiable SGD
  steps on ``S`` (step sizes learnt), and the weights it reaches are matched
  to ``theta_{t+gap}``, normalised by the real step.

See the "Use" page ``docs/use/classwise.md`` for the options and figures.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch
from captum.attr import Attribution
from captum.log import log_usage
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from captum_global._checks import (
    check_bool,
    check_choice,
    check_finite_output,
    check_int,
    check_model_output,
    check_module,
    check_number,
    check_tensor,
)
from captum_global._model_state import autograd_on, preserved_model_state, unwrap_parallel
from captum_global._seeding import check_seed, cuda_devices, make_generator, seeded_global_rng
from captum_global.attr import _classwise_parts as parts
from captum_global.attr._batchnorm_stats import fill_population_statistics, untracked_batchnorms
from captum_global.attr._checkpoints import resolve_checkpoints
from captum_global.attr._class_modes import cluster_assigner
from captum_global.attr._image_parametrization import Parametrization
from captum_global.attr._gradient_matching import (
    DISTANCES,
    gradient_distance,
    make_loader,
    matched_parameter_names,
    split_batch,
    stream_class_gradients,
)
from captum_global.attr._trajectory_matching import trajectory_mode
from captum_global.attr.classwise_types import ClassGradients, ClassWiseResult
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError

__all__ = ["ClassWiseSynthesis", "GradientMatchingSynthesis", "ClassWiseResult", "ClassGradients", "gradient_distance"]


class ClassWiseSynthesis(Attribution):
    r"""Class-wise synthetic sets that teach what the real data taught the model.

    A *global* explanation: instead of attributing one input, it shows, per
    class, a few synthetic inputs that "teach" the model what the whole
    class taught it along its training run. Features the model learned for
    a class (including a backdoor trigger trained into it, or another
    class's shapes under noisy labels) appear in that class's set.

    Give the training trajectory (``checkpoints``: weights saved during
    training, in order) to imitate the run; with only the final weights the
    gradients are matched there, and the result's ``note`` says so.

    The real side runs over the full dataset in one streaming pass; under
    an initialised ``torch.distributed`` process group each process reads
    its shard and the sums are all-reduced, so N processes return what one
    returns. It is not a per-example attribution: it takes a dataset, not
    inputs, and returns a :class:`ClassWiseResult`. The model is never
    modified (gradients are taken on copies of the weights through
    :func:`torch.func.functional_call`, in eval mode), and the caller's
    global random state is left as found. A ``torch.compile``'d model is run
    as the module it wraps (compiled graphs take no second derivative); a
    TorchScript module is refused.

    Examples::

        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> from captum_global.attr import ClassWiseSynthesis
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        >>> data = TensorDataset(torch.rand(30, 3, 2, 2), torch.arange(30) % 3)
        >>> result = ClassWiseSynthesis(model).attribute(data, images_per_class=2, iterations=20)
        >>> result.images.shape
        torch.Size([3, 2, 3, 2, 2])
        >>> bool((result.final_distance < result.initial_distance).all())
        True
        >>> result.note[:24]
        'no trajectory was given:'
        >>> trajectory = [model.state_dict(), {k: v + 0.1 for k, v in model.state_dict().items()}]
        >>> r = ClassWiseSynthesis(model).attribute(data, mode="trajectory", checkpoints=trajectory,
        ...                                         iterations=5, student_steps=2)
        >>> r.mode, r.distances.shape, r.trajectory_distances.shape
        ('trajectory', torch.Size([2, 3]), torch.Size([1]))
    """

    def __init__(self, model: nn.Module) -> None:
        check_module(model, "model", "its weights are differentiated")
        # weights are differentiated through functional calls, which nn.DataParallel refuses: use its module
        model = unwrap_parallel(model)
        if isinstance(model, torch.jit.ScriptModule):
            raise InvalidArgumentTypeError(
                f"model is a TorchScript module ({type(model).__name__}): class-wise synthesis calls the model on "
                "copies of its weights (torch.func.functional_call), which TorchScript refuses. Pass the eager "
                "nn.Module (rebuilt from its state dict); torch.compile'd models are supported")
        # torch.compile's graphs refuse the double backward of gradient matching: run the module it wraps
        # (the same weights and submodules; checkpoints saved from the wrapper carry an _orig_mod. prefix)
        original = getattr(model, "_orig_mod", None)
        if type(model).__name__ == "OptimizedModule" and isinstance(original, nn.Module):
            model = unwrap_parallel(original)
        super().__init__(model)

    @classmethod
    def get_name(cls) -> str:
        return "Class-wise Synthesis"

    def real_class_gradients(
        self,
        data: Union[Dataset, DataLoader],
        classes: Optional[Sequence[int]] = None,
        parameters=None,
        checkpoints: Any = None,
        batch_size: int = 256,
        real_examples: int = 0,
        seed: Optional[int] = 0,
        show_progress: bool = False,
        clusters: int = 1,
    ) -> ClassGradients:
        """The fixed targets: one streaming pass over ``data``.

        Pass the result as ``data`` to :meth:`attribute` to run several
        syntheses (different ``images_per_class``, ``iterations``, modes) on
        one pass. ``real_examples`` real inputs per class are kept (a seeded
        random choice) for ``init="real"`` and figures. ``clusters`` > 1
        also splits each class into that many groups (``match="clusters"``
        of :meth:`attribute`; one more forward pass over the data). Other
        arguments as in :meth:`attribute`.
        """
        model = self.forward_func
        parts.check_model(model)
        parts.check_data(data)
        batch_size = check_int(batch_size, "batch_size", minimum=1)
        real_examples = check_int(real_examples, "real_examples", minimum=0)
        clusters = check_int(clusters, "clusters", minimum=1)
        check_bool(show_progress, "show_progress")
        seed = check_seed(seed)
        classes = parts.format_classes(classes)
        names = matched_parameter_names(model, parameters)
        with autograd_on(), preserved_model_state(model, eval_mode=True), \
                seeded_global_rng(seed, cuda_devices(model)):
            points, labels, given = resolve_checkpoints(model, checkpoints)
            if given and any(untracked_batchnorms(model, p) for p in points):
                device, dtype = points[0][names[0]].device, points[0][names[0]].dtype

                def inputs():
                    seen = 0
                    for batch in make_loader(data, batch_size)[0]:
                        x = split_batch(batch, seen)[0]
                        seen += len(x)
                        yield x.to(device=device, dtype=dtype)

                points = [fill_population_statistics(model, p, inputs) if untracked_batchnorms(model, p) else p
                          for p in points]
            assign = None
            if clusters > 1:
                assign = cluster_assigner(model, data, classes, clusters, batch_size, seed)
            bar = tqdm(desc="real gradients", unit="batch") if parts.show(show_progress) else None
            try:
                return stream_class_gradients(model, data, classes, names, points, batch_size,
                                              real_examples, seed, bar, labels, given, assign, clusters)
            finally:
                if bar is not None:
                    bar.close()

    def matching_distance(self, images: Tensor, real_gradients: ClassGradients,
                          distance: str = "cosine", per_checkpoint: bool = False) -> Tensor:
        """Gradient-matching distance of ``images`` (``[C, n, *input_shape]``,
        row i for ``real_gradients.classes[i]``): ``[C]`` summed over the
        checkpoints, or ``[K, C]`` per checkpoint with ``per_checkpoint``."""
        model = self.forward_func
        if not isinstance(real_gradients, ClassGradients):
            raise InvalidArgumentTypeError(
                f"real_gradients must be the ClassGradients of real_class_gradients(), got {type(real_gradients).__name__}")
        check_choice(distance, "distance", DISTANCES)
        per_checkpoint = check_bool(per_checkpoint, "per_checkpoint")
        images = check_tensor(images, "images", floating=True)
        shape = tuple(real_gradients.input_shape)
        if images.dim() < 2 or images.shape[0] != len(real_gradients.classes) or tuple(images.shape[2:]) != shape:
            raise InvalidArgumentError(
                f"images must have shape [{len(real_gradients.classes)}, n, *input_shape] with input_shape "
                f"{shape} (one row per class of real_gradients, inputs shaped like the data), got {tuple(images.shape)}"
            )
        if real_gradients.cluster_counts is not None and images.shape[1] != real_gradients.cluster_counts.shape[1]:
            raise InvalidArgumentError(
                f"images must hold one input per group of real_gradients ({real_gradients.cluster_counts.shape[1]} "
                f"per class: input j imitates group j), got {images.shape[1]} per class")
        with autograd_on(), preserved_model_state(model, eval_mode=True):
            table = torch.stack([torch.stack([
                parts.class_distance(model, images[i], i, real_gradients, distance, False, [k]).detach()
                for i in range(len(real_gradients.classes))]) for k in range(len(real_gradients.points))])
        return table if per_checkpoint else table.sum(0)

    @log_usage()
    def attribute(
        self,
        data: Union[Dataset, DataLoader, ClassGradients],
        classes: Optional[Sequence[int]] = None,
        images_per_class: int = 1,
        init: str = "noise",
        mode: str = "gradient",
        checkpoints: Any = None,
        distance: str = "cosine",
        parameters=None,
        iterations: int = 200,
        lr: Optional[float] = None,
        momentum: float = 0.5,
        optimizer: str = "adam",
        batch_size: int = 256,
        priors: Optional[Dict[str, float]] = None,
        value_range: Optional[Tuple[float, float]] = (0.0, 1.0),
        augment: Optional[Callable[[Tensor], Tensor]] = None,
        parametrization: str = "pixels",
        match: str = "class",
        checkpoints_per_iteration: Optional[int] = None,
        student_steps: int = 10,
        checkpoint_gap: int = 1,
        student_batch: Optional[int] = None,
        step_scale: float = 1.0,
        learn_step_scale: bool = True,
        real_examples: int = 0,
        seed: Optional[int] = 0,
        show_progress: bool = False,
    ) -> ClassWiseResult:
        r"""Synthesise ``images_per_class`` inputs for each class.

        Args:
            data (Dataset, DataLoader or ClassGradients): a Dataset yielding
                        ``(input, label)`` (read in order, ``batch_size`` at a
                        time, sharded across processes under torch.distributed),
                        a DataLoader yielding ``(inputs, labels)`` batches (read
                        as is: shard it yourself; its kept real examples and
                        groups are chosen by a seeded hash of each example's
                        values, whatever order it yields), or the result of
                        :meth:`real_class_gradients` (then ``parameters`` and
                        ``checkpoints`` must be None). Never held in memory.
                        Inputs must be floating point and finite.
            classes (list of int, optional): class ids to synthesise. Default: all.
            images_per_class (int): ``n``, synthetic inputs per class.
            init (str or Tensor): ``"noise"`` (mid-grey plus uniform noise of
                        10% of ``value_range``; 1/f noise with the spectrum
                        parametrisation), ``"real"`` (a seeded random choice of
                        real examples of the class) or the starting inputs
                        themselves: ``[n, *input_shape]`` (the same start for
                        every class, so that each set's change says what turns
                        them into its class) or ``[C, n, *input_shape]``.
            mode (str): ``"gradient"`` (match the class-mean training gradient
                        at every checkpoint) or ``"trajectory"`` (match where a
                        few training steps on the synthetic set lead, checkpoint
                        to checkpoint; needs ``checkpoint_gap + 1`` checkpoints).
            checkpoints: the training trajectory, in training order: one
                        state dict, a file (``.safetensors`` or
                        ``torch.load(weights_only=True)``; one state dict or a
                        list of them), a model, a list or an iterator (read once)
                        of these, or a callable returning / yielding them. None:
                        the model's own weights only (gradient mode; the
                        result's ``note`` says so).
            distance (str): gradient mode: ``"cosine"`` (per output unit
                        ``1 - cos`` of the weight-gradient rows, summed) or
                        ``"mse"``. 1-D parameters are left out.
            parameters (list, optional): submodules (or dotted names) whose
                        weights are matched (and, in trajectory mode, trained
                        by the student). Default: every weight (>= 2-D).
                        Weights the eval-mode forward pass never reaches (an
                        auxiliary head such as Inception's) have no gradient
                        and are left out.
            iterations (int): optimisation steps of the synthetic set (0: the
                        starting inputs are returned as they are).
            lr (float, optional): its learning rate, decayed to 0 on a cosine
                        schedule. Default: 0.003 for Adam, 0.1 for SGD (gradient
                        mode); 0.01 with Adam (trajectory mode).
            momentum (float): of the SGD optimiser (gradient mode).
            optimizer (str): gradient mode: ``"adam"`` (default) or ``"sgd"``.
            batch_size (int): real examples per forward/backward of the
                        streaming pass (never changes the result beyond rounding).
            priors (dict, optional): non-negative weights of image priors:
                        ``"tv"`` (mean absolute difference of neighbouring
                        pixels) and ``"l2"`` (mean squared distance to the middle
                        of ``value_range``), per input, summed over the set;
                        ``"class"``: the cross-entropy of ``model`` (its own
                        weights, not the checkpoints') on each input towards
                        its class, summed over the set, so that the model
                        classifies the set as its classes (an added step, not
                        part of the paper's matching).
            value_range (tuple, optional): inputs are clamped into
                        ``(low, high)`` after every step (the returned ones too);
                        None: no clamp.
            augment (callable, optional): a differentiable map applied to the
                        synthetic batch before every forward pass of the
                        optimisation (the real side is not augmented). It may
                        draw from the global RNG: it runs seeded by ``seed``.
            match (str): gradient mode: ``"class"`` (the set's mean gradient
                        imitates the whole class) or ``"clusters"`` (the class's
                        real examples are split into ``images_per_class`` groups,
                        k-means of the features the model's last linear layer
                        reads, and input j imitates group j: a class made of
                        several populations, e.g. another class's images under
                        noisy labels or triggered images under a backdoor, gets
                        an input for each; ``result.cluster_sizes`` says how many
                        real examples each input stands for).
            parametrization (str): ``"pixels"`` (optimise the inputs) or
                        ``"spectrum"`` (optimise their Fourier coefficients
                        scaled by 1/frequency, as in feature visualisation:
                        low frequencies move first, giving smoother images
                        than pixel noise; images only).
            checkpoints_per_iteration (int, optional): gradient mode: match at
                        this many checkpoints drawn at random per iteration
                        (cheaper on long trajectories). None: all of them.
            student_steps (int): trajectory mode: differentiable SGD steps of
                        the student per iteration.
            checkpoint_gap (int): trajectory mode: the target is the checkpoint
                        this many after the start.
            student_batch (int, optional): trajectory mode: synthetic inputs
                        per student step (drawn at random). None: all.
            step_scale (float): trajectory mode: the student's starting step
                        length, per weight tensor, as a multiple of the real
                        displacement from start to target divided by
                        ``student_steps`` (the student takes normalised
                        gradient steps: 1 covers the real distance when its
                        direction is constant).
            learn_step_scale (bool): trajectory mode: learn the step scales
                        (one per weight tensor).
            real_examples (int): real examples per class kept in the result
                        (for figures beside the synthetic sets).
            seed (int, optional): seeds initialisation, real-example choice,
                        checkpoint and minibatch draws and augmentation; None
                        draws a fresh seed. The global RNG is left as found.
            show_progress (bool): tqdm progress bars (rank 0 only).

        Returns:
            :class:`ClassWiseResult`: ``images`` ``[C, n, *input_shape]``
            grouped per class, with the trajectory matched along, the
            distances per checkpoint, the model's confidence per image and a
            ``note``.
        """
        model = self.forward_func
        parts.check_model(model)
        parts.check_data(data)
        priors, value_range = parts.check_options(optimizer, lr, init, distance, images_per_class, iterations,
                                                  priors, value_range, augment, momentum, mode,
                                                  parametrization, match)
        parts.check_mode_options(mode, optimizer, dict(
            optimizer=optimizer, momentum=momentum, checkpoints_per_iteration=checkpoints_per_iteration,
            student_steps=student_steps, checkpoint_gap=checkpoint_gap, student_batch=student_batch,
            step_scale=step_scale, learn_step_scale=learn_step_scale, match=match), _ATTRIBUTE_DEFAULTS)
        real_examples = check_int(real_examples, "real_examples", minimum=0)
        student_steps = check_int(student_steps, "student_steps", minimum=1)
        checkpoint_gap = check_int(checkpoint_gap, "checkpoint_gap", minimum=1)
        if checkpoints_per_iteration is not None:
            checkpoints_per_iteration = check_int(checkpoints_per_iteration, "checkpoints_per_iteration", minimum=1)
        if student_batch is not None:
            student_batch = check_int(student_batch, "student_batch", minimum=1)
        step_scale = check_number(step_scale, "step_scale", 0.0, min_inclusive=False)
        learn_step_scale = check_bool(learn_step_scale, "learn_step_scale")
        check_bool(show_progress, "show_progress")
        seed = check_seed(seed)
        real_init = isinstance(init, str) and init == "real"
        keep = max(images_per_class if real_init else 0, real_examples)
        if isinstance(data, ClassGradients):  # the real examples it kept are all there are
            rg = parts.select(data, classes, parameters, checkpoints, images_per_class if real_init else 0)
        else:
            rg = self.real_class_gradients(data, classes, parameters, checkpoints, batch_size, keep, seed,
                                           show_progress, images_per_class if match == "clusters" else 1)
        groups = 1 if rg.cluster_counts is None else rg.cluster_counts.shape[1]
        if (match == "clusters") != (rg.cluster_grads is not None) or (match == "clusters" and groups != images_per_class):
            raise InvalidArgumentError(
                f"data holds ClassGradients with {groups} group(s) per class: pass match="
                f"{'clusters' if rg.cluster_grads is not None else 'class'!r}"
                + (f" and images_per_class={groups}" if rg.cluster_grads is not None else ""))
        device = rg.points[0][rg.names[0]].device
        param = Parametrization(parametrization, tuple(rg.input_shape), value_range, device, rg.dtype)
        start = parts.initial_images(rg, images_per_class, init, param, seed).to(device)
        augment_fn = parts.checked_augment(augment)
        gen = make_generator(seed)
        progress = parts.show(show_progress)
        trajectory_info: Dict[str, Any] = {}
        set_labels = torch.tensor(rg.classes).repeat_interleave(images_per_class)  # trajectory mode: the flat set
        with autograd_on(), preserved_model_state(model, eval_mode=True), \
                seeded_global_rng(seed, cuda_devices(model)):
            if mode == "gradient":
                images, history = parts.run_gradient_matching(
                    model, rg, start, distance=distance, iterations=iterations, optimizer=optimizer, lr=lr,
                    momentum=momentum, priors=priors, param=param, augment=augment_fn,
                    per_iteration=checkpoints_per_iteration, generator=gen, progress=progress)
            else:
                images, history, trajectory_info = trajectory_mode(
                    model, rg, start, gap=checkpoint_gap, steps=student_steps, batch=student_batch,
                    step_scale=step_scale, learn_scale=learn_step_scale, iterations=iterations, lr=lr,
                    prior=lambda x: parts.prior(x, priors, param.value_range, model, set_labels), param=param, augment=augment_fn,
                    generator=gen, progress=progress)
            with torch.no_grad():
                logits = check_model_output(model(images.flatten(0, 1).clone()), "model")
            check_finite_output(logits, "ClassWiseSynthesis", "the synthetic inputs")
        probs = torch.softmax(logits, dim=-1).view(len(rg.classes), images_per_class, -1)
        own = torch.tensor(rg.classes, device=device).view(-1, 1, 1).expand(-1, images_per_class, 1)
        initial = self.matching_distance(start, rg, distance, per_checkpoint=True)
        final = self.matching_distance(images, rg, distance, per_checkpoint=True)
        return ClassWiseResult(
            images=images,
            classes=rg.classes,
            initial_images=start,
            loss_history=torch.tensor(history, dtype=torch.float64),
            initial_distance=initial.sum(0),
            final_distance=final.sum(0),
            confidence=probs.gather(-1, own).squeeze(-1),
            predictions=probs.argmax(-1),
            counts=rg.counts,
            mode=mode,
            trajectory=list(rg.points),
            checkpoint_names=rg.point_names,
            initial_distances=initial,
            distances=final,
            real_examples={c: rg.real_examples[c][:real_examples] for c in rg.classes if c in rg.real_examples}
            if real_examples else {},
            note=parts.note(rg),
            cluster_sizes=rg.cluster_counts,
            **trajectory_info,
        )


GradientMatchingSynthesis = ClassWiseSynthesis


# the signature's defaults, read once: an option left at its default is never "set" for the other mode
_ATTRIBUTE_DEFAULTS = {name: p.default for name, p in inspect.signature(ClassWiseSynthesis.attribute).parameters.items()}
