"""A new user's mistakes, as they meet them: the command line names the option they typed (never the
library's argument), refuses bad --out folders, unreadable files and single image files without a
traceback, and stops on Ctrl-C with status 130; the reference world refuses bad arguments with the
package's error and a NaN model output with NonFiniteOutputError; the robustness explanations refuse
weights made under inference_mode; the quantus explain() leaves the model and the global RNG as found."""
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from captum_global.cli import main
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError, NonFiniteOutputError

sys.path.insert(0, str(Path(__file__).parent))
from _cli_errors import usage_error  # noqa: E402

torch.set_num_threads(1)

NETS = """
from torch import nn
def net(num_classes=4):
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes))
def five(num_classes=4):
    return nn.Sequential(nn.Conv2d(5, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes))
def broken(num_classes=4):
    raise ValueError("bug in the user's code")
"""


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """A user's module on sys.path, its weights (state dict and TorchScript), images and a tensor file."""
    root = tmp_path_factory.mktemp("user errors")
    (root / "user_error_nets.py").write_text(NETS)
    sys.path.insert(0, str(root))
    import user_error_nets

    torch.manual_seed(0)
    save_file(user_error_nets.net().state_dict(), str(root / "net.safetensors"))
    save_file(user_error_nets.five().state_dict(), str(root / "five.safetensors"))
    with pytest.warns(FutureWarning):
        torch.jit.script(user_error_nets.net().eval()).save(str(root / "net.ts"))
    (root / "imgs").mkdir()
    (root / "empty").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / "imgs" / f"{i}.png")
    save_file({"images": torch.rand(4, 3, 16, 16)}, str(root / "images.safetensors"))
    (root / "labels.csv").write_text("0.png,1\n1.png,7\n2.png,0\n")
    yield root
    sys.path.remove(str(root))
    sys.modules.pop("user_error_nets", None)


def _argv(user, argv):
    return [str(user / a[1:]) if a.startswith("@") else a for a in argv]


MODEL = ["--model", "@net.safetensors", "--arch", "user_error_nets:net", "--input-shape", "3,16,16"]
SCAN = ["scan", *MODEL, "--out", "@never"]
EXPLAIN = ["explain", *MODEL, "--out", "@never", "--quiet"]

# (argv, the message as the user must read it, library names it must not show)
LIBRARY_ERRORS = [
    (SCAN + ["--std", "0,1,1"], "error: --std value 1 must be > 0.0, got 0.0", ["std[0]"]),
    (SCAN + ["--std", "1,1"], "error: --std must hold 1 or 3 values, got 2", []),
    (SCAN + ["--mean", "0.5,0.5"], "error: --mean must hold 1 or 3 values, got 2", []),
    (SCAN + ["--value-range", "1,1"], "error: --value-range must have low < high, got (1.0, 1.0)", ["value_range"]),
    (["scan", "--model", "@net.safetensors", "--arch", "user_error_nets:net", "--input-shape", "1,16,16",
      "--out", "@never"],
     "error: --input-shape: the model from", ["input_shape"]),
    (SCAN + ["--num-classes", "5"], "do not fit --arch 'user_error_nets:net'", ["arch=", "num_classes"]),
    (SCAN + ["--num-classes", "5"], "(the file's classifier has 4 outputs: pass --num-classes 4?)", []),
    (["scan", "--model", "@net.safetensors", "--input-shape", "3,16,16", "--out", "@never"],
     "error: --arch is required: ", ["arch is"]),
    (["scan", "--model", "@net.safetensors", "--arch", "vgg", "--input-shape", "3,16,16", "--out", "@never"],
     "error: --model: the weights in ", ["SmallVGG", "path:"]),
    (["scan", "--model", "@net.safetensors", "--arch", "vgg", "--input-shape", "3,16,16", "--out", "@never"],
     "do not fit --arch 'vgg':", []),
    (["scan", "--model", "@net.ts", "--arch", "user_error_nets:net", "--input-shape", "3,16,16", "--out", "@never"],
     "error: --arch 'user_error_nets:net' given but", ["arch="]),
    (["scan", "--model", "@net.ts", "--num-classes", "5", "--input-shape", "3,16,16", "--out", "@never"],
     "error: --num-classes 5 but the model from", ["num_classes"]),
    (["scan", "--model", "@net.safetensors", "--arch", "user_error_nets:broken", "--input-shape", "3,16,16",
      "--out", "@never"], "error: --arch 'user_error_nets:broken': calling it failed: ValueError: bug in", []),
    (SCAN + ["--clean", "@empty"], "error: --clean: no image files", ["images:"]),
    (EXPLAIN + ["--method", "Saliency", "--std", "-1", "--images", "@imgs"], "error: --std value 1 must be > 0.0", []),
    (EXPLAIN + ["--method", "LayerGradCam", "--layer", "nosuch", "--images", "@images.safetensors"],
     "error: --layer 'nosuch' is not a submodule name of the model", ["layer="]),
    (EXPLAIN + ["--method", "Saliency", "--layer", "0", "--images", "@images.safetensors"],
     "error: --layer '0' given but method Saliency reads no layer", []),
    (EXPLAIN + ["--method", "NoiseTunnel", "--images", "@images.safetensors"],
     "error: --method 'NoiseTunnel' is not a known attribution", ["method="]),
    (EXPLAIN + ["--method", "Occlusion", "--images", "@images.safetensors"],
     "error: --method Occlusion needs ['sliding_window_shapes']", []),
    (EXPLAIN + ["--method", "Saliency", "--images", "@images.safetensors", "--target", "7"],
     "error: --target 7 is out of range", []),
    (EXPLAIN + ["--method", "Saliency", "--images", "@imgs", "--labels", "@images.safetensors"],
     "error: --labels: ", ["labels:"]),
    (EXPLAIN + ["--method", "Saliency", "--images", "@empty"], "error: --images: no image files", ["images:"]),
    (EXPLAIN + ["--method", "Saliency", "--images", "@imgs", "--labels", "@labels.csv"],  # target="labels"
     "error: --labels: label 7 of example 1 (1.png) is not a class 0..3", ["target"]),
    (["layers", "user_error_nets:broken"], "error: model 'user_error_nets:broken': calling it failed", ["arch="]),
]


