"""Option effects: one test per documented option that no other test checks by value.

Audit of the options tables of docs/use/sise.md (SISE, RISE), input_agnostic.md,
classwise.md and backdoor.md. Every test here asserts what an option *does*
(a hand-computed value or an exact documented relation) on tiny models.
"""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerActivation, LayerAttribution, LayerGradientXActivation
from torch import nn
from torch.func import functional_call
from torch.utils.data import TensorDataset

from _sise_nets import Net, images
from captum_global.attr import RISE, SISE, ClassWiseSynthesis, InputAgnosticSaliency
from captum_global.backdoor import neural_cleanse, scan_for_backdoor
from captum_global.backdoor._common import low_side_index
from captum_global.maps import minmax_normalise


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


# ====================================================================== SISE


def _sise_net():
    torch.manual_seed(0)
    return Net().eval()


def _one_block_reference(model, layer, x, target, mu=0.0, baseline=0.0, budget=None):
    """SISE's block map V for one example written out by hand (score = logit, every kept map scored)."""
    acts = LayerActivation(model, layer).attribute(x)
    alpha = LayerGradientXActivation(model, layer, multiply_by_inputs=False).attribute(x, target=target)
    alpha = alpha.sum(dim=(2, 3))[0]
    alive = acts[0].flatten(1).amax(1) > acts[0].flatten(1).amin(1)
    keep = (alpha > mu * alpha.max()) & alive if mu != float("-inf") else alive.clone()
    if not keep.any():  # documented fallback: the non-constant map with the largest alpha alone
        keep = torch.zeros_like(keep)
        keep[torch.where(alive, alpha, torch.tensor(-math.inf)).argmax()] = True
    kept = [k for k in keep.nonzero().flatten().tolist()]
    if budget is not None:
        n = budget if isinstance(budget, int) else math.ceil(len(kept) * budget)
        kept = sorted(kept, key=lambda k: -float(alpha[k]))[:n]
    up = LayerAttribution.interpolate(acts, tuple(x.shape[-2:]), interpolate_mode="bilinear")
    v = torch.zeros(x.shape[-2:])
    with torch.no_grad():
        for k in kept:
            m = minmax_normalise(up[:, k:k + 1])
            s = model(baseline + m * (x - baseline))[0, target]
            v += s * m[0, 0] / m.sum()
    return minmax_normalise(v.unsqueeze(0))[0], sorted(kept), alpha


def _sise_block(model, x, target, **kwargs):
    _, maps = SISE(model, [model.block2]).attribute(x, target=target, fusion="none", similarity_threshold=None,
                                                    return_layer_maps=True, **kwargs)
    return maps["block2"][0, 0]


def test_sise_mu_keeps_maps_above_that_share_of_the_largest_alpha_and_falls_back_on_the_best():
    model, x, target = _sise_net(), images(n=1, seed=4), 1
    _, kept0, alpha = _one_block_reference(model, model.block2, x, target, mu=0.0)
    expected, kept_neg, _ = _one_block_reference(model, model.block2, x, target, mu=-0.5)
    assert float(alpha.max()) > 0 and len(kept_neg) > len(kept0)  # mu=-0.5 keeps maps mu=0 drops
    torch.testing.assert_close(_sise_block(model, x, target, mu=-0.5), expected, atol=1e-5, rtol=0)
    # mu=2: no alpha exceeds twice the largest; the best non-constant map alone is used
    fallback, kept_none, _ = _one_block_reference(model, model.block2, x, target, mu=2.0)
    assert len(kept_none) == 1
    torch.testing.assert_close(_sise_block(model, x, target, mu=2.0), fallback, atol=1e-5, rtol=0)


