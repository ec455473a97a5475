"""What each `normfree <command>` does, given its parsed arguments (cli.py parses them).

Errors a user can fix are raised as normfree's own error types; `cli.main` prints them.
"""

import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

from .analysis.bench import bench, ceiling, format_record, train_peak_memory
from .analysis.loader_bench import bench_loader
from .analysis.hypothesis import (datasize_study, difference_table, gap_growth_table,
                                  plot_datasize, plot_transfer, summary_table,
                                  transfer_gain_table, transfer_study)
from .analysis.spp import paper_comparison, plot, write_curves_csv
from .analysis.studies import agc_study, default_base, nf_vs_bn, plot_agc_study, plot_nf_vs_bn
from .errors import ConfigError, DataError, OutputError
from .evaluation import protocol_text
from .files import check_writable, save_json
from .nn.variants import BN_TWINS, bn_twin_name
from .training.config import config_from_args, given_flags
from .training.distributed import launch
from .training.loop import train
from .training.lock import RunLock
from .training.run_dirs import RUNS_ROOT, config_for_resume, run_dir
from .training.checkpoint_eval import evaluate_checkpoint
from .weights.deploy import export_onnx
from .weights.pretrained import convert_file, load_pretrained, predict


def run(args):
    """Run the command `args.command`; returns its exit code (None: 0)."""
    return globals()["cmd_" + args.command.replace("-", "_")](args)


def cmd_train(args):
    flags = given_flags(args)  # checked before any process starts
    lengths = [f"--{name.replace('_', '-')}" for name in ("epochs", "steps", "time_budget")
               if name in flags]
    if len(lengths) > 1:
        raise ConfigError(f"{' and '.join(lengths)} both set the run's length: give one")
    config = (config_for_resume(args.preset, flags) if flags.get("resume")
              else config_from_args(args))
    if args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        if config.batch_size % args.nproc:
            raise ConfigError(f"--batch-size {config.batch_size} (the global batch) must divide "
                             f"evenly over {args.nproc} processes")
        return launch_owning(args.nproc, without_flag(args.argv, "--nproc"), config)
    train(config)


