"""Our classes inside Captum's own tools, and their invariances as hypothesis properties.

SISE, RISE and InputAgnosticSaliency (ClassWiseSynthesis where it applies:
it explains a dataset, not inputs) used by ``NoiseTunnel`` (every
``nt_type``, ``nt_samples_batch_size`` set and unset, ``stdevs`` as a float
and as a tuple), ``sensitivity_max`` and ``infidelity`` (each checked
against a computation by hand that replays Captum's own draws from the
global RNG), the visualisers and ``LayerAttribution.interpolate``. Then the
invariances as hypothesis properties: batching knobs, seeds and the
caller's RNG, batch permutations and every target format, with Captum
itself (``IntegratedGradients``) as the oracle of which formats are valid.

What Captum does here, and so what the tests can ask of us:

- ``NoiseTunnel`` draws its noise from the global RNG partition by partition,
  so ``nt_samples_batch_size`` changes the *noise* (Captum's own
  ``Saliency`` gives other numbers with it set): the maps must be our method
  on exactly those draws. They are identical whenever the draws are (one
  partition of all ``nt_samples``, ``stdevs=0``, or a method that never
  reads the input values: InputAgnosticSaliency).
- ``visualize_image_attr`` of Captum 0.9 asserts on an all-zero map ("Cannot
  normalize by scale factor = 0", captum#959, handled upstream after 0.9 by
  captum#1853), Captum's own maps included: ours must be treated exactly as
  Captum's own, and ``captum_global.viz`` draws them.
- No class returns layer-sized maps: SISE's per-layer maps come back at the
  input's size, so ``LayerAttribution.interpolate`` to the input size is the
  identity on them.
"""
import functools
import random
import warnings

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, NoiseTunnel, Saliency
from captum.metrics import infidelity, sensitivity_max
from hypothesis import given, settings, strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from captum_global.attr import RISE, SISE, ClassWiseSynthesis, InputAgnosticSaliency
from captum_global.errors import InvalidArgumentError
from test_attr_dropin import CLASSES, FAST, METHODS, N, TARGETS  # the drop-in tests' sizes and fast settings
from test_captum_conventions import ConnectedConstant, tiny_net  # the same tiny net and no-signal model

SIZE = 16
NT_TYPES = ("smoothgrad", "smoothgrad_sq", "vargrad")


@functools.lru_cache(maxsize=None)
def shared_net() -> nn.Module:
    """One net for the hypothesis tests (built once: building reseeds the global RNG)."""
    return tiny_net()


