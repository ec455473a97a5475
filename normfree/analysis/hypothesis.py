"""The NFNet paper's closing hypothesis as experiments on Fashion-MNIST: without batch norm's
implicit regularisation NF nets overfit small data (`datasize_study`), and so gain at least as
much as BN nets from pretraining (`transfer_study`). Each compares an NF model with its BN twin
(trained without AGC) over seeds, writes one CSV row per run as it finishes, and skips the runs a
CSV already holds, so an interrupted study continues where it stopped.
"""

import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

from ..files import read_csv, write_csv
from ..figures import save_figure, subplots
from ..nn.variants import BN_TWINS
from ..training.loop import train
from ..training.checkpoint_eval import evaluate_checkpoint

WARMUP_FRACTION = 0.05  # of every run's steps, whatever its training-set size
NO_AUGMENTATION = dict(crop_padding=0, flip=False, random_erasing=0.0, randaugment=None)
DATASIZE_FIELDS = ["model", "augmentation", "train_images", "seed", "steps", "epochs",
                   "train_top1", "test_top1", "gap", "seconds"]
TRANSFER_FIELDS = ["model", "init", "shots", "seed", "steps", "train_top1", "test_top1",
                   "seconds"]


def recipe_for(base, model, augmentation, bn_lr=None):
    """`base` for `model`: BN twins train without AGC (and at `bn_lr` if given); "off" takes
    the explicit regularisers (crops, flips, erasing) away."""
    cfg = replace(base, model=model)
    if model in BN_TWINS:
        cfg = replace(cfg, clip_factor=0.0, lr=bn_lr or base.lr)
    return replace(cfg, **NO_AUGMENTATION) if augmentation == "off" else cfg


def with_steps(cfg, steps, images):
    """`cfg` trained for `steps` optimizer steps on `images` training images, its warm-up a fixed
    share of the steps (a warm-up in epochs would be 7 steps of 1,000 images and 429 of 55,000).
    """
    steps_per_epoch = max(1, images // cfg.batch_size)  # a small set is one (smaller) batch
    return replace(cfg, steps=steps, warmup_epochs=WARMUP_FRACTION * steps / steps_per_epoch)


def run_and_measure(cfg):
    """Train `cfg`; its test top-1, its top-1 on its own (unaugmented) training images, the
    epochs and seconds it took."""
    result = train(cfg)
    on_train = evaluate_checkpoint(cfg.out_dir, split="train")
    return {"train_top1": round(on_train["top1"], 3), "test_top1": round(result["test_top1"], 3),
            "epochs": result.get("epochs"), "seconds": round(result["train_seconds"], 1)}


def _typed(text):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return None if text in ("", "None") else text


def read_study_rows(out_csv):
    """The rows a study's CSV holds already, values typed back ([] if there is none)."""
    if not Path(out_csv).exists():
        return []
    return [{k: _typed(v) for k, v in row.items()} for row in read_csv(out_csv, numbers=False)]


def _done(out_csv, key_fields):
    rows = read_study_rows(out_csv)
    return rows, {tuple(r[k] for k in key_fields) for r in rows}


def datasize_study(base, models, per_class_sizes, augmentations, seeds, steps, out_csv,
                   bn_lr=None, progress=print):
    """Every model × augmentation ("on"/"off") × training images per class × seed, each run
    `steps` optimizer steps on a class-balanced subset (validation and test sets unchanged).
    Returns all rows of `out_csv`."""
    keys = ["model", "augmentation", "train_images", "seed"]
    rows, done = _done(out_csv, keys)
    num_classes = len(base.classes) if base.classes else 10
    with tempfile.TemporaryDirectory() as scratch:
        for seed in seeds:
            for per_class in per_class_sizes:
                for model in models:
                    for augmentation in augmentations:
                        key = (model, augmentation, per_class * num_classes, seed)
                        if key in done:
                            continue
                        cfg = replace(recipe_for(base, model, augmentation, bn_lr), seed=seed,
                                      train_per_class=per_class, progress=False,
                                      out_dir=str(Path(scratch) / "-".join(map(str, key))))
                        cfg = with_steps(cfg, steps, key[2])
                        row = dict(zip(keys, key), steps=steps, **run_and_measure(cfg))
                        row["gap"] = round(row["train_top1"] - row["test_top1"], 3)
                        rows.append(row)
                        write_csv(out_csv, DATASIZE_FIELDS, rows)
                        progress(f"{model:<12} augmentation {augmentation:<3}  "
                                 f"{key[2]:>6} images  seed {seed}: test {row['test_top1']:.2f}%"
                                 f", train − test {row['gap']:+.2f}")
    return rows


def transfer_study(base, models, shots, seeds, pretrain_steps, finetune_steps, out_dir,
                   out_csv, pretrain_classes=(0, 1, 2, 3, 4), target_classes=(5, 6, 7, 8, 9),
                   bn_lr=None, progress=print):
    """Pretrain each model on all training images of `pretrain_classes`; fine-tune on
    `target_classes` with `shots` images per class from those weights ("pretrained", the
    classifier replaced) and from scratch ("scratch"), for the same number of steps. The
    pretrained runs stay in `out_dir`/pretrain/ so that a resumed study reuses them."""
    keys = ["model", "init", "shots", "seed"]
    rows, done = _done(out_csv, keys)
    with tempfile.TemporaryDirectory() as scratch:
        for seed in seeds:
            for model in models:
                todo = [(model, init, count, seed) for count in shots
                        for init in ("pretrained", "scratch")
                        if (model, init, count, seed) not in done]
                weights = None  # pretrained only when a run still needs the weights
                if any(init == "pretrained" for _, init, _, _ in todo):
                    weights = _pretrained(base, model, seed, pretrain_classes, pretrain_steps,
                                          Path(out_dir) / "pretrain", bn_lr, progress)
                for key in todo:
                    init, count = key[1:3]
                    cfg = replace(recipe_for(base, model, "on", bn_lr), seed=seed,
                                  classes=target_classes, train_per_class=count, progress=False,
                                  init_from=str(weights) if init == "pretrained" else None,
                                  out_dir=str(Path(scratch) / "-".join(map(str, key))))
                    cfg = with_steps(cfg, finetune_steps, count * len(target_classes))
                    measured = run_and_measure(cfg)
                    rows.append(dict(zip(keys, key), steps=finetune_steps,
                                     **{k: measured[k] for k in TRANSFER_FIELDS
                                        if k in measured}))
                    write_csv(out_csv, TRANSFER_FIELDS, rows)
                    progress(f"{model:<12} {init:<10} {count:>5} a class  seed {seed}: "
                             f"test {measured['test_top1']:.2f}%")
    return rows


def _pretrained(base, model, seed, classes, steps, folder, bn_lr, progress):
    """The weights of `model` pretrained on `classes`, trained now unless a finished run is
    there already."""
    out = folder / f"{model}-s{seed}"
    weights = out / "model.safetensors"
    if not (out / "results.json").exists():
        cfg = replace(recipe_for(base, model, "on", bn_lr), seed=seed, classes=classes,
                      steps=steps, progress=False, out_dir=str(out))
        result = train(replace(cfg, resume=(out / "checkpoint.pt").exists()))
        progress(f"{model:<12} pretrained on classes {classes}, seed {seed}: test "
                 f"{result['test_top1']:.2f}%")
    return weights


def summarise(rows, group_fields, value):
    """{group: (mean, std over seeds, n)} of `value` per combination of `group_fields`."""
    groups = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in group_fields), []).append(row[value])
    return {k: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v))
            for k, v in groups.items()}


