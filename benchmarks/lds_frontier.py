"""LDS versus training compute: how many independent models, and which checkpoints, TRAK needs (val targets).

On a run trained with ``--ensemble 10 --checkpoints-per-model 4`` (the run of ``benchmarks/peers.py``), the
features the run already stored (Kronecker projector, its ``--proj-dim``) are re-scored for subsets of the
checkpoints through the TRAK engine (``TRAK.scores(..., checkpoints=...)``; a new ridge reuses each checkpoint's
cached ``X^T X``):

- M = 1, 2, 3, 5, 10 independently trained models, final checkpoint each (training compute M);
- checkpoints along one trajectory (model 0: the last 1, 2 or all 4, taken every 2 of 8 epochs; compute 1);
- M models x 4 trajectory checkpoints (compute M);
- each at several ridges;
- with ``--branches B``, a cheaper ensemble (snapshot / cyclic learning rate, as in Huang et al. 2017): model 0's
  final checkpoint trained on for ``--branch-epochs`` more epochs with a new seed (new data order, a fresh
  one-cycle learning rate), B times; compute 1 + B x branch epochs / run epochs;
- with ``--reinit R``, partially re-initialised members: the same, but the classifier (last Linear layer) is drawn
  afresh before the extra epochs (compute as branches);
- with ``--dropout D``, dropout-ensemble members in the spirit of Deng et al. 2024 ("Efficient Ensembles Improve
  Training Data Attribution"), with no training at all: D seeded DropConnect masks (``--dropout-p`` of the conv /
  linear weights zeroed, the rest rescaled) of model 0's final checkpoint (compute 1).

Each family's members are featurized into their own store under ``--work`` with model 0's checkpoints (the run
folder is not written to).

Training compute is in units of one model trained for the run's epochs on the full training split; featurizing
a checkpoint costs about one forward+backward pass over train + targets, small beside training here.

    python benchmarks/lds_frontier.py --run /tmp/peers/run_i --models 50
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from trakscope.io import write_json
from trakscope.methods.lds import ci95, lds, predicted_outputs
from trakscope.run_folder import RunFolder, checkpoint_key
from trakscope.stages.ensemble import Runtime, trak_engine
from trakscope.stages.lds import subset_margins


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--models", type=int, default=50, help="LDS subset models (cached in the run)")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--ridges", default="0.3,1,3,10")
    p.add_argument("--plot", type=Path, default=Path("docs/lds_frontier.png"))
    p.add_argument("--work", type=Path, default=None, help="score matrices and summary (default <run>_bench)")
    p.add_argument("--branches", type=int, default=0, help="snapshot branches from model 0's final checkpoint")
    p.add_argument("--branch-epochs", type=int, default=2, help="training epochs of a branch or re-init member")
    p.add_argument("--reinit", type=int, default=0,
                   help="members from model 0's final checkpoint with a fresh classifier, trained --branch-epochs")
    p.add_argument("--dropout", type=int, default=0, help="DropConnect-masked copies of model 0's final checkpoint")
    p.add_argument("--dropout-p", type=float, default=0.3,
                   help="fraction of conv / linear weights a mask drops (0.3: best on val, as run --mask-p)")
    args = p.parse_args()
    args.work = args.work or args.run.parent / f"{args.run.name}_bench"
    return args


def checkpoint_ids(run: RunFolder) -> dict[tuple[int, int], int]:
    """(model, checkpoint) -> id in the run's TRAK store (``trakscope run`` numbers them in checkpoint-file order)."""
    out = {}
    for k, path in enumerate(run.checkpoint_paths()):
        out[checkpoint_key(path)] = k
    return out


def engine(run: RunFolder, args: argparse.Namespace):
    """The run's own TRAK engine and features; if those were made by an older engine (settings differ, e.g. before
    narrow Kronecker blocks were widened), the run's checkpoints featurized afresh into ``<work>/store_run``."""
    from trakscope import TRAK
    from trakscope.attribution.store import StoreError
    from trakscope.io import load_tensors
    from trakscope.models import build_model
    from trakscope.train import architecture_only

    try:
        return trak_engine(run, Runtime(progress=False))
    except StoreError as e:
        print(f"re-featurizing into {args.work / 'store_run'}: {e}", flush=True)
    cfg, ds = run.config, run.data.dataset()
    t = cfg.trak
    trak = TRAK(build_model(architecture_only(cfg.model), len(ds.classes)), args.work / "store_run",
                proj_dim=t.proj_dim, kron_k=t.kron_k, seed=t.seed, progress=False)
    paths = run.checkpoint_paths()  # read as files: the folder may predate newer config fields
    featurize_into(trak, ds, t.batch_size, [lambda p=p: load_tensors(p) for p in paths])
    return trak


