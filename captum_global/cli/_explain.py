"""``captum-global explain``: explain a dataset to shard files, resumably, under torchrun too (private)."""
import argparse
import os

from captum_global.cli._args import (
    UsageError,
    add_model_options,
    classes_with_gradients,
    existing_file,
    existing_path,
    image_folder,
    image_tensor_file,
    int_in,
    json_object,
    model_from_args,
    output_folder,
)


def _target(text: str):
    if text in ("top1", "labels"):
        return text
    return int_in(0, None)(text)


def add_parser(sub) -> argparse.ArgumentParser:
    explain = sub.add_parser(
        "explain", help="explain every image of a folder (or tensor file) and write the maps to shard files",
        description="Run an attribution (ours or Captum's, by class name) over a dataset; write one safetensors "
                    "shard per batch and index.json to --out. Rerunning the same command resumes an interrupted "
                    "run; under torchrun the shards are shared among the processes.")
    explain.add_argument("--method", required=True,
                         help="SISE, InputAgnosticSaliency or a captum.attr class such as IntegratedGradients, "
                              "Saliency, Occlusion, LayerGradCam (case, '-' and '_' do not matter); not the "
                              "Neuron* classes nor wrappers such as NoiseTunnel (an unknown name lists the others)")
    add_model_options(explain, default_variant="clean")
    explain.add_argument("--images", type=existing_path, required=True, metavar="DIR|FILE",
                         help="a folder of images (resized to the input shape) or a tensor file [N, C, H, W] "
                              "in [0, 1] (.safetensors, or torch.save read with weights_only=True)")
    explain.add_argument("--labels", type=existing_file, metavar="FILE",
                         help="labels of a folder's images: CSV rows 'file,label' or JSON {\"file\": label}")
    explain.add_argument("--target", type=_target, default=None,
                         help="top1 (the model's class, default), labels (default with --labels) or a class index")
    explain.add_argument("--out", type=output_folder, required=True, help="output folder")
    explain.add_argument("--batch-size", type=int_in(1, 4096), default=16,
                         help="images per shard and per call of the method (default 16)")
    explain.add_argument("--layer", help="layer of a layer method (dotted name; default the last block output)")
    explain.add_argument("--method-args", type=json_object, default={}, metavar="JSON",
                         help="keywords of the method's attribute(), e.g. '{\"n_steps\": 32}' or "
                              "'{\"sliding_window_shapes\": [3, 8, 8]}'")
    explain.add_argument("--seed", type=int_in(0, 2**63 - 1), default=0, help="seed for methods that draw noise")
    explain.add_argument("--workers", type=int_in(0, 64), default=0, help="DataLoader workers reading images")
    explain.add_argument("--backend", choices=["gloo", "nccl"], default="gloo",
                         help="torch.distributed backend under torchrun (default gloo)")
    explain.add_argument("--force", action="store_true",
                         help="overwrite explanations made with other settings in --out")
    explain.add_argument("--quiet", action="store_true", help="no progress bar")
    return explain


def _data(args: argparse.Namespace, input_shape):
    if args.images.is_dir():
        return image_folder(args.images, "--images", input_shape, labels=args.labels)
    if args.labels is not None:
        raise UsageError("--labels names the files of an image folder; --images is a tensor file")
    return image_tensor_file(args.images, "--images", input_shape)


def _check_gradients(model, args: argparse.Namespace, input_shape) -> None:
    """A method that differentiates the scores (Saliency, LayerGradCam, SISE, ...) on a model whose scores
    carry no gradient (a forward under torch.no_grad(), a .detach()) is a usage error, before any folder."""
    import torch

    from captum_global.explain._methods import gradient_needs

    needs, layer = gradient_needs(model, args.method, args.layer, torch.full((1, *input_shape), 0.5))
    if needs:
        classes_with_gradients(model, input_shape, f"--method {args.method}", layer=layer,
                               hint="; methods that need none (Occlusion, FeatureAblation, ...) run on it")


def run(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from captum_global.explain import explain_dataset

    target = args.target if args.target is not None else ("labels" if args.labels is not None else "top1")
    if target == "labels" and args.labels is None:
        raise UsageError("--target labels needs --labels FILE")
    model, _, input_shape, _ = model_from_args(args)
    _check_gradients(model, args, input_shape)
    data = _data(args, input_shape)
    started = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(args.backend)  # torchrun's environment gives rank, size and address
        started = True
    try:
        result = explain_dataset(
            model, args.method, data, args.out, target=None if target == "top1" else target,
            batch_size=args.batch_size, layer=args.layer, attribute_kwargs=args.method_args, seed=args.seed,
            overwrite=args.force, show_progress=not args.quiet, num_workers=args.workers)
        if not dist.is_initialized() or dist.get_rank() == 0:
            print(f"{len(result)} maps ({result.method}) in {result.num_shards} shard(s) in {args.out}; "
                  f"index: {args.out / 'index.json'}")
    finally:
        if started:
            dist.destroy_process_group()
    return 0
