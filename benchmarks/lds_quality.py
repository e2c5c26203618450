"""LDS of TRAK scores from different gradient projectors, side by side on one run (same model, checkpoints, examples).

Rows: trakscope's Kronecker projector (at its natural width and mapped to each ``--proj-dims``), trakscope's dense
projector, and ``traker`` from PyPI on the CPU (fp32, ``BasicProjector``, rademacher) at the same widths, plus a
random-score floor. All are scored against the same cached subset models (``trakscope.stages.lds``), so
differences come from the attribution alone. Higher LDS is better.

    python benchmarks/lds_quality.py --out /tmp/lds_bench            # builds the run, then the table
    python benchmarks/lds_quality.py --out /tmp/lds_bench --models 50  # reuses run, features and subset models

Everything is cached under ``--out`` (the run) and ``--work`` (TRAK stores and score matrices, default
``<out>_bench``), so a rerun resumes.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from trakscope.attribution.trak import TRAK
from trakscope.cli import main as trakscope_main
from trakscope.data import iter_batches
from trakscope.io import load_npy, save_npy, write_json
from trakscope.methods.lds import ci95, lds, predicted_outputs
from trakscope.models import build_model
from trakscope.run_folder import RunFolder
from trakscope.stages.ensemble import load_checkpoint
from trakscope.stages.lds import subset_margins
from trakscope.stages.run import split_batches
from trakscope.train import architecture_only, load_trained


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="run folder (built with `trakscope run` if absent)")
    p.add_argument("--work", type=Path, default=None, help="TRAK stores and score matrices (default <out>_bench)")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--model", default="tiny_cnn", help="resnet18 makes the dense and traker rows take hours here")
    p.add_argument("--max-train", type=int, default=1000)
    p.add_argument("--max-test", type=int, default=200, help="the test split = the LDS targets")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--ensemble", type=int, default=3, help="independently trained models = TRAK checkpoints")
    p.add_argument("--batch-size", type=int, default=32, help="training batch size (run and subset models)")
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate (run and subset models)")
    p.add_argument("--proj-dims", default="256,1024,2048", help="comma-separated equal total widths")
    p.add_argument("--models", type=int, default=50, help="LDS subset models")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--no-traker", action="store_true", help="skip the traker rows")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    args.work = args.work or args.out.parent / f"{args.out.name}_bench"
    return args


def build_run(args: argparse.Namespace) -> RunFolder:
    """The run (data, ensemble, its own Kronecker scores) through the CLI; reused when it is complete."""
    flags = ["--out", str(args.out), "--dataset", args.dataset, "--model", args.model, "--max-train",
             str(args.max_train), "--max-test", str(args.max_test), "--epochs", str(args.epochs), "--ensemble",
             str(args.ensemble), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
             "--projector", "kronecker", "--device", "cpu", "--no-progress"]
    if trakscope_main(["run", *flags]) != 0:
        raise SystemExit("trakscope run failed")
    return RunFolder(args.out)


def _nets(run: RunFolder) -> list[torch.nn.Module]:
    cfg, n_classes = run.config, len(run.data.dataset().classes)
    return [load_trained(cfg.model, n_classes, load_checkpoint(run, p)) for p in run.checkpoint_paths()]


def trakscope_scores(run: RunFolder, projector: str, proj_dim: int, work: Path) -> tuple[np.ndarray, int]:
    """float32 ``[n_train, n_test]`` scores with one of trakscope's projectors (through the TRAK engine), and width."""
    cfg, dataset = run.config, run.data.dataset()
    model = build_model(architecture_only(cfg.model), len(dataset.classes))
    trak = TRAK(model, work / f"{projector}_{proj_dim}", projector=projector, proj_dim=proj_dim,
                kron_k=cfg.trak.kron_k, proj_type=cfg.trak.proj_type, ridge=cfg.trak.ridge, seed=cfg.trak.seed,
                progress=False)
    for k, path in enumerate(run.checkpoint_paths()):
        state = load_checkpoint(run, path)
        for name in ("train", "test"):
            split = dataset.split(name)
            rows = trak.pending(name, len(split), k) if k in trak.checkpoints() else np.arange(len(split))
            trak.featurize_batches(split_batches(split, rows, cfg.trak.batch_size, 0), split=name, n=len(split),
                                   checkpoint=state, checkpoint_id=k)
    scores = np.asarray(trak.scores("train", "test"))
    return scores, trak.store.features(0, "train", 0, 0).load()[0].shape[1]


def _batches(split, batch_size: int):
    labels = torch.as_tensor(split.labels)
    for idx, x in iter_batches(split.images, np.arange(len(split)), batch_size):
        yield x, labels[idx]


