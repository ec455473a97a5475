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