@pytest.mark.parametrize("argv, message, hidden", LIBRARY_ERRORS, ids=[m for _, m, _ in LIBRARY_ERRORS])
def test_library_errors_name_the_option_the_user_typed(user, capsys, argv, message, hidden):
    err = usage_error(_argv(user, argv), capsys)
    assert message in err
    assert not any(re.search(rf"(?<![\w-]){re.escape(name)}", err) for name in hidden), err  # not '--arch is'
    assert not (user / "never").exists()


def test_a_message_that_names_the_option_already_is_left_alone(user, capsys):
    err = usage_error(_argv(user, EXPLAIN + ["--method", "Saliency", "--images", "@images.safetensors",
                                             "--method-args", '{"bogus": 1}']), capsys)
    assert "error: attribute_kwargs ['bogus'] (--method-args on the command line): Saliency.attribute" in err


@pytest.mark.parametrize("command", [["scan"], ["demo"], ["explain", "--method", "Saliency", "--images", "@imgs"]])
def test_out_must_be_a_folder_that_can_be_made(user, capsys, command):
    for out, message in (("", "argument --out: expected a folder path, got an empty value"),
                         ("@net.ts", f"argument --out: {str(user / 'net.ts')!r} is a file, not a folder"),
                         ("@net.ts/sub", f"argument --out: {str(user / 'net.ts' / 'sub')!r} cannot be made: "
                                         f"{str(user / 'net.ts')!r} is a file, not a folder")):
        assert message in usage_error(_argv(user, command + ["--out", out]), capsys)


@pytest.mark.skipif(not Path("/proc/self/mem").is_file(), reason="needs a file that exists but cannot be read")
@pytest.mark.parametrize("argv, option", [
    (["scan", "--model", "/proc/self/mem", "--arch", "user_error_nets:net", "--input-shape", "3,16,16"], "--model"),
    (SCAN + ["--clean", "/proc/self/mem"], "--clean"),
    (EXPLAIN + ["--method", "Saliency", "--images", "/proc/self/mem"], "--images"),
    (EXPLAIN + ["--method", "Saliency", "--images", "@imgs", "--labels", "/proc/self/mem"], "--labels"),
])
def test_a_file_that_cannot_be_read_is_a_usage_error(user, capsys, argv, option):
    # /proc/self/mem exists and cannot be read from its start, as a file without read permission (root reads those)
    err = usage_error(_argv(user, argv), capsys)
    assert f"error: {option}: cannot read '/proc/self/mem': Input/output error" in err