def traker_scores(run: RunFolder, proj_dim: int, save_dir: Path) -> np.ndarray:
    """float32 ``[n_train, n_test]`` scores from ``traker`` (CPU, fp32, BasicProjector).

    traker's ``lambda_reg`` is absolute; it is set per checkpoint to the same relative ridge trakscope uses
    (``ridge * mean diag(X^T X)`` of that checkpoint's projected training gradients).
    """
    from trak import TRAKer
    from trak.projectors import BasicProjector, ProjectionType

    cfg, dataset = run.config, run.data.dataset()
    nets = _nets(run)
    n_params = sum(p.numel() for p in nets[0].parameters())
    n_train, n_test, bs = len(dataset.train), len(dataset.test), cfg.trak.batch_size
    proj = BasicProjector(grad_dim=n_params, proj_dim=proj_dim, seed=cfg.trak.seed,
                          proj_type=ProjectionType.rademacher, device="cpu")
    # traker loads every checkpoint into the model it is given: a copy, so nets[0]'s weights stay checkpoint 0's
    tr = TRAKer(model=copy.deepcopy(nets[0]), task="image_classification", train_set_size=n_train,
                save_dir=str(save_dir), device="cpu", projector=proj, proj_dim=proj_dim, use_half_precision=False,
                logging_level=40)
    for k, net in enumerate(nets):
        tr.load_checkpoint(net.state_dict(), model_id=k)
        for x, y in _batches(dataset.train, bs):
            tr.featurize(batch=(x, y), num_samples=len(y))
        g = np.asarray(tr.saver.current_store["grads"], dtype=np.float64)
        tr.score_computer.lambda_reg = cfg.trak.ridge * float((g**2).sum(0).mean())
        tr.finalize_features(model_ids=[k])
    for k, net in enumerate(nets):
        tr.start_scoring_checkpoint(exp_name="lds", checkpoint=net.state_dict(), model_id=k, num_targets=n_test)
        for x, y in _batches(dataset.test, bs):
            tr.score(batch=(x, y), num_samples=len(y))
    return np.asarray(tr.finalize_scores(exp_name="lds"), dtype=np.float32)


def score_rows(run: RunFolder, args: argparse.Namespace) -> list[dict]:
    """Every attribution to compare: name, width, scores ``[n_train, n_test]`` (cached as .npy), seconds."""
    dims = [int(d) for d in args.proj_dims.split(",") if d.strip()]
    plan = [("kronecker", 0)] + [(p, d) for d in dims for p in ("kronecker", "dense")]
    if not args.no_traker:
        plan += [("traker", d) for d in dims]
    rows = []
    for method, dim in plan:
        path = args.work / f"scores_{method}_{dim}.npy"
        meta_path = path.with_suffix(".json")
        if path.exists() and meta_path.exists():
            rows.append({**json.loads(meta_path.read_text()), "scores": load_npy(path)})
            continue
        print(f"scoring with {method} at {dim or 'natural width'} ...", flush=True)
        t0 = time.perf_counter()
        if method == "traker":
            scores, width = traker_scores(run, dim, args.work / f"traker_{dim}"), dim
        else:
            scores, width = trakscope_scores(run, method, dim, args.work)
        seconds = time.perf_counter() - t0
        meta = {"method": method, "requested_dim": dim, "dim": width, "seconds": round(seconds, 1)}
        save_npy(path, scores)
        write_json(meta_path, meta)
        rows.append({**meta, "scores": scores})
    shape = rows[0]["scores"].shape
    floor = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    rows.append({"method": "random scores (floor)", "requested_dim": 0, "dim": 0, "seconds": 0.0, "scores": floor})
    return rows


def table(results: list[dict]) -> str:
    head = "| attribution | width | LDS (mean over targets) | 95% CI | featurize + score (s) |\n|---|---|---|---|---|"
    lines = [head]
    for r in results:
        name = r["method"] + (" (natural width)" if r["method"] == "kronecker" and r["requested_dim"] == 0 else "")
        lines.append(f"| {name} | {r['dim'] or '—'} | {r['lds']:.4f} | {r['ci95'][0]:.4f} to {r['ci95'][1]:.4f} "
                     f"| {r['seconds'] or '—'} |")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    run = build_run(args)
    masks, margins = subset_margins(run, args.alpha, args.models, seed=0, split="test", progress=True)
    results = []
    for row in score_rows(run, args):
        mean, per_target = lds(predicted_outputs(row.pop("scores"), masks), margins)
        results.append({**row, "lds": mean, "ci95": list(ci95(per_target))})
    metrics = run.results.read(run.metrics_path, "model_metrics", "trakscope run")
    summary = {"config": run.config.to_dict(), "alpha": args.alpha, "num_models": args.models,
               "targets": int(margins.shape[1]), "ensemble_test_acc": metrics["ensemble"]["test_acc"],
               "wall_s": round(time.perf_counter() - t0, 1), "rows": results}
    write_json(args.work / "summary.json", summary)
    print(table(results))
    print(f"{args.models} subset models at alpha={args.alpha}, {margins.shape[1]} test targets, "
          f"ensemble test accuracy {summary['ensemble_test_acc']:.3f}; wall {summary['wall_s']} s")


if __name__ == "__main__":
    main()