def featurize_into(trak, ds, batch_size: int, states: list) -> None:
    """Featurize train, val and test under checkpoint id k = the k-th of ``states`` (callables giving a state
    dict, called only if something is pending), resumed from the engine's store."""
    from trakscope.stages.run import split_batches

    for k, get_state in enumerate(states):
        state = None
        for name in ("train", "val", "test"):
            split = ds.split(name)
            rows = trak.pending(name, len(split), k)
            if len(rows):
                state = state or get_state()
                trak.featurize_batches(split_batches(split, rows, batch_size, 0), split=name, n=len(split),
                                       checkpoint=state, checkpoint_id=k)


def configurations(n_models: int, per_model: int) -> list[dict]:
    """Name, family, training compute (models trained) and the (model, checkpoint) pairs used."""
    last = per_model - 1
    out = [{"name": f"{m} independent (final ckpt)", "family": "independent", "compute": m,
            "pairs": [(i, last) for i in range(m)]} for m in (1, 2, 3, 5, 10) if m <= n_models]
    out += [{"name": f"1 trajectory, last {c} ckpts", "family": "trajectory", "compute": 1,
             "pairs": [(0, last - j) for j in range(c)]} for c in (2, per_model) if c <= per_model]
    out += [{"name": f"{m} models x {per_model} ckpts", "family": "models x trajectory", "compute": m,
             "pairs": [(i, c) for i in range(m) for c in range(per_model)]} for m in (2, 3, 5, 10) if m <= n_models]
    return out


# Cheap ensemble members made from model 0 (see the module docstring): family -> (row label, trained or not)
CHEAP = {"branches": ("snapshot branches", True), "reinit": ("re-initialised head", True),
         "dropout": ("dropout masks", False)}


def cheap_states(run: RunFolder, args: argparse.Namespace, family: str, final: dict, work: Path) -> list[dict]:
    """The members of one cheap family, each a state dict derived from model 0's final checkpoint ``final``.

    branches: trained on for ``--branch-epochs`` with a new seed; reinit: the last Linear layer (the classifier)
    drawn afresh first, then trained like a branch; dropout: no training, a seeded DropConnect mask (each weight of
    every conv / linear layer kept with probability 1 - p and rescaled by 1 / (1 - p)).
    """
    import dataclasses

    from trakscope import dropconnect
    from trakscope.config import ModelConfig
    from trakscope.io import load_tensors, save_tensors
    from trakscope.models import build_model
    from trakscope.train import architecture_only, train_model

    cfg, ds = run.config, run.data.dataset()
    count = {"branches": args.branches, "reinit": args.reinit, "dropout": args.dropout}[family]
    model = build_model(architecture_only(cfg.model), len(ds.classes))
    if family == "dropout":  # the engine's own masks (``trakscope run --masks``), seeded here (3000, d)
        return [dropconnect(final, args.dropout_p, seed=(3000, d), weights=model) for d in range(count)]
    head = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)][-1]
    train_cfg = dataclasses.replace(cfg.train, epochs=args.branch_epochs, checkpoints_per_model=1)
    out = []
    for b in range(count):
        path = work / f"{'branch' if family == 'branches' else family}{b}.safetensors"
        if not path.exists():
            start = dict(final)
            if family == "reinit":  # a fresh classifier, seeded per member
                torch.manual_seed(2000 + b)
                fresh = build_model(architecture_only(cfg.model), len(ds.classes)).state_dict()
                start.update({k: v for k, v in fresh.items() if k.startswith(head + ".")})
            start_path = work / "start.safetensors"
            save_tensors(start_path, start)
            model_cfg = ModelConfig(**{**dataclasses.asdict(cfg.model), "weights_path": str(start_path)})
            save_tensors(path, train_model(model_cfg, train_cfg, ds, seed=1000 + b, progress=False)[-1])
        out.append(load_tensors(path))
    return out