def launch_owning(nproc, argv, config):
    """`launch` holding the run folder's lock for the whole job (rank 0 holds it too, should
    this process die); the processes are told the folder, so that they all name it alike."""
    out = run_dir(config)
    if config.out_dir is None:
        argv = [*argv, "--out-dir", str(out)]
    with RunLock(out) as lock:
        if out.is_dir():  # else rank 0 makes it, once its checks pass, and takes the lock
            lock.acquire()
        return launch(nproc, argv)


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
    check_writable(args.json, "--json", probe=True)  # before the evaluation, not after it
    if (args.checkpoint is None) == (args.weights is None):
        raise ConfigError("give either --checkpoint (a training run) or --weights with --data")
    if args.weights is not None:
        if args.data is None:
            raise ConfigError("--weights needs --data DIR (an ImageFolder tree, or a flat folder "
                             "with --labels FILE)")
        pretrained = load_pretrained(args.weights, args.model)
        result = pretrained.evaluate_folder(args.data, args.labels, args.image_size,
                                            args.batch_size, args.bad_images,
                                            tta_flip=bool(args.tta_flip))
        result["weights"] = str(args.weights)
    else:
        result = evaluate_checkpoint(args.checkpoint, data_dir=args.data, split=args.split,
                                     tta_flip=args.tta_flip)
    print(f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  ({result['images']} "
          f"images" + (f", {result['skipped']} unreadable skipped" if result.get("skipped")
                       else "") + f"; {protocol_text(result['protocol'])})")
    if args.json:
        save_json(args.json, result)


def cmd_predict(args):
    check_writable(args.json, "--json", probe=True)
    pretrained = load_pretrained(args.weights, args.model)
    results = predict(pretrained, args.images, args.top, args.image_size, bad_images="skip")
    for path, top in zip(args.images, results):
        if isinstance(top, DataError):
            print(f"normfree predict: error: {top}", file=sys.stderr)
            continue
        print(path)
        for name, prob in top:
            print(f"  {100 * prob:6.2f}%  {name}")
    if args.json:
        save_json(args.json, {str(p): [{"class": n, "probability": q} for n, q in top]
                              for p, top in zip(args.images, results)
                              if not isinstance(top, DataError)})
    return 1 if any(isinstance(top, DataError) for top in results) else 0


def cmd_export(args):
    check_writable(args.onnx, "--onnx")
    pretrained = load_pretrained(args.weights, args.model, device="cpu")
    size = args.image_size or pretrained.preprocessing["crop"]
    error = export_onnx(pretrained.model, args.onnx, size)
    print(f"wrote {args.onnx} ({pretrained.name}, {size} px, dynamic batch); onnxruntime vs "
          f"PyTorch logits: {error:.1e} relative")


def cmd_bench(args):
    if args.loader:
        record = bench_loader(args.data, args.batch_size, args.image_size or 192, args.workers,
                              peer=args.peer)
    elif args.memory:
        record = train_peak_memory(args.model, args.image_size or 192, args.batch_size,
                                   args.grad_checkpointing)
    else:
        record = bench(args.model, args.image_size, args.batch_size, in_chans=args.in_chans,
                       precision=args.precision, channels_last=args.channels_last,
                       repeats=args.repeats,
                       grad_checkpointing=args.grad_checkpointing, peer=args.peer,
                       compile_model=args.compile)
        if args.ceiling:
            record.update(ceiling())
            record["train_fraction_of_conv_ceiling"] = round(
                record["train_gflops"] / record["conv3x3_gflops"], 3)
    print(json.dumps(record) if args.json else format_record(record))


def study_outputs(args, stem):
    """(CSV, PNG) paths in --out-dir (default: a new runs/<command>-<time>/, created); an
    existing file is overwritten only with --force (or, with --resume, continued)."""
    if getattr(args, "resume", False) and not args.out_dir:
        raise ConfigError("--resume continues a study: give its --out-dir")
    out = Path(args.out_dir or RUNS_ROOT / f"{args.command}-{time.strftime('%Y%m%d-%H%M%S')}")
    paths = out / f"{stem}.csv", out / f"{stem}.png"
    existing = [str(p) for p in paths if p.exists()]
    if getattr(args, "resume", False) and not paths[0].exists():
        raise ConfigError(f"--resume: {paths[0]} does not exist (nothing to continue)")
    if existing and not (args.force or getattr(args, "resume", False)):
        raise ConfigError(f"{' and '.join(existing)} exist: pass --force to overwrite, or "
                          "choose another --out-dir")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create --out-dir {out}: {e.strerror or e}") from None
    return paths


def cmd_spp(args):
    csv_path, png_path = study_outputs(args, f"spp_resnet{args.depth}")
    curves = paper_comparison(args.depth, args.image_size, args.batch_size, args.seed)
    write_curves_csv(curves, csv_path)
    plot(curves, png_path,
         title=f"Signal propagation at initialisation, {args.depth}-layer ResNets, "
               f"N(0,1) input {args.batch_size}×3×{args.image_size}²")
    print(f"wrote {csv_path} and {png_path}")


def cmd_study_agc(args):
    csv_path, png_path = study_outputs(args, "agc_study")
    base = replace(default_base(args.epochs), seed=args.seed, data_dir=args.data_dir)
    rows = agc_study(base, args.batch_sizes, args.lrs, args.clip_factors, csv_path)
    plot_agc_study(rows, png_path, f"{base.model} on Fashion-MNIST, {args.epochs} epochs per "
                   f"cell, seed {args.seed}")
    print(f"wrote {csv_path} and {png_path}")


def cmd_study_bn(args):
    check_study_flags(args)
    base = default_base(args.epochs)
    csv_path, png_path = study_outputs(
        args, "nf_vs_bn" + ("" if args.batch_size == base.batch_size else f"_b{args.batch_size}"))
    base = replace(base, model=args.model, data_dir=args.data_dir, batch_size=args.batch_size,
                   lr=base.lr * args.batch_size / base.batch_size, threads=args.threads)
    rows = nf_vs_bn(base, csv_path, args.seeds, args.augmentation, args.bn_lr)
    lrs = f"lr {base.lr:g}" + (f" (BN twin {args.bn_lr:g})" if args.bn_lr else "")
    plot_nf_vs_bn(rows, png_path, f"Fashion-MNIST, batch {base.batch_size}, {lrs}, "
                  f"{args.epochs} epochs")
    finished = [r for r in rows if r["test_top1"] is not None]
    values = ["test_top1", "gap", "seconds"]
    print(summary_table(finished, ["model", "augmentation"], values))
    for value in values:
        print(difference_table(finished, ["augmentation"], value, args.model,
                               bn_twin_name(args.model)))
    print(f"wrote {csv_path} and {png_path}")


def check_study_flags(args):
    """Refuse what an NF-against-BN study cannot run, before it makes any folder."""
    bad = [a for a in getattr(args, "augmentation", []) if a not in ("on", "off")]
    if bad:
        raise ConfigError(f"--augmentation takes on and/or off, got {','.join(bad)}")
    if bn_twin_name(args.model) not in BN_TWINS:
        raise ConfigError(f"--model {args.model}: no batch-norm twin; models with one: "
                          f"{', '.join(BN_TWINS.values())}")


def hypothesis_base(args):
    """The studies' per-run recipe: the fmnist preset without EMA or compiling, validated
    only after the last step (the studies report test and training accuracy)."""
    check_study_flags(args)
    return replace(default_base(), eval_every=0, data_dir=args.data_dir,
                   threads=args.threads)


def cmd_study_datasize(args):
    base = hypothesis_base(args)  # checked before any folder is made
    csv_path, png_path = study_outputs(args, "datasize")
    models = [args.model, bn_twin_name(args.model)]
    rows = datasize_study(base, models, args.per_class, args.augmentation,
                          args.seeds, args.steps, csv_path, bn_lr=args.bn_lr)
    plot_datasize(rows, png_path, f"Fashion-MNIST, {args.steps} steps per run, mean ± std "
                                  f"over seeds {','.join(map(str, args.seeds))}")
    print(summary_table(rows, ["model", "augmentation", "train_images"], ["test_top1", "gap"]))
    for value in ("test_top1", "gap"):
        print(difference_table(rows, ["augmentation", "train_images"], value, *models))
    print(gap_growth_table(rows, *models))
    print(f"wrote {csv_path} and {png_path}")


def cmd_study_transfer(args):
    base = hypothesis_base(args)
    csv_path, png_path = study_outputs(args, "transfer")
    models = [args.model, bn_twin_name(args.model)]
    rows = transfer_study(base, models, args.shots, args.seeds,
                          args.pretrain_steps, args.steps, csv_path.parent, csv_path,
                          bn_lr=args.bn_lr)
    plot_transfer(rows, png_path, f"Fashion-MNIST classes 5-9 after pretraining on 0-4 "
                                  f"({args.pretrain_steps} steps), {args.steps} steps")
    print(summary_table(rows, ["model", "shots", "init"], ["test_top1"]))
    print(transfer_gain_table(rows, *models))
    print(f"wrote {csv_path} and {png_path}")


def cmd_convert(args):
    check_writable(args.dst, "the output file")
    meta = convert_file(args.src, args.dst, args.model)
    print(f"wrote {args.dst}: {meta['model']} ({meta['numerics']} numerics) from "
          f"{meta['source_format']} file {meta['source']}")
