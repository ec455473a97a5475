"""`normfree <command>`: a thin map from subcommands to library functions.

Errors the user can fix (bad flags, missing data, bad checkpoints) print one line and exit 2.
"""

import argparse
import json
import sys

from .checkpoint import CheckpointError
from .config import PRESETS, add_config_flags, config_from_args
from .data import DataError
from .train import TrainingDiverged


def cmd_list(args):
    import torch

    from .zoo import count_macs, count_params, create_model, list_models
    print(f"{'model':<20} {'params':>14} {'GMACs':>8} {'test px':>8}")
    for name in list_models():
        with torch.device("meta"):
            model = create_model(name)
        size = model.cfg.test_size
        print(f"{name:<20} {count_params(model):>14,} {count_macs(model) / 1e9:>8.2f} {size:>8}")


def cmd_train(args):
    from .train import train
    train(config_from_args(args))


def cmd_eval(args):
    from .evaluate import evaluate_checkpoint
    result = evaluate_checkpoint(args.checkpoint, data_dir=args.data_dir, split=args.split)
    print(f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  "
          f"({result['images']} images, {result['weights']} weights)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


def cmd_bench(args):
    from .bench import bench
    record = bench(args.model, args.image_size, args.batch_size, in_chans=args.in_chans,
                   bf16=args.bf16, channels_last=args.channels_last, repeats=args.repeats)
    print(json.dumps(record))


def cmd_spp(args):
    from pathlib import Path

    from .spp import paper_comparison, plot, write_csv
    curves = paper_comparison(args.depth, args.image_size, args.batch_size, args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(curves, out.with_suffix(".csv"))
    plot(curves, out.with_suffix(".png"),
         title=f"Signal propagation at initialisation, {args.depth}-layer ResNets, "
               f"N(0,1) input {args.batch_size}×3×{args.image_size}²")
    print(f"wrote {out.with_suffix('.csv')} and {out.with_suffix('.png')}")


def cmd_convert(args):
    from .convert import convert_file
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
    p.add_argument("--preset", default="fmnist", choices=list(PRESETS))
    add_config_flags(p)
    p.set_defaults(fn=cmd_train)

    p = commands.add_parser("eval", help="top-1/top-5 of a training checkpoint")
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt of a training run")
    p.add_argument("--data-dir", default=None, help="override the dataset location")
    p.add_argument("--split", default="test", choices=["val", "test"])
    p.add_argument("--json", default=None, help="also write the result to this JSON file")
    p.set_defaults(fn=cmd_eval)

    p = commands.add_parser("bench", help="train-step and inference throughput of a model")
    p.add_argument("--model", default="nfnet_s0")
    p.add_argument("--image-size", type=int, default=None, help="default: the model's train size")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--in-chans", type=int, default=None)
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--repeats", type=int, default=10)
    p.set_defaults(fn=cmd_bench)

    p = commands.add_parser("spp", help="signal-propagation plots of the ICLR paper's networks",
                            description="BN-ReLU and ReLU-BN ResNets, NF-ResNets without and "
                                        "with Scaled WS (skip gain 1), at initialisation.")
    p.add_argument("--depth", type=int, default=600, choices=[26, 50, 101, 152, 200, 288, 600])
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="docs/figures/spp", help="path stem for .csv and .png")
    p.set_defaults(fn=cmd_spp)

    p = commands.add_parser("convert", help="Haiku or timm NFNet weights → normfree .safetensors")
    p.add_argument("src", help="F0_haiku.npz … F6_haiku.npz, or timm dm_nfnet_* weights")
    p.add_argument("dst", help="output .safetensors (no pickle needed to load it)")
    p.add_argument("--model", default=None, help="variant name; default: inferred from the file")
    p.set_defaults(fn=cmd_convert)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except (DataError, CheckpointError, FileExistsError, ValueError, TrainingDiverged) as e:
        print(f"normfree {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
