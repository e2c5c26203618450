"""LDS against every peer on the same work: trakscope, traker, dattri, kronfluence and captum, side by side.

One run folder (``trakscope run``), one set of cached LDS subset models (``trakscope.stages.lds.subset_margins``),
the same checkpoints for every method. Each method runs in its own subprocess (so its peak RSS is its own) and
writes ``scores[train, target]`` for the val and the test targets; the parent scores all of them with the same LDS.
Settings a peer leaves to the user (a damping) are chosen on the **val** targets; the table reports **test**.

    python benchmarks/peers.py --out /tmp/peers/run_i                      # case (i): tiny_cnn, 1,000 MNIST
    python benchmarks/peers.py --out /tmp/peers/run_i --methods kronfluence_ekfac   # some methods (cached rows reused)
    python benchmarks/peers.py --out /tmp/peers/run_i --work /tmp/peers/traj --trajectory  # model 0's 4 checkpoints
    python benchmarks/peers.py --out /tmp/peers/run_i --random-model  # the same on a re-initialised model (views.py)

Wall time is split into ``fit`` (everything that depends on the training set only: featurizing it, factors,
kernels) and ``targets`` (featurizing and scoring the val + test targets); peak memory is the worker's
``ru_maxrss``. Every worker runs with ``--threads`` torch threads (default 1).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import views

from trakscope.io import load_npy, save_npy, write_json
from trakscope.methods.lds import ci95, lds, predicted_outputs
from trakscope.run_folder import RunFolder

T_START = time.perf_counter()
ALL_METHODS = ("baseline", "trakscope", "trakscope_all_ckpts", "trakscope_masks2", "trakscope_dense", "traker",
               "dattri_trak", "dattri_tracin", "dattri_datainf", "dattri_if_explicit", "kronfluence_ekfac",
               "kronfluence_kfac", "captum_tracincpfast", "captum_tracincpfast_all_ckpts")
DATAINF_REGS = (1e-3, 1e-2, 1e-1, 1.0)  # dattri IF attributors' default (0) is singular; chosen on val targets
KRONFLUENCE_DAMPINGS = (1e-8, None)  # kronfluence's default, and its documented heuristic (0.1 x mean eigenvalue)


# Each case's settings in one place. Case (i): everything fits. Case (ii): the default model (ResNet-18, 11.2M
# parameters) with trakscope's default recipe and ensemble; peers whose per-example cost is a dense projection or a
# full-gradient product of 11.2M numbers run on the first ``subset`` training examples and targets only: their
# cost is extrapolated linearly and their LDS is not measured (an LDS needs every training example's score).
CASES = {
    "i": {"model": "tiny_cnn", "max_train": 1000, "max_test": 200, "ensemble": 10, "checkpoints_per_model": 4,
          "recipe": "--epochs 8 --batch-size 32 --lr 0.1", "use_models": 3, "subset_methods": "", "subset": 0},
    "ii": {"model": "resnet18", "max_train": 1000, "max_test": 200, "ensemble": 2, "checkpoints_per_model": 4,
           "recipe": "--epochs 8", "use_models": 2, "subset": 64, "dattri_batch": 16,  # the default before 6
           "subset_methods": "trakscope_dense,traker,dattri_trak,dattri_tracin,dattri_datainf"},
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", choices=sorted(CASES), default="i", help="preset of the settings below")
    p.add_argument("--recipe", help="training flags of `trakscope run` (empty: trakscope's defaults)")
    p.add_argument("--subset", type=int, help="training examples and targets of a subset row")
    p.add_argument("--subset-methods", help="methods run on --subset examples only (cost extrapolated, no LDS)")
    p.add_argument("--out", type=Path, required=True, help="run folder (built with `trakscope run` if absent)")
    p.add_argument("--work", type=Path, default=None, help="peers' stores and score matrices (default <out>_peers)")
    p.add_argument("--model")
    p.add_argument("--max-train", type=int)
    p.add_argument("--max-test", type=int)
    p.add_argument("--ensemble", type=int, help="models trained in the run (the frontier uses all)")
    p.add_argument("--checkpoints-per-model", type=int)
    p.add_argument("--use-models", type=int, help="final checkpoints of models 0..N-1 given to every method")
    p.add_argument("--trajectory", action="store_true",
                   help="give every method model 0's checkpoints along its trajectory instead of final checkpoints")
    p.add_argument("--models", type=int, default=50, help="LDS subset models")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--methods", default=",".join(ALL_METHODS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dattri-batch", type=int, default=64,
                   help="batch of dattri's vmapped per-example gradients (each batch holds batch x parameters floats)")
    p.add_argument("--redo", action="store_true", help="recompute rows whose scores are cached")
    p.add_argument("--random-model", action="store_true",
                   help="the model-randomisation check: every method gets the re-initialised model (views.py's, "
                        "seed 42) in place of each of its checkpoints; work folder <out>_peers_random by default")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    case = p.parse_known_args()[0].case
    p.set_defaults(**CASES[case])
    args = p.parse_args()
    args.work = args.work or args.out.parent / f"{args.out.name}_peers{'_random' if args.random_model else ''}"
    return args


# --- shared data -----------------------------------------------------------------------------------
def final_checkpoints(run: RunFolder, n_models: int, trajectory: bool = False) -> list[Path]:
    """The last checkpoint of each of models ``0..n_models-1``, or (``trajectory``) every checkpoint of model 0."""
    paths = run.checkpoint_paths()
    if trajectory:
        return [p for p in paths if p.stem.startswith("model0_")]
    last = {}
    for p in paths:  # model{m}_ckpt{c}: sorted by (m, c), so the last one per m wins
        last[int(p.stem.split("_")[0][5:])] = p
    return [last[m] for m in range(n_models)]


def tensors(split) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 ``[n, 3, S, S]`` images and int64 ``[n]`` labels of a split, in its order."""
    from trakscope.data import iter_batches

    xs = [x for _, x in iter_batches(split.images, np.arange(len(split)), 256)]
    return torch.cat(xs), torch.as_tensor(split.labels, dtype=torch.long)


