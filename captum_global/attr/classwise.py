"""Class-wise global explanation by gradient matching (dataset condensation).

For each class ``c`` a small set ``S_c`` of synthetic inputs is optimised so
that the training gradient it induces in the explained model matches the
gradient induced by *all* real examples of class ``c``:

    minimise over S:  sum_k sum_c D( grad_theta L(S_c, c; theta_k), grad_theta L(X_c, c; theta_k) )

where ``theta_k`` are the model's weights (and optional training
checkpoints), ``L`` the mean cross-entropy and ``D`` the layer-wise gradient
distance of dataset condensation (Zhao, Mopuri & Bilen, ICLR 2021). The
weights are fixed, so the real side of every term is a constant: it is
computed once, in one streaming pass over the whole dataset (see
:mod:`captum_global.attr._gradient_matching`), then only ``S`` is optimised.
See ``docs/classwise.md`` for the method and its measured fidelity.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch
from captum.attr import Attribution
from captum.log import log_usage
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from captum_global._model_state import preserved_model_state
from captum_global.attr._classwise_parts import (
    ClassWiseResult,
    _check_data,
    _check_options,
    _format_classes,
    _initial_images,
    _optimiser,
    _prior,
    _select,
    _show,
)
from captum_global.attr._gradient_matching import (
    ClassGradients,
    class_gradient,
    gradient_distance,
    matched_parameter_names,
    stream_class_gradients,
    weight_points,
)

__all__ = ["ClassWiseSynthesis", "GradientMatchingSynthesis", "ClassWiseResult"]

class ClassWiseSynthesis(Attribution):
    r"""Class-wise synthetic sets whose training gradients match the real data.

    A *global* explanation: instead of attributing one input, it shows, per
    class, a few synthetic inputs that "teach" the model what the whole
    class teaches it, i.e. whose cross-entropy gradient in the model's
    weights points the way the mean gradient of all real examples of that
    class points. Features the model learned for a class (including a
    backdoor trigger that was trained into it) appear in that class's set.

    The method adapts dataset condensation by gradient matching to a
    trained model: gradients are taken at the model's own weights (and at
    any supplied training checkpoints) instead of along a fresh training
    run, so the real-data gradients are fixed targets computed once, over
    the full dataset, by one streaming pass (exact for the mean-reduced
    loss: BatchNorm runs in eval mode, so the loss is a sum of per-example
    terms). Under an initialised ``torch.distributed`` process group each
    process reads its shard and the sums and counts are all-reduced, so N
    processes return what one returns.

    It is not a per-example attribution: it takes a dataset, not inputs, and
    returns a :class:`ClassWiseResult`, not input-shaped attributions. It
    cannot be wrapped by ``NoiseTunnel`` and per-input metrics (infidelity,
    sensitivity) do not apply; passing tensors raises a ``TypeError``.

    The model is never modified: gradients are taken on detached copies of
    the weights (:func:`torch.func.functional_call`), the model runs in eval
    mode and gets back its ``training`` and ``requires_grad`` flags.

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
        >>> result[1].shape
        torch.Size([2, 3, 2, 2])
        >>> bool((result.final_distance < result.initial_distance).all())
        True
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"model must be an nn.Module (its weights are differentiated), got {type(model).__name__}"
            )
        super().__init__(model)

    @classmethod
    def get_name(cls) -> str:
        return "Class-wise Synthesis"

    def real_class_gradients(
        self,
        data: Union[Dataset, DataLoader],
        classes: Optional[Sequence[int]] = None,
        parameters=None,
        checkpoints: Optional[Sequence] = None,
        batch_size: int = 256,
        real_examples: int = 0,
        seed: int = 0,
        show_progress: bool = False,
    ) -> ClassGradients:
        """The fixed targets: one streaming pass over ``data``.

        Pass the result as ``data`` to :meth:`attribute` to run several
        syntheses (different ``images_per_class``, ``iterations``...) on one
        pass. ``real_examples`` real inputs per class are kept (a seeded
        random choice) for ``init="real"``. Arguments as in :meth:`attribute`.
        """
        model = self.forward_func
        _check_data(data)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        classes = _format_classes(classes)
        device = next(model.parameters()).device
        names = matched_parameter_names(model, parameters)
        with preserved_model_state(model, eval_mode=True):
            points = weight_points(model, checkpoints, device)
            bar = tqdm(desc="real gradients", unit="batch") if _show(show_progress) else None
            try:
                return stream_class_gradients(model, data, classes, names, points, batch_size,
                                              real_examples, seed, bar)
            finally:
                if bar is not None:
                    bar.close()

    def matching_distance(self, images: Tensor, real_gradients: ClassGradients,
                          distance: str = "cosine") -> Tensor:
        """``[C]`` matching distance of ``images`` (``[C, n, *input_shape]``,
        row i for ``real_gradients.classes[i]``) summed over weight points."""
        model = self.forward_func
        if images.dim() < 2 or images.shape[0] != len(real_gradients.classes):
            raise ValueError(
                f"images must have shape [{len(real_gradients.classes)}, n, *input_shape], "
                f"got {tuple(images.shape)}"
            )
        with preserved_model_state(model, eval_mode=True):
            return torch.stack([
                self._class_distance(images[i], i, real_gradients, distance, False).detach()
                for i in range(len(real_gradients.classes))
            ])

    def _class_distance(self, x: Tensor, ci: int, rg: ClassGradients, distance: str,
                        create_graph: bool) -> Tensor:
        c = rg.classes[ci]
        return sum(
            gradient_distance(class_gradient(self.forward_func, point, rg.names, x, c, create_graph),
                              rg.grads[k][ci], distance)
            for k, point in enumerate(rg.points)
        )

    @log_usage()
    def attribute(
        self,
        data: Union[Dataset, DataLoader, ClassGradients],
        classes: Optional[Sequence[int]] = None,
        images_per_class: int = 1,
        init: str = "noise",
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
        checkpoints: Optional[Sequence] = None,
        seed: int = 0,
        show_progress: bool = False,
    ) -> ClassWiseResult:
        r"""Synthesise ``images_per_class`` inputs for each class.

        Args:
            data (Dataset, DataLoader or ClassGradients): a Dataset yielding
                        ``(input, label)`` (read in order, ``batch_size`` at
                        a time, sharded across processes under
                        torch.distributed), or a DataLoader yielding
                        ``(inputs, labels)`` batches (read as is: shard it
                        yourself; a padding DistributedSampler counts its
                        duplicates twice), or the result of
                        :meth:`real_class_gradients` (then ``classes`` may
                        only select among its classes and ``parameters`` /
                        ``checkpoints`` must be None). Never held in memory.
            classes (list of int, optional): class ids to synthesise, in
                        ``[0, number of logits)``. Default: all of them.
            images_per_class (int): ``n``, synthetic inputs per class.
            init (str): ``"noise"`` (mid-grey plus uniform noise of 10% of
                        ``value_range``; in [-0.1, 0.1] if it is None) or
                        ``"real"`` (a seeded random choice of real examples
                        of the class).
            distance (str): ``"cosine"`` (per output unit ``1 - cos`` of the
                        weight-gradient rows, summed) or ``"mse"`` (sum of
                        squared differences). 1-D parameters are left out.
            parameters (list, optional): submodules (or dotted names) whose
                        weights are matched. Default: every weight.
            iterations (int): optimisation steps. The iterate with the
                        lowest objective is returned (not always the last).
            lr (float, optional): initial learning rate, decayed to 0 on a
                        cosine schedule. Default: 0.003 for Adam, 0.1 for SGD.
            momentum (float): of the SGD optimiser (the condensation
                        paper's 0.5); unused by Adam.
            optimizer (str): ``"adam"`` (default) or ``"sgd"`` (the
                        condensation paper's). At a trained model a
                        class's weight gradient is tiny and its direction
                        swings with the softmax tails, so plain SGD at a
                        fixed rate either stalls or diverges; Adam's per-pixel
                        step size does not depend on that scale.
            batch_size (int): real examples per forward/backward of the
                        streaming pass (never changes the result beyond
                        float rounding).
            priors (dict, optional): weights of image priors added to each
                        class's objective: ``"tv"`` (mean absolute
                        difference of neighbouring pixels) and ``"l2"``
                        (mean squared distance to the middle of
                        ``value_range``), each summed over the set's inputs.
            value_range (tuple, optional): inputs are clamped into
                        ``(low, high)`` after every step; None: no clamp.
            augment (callable, optional): a differentiable map applied to
                        the synthetic batch before every forward pass of
                        the optimisation (e.g. random shifts); the real
                        gradients are not augmented. Its randomness is
                        seeded by ``seed``.
            checkpoints (list, optional): state_dicts, or paths loaded with
                        ``torch.load(weights_only=True)``: more weight points
                        at which gradients are matched, besides the
                        model's own weights (the objective sums over all).
            seed (int): seeds initialisation, real-example choice and
                        augmentation; the global RNG state is left as found.
            show_progress (bool): tqdm progress bars (rank 0 only).

        Returns:
            :class:`ClassWiseResult`: ``images`` ``[C, n, *input_shape]``
            grouped per class, with ``classes``, ``loss_history``,
            ``initial_distance``/``final_distance``, ``confidence`` and
            ``predictions``.
        """
        model = self.forward_func
        _check_data(data)
        priors = _check_options(optimizer, lr, init, distance, images_per_class, iterations,
                                priors, value_range, augment)

        keep = images_per_class if init == "real" else 0
        if isinstance(data, ClassGradients):
            rg = _select(data, classes, parameters, checkpoints, keep)
        else:
            rg = self.real_class_gradients(data, classes, parameters, checkpoints, batch_size,
                                           keep, seed, show_progress)
        device = rg.points[0][rg.names[0]].device
        init_images = _initial_images(rg, images_per_class, init, value_range, seed).to(device)

        with preserved_model_state(model, eval_mode=True):
            syn = [x.clone().requires_grad_(True) for x in init_images]
            best = [x.detach().clone() for x in init_images]
            best_d = [float("inf")] * len(syn)
            step = _optimiser(optimizer, syn, lr, momentum, iterations)
            history = []
            rng_devices = [device.index or 0] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=rng_devices):
                torch.manual_seed(seed)
                for _ in tqdm(range(iterations), desc="matching", disable=not _show(show_progress)):
                    total = 0.0
                    for ci, x in enumerate(syn):
                        d = self._class_distance(augment(x) if augment is not None else x,
                                                 ci, rg, distance, True)
                        objective = d + _prior(x, priors, value_range)
                        x.grad = torch.autograd.grad(objective, x)[0]
                        total += float(d.detach())
                        # The landscape is rough (softmax tails swing the gradient
                        # direction), so the best iterate is kept, not the last.
                        if float(objective.detach()) < best_d[ci]:
                            best_d[ci], best[ci] = float(objective.detach()), x.detach().clone()
                    history.append(total)
                    step()
                    if value_range is not None:
                        with torch.no_grad():
                            for x in syn:
                                x.clamp_(*value_range)
            if iterations:
                for ci, x in enumerate(syn):  # the last step's result is a candidate too
                    with torch.enable_grad():
                        last = self._class_distance(augment(x) if augment is not None else x,
                                                    ci, rg, distance, False).detach() + _prior(x, priors, value_range)
                    if float(last.detach()) < best_d[ci]:
                        best[ci] = x.detach().clone()
            syn = best
            images = torch.stack([x.detach() for x in syn])
            with torch.no_grad():
                flat = images.flatten(0, 1)
                probs = torch.softmax(model(flat), dim=-1).view(len(rg.classes), images_per_class, -1)
            own = torch.tensor(rg.classes, device=device).view(-1, 1, 1).expand(-1, images_per_class, 1)
        return ClassWiseResult(
            images=images,
            classes=rg.classes,
            initial_images=init_images,
            loss_history=torch.tensor(history, dtype=torch.float64),
            initial_distance=self.matching_distance(init_images, rg, distance),
            final_distance=self.matching_distance(images, rg, distance),
            confidence=probs.gather(-1, own).squeeze(-1),
            predictions=probs.argmax(-1),
            counts=rg.counts,
        )


GradientMatchingSynthesis = ClassWiseSynthesis