@pytest.mark.parametrize("baseline", [1.0, torch.tensor([0.2, 0.9, -0.4]).view(1, 3, 1, 1)])
def test_sise_baselines_blend_masks_towards_the_baseline(baseline):
    """V from masked inputs b + m (x - b), by hand, for a number and a per-channel tensor."""
    model, x, target = _sise_net(), images(n=1, seed=4), 2
    expected, _, _ = _one_block_reference(model, model.block2, x, target, baseline=baseline)
    zero, _, _ = _one_block_reference(model, model.block2, x, target, baseline=0.0)
    assert not torch.allclose(expected, zero, atol=1e-3)  # the baseline matters here
    torch.testing.assert_close(_sise_block(model, x, target, baselines=baseline), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("budget", [2, 0.5])
def test_sise_max_maps_per_layer_keeps_the_largest_alpha_maps(budget):
    """An int keeps that many kept maps, a fraction ceil(fraction x kept), by largest alpha."""
    model, x, target = _sise_net(), images(n=1, seed=4), 1
    expected, kept, _ = _one_block_reference(model, model.block2, x, target, mu=float("-inf"), budget=budget)
    _, every, _ = _one_block_reference(model, model.block2, x, target, mu=float("-inf"))
    assert len(kept) == (2 if budget == 2 else math.ceil(len(every) / 2)) < len(every)
    got = _sise_block(model, x, target, mu=float("-inf"), max_maps_per_layer=budget)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


class _Signed(nn.Module):
    """Net's logits times a per-example sign passed as a forward argument."""

    def __init__(self):
        super().__init__()
        self.net = _sise_net()

    def forward(self, x, sign):
        return self.net(x) * sign.view(-1, 1)


def test_sise_per_example_forward_arguments_follow_their_example():
    model, x, sign = _Signed().eval(), images(n=2, seed=3), torch.tensor([1.0, -1.0])
    sise = SISE(model, ["net.block1", "net.block2"])
    batch = sise.attribute(x, target=0, additional_forward_args=(sign,))
    for i in range(2):
        alone = sise.attribute(x[i:i + 1], target=0, additional_forward_args=(sign[i:i + 1],))
        torch.testing.assert_close(batch[i:i + 1], alone, atol=1e-5, rtol=0)
    plus = sise.attribute(x[1:], target=0, additional_forward_args=(torch.ones(1),))
    assert not torch.allclose(batch[1:], plus, atol=1e-3)  # example 1 was explained with its own sign


# ====================================================================== RISE


def test_rise_s_is_the_grid_and_p1_the_share_of_kept_cells():
    # s=1: one cell per mask, so every mask is constant, all ones (kept) or all zeros
    masks = torch.cat(list(RISE.masks(8, 8, n_masks=2000, s=1, p1=0.3, seed=0)))
    flat = masks.flatten(1)
    assert torch.allclose(flat.amax(1), flat.amin(1), atol=1e-6)
    assert set(torch.round(flat[:, 0]).tolist()) == {0.0, 1.0}
    share = float(flat[:, 0].round().mean())
    assert abs(share - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 2000)  # binomial, 4 standard deviations
    # s=4 on 16 px: each pixel is kept with probability p1 on average
    masks = torch.cat(list(RISE.masks(16, 16, n_masks=3000, s=4, p1=0.7, seed=1)))
    assert abs(float(masks.mean()) - 0.7) < 0.02
    # a finer grid decorrelates neighbouring pixels faster
    def neighbour_corr(m):
        a, b = m[..., :, :-4].flatten(), m[..., :, 4:].flatten()
        return float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    coarse = torch.cat(list(RISE.masks(16, 16, n_masks=500, s=2, seed=2)))
    fine = torch.cat(list(RISE.masks(16, 16, n_masks=500, s=8, seed=2)))
    assert neighbour_corr(coarse) > neighbour_corr(fine) + 0.3


def test_rise_show_progress_prints_a_bar_to_stderr(capsys):
    model, x = _sise_net(), images(n=1)
    quiet = RISE(model).attribute(x, target=0, n_masks=8, perturbations_per_eval=4)
    assert capsys.readouterr().err == ""
    loud = RISE(model).attribute(x, target=0, n_masks=8, perturbations_per_eval=4, show_progress=True)
    assert "RISE" in capsys.readouterr().err
    assert torch.equal(quiet, loud)


# ====================================================================== InputAgnosticSaliency


class _Linear(nn.Module):
    def __init__(self, shape=(2, 4, 4), classes=3, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.lin = nn.Linear(math.prod(shape), classes)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(classes, math.prod(shape), generator=g))
            self.lin.bias.zero_()

    def forward(self, x):
        return self.lin(x.flatten(1))


def _adam_by_hand(model, points, classes, n_steps, step_size, radius, betas, eps, norm, value_range):
    """The documented update, step by step, with plain autograd (every step sees the same points)."""
    b = points.shape[0]
    out = []
    for c in classes:
        rho, m, v = torch.zeros_like(points[0]), torch.zeros_like(points[0]), torch.zeros_like(points[0])
        for t in range(1, n_steps + 1):
            r = rho.clone().requires_grad_(True)
            z = points + r
            if value_range is not None:
                z = z.clamp(*value_range)
            loss = F.cross_entropy(model(z), torch.full((b,), c), reduction="sum") / b
            g = torch.autograd.grad(loss, r)[0]
            m = betas[0] * m + (1 - betas[0]) * g
            v = betas[1] * v + (1 - betas[1]) * g * g
            d = (m / (1 - betas[0] ** t)) / ((v / (1 - betas[1] ** t)).sqrt() + eps)
            if norm == "l2":
                d = d / d.norm()
            rho = rho - step_size * radius * d
            rho = rho.clamp(-radius, radius) if norm == "linf" else rho * min(1.0, radius / float(rho.norm()))
        out.append(rho)
    return torch.stack(out)


@pytest.mark.parametrize("norm, radius, value_range", [("l2", 1.5, None), ("linf", 0.3, (0.2, 0.7))])
def test_input_agnostic_several_adam_steps_by_hand(norm, radius, value_range):
    """betas, eps, step_size, radius, norm and the clip of value_range over three steps (after the
    first, Adam's bias correction no longer hides betas)."""
    model = _Linear().eval()
    points = torch.rand(4, 2, 4, 4, generator=torch.Generator().manual_seed(5))
    fixed = lambda n, shape, g: points[:n].clone()  # noqa: E731  the same samples at every step
    settings = dict(n_steps=3, step_size=0.4, radius=radius, betas=(0.5, 0.7), eps=1e-3, norm=norm)
    _, rho = InputAgnosticSaliency(model).attribute(
        torch.zeros(2, 2, 4, 4), target=[0, 2], samples_per_step=4, distribution=fixed, value_range=value_range,
        refine="none", return_perturbation=True, seed=0, **settings)
    expected = _adam_by_hand(model, points, [0, 2], value_range=value_range, **settings)
    torch.testing.assert_close(rho, expected, atol=1e-5, rtol=1e-4)
    if value_range is not None:  # clipping changed the steps: without it the result differs
        unclipped = _adam_by_hand(model, points, [0, 2], value_range=None, **settings)
        assert not torch.allclose(unclipped, expected, atol=1e-4)


class _Recorder(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.model(x)


def _first_step_points(distribution, value_range, shape=(2, 16, 16), b=64):
    rec = _Recorder(_Linear(shape)).eval()
    InputAgnosticSaliency(rec).attribute(torch.zeros(1, *shape), target=0, n_steps=1, samples_per_step=b,
                                         distribution=distribution, value_range=value_range, seed=0)
    return rec.seen[-1]  # rho = 0 at the first step: the samples themselves (clipped)


def test_input_agnostic_distributions_draw_what_the_table_says():
    uni = _first_step_points("uniform", (0.2, 0.6))
    assert uni.min() >= 0.2 and uni.max() <= 0.6 and uni.min() < 0.21 and uni.max() > 0.59
    assert abs(float(uni.mean()) - 0.4) < 0.01
    gauss = _first_step_points("gaussian", (-2.0, 6.0))  # N(2, 2^2), clipped at two sd
    q = torch.quantile(gauss.flatten(), torch.tensor([0.25, 0.5, 0.75]))
    assert abs(float(q[1]) - 2.0) < 0.05 and abs(float(q[2] - q[0]) - 1.349 * 2.0) < 0.1
    smooth = _first_step_points("smooth", (0.0, 1.0))
    assert smooth.min() >= 0 and smooth.max() <= 1
    # a bilinear upsampling of a grid 8 times coarser: linear inside each 8-pixel cell
    for part in (smooth[..., :8, :8], smooth[..., 8:, 8:]):
        assert float(part.diff(n=2, dim=-1).abs().max()) < 1e-5
        assert float(part.diff(n=2, dim=-2).abs().max()) < 1e-5
    assert float(smooth.diff(dim=-1).abs().max()) < 0.2  # smooth, unlike i.i.d. noise
    pool = torch.rand(1, 2, 16, 16, generator=torch.Generator().manual_seed(3))
    drawn = _first_step_points(pool, (0.0, 1.0), b=5)  # one sample: every draw is it
    assert torch.equal(drawn, pool.expand(5, -1, -1, -1))


def _blur(maps, sigma):
    radius = math.ceil(3 * sigma)
    kernel = torch.exp(-0.5 * (torch.arange(-radius, radius + 1.0) / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(maps.dtype)
    c = maps.shape[1]
    padded = F.pad(maps, (radius,) * 4, mode="reflect")
    out = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def test_input_agnostic_refine_and_scale_options_by_hand():
    model = _Linear((3, 12, 12), classes=4).eval()
    ias = InputAgnosticSaliency(model)
    x = torch.zeros(2, 3, 12, 12)
    common = dict(target=[1, 3], n_steps=3, samples_per_step=4, seed=0, return_perturbation=True)
    ref, rho = ias.attribute(x, refine="none", scale="none", **common)
    magnitude = rho.abs().sum(1, keepdim=True).expand_as(rho)
    torch.testing.assert_close(ref, magnitude)  # "none": the raw magnitude, on every channel
    blurred, rho_b = ias.attribute(x, refine="blur", smooth_sigma=1.0, scale="none", **common)
    assert torch.equal(rho_b, rho)  # return_perturbation gives the raw rho, whatever the refinement
    torch.testing.assert_close(blurred, _blur(rho, 1.0).abs().sum(1, keepdim=True).expand_as(rho), atol=1e-6, rtol=0)
    doubled, _ = ias.attribute(x, refine=lambda r: 2 * r, scale="none", **common)
    torch.testing.assert_close(doubled, 2 * magnitude)  # a callable: the magnitude of what it returns
    unblurred, _ = ias.attribute(x, refine="smooth", smooth_sigma=0.0, suppress=0.5, scale="none", **common)
    mag = magnitude[:, 0]
    kept = mag >= torch.quantile(mag.flatten(1), 0.5, dim=1).view(-1, 1, 1)
    torch.testing.assert_close(unblurred[:, 0], mag * kept)  # sigma 0: no blur, weakest half zeroed
    top = ref.flatten(1).amax(1).view(-1, 1, 1, 1)
    low = ref.flatten(1).amin(1).view(-1, 1, 1, 1)
    by_max, _ = ias.attribute(x, refine="none", scale="max", **common)
    torch.testing.assert_close(by_max, ref / top)
    by_minmax, _ = ias.attribute(x, refine="none", scale="minmax", **common)
    torch.testing.assert_close(by_minmax, (ref - low) / (top - low))


def test_input_agnostic_show_progress_prints_a_bar_to_stderr(capsys):
    ias = InputAgnosticSaliency(_Linear((3, 8, 8)).eval())
    quiet = ias.attribute(torch.zeros(1, 3, 8, 8), target=0, n_steps=2, samples_per_step=2, seed=0)
    assert capsys.readouterr().err == ""
    loud = ias.attribute(torch.zeros(1, 3, 8, 8), target=0, n_steps=2, samples_per_step=2, seed=0,
                         show_progress=True)
    err = capsys.readouterr().err
    assert "Input-Agnostic Saliency" in err and "2/2" in err
    assert torch.equal(quiet, loud)


# ====================================================================== ClassWiseSynthesis


def _tiny(classes=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(16, classes)).eval()


def _labelled(n=24, classes=3, size=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=gen)
    y = torch.arange(n) % classes
    x[torch.arange(n), y % 3] += 0.4
    return TensorDataset(x.clamp(0, 1), y)


def _weights(model):
    return [p for p in model.parameters() if p.dim() >= 2]


def _class_mean_gradient(model, data, c, which=None):
    x, y = data.tensors
    m = copy.deepcopy(model).eval()
    ws = _weights(m) if which is None else which(m)
    return [g.detach() for g in torch.autograd.grad(F.cross_entropy(m(x[y == c]), y[y == c]), ws)]


def _cosine_objective(model, s, c, real, which=None):
    m = copy.deepcopy(model).eval()
    ws = _weights(m) if which is None else which(m)
    grads = torch.autograd.grad(F.cross_entropy(m(s), torch.full((s.shape[0],), c)), ws, create_graph=True)
    total = s.new_zeros(())
    for g, r in zip(grads, real):
        a, b = g.reshape(g.shape[0], -1), r.reshape(r.shape[0], -1)
        total = total + (1 - (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).sum()
    return total


def test_classwise_lr_none_is_the_documented_rate_per_optimiser_and_mode():
    data, model = _labelled(), _tiny()
    method = ClassWiseSynthesis(model)
    for opts, rate in ((dict(optimizer="adam"), 0.003), (dict(optimizer="sgd", momentum=0.0), 0.1)):
        default = method.attribute(data, classes=[0], iterations=2, seed=1, **opts)
        explicit = method.attribute(data, classes=[0], iterations=2, seed=1, lr=rate, **opts)
        other = method.attribute(data, classes=[0], iterations=2, seed=1, lr=rate * 2, **opts)
        assert torch.equal(default.images, explicit.images), opts
        assert not torch.equal(default.images, other.images), opts
    moved = {k: v + 0.05 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    traj = dict(mode="trajectory", checkpoints=[model.state_dict(), moved], iterations=2, student_steps=1, seed=1)
    assert torch.equal(method.attribute(data, **traj).images, method.attribute(data, lr=0.01, **traj).images)
    assert not torch.equal(method.attribute(data, **traj).images, method.attribute(data, lr=0.02, **traj).images)


def test_classwise_sgd_momentum_and_cosine_schedule_over_two_steps_by_hand():
    """x1 = x0 - lr g0; x2 = x1 - (lr / 2) (momentum g0 + g1): the rate halves at step 2 of 2 (cosine)."""
    data, model = _labelled(), _tiny()
    start = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(2))
    lr, momentum = 0.05, 0.5
    r = ClassWiseSynthesis(model).attribute(data, classes=[1], images_per_class=2, iterations=2, optimizer="sgd",
                                            momentum=momentum, lr=lr, init=start, value_range=None)
    real = _class_mean_gradient(model, data, 1)

    def grad(x):
        x = x.clone().requires_grad_(True)
        return torch.autograd.grad(_cosine_objective(model, x, 1, real), x)[0]

    g0 = grad(start)
    x1 = start - lr * g0
    g1 = grad(x1)
    x2 = x1 - (lr / 2) * (momentum * g0 + g1)
    torch.testing.assert_close(r.images[0], x2, atol=1e-6, rtol=1e-4)
    plain = ClassWiseSynthesis(model).attribute(data, classes=[1], images_per_class=2, iterations=2,
                                                optimizer="sgd", momentum=0.0, lr=lr, init=start, value_range=None)
    torch.testing.assert_close(plain.images[0], x1 - (lr / 2) * g1, atol=1e-6, rtol=1e-4)


def test_classwise_parameters_restrict_the_matched_weights():
    data, model = _labelled(), _tiny()
    start = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(4))
    method = ClassWiseSynthesis(model)
    last = lambda m: [m[5].weight]  # noqa: E731
    for parameters in (["5"], [model[5]]):
        r = method.attribute(data, classes=[2], images_per_class=2, iterations=0, init=start, parameters=parameters)
        expected = _cosine_objective(model, start, 2, _class_mean_gradient(model, data, 2, last), last)
        assert float(r.initial_distance[0]) == pytest.approx(float(expected.detach()), rel=1e-5)
    every = method.attribute(data, classes=[2], images_per_class=2, iterations=0, init=start)
    assert float(every.initial_distance[0]) == pytest.approx(
        float(_cosine_objective(model, start, 2, _class_mean_gradient(model, data, 2)).detach()), rel=1e-5)
    assert float(every.initial_distance[0]) > float(r.initial_distance[0]) + 0.1


def test_classwise_init_noise_is_faint_around_mid_grey_and_real_takes_class_examples():
    data, model = _labelled(), _tiny()
    method = ClassWiseSynthesis(model)
    noise = method.attribute(data, images_per_class=3, iterations=0, value_range=(0.2, 0.6)).initial_images
    assert float((noise - 0.4).abs().max()) <= 0.04 + 1e-6 and float(noise.std()) > 0.01  # 10% of the range
    real = method.attribute(data, images_per_class=2, iterations=0, init="real").initial_images
    x, y = data.tensors
    for row, c in enumerate((0, 1, 2)):
        for img in real[row]:
            assert bool(((x[y == c] - img).flatten(1).abs().amax(1) == 0).any())


def test_classwise_checkpoints_per_iteration_steps_on_the_drawn_checkpoint_only():
    data, model, trajectory = _trained(_labelled(), lambda p: torch.optim.Adam(p, 0.05), with_start=False)
    method = ClassWiseSynthesis(model)
    common = dict(classes=[0], images_per_class=2, iterations=1, lr=0.01, seed=5)
    drawn = method.attribute(data, checkpoints=trajectory, checkpoints_per_iteration=1, **common).images
    alone = [method.attribute(data, checkpoints=[sd], **common).images for sd in trajectory]
    every = method.attribute(data, checkpoints=trajectory, **common).images
    assert any(torch.allclose(drawn, a, atol=1e-7) for a in alone)
    assert not torch.allclose(drawn, every, atol=1e-7)


def _trained(data, optimizer, with_start: bool, steps: int = 3):
    """``(data, model, trajectory)``: a tiny model trained ``steps`` full-batch steps on ``data``, its
    weights after every step (and before the first, ``with_start``), the model left in eval mode."""
    model = _tiny()
    x, y = data.tensors
    opt = optimizer(model.parameters())
    trajectory = [copy.deepcopy(model.state_dict())] if with_start else []
    for _ in range(steps):
        model.train()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        trajectory.append(copy.deepcopy(model.state_dict()))
    return data, model.eval(), trajectory


def _trajectory_problem():
    return _trained(_labelled(n=12), lambda p: torch.optim.SGD(p, 0.5), with_start=True)


def _student_by_hand(model, start, target, images, labels, steps, scale):
    names = [n for n, p in model.named_parameters() if p.dim() >= 2]
    state = {k: v.clone() for k, v in start.items()}
    lengths = {n: (target[n] - start[n]).norm() / steps for n in names}
    for _ in range(steps):
        ws = {n: state[n].clone().requires_grad_(True) for n in names}
        loss = F.cross_entropy(functional_call(model, {**state, **ws}, (images,)), labels)
        grads = torch.autograd.grad(loss, list(ws.values()))
        for n, g in zip(names, grads):
            state[n] = (ws[n] - scale * lengths[n] * g / g.norm()).detach()
    reached = sum(((state[n] - target[n]) ** 2).sum() for n in names)
    return reached / sum(((start[n] - target[n]) ** 2).sum() for n in names)


def test_classwise_checkpoint_gap_student_steps_and_student_batch_by_hand():
    data, model, trajectory = _trajectory_problem()
    method = ClassWiseSynthesis(model)
    common = dict(mode="trajectory", checkpoints=trajectory, iterations=0, images_per_class=2, seed=0,
                  learn_step_scale=False, step_scale=0.7)
    r = method.attribute(data, checkpoint_gap=2, student_steps=2, **common)
    assert r.initial_trajectory_distances.shape == (2,)  # starts 0 and 1 of 4 checkpoints, gap 2
    images = r.initial_images.flatten(0, 1)
    labels = torch.tensor(r.classes).repeat_interleave(2)
    for t in range(2):
        expected = _student_by_hand(model, r.trajectory[t], r.trajectory[t + 2], images, labels, 2, 0.7)
        assert float(r.initial_trajectory_distances[t]) == pytest.approx(float(expected), rel=1e-4)
    # student_batch=1: one synthetic input per step, drawn at random: the distance is that input's
    one = method.attribute(data, checkpoint_gap=1, student_steps=1, student_batch=1, **common)
    singles = [float(_student_by_hand(model, one.trajectory[0], one.trajectory[1], images[i:i + 1],
                                      labels[i:i + 1], 1, 0.7)) for i in range(images.shape[0])]
    got = float(one.initial_trajectory_distances[0])
    assert min(abs(got - s) / s for s in singles) < 1e-4
    full = float(_student_by_hand(model, one.trajectory[0], one.trajectory[1], images, labels, 1, 0.7))
    assert abs(got - full) / full > 1e-3


def test_classwise_learn_step_scale_false_keeps_the_scale_true_learns_it():
    data, model, trajectory = _trajectory_problem()
    common = dict(mode="trajectory", checkpoints=trajectory, iterations=3, student_steps=2, step_scale=0.8, seed=0)
    fixed = ClassWiseSynthesis(model).attribute(data, learn_step_scale=False, **common)
    learnt = ClassWiseSynthesis(model).attribute(data, learn_step_scale=True, **common)
    assert torch.allclose(fixed.step_scale, torch.full_like(fixed.step_scale, 0.8))
    assert not torch.allclose(learnt.step_scale, torch.full_like(learnt.step_scale, 0.8))


def test_classwise_value_range_clamps_the_set_after_every_step():
    data, model = _labelled(), _tiny()
    r = ClassWiseSynthesis(model).attribute(data, iterations=3, optimizer="sgd", lr=50.0, momentum=0.0,
                                            value_range=(0.3, 0.7))
    assert r.images.min() >= 0.3 and r.images.max() <= 0.7
    bounds = torch.tensor([0.3, 0.7])  # the big steps hit both bounds
    assert r.images.min() == bounds[0] and r.images.max() == bounds[1]
    free = ClassWiseSynthesis(model).attribute(data, iterations=3, optimizer="sgd", lr=50.0, momentum=0.0,
                                               value_range=None)
    assert free.images.min() < 0.3 and free.images.max() > 0.7


def test_classwise_spectrum_parametrization_moves_low_frequencies_first():
    data, model = _labelled(size=8), _tiny()
    start = torch.full((1, 3, 8, 8), 0.5) + 0.05 * torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))

    def low_share(parametrization):
        r = ClassWiseSynthesis(model).attribute(data, classes=[0], images_per_class=1, iterations=1,
                                                optimizer="sgd", momentum=0.0, lr=0.01, init=start,
                                                value_range=None, parametrization=parametrization)
        power = torch.fft.fft2(r.images[0, 0] - start[0]).abs() ** 2
        f = torch.sqrt(torch.fft.fftfreq(8).view(-1, 1) ** 2 + torch.fft.fftfreq(8).view(1, -1) ** 2)
        return float(power[..., f <= 0.25].sum() / power.sum())

    assert low_share("spectrum") > low_share("pixels") + 0.1


def test_classwise_show_progress_prints_bars_to_stderr(capsys):
    data, model = _labelled(), _tiny()
    ClassWiseSynthesis(model).attribute(data, iterations=2)
    assert capsys.readouterr().err == ""
    ClassWiseSynthesis(model).attribute(data, iterations=2, show_progress=True)
    err = capsys.readouterr().err
    assert "real gradients" in err and "gradient matching" in err


# ====================================================================== backdoor scans


SIZE = 16


class _Constant(nn.Module):
    """Class 0 wins every input by 5 logits, whatever the stamp: no cross-entropy gradient reaches a
    mask, so only the l1 cost (once the schedule switches it on) moves class 0's mask."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        base = torch.tensor([5.0, 0.0, 0.0, 0.0])
        return base + self.w * x.mean(dim=(1, 2, 3)).unsqueeze(1)


class _Colours(nn.Module):
    """Four classes read from the channel means: every class reachable by a large enough stamp."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(12.0))

    def forward(self, x):
        means = x.mean(dim=(2, 3))
        colour = self.scale * (means - means.mean(1, keepdim=True))
        grey = self.scale * (0.12 - (means.max(1).values - means.min(1).values)).unsqueeze(1)
        return torch.cat([grey, colour], dim=1)


def _clean(n=8, seed=0):
    # the backdoor tests' clean images (one dominant colour each), at the same size
    from test_backdoor import SIZE as BACKDOOR_SIZE, coloured_images

    assert BACKDOOR_SIZE == SIZE
    return coloured_images(n, seed)


def _tanh_free(values):
    return torch.atanh((values - 0.5) * (2 - 1e-6))


def _from_free(free):
    return torch.tanh(free) / (2 - 1e-6) + 0.5


def _adam_first_step(t, betas):
    """Size of Adam's first non-zero step taken at step t (zero gradients before): lr times this."""
    return ((1 - betas[0]) / (1 - betas[0] ** t)) / math.sqrt((1 - betas[1]) / (1 - betas[1] ** t))


def test_scan_patience_lr_cells_and_check_every_by_hand():
    """Class 0 is reached from the start; its cost switches on after `patience` successful checks, then
    Adam (betas 0.5, 0.9) shrinks every cell's free parameter by lr x (first-step factor). The statistic
    is the mean l1 over the check's steps, each taken before its step."""
    x = _clean()
    opts = dict(cells=4, check_every=2, batch_size=4, patience=2, lr=0.3)
    before = scan_for_backdoor(_Constant(), x[:1], clean_inputs=x, seed=0, n_steps=4, **opts)
    mask0 = before.trigger_masks[0]
    # cell side 16 / 4 = 4 pixels: the mask is constant on 4 x 4 blocks
    assert torch.equal(mask0, mask0[::4, ::4].repeat_interleave(4, 0).repeat_interleave(4, 1))
    assert float(before.statistics["mask_l1"][0]) == pytest.approx(float(mask0.sum()), rel=1e-5)  # never moved
    after = scan_for_backdoor(_Constant(), x[:1], clean_inputs=x, seed=0, n_steps=6, **opts)
    cells = mask0[::4, ::4]
    moved = _from_free(_tanh_free(cells) - 0.3 * _adam_first_step(5, (0.5, 0.9)))
    expected = (16 * cells.sum() + 16 * moved.sum()) / 2
    assert float(after.statistics["mask_l1"][0]) == pytest.approx(float(expected), rel=1e-4)
    later = scan_for_backdoor(_Constant(), x[:1], clean_inputs=x, seed=0, n_steps=6, **dict(opts, patience=3))
    assert float(later.statistics["mask_l1"][0]) == pytest.approx(float(mask0.sum()), rel=1e-5)


def test_neural_cleanse_patience_lr_betas_and_batch_size_by_hand():
    x = _clean()
    opts = dict(batch_size=4, patience=2, lr=0.2, betas=(0.6, 0.8))  # two batches per epoch
    before = neural_cleanse(_Constant(), x, seed=0, n_epochs=2, **opts)
    mask0 = before.trigger_masks[0]
    assert float(before.statistics["mask_l1"][0]) == pytest.approx(float(mask0.sum()), rel=1e-5)
    after = neural_cleanse(_Constant(), x, seed=0, n_epochs=3, **opts)
    moved = _from_free(_tanh_free(mask0) - 0.2 * _adam_first_step(5, (0.6, 0.8)))
    expected = (mask0.sum() + moved.sum()) / 2
    assert float(after.statistics["mask_l1"][0]) == pytest.approx(float(expected), rel=1e-4)
    # 4 labels x (3 epochs x 8 inputs + 8 for the attack success)
    assert after.num_evaluations == 4 * (3 * 8 + 8)


def test_scan_step_and_input_counts():
    x = _clean()
    base = dict(check_every=2, batch_size=4, cells=4, seed=0)
    # n_steps exactly, the last check shorter; 4 classes x 4 inputs per step; + attack success on all 8
    s = scan_for_backdoor(_Colours(), x[:1], clean_inputs=x, n_steps=5, **base)
    assert s.settings["steps_run"] == 5 and s.num_evaluations == 5 * 4 * 4 + 4 * 8
    # held_out: 2 of the 8 inputs judge the attack success, the other 6 are searched on
    h = scan_for_backdoor(_Colours(), x[:1], clean_inputs=x, n_steps=5, held_out=0.25, **base)
    assert h.num_evaluations == 5 * 4 * 4 + 4 * 2
    assert all(float(a) * 2 == int(float(a) * 2) for a in h.attack_success)
    # without clean inputs: num_noise_samples smooth images (one more pass: their own classes)
    n = scan_for_backdoor(_Colours(), x[:1], n_steps=5, num_noise_samples=10, **base)
    assert n.settings["num_inputs"] == 10 and n.num_evaluations == 5 * 4 * 4 + 4 * 10 + 10
    # classes: a subset, negative indices resolved
    c = scan_for_backdoor(_Colours(), x[:1], clean_inputs=x, n_steps=5, classes=[3, 1, -4], **base)
    assert c.classes == [3, 1, 0] and c.trigger_masks.shape == (3, SIZE, SIZE)
    assert c.num_evaluations == 5 * 3 * 4 + 3 * 8


def test_scan_cells_rounding_value_range_threshold_and_noise_floor():
    x = _clean()
    opts = dict(n_steps=8, check_every=2, batch_size=4, seed=0)
    s = scan_for_backdoor(_Colours(), x[:1], clean_inputs=x, cells=3, value_range=(0.2, 0.4), **opts)
    assert s.settings["cell_pixels"] == 6  # 16 / 3 rounded up
    for m in s.trigger_masks:
        for rows in (slice(0, 6), slice(6, 12), slice(12, 16)):
            for cols in (slice(0, 6), slice(6, 12), slice(12, 16)):
                block = m[rows, cols]
                assert float(block.max() - block.min()) == 0.0
    assert s.trigger_patterns.min() >= 0.2 and s.trigger_patterns.max() <= 0.4
    for floor in (0.1, 0.7):
        f = scan_for_backdoor(_Colours(), x[:1], clean_inputs=x, cells=4, noise_floor=floor, **opts)
        expected = low_side_index(f.statistics["mask_l1"].double().log(), min_scale=floor).float()
        torch.testing.assert_close(f.anomaly_index, expected)
    top = float(f.anomaly_index.max())
    assert top > 0
    for threshold, flagged in ((top * 0.99, True), (top * 1.01, False)):
        t = scan_for_backdoor(_Colours(), x[:1], clean_inputs=x, cells=4, noise_floor=0.7, threshold=threshold,
                              **opts)
        assert torch.equal(t.anomaly_index, f.anomaly_index)
        assert t.flagged == ([f.classes[int(f.anomaly_index.argmax())]] if flagged else [])


def test_neural_cleanse_value_range_bounds_the_patterns():
    nc = neural_cleanse(_Colours(), _clean(), seed=0, n_epochs=2, batch_size=4, value_range=(0.2, 0.4))
    assert nc.trigger_patterns.min() >= 0.2 and nc.trigger_patterns.max() <= 0.4


def test_scan_class_maps_are_input_agnostic_saliency_maps():
    x = _clean()
    model = _Colours()
    s = scan_for_backdoor(model, x[:1], clean_inputs=x, n_steps=2, check_every=2, batch_size=4, cells=4, seed=3,
                          class_maps=True)
    expected = InputAgnosticSaliency(model).attribute(x[:1].expand(4, -1, -1, -1), target=[0, 1, 2, 3],
                                                      distribution=x, seed=3)
    torch.testing.assert_close(s.maps, expected)
    plain = scan_for_backdoor(model, x[:1], clean_inputs=x, n_steps=2, check_every=2, batch_size=4, cells=4, seed=3)
    torch.testing.assert_close(plain.maps, plain.trigger_masks.unsqueeze(1) * plain.trigger_patterns)


def test_backdoor_show_progress_prints_bars_to_stderr(capsys):
    x = _clean()
    scan_for_backdoor(_Colours(), x[:1], clean_inputs=x, n_steps=2, check_every=2, batch_size=4, cells=4)
    neural_cleanse(_Colours(), x, n_epochs=1, batch_size=8)
    assert capsys.readouterr().err == ""
    scan_for_backdoor(_Colours(), x[:1], clean_inputs=x, n_steps=2, check_every=2, batch_size=4, cells=4,
                      show_progress=True)
    assert "scan_for_backdoor" in capsys.readouterr().err
    neural_cleanse(_Colours(), x, n_epochs=1, batch_size=8, show_progress=True)
    assert "Neural Cleanse" in capsys.readouterr().err