def loader(x: torch.Tensor, y: torch.Tensor, batch_size: int = 64):
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size, shuffle=False)


class Work:
    """What a worker needs: the model, the checkpoints' state dicts, train and target tensors (val then test)."""

    def __init__(self, run: RunFolder, n_models: int, trajectory: bool = False, all_checkpoints: bool = False,
                 random_model: bool = False):
        from trakscope.io import load_tensors
        from trakscope.models import build_model
        from trakscope.train import architecture_only

        ds = run.data.dataset()
        self.paths = run.checkpoint_paths() if all_checkpoints else final_checkpoints(run, n_models, trajectory)
        self.trajectory = trajectory
        self.states = [load_tensors(p) for p in self.paths]  # as files: the folder may predate newer config fields
        if random_model:  # the randomisation check: each checkpoint re-initialised alike (views.random_model)
            self.states = [dict(views.random_model(run).state_dict())] * len(self.paths)
        self.model = build_model(architecture_only(run.config.model), len(ds.classes))
        self.model.load_state_dict(self.states[0])
        self.model.eval()
        self.x_train, self.y_train = tensors(ds.train)
        xv, yv = tensors(ds.val)
        xt, yt = tensors(ds.test)
        self.n_val = len(yv)
        self.x_target, self.y_target = torch.cat([xv, xt]), torch.cat([yv, yt])

    def restrict(self, n: int) -> dict:
        """Keep the first ``n`` training examples and the first ``n`` val and test targets (a subset row)."""
        full = {"full_train": len(self.y_train), "full_targets": len(self.y_target)}
        self.x_train, self.y_train = self.x_train[:n], self.y_train[:n]
        val = slice(0, min(n, self.n_val))
        test = slice(self.n_val, self.n_val + n)
        self.x_target = torch.cat([self.x_target[val], self.x_target[test]])
        self.y_target = torch.cat([self.y_target[val], self.y_target[test]])
        self.n_val = val.stop
        return full

    def net(self, k: int) -> torch.nn.Module:
        import copy

        m = copy.deepcopy(self.model)
        m.load_state_dict(self.states[k])
        return m.eval()


