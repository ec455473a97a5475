"""`normfree <command>`: a thin map from subcommands to library functions.

Errors the user can fix (normfree's own error types: bad flags, missing data, bad checkpoints)
print one line and exit 2; anything else is a bug and shows its traceback.
"""

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch

from .analysis.bench import bench, ceiling, train_peak_memory
from .analysis.spp import paper_comparison, plot, write_curves_csv
from .analysis.studies import agc_study, default_base, nf_vs_bn, plot_agc_study, plot_nf_vs_bn
from .data.fashion_mnist import FMNIST_DIR
from .errors import ConfigError, NormfreeError
from .files import save_json
from .nn.variants import count_macs, count_params, create_model, list_models
from .training.config import DEFAULT_PRESET, PRESETS, add_config_flags, config_from_args
from .training.distributed import launch
from .training.loop import train
from .training.runs import evaluate_checkpoint
from .training.signals import TrainingStopped
from .weights.deploy import export_onnx
from .weights.pretrained import convert_file, load_pretrained, predict


def cmd_list(args):
    print(f"{'model':<20} {'params':>14} {'GMACs':>8} {'test px':>8}")
    for name in list_models():
        with torch.device("meta"):
            model = create_model(name)
        size = model.cfg.test_size
        print(f"{name:<20} {count_params(model):>14,} {count_macs(model) / 1e9:>8.2f} {size:>8}")


def cmd_train(args):
    config = config_from_args(args)  # flags are checked before any process starts
    if args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        if config.batch_size % args.nproc:
            raise ConfigError(f"--batch-size {config.batch_size} (the global batch) must divide "
                             f"evenly over {args.nproc} processes")
        return launch(args.nproc, without_flag(args.argv, "--nproc"))
    train(config)


def without_flag(argv, flag):
    """`argv` without `flag VALUE` / `flag=VALUE`."""
    kept, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == flag:
            skip = True
        elif not item.startswith(flag + "="):
            kept.append(item)
    return kept


