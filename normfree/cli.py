"""`normfree <command>`: the command line, a thin map from subcommands to `commands.py`.

Errors the user can fix (normfree's own error types: bad flags, missing data, bad checkpoints)
print one line and exit 2; anything else is a bug and shows its traceback. Parsing needs no
torch, so `--help` and `--version` answer at once; the commands import it when they run.
"""

import argparse
import importlib
import logging
import re
import sys
from contextlib import contextmanager

from . import __version__
from .data import FMNIST_DIR, MAX_IMAGE_SIZE
from .errors import NormfreeError, TrainingStopped
from .nn.counts import count
from .nn.variants import BN_TWINS, get_config, list_models
from .precisions import PRECISIONS
from .training.config import DEFAULT_PRESET, PRESETS, add_config_flags
from .weights.releases import RELEASES


WEIGHTS_HELP = ("Haiku (F*_haiku.npz), timm or normfree weights file, or a Hugging Face Hub id "
                "hf-hub:OWNER/NAME (normfree list --pretrained)")


def cmd_list(args):
    if args.pretrained:
        return list_releases()
    print("Parameters with a 1000-class classifier and each model's own input channels (3; 1 for "
          "the 28-px variants), GMACs at its test size:")
    print(f"{'model':<20} {'params':>14} {'GMACs':>8} {'test px':>8}")
    for name in list_models():
        cfg = get_config(name)
        params, macs = count(cfg, batch_norm=name in BN_TWINS)
        print(f"{name:<20} {params:>14,} {macs / 1e9:>8.2f} {cfg.test_size:>8}")


def list_releases():
    print("Models with released ImageNet weights (load: normfree.create_model(NAME, "
          "pretrained=True), or --weights HUB_ID):")
    print(f"{'model':<18} {'top-1 %':>7} {'params':>12} {'test px':>7}  {'recipe':<12} hub id")
    for name, release in RELEASES.items():
        top1 = f"{release.top1:.2f}" if release.top1 else "-"
        recipe = name.replace("nfnet_", "imagenet-", 1)
        recipe = recipe if name.startswith("nfnet_f") and recipe in PRESETS else "-"
        print(f"{name:<18} {top1:>7} {count(get_config(name))[0]:>12,} {release.test_size:>7}"
              f"  {recipe:<12} {release.hub_id}")
    print("top-1: the F models as DeepMind published them (Brock et al. 2021), the others "
          "from timm's release notes.\nrecipe: the preset that trains the model as DeepMind's "
          "code did (settings, input pipeline, evaluation: docs/architecture.md §11.2), e.g. "
          "normfree train --preset imagenet-f0 --data-dir IMAGENET; ImageNet is not run here, "
          "so the top-1 is the makers' number, not a reproduction")


def add_output_flags(parser):
    parser.add_argument("--out-dir", default=None,
                        help=f"folder for the CSV and PNG (default: a new "
                             f"runs/{parser.prog.split()[-1]}-<time>/)")
    parser.add_argument("--force", action="store_true",
                        help="overwrite the CSV and PNG if the folder has them already")


def add_study_flags(parser, steps):
    """The flags the hypothesis studies share."""
    parser.add_argument("--model", default="nfnet_s0", help="NF model; its twin is <name>_bn")
    parser.add_argument("--seeds", type=number_list(int), default=[0, 1, 2],
                        help="default: %(default)s")
    parser.add_argument("--steps", type=positive_int, default=steps,
                        help="optimizer steps of every run (default: %(default)s)")
    parser.add_argument("--bn-lr", type=float, default=None,
                        help="the BN twin's learning rate (default: the NF model's, 0.2)")
    add_threads_flag(parser)
    parser.add_argument("--data-dir", default=None,
                        help=f"Fashion-MNIST IDX files; default: {FMNIST_DIR}")
    add_output_flags(parser)
    parser.add_argument("--resume", action="store_true",
                        help="continue the study in --out-dir: runs its CSV holds are skipped")


def add_threads_flag(parser):
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads; 0: all cores (two studies side by side: 1 each)")