def margin_sum(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of ``z_y - logsumexp_{k != y} z_k`` (trakscope's and kronfluence's margin)."""
    idx = torch.arange(len(y))
    correct = logits[idx, y]
    others = logits.clone()
    others[idx, y] = -torch.inf
    return (correct - others.logsumexp(-1)).sum()


# --- methods: each returns (scores float32 [n_train, n_val + n_test], fit seconds, target seconds, notes) -----
def m_trakscope(w: Work, store: Path, projector: str = "kronecker", masks: int = 0) -> tuple:
    """trakscope's engine with its defaults (``TrakConfig``: projector width, kron_k and ridge); ``masks``: as
    ``trakscope run --masks``, that many DropConnect copies of each given checkpoint (seeded ``(0, k, d)``, at the
    default ``mask_p``) featurized as extra checkpoints after them (their masking is in the fit time)."""
    from trakscope import TRAK, dropconnect
    from trakscope.config import TrakConfig

    trak = TRAK(w.model, store, projector=projector, progress=False)
    notes = f"{projector}, proj_dim {trak.proj_dim}, kron_k {trak.kron_k}, ridge {trak.ridge:g} (defaults)"
    t0 = time.perf_counter()
    p = TrakConfig().mask_p
    states = [*w.states, *(dropconnect(st, p, seed=(0, k, d), weights=w.model) for k, st in enumerate(w.states)
                           for d in range(masks))]
    notes += f"; {masks} DropConnect masks (p {p:g}) of each checkpoint" if masks else ""
    for k, state in enumerate(states):
        trak.featurize(loader(w.x_train, w.y_train), split="train", checkpoint=state, checkpoint_id=k)
        trak.kernel(k, "train")
    t1 = time.perf_counter()
    for k, state in enumerate(states):
        trak.featurize(loader(w.x_target, w.y_target), split="targets", checkpoint=state, checkpoint_id=k)
    scores = np.array(trak.scores("train", "targets"))
    return scores, t1 - t0, time.perf_counter() - t1, notes


def m_traker(w: Work, store: Path) -> tuple:
    """traker 0.3.2 on the CPU, fp32 BasicProjector at its default proj_dim 2048; lambda as trakscope's ridge."""
    from trak import TRAKer
    from trak.projectors import BasicProjector, ProjectionType

    from trakscope.config import TrakConfig

    n_params = sum(p.numel() for p in w.model.parameters())
    proj = BasicProjector(grad_dim=n_params, proj_dim=2048, seed=0, proj_type=ProjectionType.rademacher, device="cpu")
    tr = TRAKer(model=w.net(0), task="image_classification", train_set_size=len(w.y_train), save_dir=str(store),
                device="cpu", projector=proj, proj_dim=2048, use_half_precision=False, logging_level=40)
    t0 = time.perf_counter()
    for k, state in enumerate(w.states):
        tr.load_checkpoint(state, model_id=k)
        for x, y in loader(w.x_train, w.y_train):
            tr.featurize(batch=(x, y), num_samples=len(y))
        g = np.asarray(tr.saver.current_store["grads"], dtype=np.float64)
        tr.score_computer.lambda_reg = TrakConfig().ridge * float((g**2).sum(0).mean())
        tr.finalize_features(model_ids=[k])
    t1 = time.perf_counter()
    for k, state in enumerate(w.states):
        tr.start_scoring_checkpoint(exp_name="peers", checkpoint=state, model_id=k, num_targets=len(w.y_target))
        for x, y in loader(w.x_target, w.y_target):
            tr.score(batch=(x, y), num_samples=len(y))
    scores = np.asarray(tr.finalize_scores(exp_name="peers"), dtype=np.float32)
    return scores, t1 - t0, time.perf_counter() - t1, (f"BasicProjector 2048 fp32; lambda_reg = {TrakConfig().ridge:g}"
                                                       " x mean diag(X^T X) (trakscope's ridge)")


def _dattri_task(w: Work, loss_kind: str):
    from dattri.task import AttributionTask

    model = w.net(0)

    def loss_margin(params, data):  # dattri's TRAK example: log(p / (1 - p)) of the label, one example
        image, label = data
        logp = -F.cross_entropy(torch.func.functional_call(model, params, image.unsqueeze(0)), label.unsqueeze(0))
        return logp - torch.log(1 - torch.exp(logp))

    def loss_ce(params, data):  # dattri's TracIn / IF examples: cross-entropy of one example
        image, label = data
        return F.cross_entropy(torch.func.functional_call(model, params, image.unsqueeze(0)), label.unsqueeze(0))

    loss = loss_margin if loss_kind == "margin" else loss_ce
    return AttributionTask(loss_func=loss, model=model, checkpoints=list(w.states)), model


# dattri's TRAK settings: its own benchmarks (experiments/benchmark_result*.py in dattri 0.3.0) use proj_dim 512 on
# MNIST and CIFAR and 2048 on the larger models, and never set `regularization` (default 0); its search grid for the
# influence-function attributors' regularization is 1e-5 .. 1 (10 added here). Each pair: one variant, chosen on val.
DATTRI_PROJ_DIMS = (512, 2048)
DATTRI_REGS = (0.0, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


def m_dattri_trak(w: Work, store: Path) -> tuple:
    """dattri's TRAKAttributor on the given checkpoints, at its documented settings and around them (variants of
    proj_dim and regularization, the best on val is reported); output log(p / (1 - p)), as dattri's TRAK examples."""
    from dattri.algorithm.trak import TRAKAttributor

    task, model = _dattri_task(w, "margin")

    def correct_p(params, data):  # dattri 0.3 hands this the unflattened parameter dict
        image, label = data
        return torch.exp(-F.cross_entropy(torch.func.functional_call(model, params, image.unsqueeze(0)),
                                          label.unsqueeze(0)))

    variants, fit, tgt, times = {}, [], [], {}
    for dim in DATTRI_PROJ_DIMS:
        for reg in DATTRI_REGS:
            att = TRAKAttributor(task=task, correct_probability_func=correct_p, device="cpu", regularization=reg,
                                 projector_kwargs={"device": "cpu", "proj_dim": dim})
            t0 = time.perf_counter()
            try:
                att.cache(loader(w.x_train, w.y_train, w.dattri_batch))
            except RuntimeError as e:  # X^T X without a ridge is singular where proj_dim > n_train
                times[f"{dim}, {reg:g}"] = f"failed: {str(e).splitlines()[0][:80]}"
                continue
            t1 = time.perf_counter()
            s = att.attribute(loader(w.x_target, w.y_target, w.dattri_batch)).detach().numpy()
            fit.append(t1 - t0)
            tgt.append(time.perf_counter() - t1)
            times[dim] = (round(t1 - t0, 1), round(tgt[-1], 1))
            default = " (defaults)" if (dim, reg) == (512, 0.0) else ""
            variants[f"proj_dim {dim}, regularization {reg:g}{default}"] = s.astype(np.float32)
    notes = (f"{len(variants)} variants (proj_dim x regularization), best on val; fit and targets are the mean per "
             f"variant; per proj_dim (fit s, targets s) of one variant: {times}")
    return variants, float(np.mean(fit)), float(np.mean(tgt)), notes


def m_dattri_tracin(w: Work, store: Path) -> tuple:
    """dattri's TracInAttributor, the given checkpoints with weight 1 each (Grad-Dot summed over them)."""
    from dattri.algorithm.tracin import TracInAttributor

    task, _ = _dattri_task(w, "ce")
    att = TracInAttributor(task=task, weight_list=torch.ones(len(w.states)), normalized_grad=False, device="cpu")
    t0 = time.perf_counter()
    att.cache()
    train, targets = loader(w.x_train, w.y_train, w.dattri_batch), loader(w.x_target, w.y_target, w.dattri_batch)
    scores = att.attribute(train, targets)
    scores = scores.detach().numpy().astype(np.float32)
    # TracIn has no train-only precomputation: every pair is one train x target product
    return scores, 0.0, time.perf_counter() - t0, "default projector (dim 512), weights 1, CE loss"


def m_dattri_if(w: Work, store: Path, run: RunFolder, args: argparse.Namespace, kind: str,
                select: bool = True) -> tuple:
    """One of dattri's influence-function attributors per checkpoint, averaged over the given checkpoints.

    ``datainf``: IFAttributorDataInf (its cache is over per-example gradients, batch 1). ``explicit``:
    IFAttributorExplicit, the exact inverse Hessian of the mean training loss, on the classifier (the last Linear
    layer's parameters, dattri's ``layer_name``). With the whole training split as one batch, as dattri advises,
    its forward-mode Hessian asked for 93 GB on all of tiny_cnn's 2,850 parameters and 47.5 GB on the classifier
    alone, so the cache takes ``--dattri-batch`` examples at a time (dattri then sums the batches' inverse
    Hessian-vector products) and the targets are one batch (each Hessian built once per checkpoint).

    Their default regularization (0) divides by zero or inverts a singular Hessian, so one is chosen on the val
    targets under checkpoint 0 (LDS against the cached val subset models), then used for every checkpoint and
    every target. A subset row (``select=False``) has no LDS to choose by: it times the middle value (the cost
    does not depend on it).
    """
    from dattri.algorithm.influence_function import IFAttributorDataInf, IFAttributorExplicit
    from dattri.task import AttributionTask

    cls, cache_batch = {"datainf": (IFAttributorDataInf, 1), "explicit": (IFAttributorExplicit, w.dattri_batch)}[kind]
    target_batch = len(w.y_target) if kind == "explicit" else w.dattri_batch

    def attributor(k: int, reg: float) -> tuple:
        model = w.net(k)

        def loss_ce(params, data):  # one example, or (the attributors' caches) one batch
            image, label = data
            if image.dim() == 3:
                image, label = image.unsqueeze(0), label.unsqueeze(0)
            return F.cross_entropy(torch.func.functional_call(model, params, image), label)

        task = AttributionTask(loss_func=loss_ce, model=model, checkpoints=w.states[k])
        head = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)][-1]
        layers = [n for n, _ in model.named_parameters() if n.startswith(head + ".")] if kind == "explicit" else None
        att = cls(task=task, layer_name=layers, device="cpu", regularization=reg)
        t0 = time.perf_counter()
        att.cache(loader(w.x_train, w.y_train, cache_batch))
        return att, time.perf_counter() - t0

    t_select = time.perf_counter()
    val_lds = {}
    masks, margins = subset_margins_split(run, args, "val") if select else (None, None)
    for reg in DATAINF_REGS if select else ():
        att, _ = attributor(0, reg)
        val = loader(w.x_target[: w.n_val], w.y_target[: w.n_val], target_batch)
        s = att.attribute(loader(w.x_train, w.y_train, w.dattri_batch), val)
        val_lds[reg] = lds(predicted_outputs(s.detach().numpy().astype(np.float32), masks), margins)[0]
    reg = max(val_lds, key=val_lds.get) if select else DATAINF_REGS[len(DATAINF_REGS) // 2]
    t_select = time.perf_counter() - t_select
    parts, fit, tgt = [], 0.0, 0.0
    for k in range(len(w.states)):
        att, seconds = attributor(k, reg)
        fit += seconds
        t1 = time.perf_counter()
        train, targets = loader(w.x_train, w.y_train, w.dattri_batch), loader(w.x_target, w.y_target, target_batch)
        parts.append(att.attribute(train, targets).detach().numpy())
        tgt += time.perf_counter() - t1
    scores = {f"reg={reg:g}": np.mean(parts, axis=0).astype(np.float32),
              f"reg={reg:g}, ckpt 0 only": parts[0].astype(np.float32)}
    sel = ", ".join(f"{r:g}: {v:.3f}" for r, v in val_lds.items())
    notes = (f"CE loss; reg chosen on val under ckpt 0 (val LDS {sel}; selection {t_select:.0f} s, not in fit)"
             if select else f"CE loss; reg {reg:g} (a subset row: no LDS to choose it by)")
    return scores, fit, tgt, notes


def _kron_task():
    from kronfluence.task import Task

    class Classification(Task):  # kronfluence's CIFAR example: summed CE for the factors, -margin as measurement
        def compute_train_loss(self, batch, model, sample=False):
            x, y = batch
            logits = model(x)
            if sample:
                with torch.no_grad():
                    y = torch.multinomial(torch.softmax(logits.detach(), -1), 1).flatten()
            return F.cross_entropy(logits, y, reduction="sum")

        def compute_measurement(self, batch, model):
            x, y = batch
            return -margin_sum(model(x), y)

    return Classification()


def m_kronfluence(w: Work, store: Path, strategy: str, n_checkpoints: int | None = None,
                  dampings: tuple = KRONFLUENCE_DAMPINGS) -> tuple:
    """kronfluence pairwise scores per checkpoint, averaged over them; defaults except the strategy.

    ``n_checkpoints`` and ``dampings`` cut the work where the whole does not fit the time box (case (ii)).
    """
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments

    task = _kron_task()
    train_ds = torch.utils.data.TensorDataset(w.x_train, w.y_train)
    target_ds = torch.utils.data.TensorDataset(w.x_target, w.y_target)
    per_damp, fit, tgt = {}, 0.0, 0.0
    for k in range(len(w.states) if n_checkpoints is None else n_checkpoints):
        model = prepare_model(w.net(k), task)
        an = Analyzer(analysis_name=f"ckpt{k}", model=model, task=task, cpu=True, output_dir=str(store),
                      disable_tqdm=True)
        t0 = time.perf_counter()
        an.fit_all_factors(factors_name=strategy, dataset=train_ds, per_device_batch_size=64,
                           factor_args=FactorArguments(strategy=strategy), overwrite_output_dir=True)
        fit += time.perf_counter() - t0
        for damping in dampings:
            t1 = time.perf_counter()
            name = f"{strategy}_{damping}"
            an.compute_pairwise_scores(scores_name=name, factors_name=strategy, query_dataset=target_ds,
                                       train_dataset=train_ds, per_device_query_batch_size=64,
                                       per_device_train_batch_size=256,
                                       score_args=ScoreArguments(damping_factor=damping), overwrite_output_dir=True)
            s = an.load_pairwise_scores(name)["all_modules"].numpy().T  # [n_query, n_train] -> [train, target]
            tgt += time.perf_counter() - t1
            per_damp.setdefault(damping, []).append(s.astype(np.float64))
    variants = {}
    for damping, v in per_damp.items():
        label = "damping=1e-8 (default)" if damping is not None else "damping=heuristic"
        variants[label] = np.mean(v, axis=0).astype(np.float32)
        if len(v) > 1:
            variants[label + ", model 0's final ckpt only"] = v[-1 if w.trajectory else 0].astype(np.float32)
    return variants, fit, tgt / len(dampings), "Linear + Conv2d tracked; time per damping value"


def m_captum(w: Work, store: Path) -> tuple:
    """captum's TracInCPFast (last layer, the given checkpoints, CE loss), influence scores of every pair."""
    from captum.influence import TracInCPFast

    store.mkdir(parents=True, exist_ok=True)
    files = []
    for k, state in enumerate(w.states):
        files.append(str(store / f"ckpt{k}.pt"))
        torch.save(dict(state), files[-1])
    model = w.net(0)
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]  # the classifier (tiny_cnn, ResNet)
    t0 = time.perf_counter()
    tracin = TracInCPFast(model, head, torch.utils.data.TensorDataset(w.x_train, w.y_train), files,
                          loss_fn=torch.nn.CrossEntropyLoss(reduction="sum"), batch_size=64)
    t1 = time.perf_counter()
    rows = [tracin.influence((x, y)) for x, y in loader(w.x_target, w.y_target, 64)]  # [b, n_train] each
    scores = torch.cat(rows).T.detach().numpy().astype(np.float32)
    return scores, t1 - t0, time.perf_counter() - t1, "final_fc_layer = last Linear, CE loss (sum), batch 64"