def images(n: int = N, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def method(name, model):
    cls = {"SISE": SISE, "RISE": RISE, "InputAgnosticSaliency": InputAgnosticSaliency}[name]
    return cls(model), dict(FAST[name])


def rng_state():
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def assert_rng_is(state) -> None:
    torch_state, numpy_state, python_state = state
    assert torch.equal(torch.get_rng_state(), torch_state), "torch's global RNG moved"
    now = np.random.get_state()  # (name, keys, position, has_gauss, cached_gaussian)
    assert np.array_equal(now[1], numpy_state[1]) and now[2:] == numpy_state[2:], "NumPy's global RNG moved"
    assert random.getstate() == python_state, "Python's random moved"


class DrawsFromEveryRNG(nn.Module):
    """A model whose forward draws from torch's, NumPy's and Python's global RNGs (MC-dropout-like)."""

    def __init__(self):
        super().__init__()
        self.net = tiny_net()

    def forward(self, x):
        jitter = 0.1 * torch.rand(()) + 0.1 * float(np.random.rand()) + 0.1 * random.random()
        return self.net(x) * (1 + jitter)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


# ---------------------------------------------------------------- NoiseTunnel


def _captum_draws(x, nt_samples, batch_size, stdev):
    """The noisy copies NoiseTunnel makes, in its order: per partition one ``torch.normal`` over
    ``x.repeat_interleave(k)`` from the global RNG (Captum 0.9, ``_add_noise_to_input``)."""
    partitions, done = [], 0
    while done < nt_samples:
        k = min(batch_size or nt_samples, nt_samples - done)
        noise = torch.normal(0, torch.tensor(stdev).repeat((x.shape[0] * k,) + tuple(x.shape[1:])))
        partitions.append((k, x.repeat_interleave(k, dim=0) + noise))
        done += k
    return partitions


def _by_hand(m, fixed, partitions, nt_type):
    """Our method on every noisy copy alone (with its example's target), combined as NoiseTunnel says."""
    draws = [[] for _ in range(N)]
    for k, noisy in partitions:
        for row in range(noisy.shape[0]):
            draws[row // k].append(m.attribute(noisy[row:row + 1], target=TARGETS[row // k], **fixed)[0])
    stacked = [torch.stack(d) for d in draws]
    if nt_type == "smoothgrad":
        return torch.stack([d.mean(0) for d in stacked])
    if nt_type == "smoothgrad_sq":
        return torch.stack([(d ** 2).mean(0) for d in stacked])
    return torch.stack([(d ** 2).mean(0) - d.mean(0) ** 2 for d in stacked])


@pytest.mark.parametrize("name", METHODS)
def test_noise_tunnel_is_our_method_on_captum_s_draws_for_every_nt_type_and_batch_size(name):
    """nt_samples=3, so nt_samples_batch_size=2 leaves a remainder partition of 1; stdevs alternates
    between a float and a 1-tuple, which must draw the same noise."""
    model, x = tiny_net(), images()
    m, fixed = method(name, model)
    tunnel = NoiseTunnel(m)
    for batch_size in (None, 1, 2):
        torch.manual_seed(4)
        partitions = _captum_draws(x, 3, batch_size, 0.2)
        for nt_type, stdevs in zip(NT_TYPES, (0.2, (0.2,), 0.2)):
            torch.manual_seed(4)
            got = tunnel.attribute(x, target=TARGETS, nt_type=nt_type, nt_samples=3, stdevs=stdevs,
                                   nt_samples_batch_size=batch_size, **fixed)
            torch.testing.assert_close(got, _by_hand(m, fixed, partitions, nt_type), rtol=0, atol=1e-6,
                                       msg=f"{nt_type}, nt_samples_batch_size={batch_size}, stdevs={stdevs}")
        torch.manual_seed(4)
        as_tuple = tunnel.attribute(x, target=TARGETS, nt_type="vargrad", nt_samples=3, stdevs=(0.2,),
                                    nt_samples_batch_size=batch_size, **fixed)
        assert torch.equal(as_tuple, got), "stdevs as a float and as a 1-tuple draw the same noise"


@pytest.mark.parametrize("name", METHODS)
def test_noise_tunnel_batch_size_set_or_unset_is_identical_when_the_draws_are(name):
    """One partition of all samples is the unset case; with stdevs=0 every partition draws the
    input itself; InputAgnosticSaliency never reads input values, so no draw can matter."""
    model, x = tiny_net(), images()
    m, fixed = method(name, model)
    tunnel = NoiseTunnel(m)
    for nt_type in NT_TYPES:
        runs = {}
        for stdev in (0.0, 0.3):
            for batch_size in (None, 1, 2, 4):
                torch.manual_seed(9)
                runs[stdev, batch_size] = tunnel.attribute(x, target=TARGETS, nt_type=nt_type, nt_samples=4,
                                                           stdevs=stdev, nt_samples_batch_size=batch_size, **fixed)
        assert torch.equal(runs[0.3, None], runs[0.3, 4]), nt_type
        for batch_size in (1, 2, 4):
            torch.testing.assert_close(runs[0.0, batch_size], runs[0.0, None], rtol=0, atol=1e-6)
            if name == "InputAgnosticSaliency":
                torch.testing.assert_close(runs[0.3, batch_size], runs[0.3, None], rtol=0, atol=1e-6)


def test_noise_tunnel_keeps_the_global_rng_for_its_own_draws():
    """Two runs at one seed agree and the global RNG ends where Captum's own draws alone leave it:
    our method, called once per partition, consumes nothing in between (numpy and random untouched)."""
    model, x = DrawsFromEveryRNG(), images()
    for name in METHODS:
        m, fixed = method(name, model)
        torch.manual_seed(2)
        np.random.seed(2)
        random.seed(2)
        _captum_draws(x, 3, 1, 0.1)
        after_draws_only = rng_state()
        torch.manual_seed(2)
        np.random.seed(2)
        random.seed(2)
        first = NoiseTunnel(m).attribute(x, target=TARGETS, nt_samples=3, stdevs=0.1, nt_samples_batch_size=1,
                                         **fixed)
        assert_rng_is(after_draws_only)
        torch.manual_seed(2)
        second = NoiseTunnel(m).attribute(x, target=TARGETS, nt_samples=3, stdevs=0.1, nt_samples_batch_size=1,
                                          **fixed)
        assert torch.equal(first, second), name


# ---------------------------------------------------------------- sensitivity_max and infidelity


@pytest.mark.parametrize("max_examples_per_batch", [None, 6], ids=["one_batch", "batches_of_2_then_1"])
@pytest.mark.parametrize("name", ["SISE", "RISE"])
def test_sensitivity_max_is_its_formula_through_our_method(name, max_examples_per_batch):
    """Captum's default perturbation (uniform noise in an L-inf ball, from the global RNG, chunk by chunk):
    sens_i = max_j ||a(x_i + d_ij) - a(x_i)||_F / ||a(x_i)||_F, our method run on each perturbed
    example alone. Our calls between Captum's draws must not move the global RNG."""
    model, x = tiny_net(), images()
    m, fixed = method(name, model)
    torch.manual_seed(3)
    got = sensitivity_max(m.attribute, x, target=TARGETS, n_perturb_samples=3, perturb_radius=0.05,
                          max_examples_per_batch=max_examples_per_batch, **fixed)
    torch.manual_seed(3)
    chunks = [3] if max_examples_per_batch is None else [2, 1]
    noisy = [(k, x.repeat_interleave(k, 0) + torch.FloatTensor(N * k, 3, SIZE, SIZE).uniform_(-0.05, 0.05))
             for k in chunks]
    base = m.attribute(x, target=TARGETS, **fixed)
    expected = torch.zeros(N)
    for k, batch in noisy:
        for row in range(batch.shape[0]):
            i = row // k
            moved = m.attribute(batch[row:row + 1], target=TARGETS[i], **fixed)[0]
            expected[i] = max(expected[i], ((moved - base[i]).norm() / base[i].norm()).item())
    assert bool((expected > 0).all())
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_sensitivity_max_of_a_method_exactly_constant_in_the_input_is_zero():
    """InputAgnosticSaliency never reads the input values: under any perturbation its maps are the
    same, so the sensitivity is exactly 0 (not round-off)."""
    model, x = tiny_net(), images()
    m, fixed = method("InputAgnosticSaliency", model)
    sens = sensitivity_max(m.attribute, x, target=TARGETS, n_perturb_samples=4, perturb_radius=0.3,
                           max_examples_per_batch=6, **fixed)
    assert torch.equal(sens, torch.zeros(N))


@pytest.mark.parametrize("name", METHODS)
def test_metrics_of_all_zero_maps_are_zero_not_nan(name):
    """A model that ignores its input: our maps are all zero; sensitivity (Captum divides by the map's
    norm, guarded at 0) and normalised infidelity (beta = 0/0, guarded) must come out 0."""
    model, x = ConnectedConstant(), images()
    m, fixed = method(name, model)
    maps = m.attribute(x, target=TARGETS, **fixed)
    assert torch.equal(maps, torch.zeros_like(x))
    sens = sensitivity_max(m.attribute, x, target=TARGETS, n_perturb_samples=2, **fixed)
    infid = infidelity(model, lambda inputs: (torch.full_like(inputs, 0.1), inputs - 0.1), x, maps,
                       target=TARGETS, n_perturb_samples=2, normalize=True)
    assert torch.equal(sens, torch.zeros(N)) and torch.equal(infid, torch.zeros(N))


@pytest.mark.parametrize("name", METHODS)
def test_normalised_infidelity_of_our_maps_is_its_formula(name):
    """Two Gaussian perturbations I_ij per example (global RNG): s = sum(I a), d = f(x)_t - f(x - I)_t,
    beta = sum_j s d / sum_j s^2, infidelity = (beta^2 sum s^2 - 2 beta sum s d + sum d^2) / 2."""
    model, x = tiny_net(), images()
    m, fixed = method(name, model)
    maps = m.attribute(x, target=TARGETS, **fixed)

    def perturb(inputs):
        noise = 0.05 * torch.randn(inputs.shape)
        return noise, inputs - noise

    torch.manual_seed(6)
    got = infidelity(model, perturb, x, maps, target=TARGETS, n_perturb_samples=2, normalize=True)
    torch.manual_seed(6)
    noise = 0.05 * torch.randn(2 * N, 3, SIZE, SIZE)
    rows = torch.arange(2 * N) // 2
    targets = torch.tensor(TARGETS)[rows]
    with torch.no_grad():
        d = model(x)[rows, targets] - model(x[rows] - noise)[torch.arange(2 * N), targets]
    s = (noise * maps[rows]).flatten(1).sum(1)
    s, d = s.view(N, 2), d.view(N, 2)
    beta = (s * d).sum(1) / (s ** 2).sum(1)
    expected = (beta ** 2 * (s ** 2).sum(1) - 2 * beta * (s * d).sum(1) + (d ** 2).sum(1)) / 2
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------- visualisation and layer maps


def _drawn_values(axes):
    """Every image array drawn on the axes, as floats."""
    return [np.asarray(im.get_array(), dtype=float) for ax in np.atleast_1d(axes) for im in ax.get_images()]


def _hwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).detach().numpy()


@pytest.mark.parametrize("name", METHODS)
def test_visualize_image_attr_multiple_draws_finite_images_of_our_maps(name):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from captum.attr import visualization as viz

    model, x = tiny_net(), images()
    m, fixed = method(name, model)
    attr, image = _hwc(m.attribute(x, target=TARGETS, **fixed)[1]), _hwc(x[1])  # one example: drawing is slow
    methods = ["original_image", "heat_map", "blended_heat_map", "masked_image", "alpha_scaling"]
    signs = ["all", "all", "absolute_value", "positive", "positive"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. Captum's "normalize by value approximately 0"
        fig, axes = viz.visualize_image_attr_multiple(attr, image, methods, signs, titles=methods,
                                                      show_colorbar=True, use_pyplot=False)
    drawn = _drawn_values(axes)
    assert len(axes) == len(methods) and len(drawn) >= len(methods)
    assert all(np.isfinite(a).all() for a in drawn)
    fig, ax = viz.visualize_image_attr(attr, image, method="heat_map", sign="all", use_pyplot=False)
    assert all(np.isfinite(a).all() for a in _drawn_values(ax))


def _visualize_outcome(attr: np.ndarray, image: np.ndarray):
    """What visualize_image_attr makes of a map: the error it raises, or that it drew finite images."""
    from captum.attr import visualization as viz

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fig, ax = viz.visualize_image_attr(attr, image, method="blended_heat_map", sign="absolute_value",
                                               use_pyplot=False)
    except AssertionError as error:
        return "refused", str(error)
    return "drawn", all(np.isfinite(a).all() for a in _drawn_values(ax))


@pytest.mark.parametrize("name", METHODS)
def test_all_zero_map_is_treated_as_captum_treats_its_own_and_our_gallery_draws_it(name):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from captum_global import viz

    model, x = ConnectedConstant(), images()
    m, fixed = method(name, model)
    maps = m.attribute(x, target=TARGETS, **fixed)
    assert torch.equal(maps, torch.zeros_like(x))  # no signal: exactly zero, no NaN
    captum_own = Saliency(model).attribute(x.clone().requires_grad_(), target=TARGETS).detach()
    assert torch.equal(captum_own, torch.zeros_like(x))
    ours = _visualize_outcome(_hwc(maps[0]), _hwc(x[0]))
    assert ours == _visualize_outcome(_hwc(captum_own[0]), _hwc(x[0]))
    assert ours in (("refused", "Cannot normalize by scale factor = 0"), ("drawn", True))  # Captum 0.9 / later
    fig = viz.explanation_gallery(x, {name: maps})
    assert all(ax.get_title().endswith("(empty map)") for ax in fig.axes[1::2])
    assert all(np.isfinite(a).all() for a in _drawn_values(fig.axes))


def test_sise_layer_maps_are_input_sized_so_interpolate_is_the_identity():
    """The only per-layer output of our classes: SISE's maps V per block, [N, 1, H, W] in LayerGradCam's
    layout but already at the input's size (LayerGradCam's own map is at the layer's)."""
    model, x = tiny_net(), images()
    _, maps = SISE(model).attribute(x, target=TARGETS, return_layer_maps=True)
    layer_gradcam = LayerGradCam(model, model[5]).attribute(x, target=TARGETS)
    assert layer_gradcam.shape == (N, 1, SIZE // 2, SIZE // 2)
    assert len(maps) == 2
    for name, v in maps.items():
        assert v.shape == (N, 1, SIZE, SIZE), name
        assert bool(torch.isfinite(v).all()) and 0 <= float(v.min()) and float(v.max()) <= 1
        assert torch.equal(LayerAttribution.interpolate(v, (SIZE, SIZE)), v), name
        for mode in ("nearest", "bilinear", "area"):
            small = LayerAttribution.interpolate(v, (SIZE // 2, SIZE // 2), interpolate_mode=mode)
            assert small.shape == layer_gradcam.shape and bool(torch.isfinite(small).all())


# ---------------------------------------------------------------- property: batching knobs


@settings(max_examples=15, deadline=None)
@given(name=st.sampled_from(["SISE", "RISE"]), data=st.data())
def test_perturbations_per_eval_never_changes_the_maps(name, data):
    """Documented for both: "never changes the result". Chunks are drawn where they cut: SISE scores at
    most 14 maps per example here (6 + 8 channels, all kept with similarity_threshold=None), and RISE
    draws its masks in fixed chunks of 100, which n_masks crosses."""
    model, x = shared_net(), images()
    m, _ = method(name, model)
    if name == "SISE":
        extra, whole = {"similarity_threshold": None}, 14 * N
    else:
        extra = {"n_masks": data.draw(st.integers(1, 230), label="n_masks")}
        whole = extra["n_masks"] * N
    chunk = data.draw(st.integers(1, whole + 1), label="chunk")
    reference = m.attribute(x, target=TARGETS, perturbations_per_eval=1 if name == "SISE" else whole, **extra)
    got = m.attribute(x, target=TARGETS, perturbations_per_eval=chunk, **extra)
    torch.testing.assert_close(got, reference, rtol=0, atol=1e-6)


class ElementwiseScores(nn.Module):
    """Per-row scores with no batch-size-dependent kernels: no round-off of the model's own."""

    def forward(self, x):
        return torch.stack([(x * k).mean((1, 2, 3)) for k in range(1, CLASSES + 1)], 1)


@settings(max_examples=15, deadline=None)
@given(chunk=st.integers(1, 400), n_masks=st.integers(1, 250))
def test_rise_chunking_is_exact_when_the_model_has_no_round_off(chunk, n_masks):
    """The knob never changes the sums RISE makes: on a model without batch-dependent round-off the
    maps are bit for bit the same."""
    rise, x = RISE(ElementwiseScores()), images()
    reference = rise.attribute(x, target=TARGETS, n_masks=n_masks, perturbations_per_eval=10_000)
    assert torch.equal(rise.attribute(x, target=TARGETS, n_masks=n_masks, perturbations_per_eval=chunk), reference)


def _class_data(n=12, seed=2):
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed)), torch.arange(n) % CLASSES


CWS_OPTIONS = dict(classes=[0, 1, 3], iterations=2, seed=3)


@functools.lru_cache(maxsize=None)
def cws_reference():
    return ClassWiseSynthesis(shared_net()).attribute(TensorDataset(*_class_data()), batch_size=256, **CWS_OPTIONS)


@settings(max_examples=8, deadline=None)
@given(batch_size=st.integers(1, 13), as_loader=st.booleans())
def test_class_wise_synthesis_batch_size_never_changes_the_sets(batch_size, as_loader):
    """Documented: batch_size "never changes the result beyond rounding"; a DataLoader of any batch
    size is read as is and must agree too."""
    data = TensorDataset(*_class_data())
    reference = cws_reference()
    got = ClassWiseSynthesis(shared_net()).attribute(
        DataLoader(data, batch_size=batch_size) if as_loader else data, batch_size=batch_size, **CWS_OPTIONS)
    torch.testing.assert_close(got.images, reference.images, rtol=0, atol=1e-5)
    torch.testing.assert_close(got.initial_distance, reference.initial_distance, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.final_distance, reference.final_distance, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- property: seeds and the caller's RNG


SEEDS = st.one_of(st.integers(0, 2**32), st.just(2**63 - 1))


@settings(max_examples=15, deadline=None)
@given(name=st.sampled_from(METHODS), seed=SEEDS, other=SEEDS, caller=st.integers(0, 2**31))
def test_same_seed_same_maps_and_every_global_rng_left_as_found(name, seed, other, caller):
    """The model draws from torch's, NumPy's and Python's RNGs: a run leaves all three as found, the
    same seed gives the same maps, another seed other maps (RISE and InputAgnosticSaliency; SISE
    draws nothing and has no seed)."""
    model, x = DrawsFromEveryRNG(), images()
    m, fixed = method(name, model)
    torch.manual_seed(caller)
    np.random.seed(caller)
    random.seed(caller)
    before = rng_state()
    seeded = dict(fixed, seed=seed) if name != "SISE" else fixed
    first = m.attribute(x, target=TARGETS, **seeded)
    assert_rng_is(before)
    assert torch.equal(m.attribute(x, target=TARGETS, **seeded), first)
    assert_rng_is(before)
    if name != "SISE" and other != seed:
        assert not torch.equal(m.attribute(x, target=TARGETS, **dict(fixed, seed=other)), first)
        assert_rng_is(before)


@settings(max_examples=8, deadline=None)
@given(seed=SEEDS, caller=st.integers(0, 2**31))
def test_class_wise_synthesis_same_seed_same_sets_and_rng_left_as_found(seed, caller):
    """augment may draw from the global RNGs: it runs seeded by ``seed``, and the caller's state comes back."""

    def augment(x):
        return x + 0.01 * (torch.rand(()) + float(np.random.rand()) + random.random())

    data = TensorDataset(*_class_data())
    cws = ClassWiseSynthesis(shared_net())
    options = dict(classes=[0, 2], iterations=2, batch_size=5, augment=augment, seed=seed)
    torch.manual_seed(caller)
    np.random.seed(caller)
    random.seed(caller)
    before = rng_state()
    first = cws.attribute(data, **options)
    assert_rng_is(before)
    second = cws.attribute(data, **options)
    assert_rng_is(before)
    assert torch.equal(first.images, second.images)


# ---------------------------------------------------------------- property: permutations


@settings(max_examples=15, deadline=None)
@given(name=st.sampled_from(METHODS), perm=st.permutations(range(4)),
       targets=st.lists(st.integers(0, CLASSES - 1), min_size=4, max_size=4))
def test_permuting_the_batch_permutes_the_maps(name, perm, targets):
    model, x = shared_net(), images(4, seed=5)
    m, fixed = method(name, model)
    perm = torch.tensor(perm)
    maps = m.attribute(x, target=targets, **fixed)
    permuted = m.attribute(x[perm], target=[targets[i] for i in perm], **fixed)
    torch.testing.assert_close(permuted, maps[perm], rtol=0, atol=1e-6)


def test_class_wise_synthesis_does_not_depend_on_the_dataset_order():
    """The real side is a class mean over the whole dataset: any order of the examples gives the same sets."""
    images_, labels = _class_data()
    cws = ClassWiseSynthesis(shared_net())
    options = dict(classes=[0, 1, 3], iterations=2, batch_size=5, seed=1)
    reference = cws.attribute(TensorDataset(images_, labels), **options)
    got = cws.attribute(TensorDataset(images_.flip(0), labels.flip(0)), **options)  # every example moves
    torch.testing.assert_close(got.images, reference.images, rtol=0, atol=1e-5)
    # the distances read the real gradients directly (Adam's first steps hide small changes in them)
    torch.testing.assert_close(got.initial_distance, reference.initial_distance, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.final_distance, reference.final_distance, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- property: target formats, Captum as the oracle


@functools.lru_cache(maxsize=None)
def oracle():
    """Captum's IntegratedGradients on a linear model: what Captum accepts and how it reads it."""
    torch.manual_seed(0)
    return IntegratedGradients(nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, CLASSES)))


def _captum(x, target):
    return oracle().attribute(x, target=target, n_steps=2)


def _captum_forms(classes):
    """Every format Captum 0.9 accepts for these per-example classes (negative classes in lists and
    [N] tensors are not: Captum gathers them, and gather refuses negative indices)."""
    n = len(classes)
    forms = {"list_of_tuples": [(c,) for c in classes]}
    if all(c >= 0 for c in classes):
        forms.update(list=list(classes), tensor=torch.tensor(classes), tensor_int32=torch.tensor(classes,
                                                                                               dtype=torch.int32))
    if len(set(classes)) == 1:
        c = classes[0]
        forms.update(int=c, tuple=(c,), tensor_0d=torch.tensor(c), tensor_1=torch.tensor([c]),
                     tensor_1x1=torch.tensor([[c]]))
    assert n == N
    return forms


@settings(max_examples=15, deadline=None)
@given(name=st.sampled_from(METHODS), data=st.data())
def test_every_format_captum_accepts_gives_the_int_list_result(name, data):
    """Captum is the oracle: each format must give Captum's result for the equivalent int list, and
    ours must give ours for that list."""
    if data.draw(st.booleans(), label="one class for all"):
        classes = [data.draw(st.integers(-CLASSES, CLASSES - 1), label="class")] * N
    else:
        classes = data.draw(st.lists(st.integers(-CLASSES, CLASSES - 1), min_size=N, max_size=N), label="classes")
    as_list = [c % CLASSES for c in classes]
    x = images()
    m, fixed = method(name, shared_net())
    expected = m.attribute(x, target=as_list, **fixed)
    captum_expected = _captum(x, as_list)
    for form, target in _captum_forms(classes).items():
        torch.testing.assert_close(_captum(x, target), captum_expected, msg=f"Captum on {form}")
        torch.testing.assert_close(m.attribute(x, target=target, **fixed), expected, rtol=0, atol=1e-6,
                                   msg=form)


REFUSED = {
    # name: a target Captum 0.9 refuses for 3 examples of a 4-class model
    "tensor_Nx1": torch.tensor([[1], [2], [0]]),
    "tensor_1xN": torch.tensor([[1, 2, 0]]),
    "float": 1.5,
    "numpy_float": np.float64(1.0),
    "string": "cat",
    "numpy_bool": np.bool_(True),
    "float_tensor": torch.tensor([1.0, 2.0, 0.0]),
    "bool_tensor": torch.tensor([True, False, True]),
    "complex_tensor": torch.tensor([1 + 0j, 2 + 0j, 0j]),
    "list_too_short": [1],
    "list_too_long": [1, 2, 0, 1],
    "empty_list": [],
    "empty_tuple": (),
    "empty_tensor": torch.tensor([], dtype=torch.long),
    "list_of_0d_tensors": [torch.tensor(1), torch.tensor(2), torch.tensor(0)],
    "list_of_lists": [[1], [2], [0]],
    "list_of_floats": [1.0, 2.0, 0.0],
    "two_indices_for_one_dimension": (1, 2),
    "range": range(3),
    "out_of_range": [1, 2, 4],
}


@pytest.mark.parametrize("form", list(REFUSED))
def test_every_format_captum_refuses_is_refused_naming_target(form):
    target, x = REFUSED[form], images()
    with pytest.raises(Exception):  # the premise: Captum refuses it too (AssertionError, TypeError, RuntimeError)
        _captum(x, target)
    for name in METHODS:
        m, fixed = method(name, shared_net())
        with pytest.raises(AssertionError, match="^target"):  # InvalidArgument(Type)Error is an AssertionError
            m.attribute(x, target=target, **fixed)


SUPERSET = {
    # unambiguous formats we read although Captum 0.9 refuses them (the module docstring of _targets)
    "numpy_int": (np.int64(2), [2, 2, 2]),
    "numpy_array": (np.array([1, 2, 0]), [1, 2, 0]),
    "list_of_numpy_ints": ([np.int64(1), np.int32(2), np.uint8(0)], [1, 2, 0]),
    "negative_list": ([-3, -2, 0], [1, 2, 0]),
    "negative_tensor": (torch.tensor([-3, -2, 0]), [1, 2, 0]),
    "uint8_tensor": (torch.tensor([1, 2, 0], dtype=torch.uint8), [1, 2, 0]),
}


@pytest.mark.parametrize("form", list(SUPERSET))
def test_unambiguous_formats_captum_refuses_read_as_the_int_list(form):
    target, as_list = SUPERSET[form]
    x = images()
    for name in METHODS:
        m, fixed = method(name, shared_net())
        torch.testing.assert_close(m.attribute(x, target=target, **fixed),
                                   m.attribute(x, target=as_list, **fixed), rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("name", METHODS)
def test_numpy_target_inside_captum_wrappers_is_refused_saying_why(name):
    """NoiseTunnel and sensitivity_max repeat list and tensor targets with the inputs, but pass a NumPy
    array (which Captum refuses) through as is: the error must say so, not only "give one per example"."""
    x = images()
    m, fixed = method(name, shared_net())
    message = r"target is a NumPy array of 3 entries but there are 6 examples.*torch\.as_tensor\(target\)"
    with pytest.raises(InvalidArgumentError, match=message):
        NoiseTunnel(m).attribute(x, target=np.array(TARGETS), nt_samples=2, stdevs=0.1, **fixed)
    with pytest.raises(InvalidArgumentError, match=message):
        sensitivity_max(m.attribute, x, target=np.array(TARGETS), n_perturb_samples=2, **fixed)
    # the remedy the message gives works, and a NumPy array of one entry per example still reads directly
    torch.manual_seed(0)
    via_tensor = NoiseTunnel(m).attribute(x, target=torch.as_tensor(np.array(TARGETS)), nt_samples=2,
                                          stdevs=0.1, **fixed)
    torch.manual_seed(0)
    via_list = NoiseTunnel(m).attribute(x, target=TARGETS, nt_samples=2, stdevs=0.1, **fixed)
    assert torch.equal(via_tensor, via_list)
    with pytest.raises(InvalidArgumentError, match="^target is a NumPy array of 2 entries but there are 3 examples"):
        m.attribute(x, target=np.array([1, 2]), **fixed)