def add_augmentation_flag(parser, default):
    parser.add_argument("--augmentation", type=number_list(str), default=default,
                        help="on: the fmnist preset's crops, flips and erasing; off: none "
                             f"(default: {','.join(default)})")


def number_list(kind):
    def parse(text):
        try:
            return [kind(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got "
                                             f"{text!r}") from None
    return parse


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser(help_preset=DEFAULT_PRESET):
    """The command line; `train --help` shows `help_preset`'s values."""
    parser = argparse.ArgumentParser(
        prog="normfree", allow_abbrev=False,
        description="Normalizer-free networks (NFNets): train, evaluate, predict, convert and "
                    "export them, and run the papers' studies. `normfree COMMAND --help` "
                    "describes each command.")
    parser.add_argument("--version", action="version", version=f"normfree {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name, **kwargs):  # no abbreviations: --epoch must not mean --epochs
        return commands.add_parser(name, allow_abbrev=False, **kwargs)

    p = command("list", help="every model with parameters and GMACs")
    p.add_argument("--pretrained", action="store_true",
                   help="instead: the models with released weights, their ImageNet top-1 and "
                        "hub ids")

    p = command("train", help="train a model (default: Fashion-MNIST preset)",
                description="Train a model. Flags override the preset's values.",
                usage="normfree train [--preset NAME] [--nproc N] [--FLAG VALUE ...] "
                      "(all flags: normfree train --help)")
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=list(PRESETS),
                   help="named set of values the other flags override (default: %(default)s)")
    p.add_argument("--nproc", type=positive_int, default=1,
                   help="data-parallel processes on this machine (runs torchrun; the batch size "
                        "stays the global batch)")
    add_config_flags(p, help_preset)

    p = command("eval", help="top-1/top-5 of a training checkpoint, or of weights "
                             "on an image folder",
                description="Either --checkpoint RUN/checkpoint.pt (its own dataset) "
                            "or --weights FILE --data DIR (the weights' own "
                            "preprocessing: timm's for timm's weights, else the "
                            "reference's, resize to (S+32)² bicubic and centre crop S).")
    p.add_argument("--checkpoint", default=None,
                   help="a training run: its directory or its checkpoint.pt")
    p.add_argument("--weights", default=None,
                   help=WEIGHTS_HELP)
    p.add_argument("--data", "--data-dir", dest="data", default=None,
                   help="with --weights: ImageFolder tree (class folders in the weights' class "
                        "order, e.g. ImageNet wnids) or flat folder; with --checkpoint: "
                        "override the dataset location")
    p.add_argument("--labels", default=None,
                   help="labels file for a flat folder: '<file name> <class index or name>' "
                        "per line")
    p.add_argument("--model", default=None, help="variant name; default: from the weights")
    p.add_argument("--image-size", type=positive_int, default=None,
                   help="crop size S; default: the weights' own (their preprocessing); at most "
                        f"{MAX_IMAGE_SIZE}")
    p.add_argument("--batch-size", type=positive_int, default=50, help="default: %(default)s")
    p.add_argument("--bad-images", default="skip", choices=["skip", "stop"],
                   help="unreadable images: skip them (counted) or stop")
    p.add_argument("--split", default="test", choices=["train", "val", "test"],
                   help="with --checkpoint: which split (train: its training images, "
                        "unaugmented)")
    p.add_argument("--tta-flip", action=argparse.BooleanOptionalAction, default=None,
                   help="average each image's logits with its mirror image's (default: off "
                        "for --weights, the run's own setting for --checkpoint)")
    p.add_argument("--json", default=None, help="also write the result to this JSON file")

    p = command("predict", help="top-5 classes of images")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--weights", required=True, help=WEIGHTS_HELP)
    p.add_argument("--model", default=None, help="variant name; default: from the weights")
    p.add_argument("--top", type=positive_int, default=5,
                   help="classes per image (default: %(default)s)")
    p.add_argument("--image-size", type=positive_int, default=None,
                   help=f"default: the weights' size; at most {MAX_IMAGE_SIZE}")
    p.add_argument("--json", default=None, help="also write the predictions to this file")

    p = command("export", help="fold Scaled WS and export to ONNX (checked with "
                               "onnxruntime)")
    p.add_argument("--weights", required=True, help=WEIGHTS_HELP)
    p.add_argument("--onnx", required=True, help="output .onnx file")
    p.add_argument("--model", default=None, help="variant name; default: from the weights")
    p.add_argument("--image-size", type=positive_int, default=None,
                   help="input size the file is valid for; default: the weights' size")

    p = command("bench", help="train-step and inference throughput of a model")
    p.add_argument("--model", default="nfnet_s0", help="variant (default: %(default)s)")
    p.add_argument("--image-size", type=positive_int, default=None,
                   help="default: the model's train size")
    p.add_argument("--batch-size", type=positive_int, default=16, help="default: %(default)s")
    p.add_argument("--in-chans", type=positive_int, default=None, help="default: the model's")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="autocast dtype; fp16 with loss scaling (default: %(default)s)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels-last memory format (default: on)")
    p.add_argument("--repeats", type=positive_int, default=10,
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
    p.add_argument("--json", action="store_true", help="print the record as one JSON line")
    p.add_argument("--loader", action="store_true",
                   help="instead: the imagenet-f0 training input pipeline's images/s per "
                        "worker, against timm's loader (rand-m5-n4) on the same JPEG folder")
    p.add_argument("--data", default=None,
                   help="--loader: an ImageFolder tree with train/ and val/; default: "
                        "generated photo-like JPEGs (~400×350)")
    p.add_argument("--workers", type=int, default=1,
                   help="--loader: worker processes per loader (default: %(default)s)")
    p.add_argument("--ceiling", action="store_true",
                   help="also measure the machine's GEMM and 3×3 conv GFLOP/s")

    p = command("spp", help="signal-propagation plots of the ICLR paper's networks",
                description="BN-ReLU and ReLU-BN ResNets, NF-ResNets without and "
                            "with Scaled WS (skip gain 1), at initialisation.")
    p.add_argument("--depth", type=int, default=600, choices=[26, 50, 101, 152, 200, 288, 600],
                   help="ResNet depth (default: %(default)s)")
    p.add_argument("--image-size", type=positive_int, default=64, help="default: %(default)s")
    p.add_argument("--batch-size", type=positive_int, default=8,
                   help="random images the statistics average over (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    add_output_flags(p)

    p = command("study-agc", help="AGC stability grid: batch × learning rate × "
                                  "clip factor on Fashion-MNIST (CSV and figure)")
    p.add_argument("--batch-sizes", type=number_list(int), default=[128, 512, 2048],
                   help="comma-separated (default: 128,512,2048)")
    p.add_argument("--lrs", type=number_list(float), default=[0.1, 0.4, 1.6],
                   help="learning rates per 256 images (scaled linearly with the batch)")
    p.add_argument("--clip-factors", type=number_list(float), default=[0.0, 0.01, 0.04, 0.16],
                   help="AGC λ values; 0 trains without AGC")
    p.add_argument("--epochs", type=positive_int, default=2, help="training budget of each cell")
    p.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    p.add_argument("--data-dir", default=None,
                   help=f"Fashion-MNIST IDX files; default: {FMNIST_DIR}")
    add_output_flags(p)

    p = command("study-bn", help="NF model against its batch-norm twin on "
                                 "Fashion-MNIST, same recipe (CSV and figure)")
    p.add_argument("--model", default="nfnet_s0", help="NF model; its twin is <name>_bn")
    p.add_argument("--epochs", type=positive_int, default=5, help="default: %(default)s")
    p.add_argument("--batch-size", type=positive_int, default=128,
                   help="the learning rate scales linearly from the preset's (0.2 at 128)")
    p.add_argument("--seeds", "--seed", type=number_list(int), default=[0],
                   help="one run of each model per seed (default: %(default)s)")
    add_augmentation_flag(p, default=["on"])
    p.add_argument("--bn-lr", type=float, default=None,
                   help="the BN twin's learning rate (default: the NF model's)")
    add_threads_flag(p)
    p.add_argument("--data-dir", default=None,
                   help=f"Fashion-MNIST IDX files; default: {FMNIST_DIR}")
    add_output_flags(p)
    p.add_argument("--resume", action="store_true",
                   help="continue the study in --out-dir: runs its CSV holds are skipped")

    p = command("study-datasize", help="NF model and its BN twin against training-set size, "
                                       "with and without augmentation (CSV and figure)",
                description="Class-balanced Fashion-MNIST subsets, the same number of steps "
                            "for every size, validation and test sets unchanged: test top-1 "
                            "and train − test gap per cell and seed.")
    add_study_flags(p, steps=1000)
    p.add_argument("--per-class", type=number_list(int), default=[100, 400, 1500, 5400],
                   help="training images per class, 10 classes (default: %(default)s)")
    add_augmentation_flag(p, default=["on", "off"])

    p = command("study-transfer", help="pretrain on five Fashion-MNIST classes, fine-tune "
                                       "on the other five, against training from scratch",
                description="NF model and BN twin pretrained on classes 0-4 (all their images), "
                            "then trained on classes 5-9 with few images per class from those "
                            "weights (classifier replaced) or from scratch, same steps.")
    add_study_flags(p, steps=300)
    p.add_argument("--pretrain-steps", type=positive_int, default=1500,
                   help="default: %(default)s")
    p.add_argument("--shots", type=number_list(int), default=[10, 100, 1000],
                   help="images per class for the fine-tuning (default: %(default)s)")

    p = command("convert", help="Haiku or timm NF weights → normfree .safetensors")
    p.add_argument("src", help="F0_haiku.npz … F6_haiku.npz, a timm NF weights file (e.g. "
                               "model.safetensors) or hf-hub:OWNER/NAME")
    p.add_argument("dst", help="output .safetensors (no pickle needed to load it)")
    p.add_argument("--model", default=None, help="variant name; default: inferred from the file")
    return parser


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(help_preset=preset_named_in(argv))
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # the subcommand's usage, not the top level's
        subcommands = next(a for a in parser._actions
                           if isinstance(a, argparse._SubParsersAction))
        subcommands.choices[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    args.argv = argv
    try:
        with messages_on_stdout():
            if args.command == "list":  # counted from the configs: no torch needed
                code = cmd_list(args)
            else:
                code = importlib.import_module(".commands", __package__).run(args)
    except NormfreeError as e:
        print(f"normfree {args.command}: error: {with_flags(e)}", file=sys.stderr)
        return 2
    except TrainingStopped as e:
        print(f"normfree {args.command}: {e}", file=sys.stderr)
        return 128 + e.signal
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return code or 0


@contextmanager
def messages_on_stdout():
    """The library's messages (the `normfree` logger: a run's progress, its warnings) as lines on
    stdout while the command runs. The command's alone: the library configures no logging, and
    a `main` called in a process gives its logging back as it was."""
    logger = logging.getLogger("normfree")
    handler = logging.StreamHandler(sys.stdout)
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # a handler of the root logger would show each message twice
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def with_flags(error):
    """The error's message, the settings it names by field (`val_size`) shown as the flags that
    set them (`--val-size`)."""
    text = str(error)
    for name in error.fields:
        text = re.sub(rf"(?<![\w-]){name}\b", "--" + name.replace("_", "-"), text)
    return text


def preset_named_in(argv):
    """The preset `--preset NAME` (or `--preset=NAME`) names, if a valid one, for --help."""
    for i, item in enumerate(argv):
        name = item.split("=", 1)[1] if item.startswith("--preset=") else (
            argv[i + 1] if item == "--preset" and i + 1 < len(argv) else None)
        if name in PRESETS:
            return name
    return DEFAULT_PRESET


if __name__ == "__main__":
    sys.exit(main())