def run_worker(args: argparse.Namespace) -> None:
    """One method in this process: write its scores and a record (times, peak RSS)."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    run = RunFolder(args.out)
    name = args.worker
    t0 = time.perf_counter()
    # <method>_all_ckpts: the method given every checkpoint of the run (trakscope's default: members x trajectory)
    all_ckpts = name.endswith("_all_ckpts")
    w = Work(run, args.use_models, args.trajectory, all_checkpoints=all_ckpts, random_model=args.random_model)
    w.dattri_batch = args.dattri_batch
    subset = w.restrict(args.subset) if name in args.subset_methods.split(",") else None
    load_s = time.perf_counter() - t0
    store = args.work / f"store_{name}"
    if store.exists():  # a worker always computes from scratch (its times are the row's); records are the cache
        shutil.rmtree(store)
    fns = {"trakscope": lambda: m_trakscope(w, store),
           "trakscope_dense": lambda: m_trakscope(w, store, "dense"),
           "trakscope_masks2": lambda: m_trakscope(w, store, masks=2),
           "traker": lambda: m_traker(w, store), "dattri_trak": lambda: m_dattri_trak(w, store),
           "dattri_tracin": lambda: m_dattri_tracin(w, store),
           "dattri_datainf": lambda: m_dattri_if(w, store, run, args, "datainf", select=subset is None),
           "dattri_if_explicit": lambda: m_dattri_if(w, store, run, args, "explicit", select=subset is None),
           "kronfluence_ekfac": lambda: m_kronfluence(w, store, "ekfac"),
           "kronfluence_ekfac_ckpt0": lambda: m_kronfluence(w, store, "ekfac", 1, (1e-8,)),
           "kronfluence_kfac": lambda: m_kronfluence(w, store, "kfac"),
           "kronfluence_kfac_ckpt0": lambda: m_kronfluence(w, store, "kfac", 1, (1e-8,)),
           "captum_tracincpfast": lambda: m_captum(w, store),
           "baseline": lambda: (np.zeros((len(w.y_train), len(w.y_target)), np.float32), 0.0, 0.0,
                                "imports, data and checkpoints only: the memory every row starts from")}
    scores, fit_s, target_s, notes = fns[name.removesuffix("_all_ckpts")]()
    variants = scores if isinstance(scores, dict) else {"": scores}
    files = {}
    for label, s in variants.items():
        path = args.work / f"scores_{name}_{len(files)}.npy"
        save_npy(path, np.nan_to_num(np.asarray(s, dtype=np.float32)))
        files[label] = path.name
    write_json(args.work / f"record_{name}.json", {
        "method": name, "variants": files, "fit_s": round(fit_s, 2), "targets_s": round(target_s, 2),
        "load_s": round(load_s, 2), "n_train": len(w.y_train), "n_targets": len(w.y_target), "n_val": w.n_val,
        "checkpoints": [p.name for p in w.paths], "threads": args.threads, "notes": notes, "subset": subset,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "wall_s": round(time.perf_counter() - T_START, 1)})


# --- parent -----------------------------------------------------------------------------------------
def build_run(args: argparse.Namespace) -> RunFolder:
    """The run folder at ``--out``: an existing one is used as it is (its checkpoints are what every method gets)."""
    from trakscope.cli import main as trakscope_main

    if RunFolder(args.out).config_path.exists() and RunFolder(args.out).checkpoint_paths(required=False):
        return RunFolder(args.out)

    flags = ["--out", str(args.out), "--dataset", "mnist", "--model", args.model, "--max-train", str(args.max_train),
             "--max-test", str(args.max_test), "--ensemble", str(args.ensemble),
             "--checkpoints-per-model", str(args.checkpoints_per_model), *args.recipe.split(),
             "--device", "cpu", "--no-progress"]
    if trakscope_main(["run", *flags]) != 0:
        raise SystemExit("trakscope run failed")
    return RunFolder(args.out)


def spawn(args: argparse.Namespace, name: str) -> dict | None:
    record = args.work / f"record_{name}.json"
    if record.exists() and not args.redo:
        return json.loads(record.read_text())
    cmd = [sys.executable, __file__, "--case", args.case, "--out", str(args.out), "--work", str(args.work),
           "--worker", name, "--use-models", str(args.use_models), "--threads", str(args.threads),
           "--models", str(args.models), "--alpha", str(args.alpha), "--subset", str(args.subset),
           "--dattri-batch", str(args.dattri_batch),
           "--subset-methods", args.subset_methods] + (["--trajectory"] if args.trajectory else []) + (
               ["--random-model"] if args.random_model else [])
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TQDM_DISABLE": "1"}
    print(f"[{name}] ...", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        write_json(args.work / f"failed_{name}.json", {"method": name, "error": err, "wall_s": round(wall, 1)})
        print(f"[{name}] FAILED after {wall:.0f} s:\n  " + "\n  ".join(err), flush=True)
        return None
    rec = json.loads(record.read_text())
    rec["process_wall_s"] = round(wall, 1)
    write_json(record, rec)
    print(f"[{name}] {wall:.0f} s, peak {rec['peak_rss_mb']} MB", flush=True)
    return rec


def score_rows(args: argparse.Namespace, records: list[dict], lds_data: dict) -> list[dict]:
    """LDS on val and test of every variant; a method with several variants keeps the one best on val."""
    rows = []
    for rec in records:
        if rec.get("subset"):  # a subset row has no LDS (it scored only some training examples)
            rows.append({**rec, "choice": "", "val": None, "test": None, "all": []})
            continue
        n_val = rec["n_val"]
        cands = []
        for label, fname in rec["variants"].items():
            s = load_npy(args.work / fname)
            res = {}
            for split, cols in (("val", slice(0, n_val)), ("test", slice(n_val, None))):
                masks, margins = lds_data[split]
                mean, per = lds(predicted_outputs(s[:, cols], masks), margins)
                res[split] = (mean, ci95(per))
            cands.append({"label": label, **res})
        best = max(cands, key=lambda c: c["val"][0])
        rows.append({**rec, "choice": best["label"], "val": best["val"], "test": best["test"],
                     "all": [(c["label"], round(c["val"][0], 4), round(c["test"][0], 4)) for c in cands]})
    return rows


def table(rows: list[dict]) -> str:
    out = ["| method | setting (chosen on val) | LDS test | 95% CI | LDS val | fit (s) | targets (s) | "
           "ms / train ex (fit) | ms / target | total wall (s) | peak RSS (MB) |", "|" + "---|" * 11]
    for r in rows:
        per_train, per_target = 1000 * r["fit_s"] / r["n_train"], 1000 * r["targets_s"] / r["n_targets"]
        if r.get("subset"):  # measured on a subset: per-example costs times the full sizes, marked as estimates
            sub = r["subset"]
            fit, tgt = per_train * sub["full_train"] / 1000, per_target * sub["full_targets"] / 1000
            pairs = sub["full_train"] / r["n_train"] if r["method"] == "dattri_tracin" else 1.0  # pairwise cost
            out.append(f"| {r['method']} | measured on {r['n_train']} train x {r['n_targets']} targets | not measured"
                       f" | — | — | ~{fit:.0f} (est.) | ~{tgt * pairs:.0f} (est.) | {per_train:.0f} | "
                       f"{per_target * pairs:.0f} (est.) | ~{fit + tgt * pairs:.0f} (est.) | {r['peak_rss_mb']:.0f} |")
            continue
        lo, hi = r["test"][1]
        out.append(f"| {r['method']} | {r['choice'] or 'default'} | {r['test'][0]:.4f} | {lo:.4f} to {hi:.4f} | "
                   f"{r['val'][0]:.4f} | {r['fit_s']:.1f} | {r['targets_s']:.1f} | "
                   f"{per_train:.2f} | {per_target:.1f} | {r.get('wall_s', 0):.0f} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(out)


def main() -> None:
    args = parse_args()
    if args.worker:
        run_worker(args)
        return
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    run = build_run(args)
    lds_data = {s: subset_margins_split(run, args, s) for s in ("val", "test")}
    records = [r for m in args.methods.split(",") if m.strip() and (r := spawn(args, m.strip())) is not None]
    base = [r for r in records if r["method"] == "baseline"]
    rows = score_rows(args, [r for r in records if r["method"] != "baseline"], lds_data)
    write_json(args.work / "summary.json", {"rows": rows, "baseline": base, "alpha": args.alpha,
                                             "num_models": args.models, "wall_s": round(time.perf_counter() - t0, 1)})
    print(table(rows))
    if base:
        print(f"baseline (imports, data, checkpoints; no method): peak RSS {base[0]['peak_rss_mb']:.0f} MB, "
              f"{base[0]['wall_s']:.0f} s")
    for r in rows:
        if len(r["all"]) > 1:
            print(f"{r['method']}: (variant, val, test) {r['all']}")


def subset_margins_split(run: RunFolder, args: argparse.Namespace, split: str):
    from trakscope.stages.lds import subset_margins

    return subset_margins(run, args.alpha, args.models, seed=0, split=split, progress=False)


if __name__ == "__main__":
    main()
