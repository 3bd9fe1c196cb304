"""The shared contract helpers: argument checks, targets, chunked scoring, seeding, errors."""
import random

import numpy as np
import pytest
import torch
from captum.attr import Saliency
from hypothesis import given, settings, strategies as st

from captum_global.contract import (
    check_bool,
    check_choice,
    check_finite_output,
    check_inputs,
    check_int,
    check_model_output,
    check_number,
    check_seed,
    check_tensor,
    check_value_range,
    index_additional_args,
    iter_scores,
    make_generator,
    parse_target,
    preserved_global_rng,
    score_all,
    seeded_global_rng,
)
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError, NonFiniteOutputError


# ---------------------------------------------------------------- errors


def test_argument_errors_satisfy_both_conventions():
    for cls in (InvalidArgumentError, InvalidArgumentTypeError):
        assert issubclass(cls, ValueError) and issubclass(cls, AssertionError)
    assert issubclass(InvalidArgumentTypeError, TypeError)
    assert not issubclass(InvalidArgumentError, TypeError)
    assert issubclass(NonFiniteOutputError, ArithmeticError)


# ---------------------------------------------------------------- checks


def test_check_int_accepts_numpy_and_refuses_bool_float():
    assert check_int(np.int64(5), "k", minimum=1) == 5 and type(check_int(np.int32(2), "k")) is int
    with pytest.raises(InvalidArgumentTypeError, match="k must be an int"):
        check_int(True, "k")
    with pytest.raises(InvalidArgumentTypeError, match="k must be an int"):
        check_int(2.0, "k")
    with pytest.raises(InvalidArgumentError, match="k must be >= 1, got 0"):
        check_int(0, "k", minimum=1)
    with pytest.raises(InvalidArgumentError, match="k must be <= 3, got 4"):
        check_int(4, "k", maximum=3)


def test_check_number_bounds_and_non_finite():
    assert check_number(np.float32(0.5), "x", 0, 1) == 0.5
    assert check_number(3, "x") == 3.0
    with pytest.raises(InvalidArgumentError, match="x must be a number, got NaN"):
        check_number(float("nan"), "x")
    with pytest.raises(InvalidArgumentError, match="x must be finite"):
        check_number(float("inf"), "x")
    assert check_number(float("-inf"), "x", allow_infinite=True) == float("-inf")
    with pytest.raises(InvalidArgumentError, match="x must be > 0"):
        check_number(0.0, "x", 0, min_inclusive=False)
    with pytest.raises(InvalidArgumentError, match="x must be < 1"):
        check_number(1.0, "x", maximum=1, max_inclusive=False)
    with pytest.raises(InvalidArgumentTypeError, match="x must be a number"):
        check_number("high", "x")
    with pytest.raises(InvalidArgumentTypeError):
        check_number(False, "x")


def test_check_choice_bool_range():
    assert check_choice("a", "mode", ("a", "b")) == "a"
    with pytest.raises(InvalidArgumentError, match=r"mode must be one of \('a', 'b'\), got 'c'"):
        check_choice("c", "mode", ("a", "b"))
    assert check_bool(np.bool_(True), "flag") is True
    with pytest.raises(InvalidArgumentTypeError, match="flag must be True or False"):
        check_bool(1, "flag")
    assert check_value_range((0, 1)) == (0.0, 1.0) and check_value_range(None) is None
    for bad in [(1, 0), (0, float("nan")), (0,), "01"]:
        with pytest.raises(InvalidArgumentError, match="value_range"):
            check_value_range(bad)


def test_check_tensor_refuses_non_finite_and_clones_inference_tensors():
    x = torch.ones(2, 3)
    x[1, 2] = float("nan")
    with pytest.raises(InvalidArgumentError, match="inputs must be finite: it holds 1 NaN"):
        check_tensor(x, "inputs")
    with pytest.raises(InvalidArgumentError, match="inputs must be 4-D"):
        check_tensor(torch.ones(2, 3), "inputs", dims=(4,))
    with pytest.raises(InvalidArgumentError, match="at least one example"):
        check_tensor(torch.ones(0, 3), "inputs")
    with pytest.raises(InvalidArgumentTypeError, match="floating point"):
        check_tensor(torch.ones(2, dtype=torch.long), "inputs", floating=True)
    with torch.inference_mode():
        frozen = torch.ones(2, 2)
    usable = check_tensor(frozen, "inputs")
    assert not usable.is_inference() and frozen.is_inference()
    assert usable.clone().requires_grad_(True).sum().backward() is None