def summary_table(rows, group_fields, values):
    """Markdown rows: each group's mean ± std over seeds (and their count) of `values`."""
    stats = {value: summarise(rows, group_fields, value) for value in values}
    header = [*group_fields, *values, "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group in sorted(stats[values[0]], key=_order):
        cells = [f"{stats[v][group][0]:.2f} ± {stats[v][group][1]:.2f}" for v in values]
        lines.append("| " + " | ".join([*map(str, group), *cells,
                                        str(stats[values[0]][group][2])]) + " |")
    return "\n".join(lines)


# Two-sided 95 % quantiles of Student's t for 1-9 degrees of freedom: a difference over n seeds
# exceeds the seed noise when |mean| > t(n − 1) · std / √n (a paired t-test).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
       9: 2.262}


def seed_differences(rows, cell_fields, value, first, second, pair_field="model"):
    """Rows of `value` where `pair_field` is `first` minus where it is `second`, one per
    combination of `cell_fields` and seed that has both."""
    pairs = {}
    for row in rows:
        if row[pair_field] in (first, second):
            key = (*(row[k] for k in cell_fields), row["seed"])
            pairs.setdefault(key, {})[row[pair_field]] = row[value]
    return [{**dict(zip([*cell_fields, "seed"], key)), value: pair[first] - pair[second]}
            for key, pair in pairs.items() if len(pair) == 2]


def paired_differences(rows, cell_fields, value, first, second, pair_field="model"):
    """{cell: (mean, std, n, exceeds_noise)} of `seed_differences` over seeds; `exceeds_noise`
    is None below two seeds."""
    result = {}
    differences = seed_differences(rows, cell_fields, value, first, second, pair_field)
    for cell, (mean, std, n) in summarise(differences, cell_fields, value).items():
        t = T95.get(n - 1, 1.96)
        result[cell] = (mean, std, n, abs(mean) > t * std / n ** 0.5 if n > 1 else None)
    return result


