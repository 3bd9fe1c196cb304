"""Every method on the model families people have: torchvision CNNs, transformers, tutorial nets.

Random weights (nothing can be downloaded); BatchNorm statistics are
calibrated on random images so that deep nets do not collapse to a constant
output (a random MobileNet in eval mode returns logits of 1e-10).
"""
import pytest
import torch
import torchvision
from torch import nn
import torch.nn.functional as F
from torchvision.models.vision_transformer import VisionTransformer

from captum_global.attr import RISE, SISE, ClassWiseSynthesis, InputAgnosticSaliency, select_sise_layers
from captum_global.backdoor import neural_cleanse, scan_for_backdoor
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError

torch.set_num_threads(1)
tvm = torchvision.models


def _meta(ctor, px, **kw):
    with torch.device("meta"):
        return ctor(weights=None, **kw).eval(), torch.zeros(1, 3, px, px)


def _calibrated(net, px, seed=0):
    torch.manual_seed(seed)
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for b in bns:
        b.momentum = None
        b.reset_running_stats()
    net.train()
    with torch.no_grad():
        net(torch.rand(4, 3, px, px))
    for b in bns:
        b.momentum = 0.1
    return net.eval()


def _state(net):
    return dict(
        weights={k: v.clone() for k, v in net.state_dict().items()},
        training=[m.training for m in net.modules()],
        requires_grad=[p.requires_grad for p in net.parameters()],
        grads=[p.grad is None for p in net.parameters()],
        hooks=sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in net.modules()),
    )


def _assert_same_state(before, after):
    assert before["weights"].keys() == after["weights"].keys()
    for k in before["weights"]:
        assert torch.equal(before["weights"][k], after["weights"][k]), k  # weights and BN running stats
    for key in ("training", "requires_grad", "grads", "hooks"):
        assert before[key] == after[key], key


METHODS = {
    "SISE": lambda m, x: SISE(m).attribute(x, target=1, max_maps_per_layer=2, perturbations_per_eval=64),
    "RISE": lambda m, x: RISE(m).attribute(x, target=1, n_masks=8),
    "IAS": lambda m, x: InputAgnosticSaliency(m).attribute(x, target=1, n_steps=2, samples_per_step=2, seed=0),
}


# --- SISE's block discovery on the families --------------------------------------------------------------

@pytest.mark.parametrize("ctor,expected", [
    (tvm.mobilenet_v2, ["features.1", "features.3", "features.6", "features.13"]),
    (tvm.mobilenet_v3_small, ["features.0", "features.1", "features.3", "features.8"]),
    (tvm.efficientnet_b0, ["features.1", "features.2", "features.3", "features.5"]),
], ids=["mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0"])
def test_cifar_sized_inputs_end_on_the_block_not_the_next_expansion(ctor, expected):
    # at 32 px the last stride-2 stage goes to 1x1: the last block is what feeds it, not its 1x1 expansion
    net, x = _meta(ctor, 32)
    assert select_sise_layers(net, x) == expected


def test_inception_v3_gets_one_layer_per_block():
    # valid 3x3 convolutions trim a border (149 -> 147): no down-sampling; the reduction blocks'
    # parallel branches (Mixed_6a, Mixed_7a) end the block at their input, not inside a branch
    net, x = _meta(tvm.inception_v3, 299, aux_logits=False, init_weights=False)
    assert select_sise_layers(net, x) == ["Conv2d_2b_3x3", "Conv2d_4a_3x3", "Mixed_5d", "Mixed_6e", "Mixed_7c"]


@pytest.mark.parametrize("ctor,px,expected,kw", [
    (tvm.googlenet, 224, ["conv1", "conv3", "inception3b", "inception4e", "inception5b"],
     dict(aux_logits=False, init_weights=False)),
    (tvm.shufflenet_v2_x0_5, 64, ["conv1", "maxpool", "stage2", "stage3", "conv5"], {}),
    (tvm.squeezenet1_0, 224, ["features.1", "features.5", "features.10", "classifier.2"], {}),
    (tvm.vgg11_bn, 32, ["features.2", "features.6", "features.13", "features.20"], {}),
], ids=["googlenet", "shufflenet_v2", "squeezenet1_0", "vgg11_bn"])
def test_more_torchvision_families(ctor, px, expected, kw):
    net, x = _meta(ctor, px, **kw)
    assert select_sise_layers(net, x) == expected