@pytest.mark.parametrize("argv, option", [(SCAN + ["--clean", "@imgs/0.png"], "--clean"),
                                          (EXPLAIN + ["--method", "Saliency", "--images", "@imgs/0.png"], "--images")])
def test_one_image_file_where_a_folder_or_tensor_file_is_expected(user, capsys, argv, option):
    err = usage_error(_argv(user, argv), capsys)
    assert f"error: {option} {str(user / 'imgs' / '0.png')!r} is one image file; give the folder" in err
    assert "torch.load" not in err


@pytest.mark.parametrize("argv, option", [(["scan", "--clean", "@imgs"], "--clean"),
                                          (["explain", "--method", "Saliency", "--images", "@imgs", "--quiet"],
                                           "--images")])
def test_an_image_folder_for_a_model_of_five_channels(user, capsys, argv, option):
    five = ["--model", "@five.safetensors", "--arch", "user_error_nets:five", "--input-shape", "5,16,16"]
    err = usage_error(_argv(user, argv[:1] + five + argv[1:] + ["--out", "@never"]), capsys)
    assert f"{option} {str(user / 'imgs')!r} is a folder of images, which have 1 or 3 channels, but " \
           "--input-shape 5,16,16 takes 5: give a tensor file [N, 5, 16, 16] instead" in err
    assert "channels must be" not in err