def test_check_inputs_formats_like_captum_and_names_the_argument():
    x = torch.rand(2, 3, 4, 4)
    single = check_inputs(x, floating=True)
    assert isinstance(single, tuple) and len(single) == 1 and torch.equal(single[0], x)
    pair = check_inputs((x, x[:, :1]), image_batch=True)
    assert [t.shape[1] for t in pair] == [3, 1]
    with pytest.raises(InvalidArgumentTypeError, match="inputs must be a tensor .* got ndarray"):
        check_inputs(x.numpy())
    with pytest.raises(InvalidArgumentTypeError, match="inputs must be a tensor .* got list"):
        check_inputs([x])
    with pytest.raises(InvalidArgumentError, match=r"inputs must be an image batch \[N, C, H, W\], got shape \(3, 4, 4\)"):
        check_inputs(x[0], image_batch=True)
    with pytest.raises(InvalidArgumentError, match=r"inputs\[1\] must be finite"):
        check_inputs((x, torch.full((2, 1, 4, 4), float("nan"))))


def test_model_output_checks():
    with pytest.raises(InvalidArgumentTypeError, match="forward_func must return one tensor.*tuple"):
        check_model_output((torch.ones(2, 3),))
    with pytest.raises(InvalidArgumentTypeError, match="dict"):
        check_model_output({"logits": torch.ones(2)})
    out = torch.tensor([[1.0, 2.0], [float("nan"), 0.0], [0.0, float("inf")]])
    with pytest.raises(NonFiniteOutputError, match=r"SISE: .*at step 3 for example\(s\) \[5, 7\]"):
        check_finite_output(out, "SISE", "step 3", examples=torch.tensor([4, 5, 7]))
    assert check_finite_output(out[:1], "SISE") is not None


# ---------------------------------------------------------------- targets

N, C = 3, 4


@pytest.mark.parametrize(
    "target, expected",
    [
        (1, [1, 1, 1]),
        (-1, [3, 3, 3]),
        ((2,), [2, 2, 2]),
        ([(1,), (2,), (0,)], [1, 2, 0]),
        ([3, 0, -2], [3, 0, 2]),
        (torch.tensor(2), [2, 2, 2]),
        (torch.tensor([2]), [2, 2, 2]),
        (torch.tensor([0, 1, 2]), [0, 1, 2]),
        (np.int64(1), [1, 1, 1]),
        ([np.int64(0), 1, np.int32(3)], [0, 1, 3]),
        (np.array([2, 2, 1]), [2, 2, 1]),
    ],
)
def test_targets_follow_captum(target, expected):
    output = torch.arange(N * C, dtype=torch.float32).view(N, C)
    parsed = parse_target(target, N).checked(tuple(output.shape))
    assert parsed.classes() == expected
    assert parsed.select(output).tolist() == [float(i * C + c) for i, c in enumerate(expected)]


@pytest.mark.parametrize(
    "target, message",
    [
        (True, "must hold integer indices"),
        (1.0, "must hold integer indices"),
        ("cat", "must hold integer indices"),
        ([2], "list of 1 entries but there are 3 examples"),
        (torch.tensor([1.0, 2.0, 0.0]), "integer tensor"),
        (torch.tensor([[1], [2], [0]]), r"shape \[N\]"),
        (torch.tensor([0, 1]), "2 entries but there are 3"),
        ([1, (2, 3), 0], "same number of dimensions"),
        (4, r"target 4 \(example 0\) is out of range.*valid values are 0..3 \(or -4..-1\)"),
        (-5, "out of range"),
        ((1, 2), "gives 2 index"),
        ((), "empty tuple"),
        (np.array([0.5, 1, 2]), "integer class indices"),
    ],
)
def test_bad_targets_name_the_argument(target, message):
    output = torch.zeros(N, C)
    with pytest.raises(InvalidArgumentError, match=message):
        parse_target(target, N).checked(tuple(output.shape))


def test_missing_target_only_for_single_output_models():
    assert parse_target(None, 2).select(torch.tensor([[3.0], [4.0]])).tolist() == [3.0, 4.0]
    assert parse_target(None, 2).select(torch.tensor([3.0, 4.0])).tolist() == [3.0, 4.0]
    with pytest.raises(InvalidArgumentError, match="target is required: the model returns"):
        parse_target(None, 2).checked((2, 5))


