"""Views of the scores under the field's standard checks: which view ``inspect`` and the report show first.

For a run folder (``trakscope run``; the demo's is ``make demo``'s ``runs/demo``) every view of
``trakscope.attribution.views`` is checked on the **val** targets (where the default view is chosen) and the
**test** targets (reported only), with the definitions of ``trakscope.methods.checks`` (quanda 0.5's):

- class detection: the top-1 training example's given label is the target's label (and quanda's default s = 5);
- wrong-label share among the top-k and the bottom-k of each target's list, against the base rate (planted noise);
- top-k cardinality: distinct training examples among all targets' top-k (and bottom-k);
- model randomisation: Spearman, per target, against the same view of scores from a re-initialised model
  (featurized once into ``--work``; quanda re-seeds every checkpoint alike, so one random checkpoint is the same);
- LDS against ``--lds-models`` cached subset models (``trakscope.stages.lds.subset_margins``, in the run folder).

A benchmark-only view, ``cosine`` (the cosine of projected gradients, mean over checkpoints, read from the run's
feature store), is measured beside them. ``--peers WORK`` adds the rows of ``benchmarks/peers.py``'s score
matrices (their raw scores; val targets are their first ``n_val`` columns), and ``--peers-random WORK`` their
randomisation check against the same methods rerun by ``peers.py --random-model``.

    PYTHONPATH=src python benchmarks/views.py --run runs/demo --work /tmp/views --lds-models 20
    PYTHONPATH=src python benchmarks/views.py --run /tmp/peers/run_i --work /tmp/views_i \
        --peers /tmp/peers/run_i_peers --peers-random /tmp/peers/run_i_peers_random
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from trakscope.attribution.store import TrakStore
from trakscope.attribution.views import DEFAULT_VIEW, VIEWS, apply_view
from trakscope.io import load_npy, save_npy, write_csv, write_json
from trakscope.methods.checks import class_detection, randomisation_correlation, top_k_cardinality, wrong_label_share
from trakscope.methods.lds import ci95, lds, predicted_outputs
from trakscope.run_folder import RunFolder

RANDOM_SEED = 42  # quanda's ModelRandomizationMetric default; it re-seeds before every checkpoint, so all are alike
SANITY_MAX = 0.5  # a view whose scores correlate above this with a random model's fails the randomisation check


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, required=True, help="run folder with scores/val.npy, test.npy and self.npy")
    p.add_argument("--work", type=Path, required=True, help="the re-initialised model's TRAK store and the results")
    p.add_argument("--lds-models", type=int, default=20, help="LDS subset models (0: no LDS)")
    p.add_argument("--peers", type=Path, default=None, help="benchmarks/peers.py work folder: check its matrices too")
    p.add_argument("--peers-random", type=Path, default=None,
                   help="benchmarks/peers.py --random-model work folder: the peers' randomisation check")
    p.add_argument("--random-splits", default="val,test",
                   help="target splits of the model-randomisation check (empty: skip it)")
    p.add_argument("--no-cosine", action="store_true", help="skip the benchmark-only cosine view")
    return p.parse_args()


# --- score matrices --------------------------------------------------------------------------------
def cosine_scores(store_root: Path, split: str) -> np.ndarray:
    """float32 ``[n_train, n_split]`` mean over checkpoints of the cosine of projected train and target gradients
    (the TRAK store at ``store_root``: a run's ``features/``)."""
    store = TrakStore(store_root)
    total = None
    ids = store.checkpoint_ids()
    for k in ids:
        x = np.asarray(store.features(k, "train", 0, 0).load()[0], dtype=np.float32)
        t = np.asarray(store.features(k, split, 0, 0).load()[0], dtype=np.float32)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        t = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
        part = x @ t.T
        total = part if total is None else total + part
    return (total / len(ids)).astype(np.float32)


def random_model(run: RunFolder, seed: int = RANDOM_SEED):
    """The run's architecture with every parameter freshly initialised by its builder under ``seed`` (eval mode):
    the re-initialised model of the randomisation check, for trakscope's rows and (``peers.py --random-model``,
    one copy per checkpoint) the peers'."""
    import torch  # only this check needs a model

    from trakscope.models import build_model
    from trakscope.train import architecture_only

    n_classes = len(run.data.dataset().classes)
    torch.manual_seed(seed)
    return build_model(architecture_only(run.config.model), n_classes).eval()


def random_model_scores(run: RunFolder, work: Path, targets: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Raw scores ``{target split: matrix, "self": ...}`` of a re-initialised model (same architecture and TRAK
    settings), cached in ``work`` (its store resumes an interrupted featurization)."""
    out = {s: work / f"random_{s}.npy" for s in (*targets, "self")}
    if all(p.exists() for p in out.values()):
        return {s: load_npy(p) for s, p in out.items()}
    import torch  # only this check needs a model

    from trakscope import TRAK
    from trakscope.data import iter_batches

    ds, cfg = run.data.dataset(), run.config
    model = random_model(run)
    t = cfg.trak
    trak = TRAK(model, work / "store", projector=t.projector, proj_dim=t.proj_dim, kron_k=t.kron_k,
                proj_type=t.proj_type, ridge=t.ridge, seed=t.seed, progress=True)
    for name in ("train", *targets):
        split = ds.split(name)
        batches = ((idx, x, torch.as_tensor(split.labels[idx], dtype=torch.long))
                   for idx, x in iter_batches(split.images, np.arange(len(split)), t.batch_size))
        trak.featurize_batches(batches, split=name, n=len(split), checkpoint=model.state_dict(), checkpoint_id=0)
    for s in targets:
        save_npy(out[s], np.asarray(trak.scores("train", s)))
    save_npy(out["self"], np.asarray(trak.self_influence()))
    return {s: load_npy(p) for s, p in out.items()}


# --- checks ---------------------------------------------------------------------------------------
def checks(scores: np.ndarray, train_labels: np.ndarray, target_labels: np.ndarray, wrong: np.ndarray,
           random: np.ndarray | None, lds_data: tuple | None) -> dict[str, float]:
    """Every check of one ``[n_train, n_target]`` matrix."""
    row = {"class_top1": class_detection(scores, train_labels, target_labels, 1),
           "class_top5": class_detection(scores, train_labels, target_labels, 5)}
    if wrong.any():
        for k in (1, 5):
            share = wrong_label_share(scores, wrong, k)
            row[f"wrong_top{k}"], row[f"wrong_bottom{k}"] = share["top"], share["bottom"]
            row["base_rate"] = share["base"]
    for end in ("top", "bottom"):
        row[f"distinct_{end}5"], row[f"cardinality_{end}5"] = top_k_cardinality(scores, 5, end)
    if random is not None:
        row["random_spearman"] = randomisation_correlation(scores, random)
    if lds_data is not None:
        mean, per = lds(predicted_outputs(np.asarray(scores, dtype=np.float32), lds_data[0]), lds_data[1])
        row["lds"], (row["lds_lo"], row["lds_hi"]) = mean, ci95(per)
    return row


def view_matrices(run: RunFolder, split: str, cosine: bool) -> dict[str, np.ndarray]:
    """Every view of the run's scores of ``split`` (and the benchmark-only cosine)."""
    raw, self_inf = np.asarray(run.results.scores(split)), np.asarray(run.results.scores("self"))
    out = {v: np.asarray(apply_view(raw, self_inf, v)) for v in VIEWS}
    if cosine:
        out["cosine"] = cosine_scores(run.features_dir, split)
    return out


def random_views(rand: dict[str, np.ndarray], split: str, names: list[str], work: Path) -> dict[str, np.ndarray]:
    """The same views of the re-initialised model's scores (cosine from its store in ``work``)."""
    return {v: (apply_view(rand[split], rand["self"], v) if v in VIEWS else cosine_scores(work / "store", split))
            for v in names}


def choose_view(val_rows: dict[str, dict]) -> str:
    """The offered view with the best val class detection among those passing the randomisation check."""
    ok = [v for v in VIEWS if val_rows[v].get("random_spearman", 0.0) < SANITY_MAX]
    return max(ok or ["raw"], key=lambda v: (val_rows[v]["class_top1"], -val_rows[v].get("wrong_top5", 0.0)))


# --- peers ----------------------------------------------------------------------------------------
def peer_rows(peers: Path, labels: dict, lds_data: dict, peers_random: Path | None = None) -> list[dict]:
    """The checks of every peer matrix in a peers.py work folder (val and test), raw scores as the peer gave them;
    with ``peers_random`` (a ``peers.py --random-model`` work folder), their randomisation correlation against the
    same method and variant there (none where that folder lacks it)."""
    rows = []
    for rec_path in sorted(peers.glob("record_*.json")):
        rec = json.loads(rec_path.read_text())
        if rec.get("subset") or rec["method"] == "baseline":
            continue
        random = _peer_random_files(peers_random, rec_path.name)
        for variant, fname in rec["variants"].items():
            s, n_val = load_npy(peers / fname), rec["n_val"]
            r = load_npy(peers_random / random[variant]) if variant in random else None
            for split, cols in (("val", slice(0, n_val)), ("test", slice(n_val, None))):
                rows.append({"method": rec["method"], "variant": variant, "split": split, "view": "raw",
                             **checks(np.asarray(s[:, cols]), labels["train"], labels[split], labels["wrong"],
                                      None if r is None else np.asarray(r[:, cols]), lds_data.get(split))})
    return rows


def _peer_random_files(peers_random: Path | None, record_name: str) -> dict[str, str]:
    """``{variant: score file}`` of the same method's record in a ``--random-model`` work folder (empty if none)."""
    path = None if peers_random is None else peers_random / record_name
    return json.loads(path.read_text())["variants"] if path is not None and path.exists() else {}


def main() -> None:
    args = parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    run = RunFolder(args.run)
    tables = {s: run.data.table(s) for s in ("train", "val", "test")}
    labels = {s: np.asarray(t["label"]) for s, t in tables.items()}
    labels["wrong"] = np.asarray(tables["train"]["noisy"], dtype=bool)
    random_splits = tuple(x for x in args.random_splits.split(",") if x)
    rand = random_model_scores(run, args.work, random_splits) if random_splits else None
    lds_data = {}
    if args.lds_models:
        from trakscope.stages.lds import subset_margins

        lds_data = {s: subset_margins(run, 0.5, args.lds_models, seed=0, split=s, progress=False)
                    for s in ("val", "test")}
    rows = []
    for split in ("val", "test"):
        mats = view_matrices(run, split, not args.no_cosine)
        rviews = random_views(rand, split, list(mats), args.work) if rand is not None and split in rand else {}
        for view, m in mats.items():
            rows.append({"method": "trakscope", "variant": "run", "split": split, "view": view,
                         **checks(m, labels["train"], labels[split], labels["wrong"], rviews.get(view),
                                  lds_data.get(split))})
    chosen = choose_view({r["view"]: r for r in rows if r["split"] == "val"})
    if args.peers is not None:
        rows += peer_rows(args.peers, labels, lds_data, args.peers_random)
    report(rows, chosen, args.work)


def report(rows: list[dict], chosen: str, work: Path) -> None:
    """Print the Markdown table, write ``views.csv`` (one row per method, view and split) and ``views.json``."""
    cols = ["class_top1", "class_top5", "wrong_top1", "wrong_top5", "wrong_bottom5", "base_rate", "distinct_top5",
            "cardinality_top5", "distinct_bottom5", "random_spearman", "lds", "lds_lo", "lds_hi"]
    cols = [c for c in cols if any(c in r for r in rows)]
    head = ["method", "variant", "view", "split", *cols]
    write_csv(work / "views.csv", head, [[r.get(c, "") for c in head] for r in rows])
    write_json(work / "views.json", {"rows": rows, "chosen_on_val": chosen, "default_view": DEFAULT_VIEW})
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(_fmt(r.get(c, "")) for c in head) + " |")
    print(f"\nchosen on val: {chosen} (trakscope.attribution.views.DEFAULT_VIEW = {DEFAULT_VIEW})")
    if chosen != DEFAULT_VIEW:
        print("the default view differs from the one chosen on val: update DEFAULT_VIEW and BENCHMARKS.md")


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


if __name__ == "__main__":
    main()