class _Permute(nn.Module):
    def __init__(self, *dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.permute(*self.dims)


class TinySwin(nn.Module):
    """Swin's layout: a patch-embedding convolution, channels-last [N, h, w, C] tokens, a patch
    merging, and a permute back to [N, C, h, w] before the pooling."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 12, 4, stride=4)
        self.to_tokens = _Permute(0, 2, 3, 1)
        self.stage1 = nn.Sequential(nn.LayerNorm(12), nn.Linear(12, 12), nn.GELU())
        self.merge = nn.Linear(48, 16)
        self.permute = _Permute(0, 3, 1, 2)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))

    def forward(self, x):
        t = self.stage1(self.to_tokens(self.embed(x)))
        n, h, w, c = t.shape
        t = t.reshape(n, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(n, h // 2, w // 2, 4 * c)
        return self.head(self.permute(self.merge(t)))


def test_transformer_without_conv_blocks_names_the_layers_to_pass():
    torch.manual_seed(0)
    net, x = TinySwin().eval(), torch.rand(1, 3, 32, 32)
    with pytest.raises(InvalidArgumentError, match=r"no spatial layer to pick.*\['embed', 'permute'\].*layers=\[") as e:
        SISE(net).attribute(x, target=1)
    assert isinstance(e.value, ValueError)
    attr = SISE(net, layers=["embed", "permute"]).attribute(x, target=1)
    assert attr.shape == x.shape and float(attr.max()) == 1.0


def test_channels_last_token_layer_is_refused_not_read_as_a_map():
    # [N, h, w, C] tokens are 4-D, but not an h-channel map of w x C pixels: naming them is refused
    net, x = TinySwin().eval(), torch.rand(1, 3, 32, 48)
    before = _state(net)
    with pytest.raises(InvalidArgumentError, match=r"layers: 'stage1' returns shape \(1, 8, 12, 12\), which is not "
                                                   r"an \[N, C, h, w\] map of the 32x48 input"):
        SISE(net, layers=["stage1"]).attribute(x, target=1)
    _assert_same_state(before, _state(net))


def test_no_block_error_without_any_map_says_so():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(48, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(InvalidArgumentError, match="no block outputs to explain with$"):
        select_sise_layers(mlp, torch.rand(1, 3, 4, 4))


def test_vit_patch_embedding_is_its_only_map():
    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32,
                            num_classes=4).eval()
    nn.init.normal_(vit.heads.head.weight)  # torchvision zero-initialises the head: a constant model
    x = torch.rand(1, 3, 32, 32)
    assert select_sise_layers(vit, x) == ["conv_proj"]
    for name, method in METHODS.items():
        a, b = method(vit, x), method(vit, x)
        assert a.shape == x.shape and torch.equal(a, b), name
        assert float(a.max()) > 0, name


# --- every method on real torchvision CNNs -----------------------------------------------------------------

FAST = {
    "resnet18": lambda: tvm.resnet18(weights=None, num_classes=5),
    "mobilenet_v2": lambda: tvm.mobilenet_v2(weights=None, num_classes=5),
    "shufflenet_v2_x0_5": lambda: tvm.shufflenet_v2_x0_5(weights=None, num_classes=5),
    "squeezenet1_0": lambda: tvm.squeezenet1_0(weights=None, num_classes=5),
    "regnet_y_400mf": lambda: tvm.regnet_y_400mf(weights=None, num_classes=5),
}
SLOW = {
    "vgg11_bn": lambda: tvm.vgg11_bn(weights=None, num_classes=5),
    "mobilenet_v3_small": lambda: tvm.mobilenet_v3_small(weights=None, num_classes=5),
    "efficientnet_b0": lambda: tvm.efficientnet_b0(weights=None, num_classes=5),
    "densenet121": lambda: tvm.densenet121(weights=None, num_classes=5),
    "convnext_tiny": lambda: tvm.convnext_tiny(weights=None, num_classes=5),
    "googlenet": lambda: tvm.googlenet(weights=None, num_classes=5, aux_logits=False, init_weights=True),
}


def _check_family(build, px=32):
    net = _calibrated(build(), px).train()  # in train mode: the flags must come back
    for p in list(net.parameters())[:3]:
        p.requires_grad_(False)
    x = torch.rand(2, 3, px, px)
    rng = torch.get_rng_state()
    before = _state(net)
    # raw outputs for RISE: a random net's softmax saturates, and a saturated class rightly gets a zero map
    methods = {**METHODS, "RISE": lambda m, x: RISE(m).attribute(x, target=1, n_masks=8, apply_softmax=False)}
    for name, method in methods.items():
        a = method(net, x)
        assert a.shape == x.shape, name
        assert bool(torch.isfinite(a).all()), name
        assert name == "RISE" or float(a.min()) >= 0, name  # raw logits weigh RISE's masks with their sign
        assert float(a.abs().max()) > 0, name  # calibrated nets carry signal
        assert torch.equal(a, method(net, x)), name
        assert torch.equal(a[:, 0], a[:, 2]), name  # one map per example, on every channel
        _assert_same_state(before, _state(net))
        assert torch.equal(rng, torch.get_rng_state()), name


@pytest.mark.parametrize("name", sorted(FAST))
def test_every_method_on_torchvision_family(name):
    _check_family(FAST[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SLOW))
def test_every_method_on_larger_torchvision_family(name):
    _check_family(SLOW[name])


@pytest.mark.slow
def test_swin_t_errors_then_works_with_the_named_layers():
    torch.manual_seed(0)
    net, x = tvm.swin_t(weights=None, num_classes=4).eval(), torch.rand(1, 3, 64, 64)
    with pytest.raises(InvalidArgumentError, match=r"\['features.0.0', 'permute'\]"):
        SISE(net).attribute(x, target=1)
    with pytest.raises(InvalidArgumentError, match="'features.1' returns shape"):
        SISE(net, layers=["features.1"]).attribute(x, target=1)
    assert SISE(net, layers=["permute"]).attribute(x, target=1).shape == x.shape


# --- the small nets of tutorials, and what users wrap them in ------------------------------------------------

class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 5), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2 = nn.Linear(16 * 5 * 5, 32), nn.Linear(32, 4)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


def _small(inplace=False, final=None):
    layers = [nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=inplace), nn.MaxPool2d(2),
              nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=inplace), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
              nn.Linear(8, 4)]
    return nn.Sequential(*layers, *([final] if final is not None else []))


def test_lenet_valid_convolutions_are_not_down_samplings():
    # conv2 trims 14 -> 10 (a valid 5x5): the blocks end before the two functional pools
    assert select_sise_layers(LeNet(), torch.rand(1, 3, 32, 32)) == ["conv1", "conv2"]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_channels_last_inplace_and_compiled_models_agree_with_the_plain_model(name):
    torch.manual_seed(0)
    plain = _calibrated(_small(), 16)
    x = torch.rand(2, 3, 16, 16)
    expected = METHODS[name](plain, x)
    inplace = _small(inplace=True)
    inplace.load_state_dict(plain.state_dict())
    inplace.eval()
    chl = _small()
    chl.load_state_dict(plain.state_dict())
    chl = chl.eval().to(memory_format=torch.channels_last)
    for variant, xv in ((inplace, x), (chl, x.contiguous(memory_format=torch.channels_last)),
                        (torch.compile(inplace, backend="eager"), x)):
        torch.testing.assert_close(METHODS[name](variant, xv), expected, rtol=1e-5, atol=1e-6)


class DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = _small()

    def forward(self, x):
        return {"logits": self.net(x)}


class TupleOut(DictOut):
    def forward(self, x):
        return self.net(x), x.mean()


_DS = torch.utils.data.TensorDataset(torch.rand(8, 3, 16, 16), torch.arange(8) % 4)
_CLEAN = torch.rand(6, 3, 16, 16)
ALL = {
    **METHODS,
    "scan": lambda m, x: scan_for_backdoor(m, x[:1], clean_inputs=_CLEAN, n_steps=2, cells=4,
                                           batch_size=2, check_every=1),
    "NC": lambda m, x: neural_cleanse(m, _CLEAN, n_epochs=1, batch_size=3),
    "CWS": lambda m, x: ClassWiseSynthesis(m).attribute(_DS, iterations=1),
}


@pytest.mark.parametrize("wrapper,kind", [(DictOut, "dict"), (TupleOut, "tuple")])
@pytest.mark.parametrize("name", sorted(ALL))
def test_dict_and_tuple_outputs_are_a_clear_error_and_leave_the_model_alone(name, wrapper, kind):
    net, x = wrapper().train(), _CLEAN[:2]
    before, rng = _state(net), torch.get_rng_state()
    with pytest.raises(InvalidArgumentTypeError, match=rf"must return one tensor of scores \[N, \.\.\.\], got a "
                                                       rf"{kind}; wrap the model"):
        ALL[name](net, x)
    _assert_same_state(before, _state(net))
    assert torch.equal(rng, torch.get_rng_state())


def test_softmax_at_the_end_and_extra_forward_args():
    torch.manual_seed(0)
    body = _calibrated(_small(), 16)
    probs = nn.Sequential(body, nn.Softmax(dim=1)).eval()
    x = torch.rand(2, 3, 16, 16)
    # RISE on probabilities with apply_softmax=False is RISE on logits with apply_softmax=True
    torch.testing.assert_close(RISE(probs).attribute(x, target=1, n_masks=8, apply_softmax=False),
                               RISE(body).attribute(x, target=1, n_masks=8))

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = body

        def forward(self, x, scale, shift=0.0):
            return self.body(x) * scale + shift

    scaled, scale = Scaled().eval(), torch.tensor([[2.0], [2.0]])
    for name, method in (("SISE", lambda m, **kw: SISE(m).attribute(x, target=1, **kw)),
                         ("RISE", lambda m, **kw: RISE(m).attribute(x, target=1, n_masks=8, apply_softmax=False,
                                                                     **kw))):
        # a positive scale and a shift change neither SISE's nor RISE's (normalised / linear) map
        got = method(scaled, additional_forward_args=(scale, 0.0))
        torch.testing.assert_close(got, method(body) * (2.0 if name == "RISE" else 1.0), msg=name)