def cheap_rows(run: RunFolder, args: argparse.Namespace, ridges: list[float], lds_data: dict, family: str) -> list:
    """One cheap family's members next to model 0's own checkpoints, in their own store, scored like the rest."""
    from trakscope import TRAK
    from trakscope.io import load_tensors
    from trakscope.models import build_model
    from trakscope.train import architecture_only

    cfg, ds = run.config, run.data.dataset()
    work = args.work / "branches"  # every family's members and stores (the first family's names kept)
    own = [p for p in run.checkpoint_paths() if checkpoint_key(p)[0] == 0]  # model 0's trajectory, in order
    states = [load_tensors(p) for p in own]  # read as files: this run folder may predate newer config fields
    members = cheap_states(run, args, family, states[-1], work)
    states += members
    t = cfg.trak
    variant = f"_p{args.dropout_p:g}" if family == "dropout" else ""  # masks differ with p: their own store
    store = work / ("store" if family == "branches" else f"store_{family}{variant}")
    trak = TRAK(build_model(architecture_only(cfg.model), len(ds.classes)), store, proj_dim=t.proj_dim,
                kron_k=t.kron_k, seed=t.seed, progress=False)
    featurize_into(trak, ds, t.batch_size, [lambda st=st: st for st in states])
    label, trained = CHEAP[family]
    n_own, m_all = len(own), len(members)
    step = args.branch_epochs / cfg.train.epochs if trained else 0.0
    named = f"{label} (p {args.dropout_p:g})" if family == "dropout" else label
    configs = [(f"1 model + {b} {named} (final ckpts)", label, [n_own - 1, *range(n_own, n_own + b)], b)
               for b in sorted({1, 2, 4, m_all}) if b <= m_all]
    configs += [(f"1 trajectory ({n_own} ckpts) + {b} {named}", f"trajectory + {label}",
                 [*range(n_own), *range(n_own, n_own + b)], b)
                for b in sorted({2, 4, m_all}) if b <= m_all]
    if family == "dropout":  # the masked copies alone, as the paper's ensemble (no unmasked member)
        configs += [(f"{b} {named} of the final ckpt only", f"{label} only", list(range(n_own, n_own + b)), b)
                    for b in sorted({2, 4, m_all}) if b <= m_all]
    rows = []
    for name, fam, ks, b in configs:
        row = {"name": name, "family": fam, "compute": round(1 + b * step, 3), "checkpoints": len(ks),
               "val": {}, "test": {}}
        for ridge in ridges:
            trak.ridge = ridge
            for split in ("val", "test"):
                masks, margins = lds_data[split]
                tag = fam.replace(" ", "_").replace("+", "and") + variant
                scores = trak.scores("train", split, out=work / f"{tag}_{b}_{ridge:g}_{split}.npy", checkpoints=ks)
                mean, per = lds(predicted_outputs(np.asarray(scores), masks), margins)
                row[split][str(ridge)] = (round(mean, 4), [round(v, 4) for v in ci95(per)])
        rows.append(row)
    return rows