def difference_table(rows, cell_fields, value, first, second, pair_field="model", label=None):
    """Markdown rows of `paired_differences`: mean ± std over seeds and whether it exceeds the
    seed noise; `label` heads the difference column (default: value: first − second)."""
    diffs = paired_differences(rows, cell_fields, value, first, second, pair_field)
    verdict = {True: "yes", False: "no", None: "one seed"}
    label = label or f"{value}: {first} − {second}"
    lines = [f"| {' | '.join(cell_fields)} | {label} | seeds | beyond seed noise (paired t, "
             f"95 %) |", "|" + "---|" * (len(cell_fields) + 3)]
    for cell, (mean, std, n, exceeds) in sorted(diffs.items(), key=lambda kv: _order(kv[0])):
        lines.append(f"| {' | '.join(map(str, cell))} | {mean:+.2f} ± {std:.2f} | {n} | "
                     f"{verdict[exceeds]} |")
    return "\n".join(lines)


def gap_growth_table(rows, nf, bn):
    """Claim (1) in numbers: by how much NF's train − test gap exceeds BN's more at each
    training size than at the largest, paired by seed (a seed draws the same subset for both
    models)."""
    gaps = seed_differences(rows, ["augmentation", "train_images"], "gap", nf, bn)
    if not gaps:
        return "(no cell has both models yet)"
    largest = max(r["train_images"] for r in gaps)
    at_largest = {(r["augmentation"], r["seed"]): r["gap"] for r in gaps
                  if r["train_images"] == largest}
    # each smaller size's row, paired with its seed's row at the largest size
    paired = []
    for row in gaps:
        reference = at_largest.get((row["augmentation"], row["seed"]))
        if row["train_images"] != largest and reference is not None:
            paired += [{**row, "at": "size"}, {**row, "at": "largest", "gap": reference}]
    return difference_table(paired, ["augmentation", "train_images"], "gap", "size", "largest",
                            pair_field="at", label=f"(NF − BN gap) − (same at {largest})")


def transfer_gain_table(rows, nf, bn):
    """Claim (3) in numbers: NF's gain from pretraining (pretrained − scratch test top-1)
    minus BN's, per shots, paired by seed."""
    gains = seed_differences(rows, ["model", "shots"], "test_top1", "pretrained", "scratch",
                             pair_field="init")
    return "\n\n".join([
        difference_table(rows, ["model", "shots"], "test_top1", "pretrained", "scratch",
                         pair_field="init", label="gain from pretraining (points)"),
        difference_table(gains, ["shots"], "test_top1", nf, bn,
                         label="gain from pretraining: NF − BN (points)")])


def _order(group):
    """Names alphabetically, numbers by size."""
    return tuple((1, str(x), 0) if isinstance(x, str) else (0, "", x) for x in group)


def plot_datasize(rows, path, title):
    """Test top-1 and train − test gap against training images, mean ± std over seeds."""
    fig, (acc, gap) = subplots(1, 2, figsize=(10, 3.8))
    for value, ax in (("test_top1", acc), ("gap", gap)):
        stats = summarise(rows, ["model", "augmentation", "train_images"], value)
        colours = {}
        for model, augmentation in dict.fromkeys(k[:2] for k in stats):
            sizes = sorted(k[2] for k in stats if k[:2] == (model, augmentation))
            points = [stats[(model, augmentation, s)] for s in sizes]
            ax.errorbar(sizes, [p[0] for p in points], yerr=[p[1] for p in points], marker="o",
                        capsize=3, color=colours.setdefault(model, f"C{len(colours)}"),
                        linestyle="-" if augmentation == "on" else "--",
                        label=f"{model}, augmentation {augmentation}")
        ax.set(xscale="log", xlabel="training images")
        ax.grid(alpha=0.3)
    acc.set_ylabel("test top-1 (%)")
    gap.set_ylabel("train − test top-1 (points)")
    acc.legend(fontsize=8)
    fig.suptitle(title)
    save_figure(fig, path, bbox_inches="tight")


def plot_transfer(rows, path, title):
    """Test top-1 against images per class, pretrained and from scratch, mean ± std."""
    fig, ax = subplots(figsize=(6, 4))
    stats = summarise(rows, ["model", "init", "shots"], "test_top1")
    colours = {}
    for model, init in dict.fromkeys(k[:2] for k in stats):
        shots = sorted(k[2] for k in stats if k[:2] == (model, init))
        ax.errorbar(shots, [stats[(model, init, s)][0] for s in shots],
                    yerr=[stats[(model, init, s)][1] for s in shots], marker="o", capsize=3,
                    color=colours.setdefault(model, f"C{len(colours)}"),
                    linestyle="-" if init == "pretrained" else "--", label=f"{model}, {init}")
    ax.set(xscale="log", xlabel="training images per class", ylabel="test top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(title)
    save_figure(fig, path, bbox_inches="tight")