def test_multi_dimensional_outputs_take_tuple_targets():
    output = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4)
    assert parse_target((1, 2), 2).select(output).tolist() == [output[0, 1, 2].item(), output[1, 1, 2].item()]
    per_example = parse_target([(0, 1), (2, -1)], 2)
    assert per_example.select(output).tolist() == [output[0, 0, 1].item(), output[1, 2, 3].item()]


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_target_selection_matches_captum_saliency(data):
    """For every valid format, our selection explains the same score as Captum's Saliency."""
    n = data.draw(st.integers(1, 4))
    classes = data.draw(st.lists(st.integers(-C, C - 1), min_size=n, max_size=n))
    form = data.draw(st.sampled_from(["int", "tuple", "list", "list_tuples", "tensor", "tensor1"]))
    if form in ("list", "tensor"):
        classes = [c % C for c in classes]  # Captum gathers these, and gather refuses negative indices
    target = {
        "int": classes[0], "tuple": (classes[0],), "list": classes, "list_tuples": [(c,) for c in classes],
        "tensor": torch.tensor(classes), "tensor1": torch.tensor([classes[0]]),
    }[form]
    torch.manual_seed(n)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, C))
    x = torch.randn(n, 5, requires_grad=True)
    ours = torch.autograd.grad(parse_target(target, n).select(model(x)).sum(), x)[0]
    theirs = Saliency(model).attribute(x.detach(), target=target, abs=False)
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_take_follows_examples():
    parsed = parse_target([2, 0, 1], 3)
    assert parsed.take(torch.tensor([2, 2, 0])).classes() == [1, 1, 2]


# ---------------------------------------------------------------- scoring