def test_explain_help_says_which_captum_classes_it_does_not_take(capsys):
    with pytest.raises(SystemExit):
        main(["explain", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "not the Neuron* classes nor wrappers such as NoiseTunnel (an unknown name lists the others)" in help_text


def test_ctrl_c_while_the_arguments_are_checked_exits_130(monkeypatch, capsys):
    import captum_global.loading

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(captum_global.loading, "torchvision_classifiers", interrupted)  # read by the --arch check
    assert main(["layers", "resnet18"]) == 130
    err = capsys.readouterr().err
    assert err == "captum-global: interrupted\n"


# --- the reference world ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world_data():
    from captum_global.world import make_dataset

    return make_dataset(6, seed=0)


def test_poison_and_flip_refuse_bad_arguments_with_the_package_errors(world_data):
    from captum_global.world import flip_labels, poison_dataset, reference_trigger

    trigger = reference_trigger("patch")
    cases = [
        (lambda: poison_dataset(world_data, trigger, target_class=5), InvalidArgumentError,
         "target_class must be <= 4, got 5"),
        (lambda: poison_dataset(world_data, trigger, target_class=True), InvalidArgumentTypeError,
         "target_class must be an int, got bool True"),
        (lambda: poison_dataset(world_data, trigger, rate=float("nan")), InvalidArgumentError,
         "rate must be a number, got NaN"),
        (lambda: poison_dataset(world_data, trigger, rate=1.5), InvalidArgumentError, "rate must be <= 1.0, got 1.5"),
        (lambda: flip_labels(world_data, source=-1, dest=2, share=0.5), InvalidArgumentError,
         "source must be >= 0, got -1"),
        (lambda: flip_labels(world_data, source=1, dest=9, share=0.5), InvalidArgumentError,
         "dest must be <= 4, got 9"),
        (lambda: flip_labels(world_data, source=1, dest=1, share=0.5), InvalidArgumentError,
         "source and dest must differ, got 1 for both"),
        (lambda: flip_labels(world_data, source=1, dest=2, share="half"), InvalidArgumentTypeError,
         "share must be a number, got str 'half'"),
    ]
    for call, error, message in cases:
        with pytest.raises(error) as info:
            call()
        assert str(info.value) == message


def test_every_world_argument_check_raises_the_package_error():
    from captum_global.world import build_model, reference_trigger, training_settings, zoo_entry
    from captum_global.world.models import torchvision_model
    from captum_global.world.triggers import Trigger, make_trigger, patch_trigger, sig_trigger

    cases = [
        (lambda: build_model("alexnet"), "arch must be one of ('vgg', 'resnet'), got 'alexnet'"),
        (lambda: torchvision_model("nope"), "name must be one of"),
        (lambda: reference_trigger("nope"), "variant must be one of"),
        (lambda: training_settings("vgg", "nope"), "variant must be one of"),
        (lambda: training_settings("vgg", bogus=1), "unknown training settings ['bogus']"),
        (lambda: zoo_entry("nope"), "name must be one of"),
        (lambda: make_trigger({"kind": "nope"}), "trigger kind must be one of"),
        (lambda: patch_trigger(location="middle"), "location must be one of"),
        (lambda: sig_trigger(orientation="diagonal"), "orientation must be 'vertical' or 'horizontal'"),
        (lambda: Trigger("patch", torch.zeros(3, 2, 2), (0, 0, 2, 2), alpha=2.0), "alpha must be in (0, 1], got 2.0"),
    ]
    for call, message in cases:
        with pytest.raises(InvalidArgumentError) as info:
            call()
        assert str(info.value).startswith(message), str(info.value)


class _NaNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 5)

    def forward(self, x):
        return self.fc(x.mean((2, 3))) * float("nan")


def test_world_helpers_refuse_a_model_that_returns_nan(world_data):
    from captum_global.world import evaluate, reference_trigger
    from captum_global.world.training import label_noise_effect, pgd_attack, predict, robust_accuracy

    model = _NaNNet()
    x, y = world_data.images, world_data.labels
    rng = torch.get_rng_state()
    cases = [
        (lambda: predict(model, x), "predict: the model returned NaN or infinity at images 0-5"),
        (lambda: evaluate(model, world_data), "predict: the model returned NaN or infinity at images 0-5"),
        (lambda: evaluate(model, world_data, trigger=reference_trigger("patch")), "predict"),
        (lambda: pgd_attack(model, x, y, epsilon=0.03, steps=1, step_size=0.01),
         "pgd_attack: the model returned NaN or infinity at step 1"),
        (lambda: robust_accuracy(model, world_data, epsilon=0.03, steps=1, step_size=0.01),
         "pgd_attack: the model returned NaN or infinity at step 1"),
        (lambda: label_noise_effect(model, world_data, source=int(world_data.true_labels[0]), dest=4),
         "label_noise_effect: the model returned NaN or infinity at images 0-"),
    ]
    for call, message in cases:
        with pytest.raises(NonFiniteOutputError) as info:
            call()
        assert str(info.value).startswith(message), str(info.value)
    assert model.training and torch.equal(rng, torch.get_rng_state())


# --- robustness: weights made under inference_mode -------------------------------------------------


def test_robustness_refuses_weights_made_under_inference_mode():
    from captum_global.robustness import manipulate_model
    from captum_global.robustness.explanations import GradCAMExplanation, GradientExplanation, SoftSISESurrogate

    with torch.inference_mode():
        model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    x, y = torch.rand(2, 3, 16, 16), torch.tensor([0, 1])
    message = "model has its parameter '0.weight' created under torch.inference_mode()"
    for explanation in (GradCAMExplanation(), GradientExplanation(), SoftSISESurrogate(masks_per_layer=2)):
        with pytest.raises(InvalidArgumentError, match=message.replace("(", r"\(").replace(")", r"\)")):
            explanation(model, x, y)
    rng = torch.get_rng_state()
    with pytest.raises(InvalidArgumentError, match=message.replace("(", r"\(").replace(")", r"\)")):
        manipulate_model(model, [(x, y)], "grad_cam", "location", steps=1)
    assert model.training and torch.equal(rng, torch.get_rng_state())


# --- integrations.quantus.explain: eval mode and the global RNG -------------------------------------


def test_quantus_explain_runs_captum_methods_in_eval_mode_and_seeds_noise_tunnel():
    from captum.attr import NoiseTunnel, Saliency

    from captum_global.integrations.quantus import explain

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).train()
    x = np.random.default_rng(0).random((2, 3, 8, 8), dtype=np.float32)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    in_train_mode = explain(net, x, [0, 1], method="Saliency")
    assert net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # BN stats kept
    assert torch.equal(rng, torch.get_rng_state())  # no dropout draw
    assert np.array_equal(in_train_mode, explain(net.eval(), x, [0, 1], method="Saliency"))
    first = explain(net, x, [0, 1], method=NoiseTunnel(Saliency(net)), nt_samples=3)
    assert torch.equal(rng, torch.get_rng_state())
    assert np.array_equal(first, explain(net, x, [0, 1], method=NoiseTunnel(Saliency(net)), nt_samples=3))