def cmd_eval(args):
    if (args.checkpoint is None) == (args.weights is None):
        raise ConfigError("give either --checkpoint (a training run) or --weights with --data")
    if args.weights is not None:
        if args.data is None:
            raise ConfigError("--weights needs --data DIR (an ImageFolder tree, or a flat folder "
                             "with --labels FILE)")
        pretrained = load_pretrained(args.weights, args.model)
        result = pretrained.evaluate_folder(args.data, args.labels, args.image_size,
                                            args.batch_size, args.bad_images)
        result["weights"] = str(args.weights)
    else:
        result = evaluate_checkpoint(args.checkpoint, data_dir=args.data, split=args.split)
    print(f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  ({result['images']} "
          f"images" + (f", {result['skipped']} unreadable skipped" if result.get("skipped")
                       else "") + ")")
    if args.json:
        save_json(args.json, result)


def cmd_predict(args):
    pretrained = load_pretrained(args.weights, args.model)
    results = predict(pretrained, args.images, args.top, args.image_size)
    for path, top in zip(args.images, results):
        print(path)
        for name, prob in top:
            print(f"  {100 * prob:6.2f}%  {name}")
    if args.json:
        save_json(args.json, {str(p): [{"class": n, "probability": q} for n, q in top]
                              for p, top in zip(args.images, results)})


def cmd_export(args):
    pretrained = load_pretrained(args.weights, args.model, device="cpu")
    size = args.image_size or pretrained.preprocessing["crop"]
    error = export_onnx(pretrained.model, args.onnx, size)
    print(f"wrote {args.onnx} ({pretrained.name}, {size} px, dynamic batch); onnxruntime vs "
          f"PyTorch logits: {error:.1e} relative")


def cmd_bench(args):
    if args.memory:
        record = train_peak_memory(args.model, args.image_size or 192, args.batch_size,
                                   args.grad_checkpointing)
    else:
        record = bench(args.model, args.image_size, args.batch_size, in_chans=args.in_chans,
                       bf16=args.bf16, channels_last=args.channels_last, repeats=args.repeats,
                       grad_checkpointing=args.grad_checkpointing, peer=args.peer,
                       compile_model=args.compile)
        if args.ceiling:
            record.update(ceiling())
            record["train_fraction_of_conv_ceiling"] = round(
                record["train_gflops"] / record["conv3x3_gflops"], 3)
    print(json.dumps(record))


def cmd_spp(args):
    curves = paper_comparison(args.depth, args.image_size, args.batch_size, args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_curves_csv(curves, out.with_suffix(".csv"))
    plot(curves, out.with_suffix(".png"),
         title=f"Signal propagation at initialisation, {args.depth}-layer ResNets, "
               f"N(0,1) input {args.batch_size}×3×{args.image_size}²")
    print(f"wrote {out.with_suffix('.csv')} and {out.with_suffix('.png')}")


def cmd_study_agc(args):
    base = replace(default_base(args.epochs), seed=args.seed, data_dir=args.data_dir)
    out = Path(args.out)
    rows = agc_study(base, args.batch_sizes, args.lrs, args.clip_factors, out.with_suffix(".csv"))
    plot_agc_study(rows, out.with_suffix(".png"),
                   f"{base.model} on Fashion-MNIST, {args.epochs} epochs per cell, seed "
                   f"{args.seed}")
    print(f"wrote {out.with_suffix('.csv')} and {out.with_suffix('.png')}")


def cmd_study_bn(args):
    base = default_base(args.epochs)
    base = replace(base, model=args.model, seed=args.seed, data_dir=args.data_dir,
                   batch_size=args.batch_size, lr=base.lr * args.batch_size / base.batch_size)
    out = Path(args.out)
    rows = nf_vs_bn(base, out.with_suffix(".csv"))
    plot_nf_vs_bn(rows, out.with_suffix(".png"),
                  f"Fashion-MNIST, batch {base.batch_size}, lr {base.lr:g}, {args.epochs} "
                  f"epochs, seed {args.seed}")
    print(f"wrote {out.with_suffix('.csv')} and {out.with_suffix('.png')}")


def number_list(kind):
    def parse(text):
        try:
            return [kind(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got "
                                             f"{text!r}") from None
    return parse


def cmd_convert(args):
    meta = convert_file(args.src, args.dst, args.model)
    print(f"wrote {args.dst}: {meta['model']} ({meta['numerics']} numerics) from "
          f"{meta['source_format']} file {meta['source']}")


def build_parser():
    parser = argparse.ArgumentParser(prog="normfree", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("list", help="every model with parameters and GMACs")
    p.set_defaults(fn=cmd_list)

    p = commands.add_parser("train", help="train a model (default: Fashion-MNIST preset)",
                            description="Train a model. Flags override the preset's values.")
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=list(PRESETS),
                   help="named set of values the other flags override (default: %(default)s)")
    p.add_argument("--nproc", type=int, default=1,
                   help="data-parallel processes on this machine (runs torchrun; the batch size "
                        "stays the global batch)")
    add_config_flags(p)
    p.set_defaults(fn=cmd_train)

    p = commands.add_parser("eval", help="top-1/top-5 of a training checkpoint, or of weights "
                                         "on an image folder",
                            description="Either --checkpoint RUN/checkpoint.pt (its own dataset) "
                                        "or --weights FILE --data DIR (the reference "
                                        "preprocessing: resize to (S+32)² bicubic, centre crop "
                                        "S).")
    p.add_argument("--checkpoint", default=None, help="checkpoint.pt of a training run")
    p.add_argument("--weights", default=None,
                   help="Haiku (F*_haiku.npz), timm or normfree .safetensors weights")
    p.add_argument("--data", "--data-dir", dest="data", default=None,
                   help="with --weights: ImageFolder tree (class folders in the weights' class "
                        "order, e.g. ImageNet wnids) or flat folder; with --checkpoint: "
                        "override the dataset location")
    p.add_argument("--labels", default=None,
                   help="labels file for a flat folder: '<file name> <class index or name>' "
                        "per line")
    p.add_argument("--model", default=None, help="variant name; default: from the weights")
    p.add_argument("--image-size", type=int, default=None,
                   help="crop size S; default: the variant's test size")
    p.add_argument("--batch-size", type=int, default=50, help="default: %(default)s")
    p.add_argument("--bad-images", default="skip", choices=["skip", "stop"],
                   help="unreadable images: skip them (counted) or stop")
    p.add_argument("--split", default="test", choices=["val", "test"],
                   help="with --checkpoint: which split")
    p.add_argument("--json", default=None, help="also write the result to this JSON file")
    p.set_defaults(fn=cmd_eval)

    p = commands.add_parser("predict", help="top-5 classes of images")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--weights", required=True, help="Haiku, timm or normfree weights")
    p.add_argument("--model", default=None, help="variant name; default: from the weights")
    p.add_argument("--top", type=int, default=5, help="classes per image (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=None, help="default: the weights' size")
    p.add_argument("--json", default=None, help="also write the predictions to this file")
    p.set_defaults(fn=cmd_predict)

    p = commands.add_parser("export", help="fold Scaled WS and export to ONNX (checked with "
                                           "onnxruntime)")
    p.add_argument("--weights", required=True, help="Haiku, timm or normfree weights")
    p.add_argument("--onnx", required=True, help="output .onnx file")
    p.add_argument("--model", default=None, help="variant name; default: from the weights")
    p.add_argument("--image-size", type=int, default=None,
                   help="input size the file is valid for; default: the weights' size")
    p.set_defaults(fn=cmd_export)

    p = commands.add_parser("bench", help="train-step and inference throughput of a model")
    p.add_argument("--model", default="nfnet_s0", help="variant (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=None, help="default: the model's train size")
    p.add_argument("--batch-size", type=int, default=16, help="default: %(default)s")
    p.add_argument("--in-chans", type=int, default=None, help="default: the model's")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels-last memory format (default: on)")
    p.add_argument("--repeats", type=int, default=10,
                   help="timed calls after 3 warm-ups; median, min and max reported "
                        "(default: %(default)s)")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute stage activations in backward")
    p.add_argument("--memory", action="store_true",
                   help="instead: peak memory of two train steps in a fresh process (CPU)")
    p.add_argument("--peer", choices=["timm"], default=None,
                   help="also time timm's equivalent model, interleaved with ours")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile both (inference with inductor freezing)")
    p.add_argument("--ceiling", action="store_true",
                   help="also measure the machine's GEMM and 3×3 conv GFLOP/s")
    p.set_defaults(fn=cmd_bench)

    p = commands.add_parser("spp", help="signal-propagation plots of the ICLR paper's networks",
                            description="BN-ReLU and ReLU-BN ResNets, NF-ResNets without and "
                                        "with Scaled WS (skip gain 1), at initialisation.")
    p.add_argument("--depth", type=int, default=600, choices=[26, 50, 101, 152, 200, 288, 600],
                   help="ResNet depth (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=64, help="default: %(default)s")
    p.add_argument("--batch-size", type=int, default=8,
                   help="random images the statistics average over (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    p.add_argument("--out", default="docs/figures/spp", help="path stem for .csv and .png")
    p.set_defaults(fn=cmd_spp)

    p = commands.add_parser("study-agc", help="AGC stability grid: batch × learning rate × "
                                              "clip factor on Fashion-MNIST (CSV and figure)")
    p.add_argument("--batch-sizes", type=number_list(int), default=[128, 512, 2048],
                   help="comma-separated (default: 128,512,2048)")
    p.add_argument("--lrs", type=number_list(float), default=[0.1, 0.4, 1.6],
                   help="learning rates per 256 images (scaled linearly with the batch)")
    p.add_argument("--clip-factors", type=number_list(float), default=[0.0, 0.01, 0.04, 0.16],
                   help="AGC λ values; 0 trains without AGC")
    p.add_argument("--epochs", type=int, default=2, help="training budget of each cell")
    p.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    p.add_argument("--data-dir", default=None,
                   help=f"Fashion-MNIST IDX files; default: {FMNIST_DIR}")
    p.add_argument("--out", default="docs/figures/agc_study", help="path stem for .csv and .png")
    p.set_defaults(fn=cmd_study_agc)

    p = commands.add_parser("study-bn", help="NF model against its batch-norm twin on "
                                             "Fashion-MNIST, same recipe (CSV and figure)")
    p.add_argument("--model", default="nfnet_s0", help="NF model; its twin is <name>_bn")
    p.add_argument("--epochs", type=int, default=5, help="default: %(default)s")
    p.add_argument("--batch-size", type=int, default=128,
                   help="the learning rate scales linearly from the preset's (0.2 at 128)")
    p.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    p.add_argument("--data-dir", default=None,
                   help=f"Fashion-MNIST IDX files; default: {FMNIST_DIR}")
    p.add_argument("--out", default="docs/figures/nf_vs_bn", help="path stem for .csv and .png")
    p.set_defaults(fn=cmd_study_bn)

    p = commands.add_parser("convert", help="Haiku or timm NFNet weights → normfree .safetensors")
    p.add_argument("src", help="F0_haiku.npz … F6_haiku.npz, or timm dm_nfnet_* weights")
    p.add_argument("dst", help="output .safetensors (no pickle needed to load it)")
    p.add_argument("--model", default=None, help="variant name; default: inferred from the file")
    p.set_defaults(fn=cmd_convert)
    return parser


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        code = args.fn(args)
    except NormfreeError as e:
        print(f"normfree {args.command}: error: {e}", file=sys.stderr)
        return 2
    except TrainingStopped as e:
        print(f"normfree {args.command}: {e}", file=sys.stderr)
        return 128 + e.signal
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