def _masking_build(x, masks):
    n = x.shape[0]

    def build(flat):
        examples = flat % n
        return x[examples] * masks[flat // n], examples, masks[flat // n]

    return build


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 11))
def test_scores_do_not_depend_on_the_chunk_size(chunk):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x, masks = torch.rand(2, 3, 2, 2), torch.rand(5, 1, 2, 2)
    targets = parse_target([0, 2], 2)
    build = _masking_build(x, masks)
    chunks = list(iter_scores(model, 10, build, targets, chunk_size=chunk))
    scores = torch.cat([c.scores for c in chunks])
    flat = torch.arange(10)
    expected = model(x[flat % 2] * masks[flat // 2]).gather(1, torch.tensor([0, 2])[flat % 2].unsqueeze(1))[:, 0]
    assert torch.allclose(scores, expected.detach(), atol=1e-6)
    assert torch.equal(torch.cat([c.flat for c in chunks]), flat)
    assert len(chunks) == -(-10 // chunk)
    assert all(torch.equal(c.payload, masks[c.flat // 2]) for c in chunks)


def test_score_all_transform_and_per_example_args():
    class Scaled(torch.nn.Module):
        def forward(self, x, scale, offset):
            return x.flatten(1) * scale.view(-1, 1) + offset

    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    scale = torch.tensor([10.0, 100.0])

    def build(flat):
        return x[flat % 2], flat % 2

    scores = score_all(Scaled(), 4, build, parse_target(1, 2), additional_forward_args=(scale, 0.5), chunk_size=3)
    assert scores.tolist() == [20.5, 400.5, 20.5, 400.5]
    soft = score_all(Scaled(), 2, build, parse_target(0, 2), (scale, 0.0), transform=lambda o: o.softmax(1))
    assert torch.allclose(soft, torch.softmax(torch.tensor([[10.0, 20.0], [300.0, 400.0]]), 1)[:, 0])
    assert index_additional_args((scale, 0.5), torch.tensor([1, 1, 0]), 2)[0].tolist() == [100.0, 100.0, 10.0]


def test_non_finite_score_names_example_and_chunk():
    class Broken(torch.nn.Module):
        def forward(self, x):
            out = x.flatten(1)[:, :2].clone()
            out[x.flatten(1)[:, 0] > 0.5] = float("nan")
            return out

    x = torch.tensor([[0.1, 0.0], [0.9, 0.0], [0.2, 0.0]])

    def build(flat):
        return x[flat % 3], flat % 3

    with pytest.raises(NonFiniteOutputError, match=r"deletion: .*perturbed inputs 0-1 of 6 .*example\(s\) \[1\]"):
        score_all(Broken(), 6, build, parse_target(0, 3), chunk_size=2, what="deletion")


def test_chunk_size_is_checked_under_its_user_facing_name():
    with pytest.raises(InvalidArgumentError, match="perturbations_per_eval must be >= 1"):
        list(iter_scores(torch.nn.Identity(), 1, None, parse_target(0, 1), chunk_size=0))
    assert score_all(torch.nn.Identity(), 2, lambda f: (torch.ones(len(f), 2), f * 0), parse_target(0, 1),
                     chunk_size=np.int64(2)).tolist() == [1.0, 1.0]


def test_model_returning_tuple_gets_a_clear_error():
    with pytest.raises(InvalidArgumentTypeError, match="forward_func must return one tensor"):
        score_all(lambda x: (x, x), 1, lambda f: (torch.ones(1, 2), f), parse_target(0, 1))


# ---------------------------------------------------------------- seeding


def test_check_seed():
    assert check_seed(np.int64(3)) == 3
    state = torch.get_rng_state()
    fresh = check_seed(None)
    assert torch.equal(state, torch.get_rng_state()) and 0 <= fresh < 2**63
    with pytest.raises(InvalidArgumentTypeError, match="seed must be an int"):
        check_seed(None, allow_none=False)
    with pytest.raises(InvalidArgumentError, match="seed must be >= 0"):
        check_seed(-1)
    with pytest.raises(InvalidArgumentTypeError, match="seed must be an int"):
        check_seed(1.5)
    a = torch.rand(3, generator=make_generator(7))
    assert torch.equal(a, torch.rand(3, generator=make_generator(7)))


def test_global_rng_is_restored_even_on_error():
    torch.manual_seed(123)
    random.seed(1)
    np.random.seed(2)
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    with pytest.raises(RuntimeError):
        with preserved_global_rng():
            torch.rand(5), random.random(), np.random.rand()
            raise RuntimeError("boom")
    assert torch.equal(states[0], torch.get_rng_state())
    assert states[1] == random.getstate() and np.array_equal(states[2], np.random.get_state()[1])
    with seeded_global_rng(5):
        first = (torch.rand(2), random.random(), np.random.rand())
    with seeded_global_rng(5):
        second = (torch.rand(2), random.random(), np.random.rand())
    assert torch.equal(first[0], second[0]) and first[1:] == second[1:]
    assert torch.equal(states[0], torch.get_rng_state())


# --------------------------------------------- the same rules in the attribution methods

def _tiny_classifier(classes=3):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, classes)).eval()


def test_input_agnostic_saliency_refuses_bad_inputs_and_a_nan_refinement():
    from captum_global.attr import InputAgnosticSaliency

    ias = InputAgnosticSaliency(_tiny_classifier())
    x = torch.zeros(2, 3, 8, 8)
    with pytest.raises(InvalidArgumentTypeError, match="inputs must be a tensor"):
        ias.attribute(x.numpy(), target=[0, 1])
    with pytest.raises(InvalidArgumentError, match=r"inputs must be an image batch \[N, C, H, W\] for refine=.smooth."):
        ias.attribute(x[0], target=[0, 1, 2])
    with pytest.raises(NonFiniteOutputError, match="refine callable returned non-finite values"):
        ias.attribute(x, target=[0, 1], n_steps=2, samples_per_step=2, seed=0, refine=lambda r: r * float("nan"))


def test_class_wise_synthesis_takes_numpy_classes_and_sizes_and_refuses_tuple_outputs():
    from captum_global.attr import ClassWiseSynthesis

    gen = torch.Generator().manual_seed(3)
    data = torch.utils.data.TensorDataset(torch.rand(24, 3, 8, 8, generator=gen), torch.arange(24) % 5)
    net = _tiny_classifier(5)
    options = dict(images_per_class=1, iterations=2, seed=0)
    reference = ClassWiseSynthesis(net).attribute(data, classes=[0, 1], batch_size=8, **options)
    numpy_args = ClassWiseSynthesis(net).attribute(data, classes=np.array([0, 1]), batch_size=np.int64(8), **options)
    assert numpy_args.classes == reference.classes
    assert torch.equal(numpy_args.images, reference.images)

    class TupleOut(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _tiny_classifier(5)

        def forward(self, x):
            return self.net(x), x

    with pytest.raises(InvalidArgumentError, match="model must return one tensor"):
        ClassWiseSynthesis(TupleOut()).attribute(data, classes=[0, 1], **options)