def plot(rows: list[dict], ridge: float, path: Path, what: str) -> None:
    """Left: LDS vs training compute (independent models, trajectories, trained cheap members). Right: at the
    training of one model, LDS vs checkpoints featurized (trajectory and DropConnect masks, which train nothing),
    with independent models (one checkpoint per model trained) for reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full_trajectory = max((r for r in rows if r["family"] == "trajectory"), key=lambda r: r["checkpoints"])
    also = {"trajectory": lambda r: r["name"].startswith("1 independent"),  # its first checkpoint count: 1
            "models x trajectory": lambda r: r is full_trajectory}  # 1 model x all its checkpoints

    def series(ax, family: str, marker: str, x: str, label: str | None = None) -> None:
        pts = sorted((r[x], r["val"][str(ridge)][0], r["val"][str(ridge)][1]) for r in rows
                     if r["family"] == family or also.get(family, lambda r: False)(r))
        if pts:
            xs, ys, cis = zip(*pts)
            err = np.array([[y - c[0] for y, c in zip(ys, cis)], [c[1] - y for y, c in zip(ys, cis)]])
            ax.errorbar(xs, ys, yerr=err, fmt=marker, capsize=3, label=label or family)

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    trained = [("independent", "o-"), ("models x trajectory", "^--")]
    for (label, is_trained), (one, traj) in zip(CHEAP.values(), (("v:", "D:"), ("<:", ">:"), ("x", "+"))):
        if is_trained:
            trained += [(label, one), (f"trajectory + {label}", traj)]
    for family, marker in trained:
        series(left, family, marker, "compute")
    left.set_xscale("log")
    left.set_xticks([1, 2, 3, 5, 10], ["1", "2", "3", "5", "10"])
    left.set_xlabel("training compute (models trained)")
    left.set_ylabel("LDS on val targets (mean Spearman, 95% CI)")
    left.set_title("what training more buys")
    mask = CHEAP["dropout"][0]
    for family, marker, label in (("independent", "o-", "independent (x models trained)"),
                                  ("trajectory", "s-", "1 model: trajectory checkpoints"),
                                  (mask, "x-", f"1 model: final ckpt + {mask}"),
                                  (f"{mask} only", "+:", f"1 model: {mask} only"),
                                  (f"trajectory + {mask}", "D-", f"1 model: trajectory + {mask}")):
        series(right, family, marker, "checkpoints", label)
    right.set_xlabel("checkpoints featurized")
    right.set_title("what featurizing more buys (no training beyond the x = 1 model)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"TRAK LDS vs compute: {what}, ridge {ridge:g}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    args = parse_args()
    t0 = time.perf_counter()
    run = RunFolder(args.run)
    ids = checkpoint_ids(run)
    n_models = 1 + max(m for m, _ in ids)
    per_model = 1 + max(c for _, c in ids)
    trak = engine(run, args)
    ridges = [float(r) for r in args.ridges.split(",")]
    lds_data = {s: subset_margins(run, args.alpha, args.models, seed=0, split=s, progress=False)
                for s in ("val", "test")}
    rows = [{**cfg, "checkpoints": len(cfg["pairs"]), "val": {}, "test": {}}
            for cfg in configurations(n_models, per_model)]
    for ridge in ridges:  # ridge outermost: each checkpoint's kernel is inverted once per ridge
        trak.ridge = ridge
        for row in rows:
            ks = [ids[p] for p in row["pairs"]]
            for split in ("val", "test"):
                masks, margins = lds_data[split]
                name = f"{row['family'].replace(' ', '_')}_{row['compute']}_{len(ks)}_{ridge:g}_{split}"
                out = args.work / f"frontier_{name}.npy"
                scores = trak.scores("train", split, out=out, checkpoints=ks)
                mean, per = lds(predicted_outputs(np.asarray(scores), masks), margins)
                row[split][str(ridge)] = (round(mean, 4), [round(v, 4) for v in ci95(per)])
    for family in CHEAP:
        if getattr(args, family):
            rows += cheap_rows(run, args, ridges, lds_data, family)
    for row in rows:
        print(row["name"], {r: row["val"][str(r)][0] for r in ridges}, flush=True)
    best_ridge = max(ridges, key=lambda r: np.mean([row["val"][str(r)][0] for row in rows]))
    c = run.config
    plot(rows, best_ridge, args.plot, f"{c.model.name}, {c.train.epochs} epochs, {c.trak.projector} {c.trak.proj_dim}")
    timings = run.results.timings()
    write_json(args.work / "frontier.json", {"rows": rows, "ridges": ridges, "best_ridge_on_val": best_ridge,
                                             "run_timings": timings, "models_trained": n_models,
                                             "wall_s": round(time.perf_counter() - t0, 1)})
    print(f"ridge best on val (mean over configurations): {best_ridge:g}")
    head = "| configuration | training compute | checkpoints | " + " | ".join(f"val LDS, ridge {r:g}" for r in ridges)
    print(head + f" | test LDS at ridge {best_ridge:g} |\n|" + "---|" * (4 + len(ridges)))
    for row in rows:
        vals = " | ".join(f"{row['val'][str(r)][0]:.4f}" for r in ridges)
        print(f"| {row['name']} | {row['compute']} | {row['checkpoints']} | {vals} | "
              f"{row['test'][str(best_ridge)][0]:.4f} |")


if __name__ == "__main__":
    main()
