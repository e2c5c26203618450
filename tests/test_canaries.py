"""Canaries (known flips trakscope plants to measure detection) and confusable-pair noise: planting, detect, export."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from trakscope.config import DataConfig
from trakscope.data import load_dataset
from trakscope.data.neighbours import (
    lookalike_pairs,
    nearest_confusion,
    nearest_other_labels,
    neighbour_probs,
    pixel_features,
    uniform_pairs,
)
from trakscope.data.splits import plant_canaries, plant_noise
from trakscope.io import read_csv
from trakscope.methods.metrics import roc_auc
from trakscope.methods.registry import SCORERS, default_scorers
from trakscope.run_folder import RunFolder


def test_canaries_are_seeded_exact_and_disjoint_from_the_noise():
    labels = np.arange(400) % 10
    noisy, flipped = plant_noise(labels, 10, 0.2, seed=0)
    with_canaries, canary = plant_canaries(noisy, 10, 0.05, seed=1, exclude=flipped)
    assert canary.sum() == 20 and not (canary & flipped).any()
    assert (with_canaries[canary] != noisy[canary]).all()  # each canary is a real flip
    np.testing.assert_array_equal(with_canaries[~canary], noisy[~canary])
    again, canary2 = plant_canaries(noisy, 10, 0.05, seed=1, exclude=flipped)
    np.testing.assert_array_equal(canary, canary2)
    np.testing.assert_array_equal(again, with_canaries)
    none, no_canary = plant_canaries(noisy, 10, 0.0, seed=1)
    assert not no_canary.any() and np.array_equal(none, noisy)
    with pytest.raises(ValueError):
        plant_canaries(noisy, 10, 1.0, seed=1)


def _paired_classes(per_class: int = 50, seed: int = 0):
    """6 classes of 16 px images in 3 look-alike pairs (0-1, 2-3, 4-5): a pair shares a pattern, and its two
    classes differ by a small offset; uint8 ``[n, 3, 16, 16]`` and int labels."""
    import torch

    from trakscope.data import TensorImages

    rng = np.random.default_rng(seed)
    base = rng.uniform(40, 215, size=(3, 3, 16, 16))
    offset = rng.uniform(-15, 15, size=(6, 3, 16, 16))
    labels = np.repeat(np.arange(6), per_class)
    pixels = base[labels // 2] + offset[labels] + rng.normal(0, 8, size=(len(labels), 3, 16, 16))
    return TensorImages(torch.from_numpy(np.clip(pixels, 0, 255).round().astype(np.uint8))), labels


def test_nearest_canaries_flip_to_the_look_alike_class():
    images, labels = _paired_classes()
    partner = labels ^ 1  # 0<->1, 2<->3, 4<->5
    nearest, canary = plant_canaries(labels, 6, 0.2, seed=3, confusion=nearest_confusion(images, labels, seed=0))
    uniform, same = plant_canaries(labels, 6, 0.2, seed=3)
    np.testing.assert_array_equal(canary, same)  # the same examples either way: only the wrong label differs
    assert canary.sum() == 60 and (nearest[canary] != labels[canary]).all()
    np.testing.assert_array_equal(nearest[~canary], labels[~canary])
    assert (nearest[canary] == partner[canary]).mean() > 0.95  # chance (a uniform other class) is 1/5
    assert (uniform[canary] == partner[canary]).mean() < 0.4
    again, _ = plant_canaries(labels, 6, 0.2, seed=3, confusion=nearest_confusion(images, labels, seed=0))
    np.testing.assert_array_equal(again, nearest)  # seeded and deterministic


def test_nearest_other_label_votes_among_other_labels_only():
    pool = np.array([[1, 0, 0, 0], [0.9, 0.436, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=np.float32)
    pool_labels = np.array([5, 5, 7, 8, 9])
    query = np.array([[0.6, 0.8, 0, 0], [0, 0, 0.8, 0.6]], dtype=np.float32)
    vote = nearest_other_labels
    assert vote(query[:1], np.array([1]), pool, pool_labels, k=3).tolist() == [5]  # 2 votes (0.89, 0.6) beat 1 (0.8)
    assert vote(query[:1], np.array([5]), pool, pool_labels, k=1).tolist() == [7]  # its own label never votes
    assert vote(query[1:], np.array([1]), pool, pool_labels, k=2).tolist() == [8]  # a 1-1 tie: the more similar
    assert nearest_other_labels(query[:1], np.array([5]), pool[:2], pool_labels[:2]).tolist() == [-1]
    # a value of -1 (no other label in sight) falls back to the uniform flip
    labels = np.arange(40) % 4
    flipped, canary = plant_canaries(labels, 4, 0.25, seed=1, confusion=lambda rows: np.full(len(rows), -1))
    np.testing.assert_array_equal(flipped, plant_canaries(labels, 4, 0.25, seed=1)[0])
    features = pixel_features(_paired_classes(per_class=2)[0], np.arange(12))
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(features.mean(axis=1), 0, atol=1e-6)


def test_canary_kind_reaches_the_dataset():
    assert DataConfig().canary_kind == "pairs"  # the default since the regimes benchmark measured it best
    random = load_dataset(DataConfig(dataset="digits", max_train=300, noise=0.1, canaries=0.1,
                                     canary_kind="random")).train
    nearest = load_dataset(DataConfig(dataset="digits", max_train=300, noise=0.1, canaries=0.1,
                                      canary_kind="nearest")).train
    np.testing.assert_array_equal(random.canary, nearest.canary)
    np.testing.assert_array_equal(random.true_labels, nearest.true_labels)
    rows = np.flatnonzero(nearest.canary)
    given = np.where(nearest.canary, random.true_labels, nearest.labels)  # the labels before the canaries
    expected = nearest_confusion(nearest.images, given, seed=6)(rows)  # DataConfig.seed + 6
    assert (nearest.labels[rows] == expected).all() and (nearest.labels[rows] != random.labels[rows]).any()
    with pytest.raises(Exception, match="canary kind"):
        load_dataset(DataConfig(dataset="digits", max_train=300, canaries=0.1, canary_kind="closest"))


def test_pair_canaries_follow_the_pair_weights():
    labels = np.repeat(np.arange(4), 100)
    noisy, flipped = plant_noise(labels, 4, 0.1, seed=0)
    only = np.zeros((4, 4))
    only[2, 3] = 1.0  # every canary a 2 labelled 3
    flipped_labels, canary = plant_canaries(noisy, 4, 0.05, seed=1, exclude=flipped, pair_weights=only)
    assert canary.sum() == 20 and not (canary & flipped).any()
    assert (noisy[canary] == 2).all() and (flipped_labels[canary] == 3).all()
    np.testing.assert_array_equal(flipped_labels[~canary], noisy[~canary])
    again = plant_canaries(noisy, 4, 0.05, seed=1, exclude=flipped, pair_weights=only)
    np.testing.assert_array_equal(again[0], flipped_labels)  # seeded
    half = np.zeros((4, 4))
    half[0, 1] = half[1, 0] = 1.0  # two pairs, equal weight; the diagonal is ignored
    np.fill_diagonal(half, 5.0)
    both, canary = plant_canaries(labels, 4, 0.25, seed=2, pair_weights=half)
    pairs = list(zip(labels[canary].tolist(), both[canary].tolist()))
    assert set(pairs) == {(0, 1), (1, 0)} and 35 <= pairs.count((0, 1)) <= 65
    with pytest.raises(ValueError, match="no free example"):  # 100 examples of class 2, 150 canaries asked there
        plant_canaries(labels, 4, 0.375, seed=2, pair_weights=only)
    with pytest.raises(ValueError, match="pair weights"):
        plant_canaries(labels, 4, 0.05, seed=2, pair_weights=-only)


def test_lookalike_pairs_find_the_pairs_the_noise_is_in():
    images, labels = _paired_classes(per_class=60)
    given = labels.copy()
    swap = np.flatnonzero(labels == 0)[::4]  # a quarter of class 0 labelled 1: the data's own errors
    given[swap] = 1
    weights = lookalike_pairs(images, given, 6, seed=0, mix=1.0)
    assert weights.sum() == pytest.approx(1) and np.diag(weights).sum() == 0
    assert weights[0, 1] > 0.5 > weights[1, 0]  # [true class, given label]: a 0 given the label 1
    mixed = lookalike_pairs(images, given, 6, seed=0)
    np.testing.assert_allclose(mixed, 0.5 * weights + 0.5 * uniform_pairs(given, 6))
    assert (mixed + np.eye(6) > 0).all()  # every pair keeps some canaries
    probs = neighbour_probs(pixel_features(images, np.arange(len(labels))), given, 6)
    assert probs.shape == (360, 6) and np.allclose(probs.sum(1), 1) and (probs > 0).all()


def test_lookalike_noise_flips_to_the_neighbours_vote():
    images, labels = _paired_classes()
    noisy, flipped = plant_noise(labels, 6, 0.2, seed=0, kind="lookalike",
                                 confusion=nearest_confusion(images, labels, seed=0))
    assert flipped.sum() == 60 and (noisy[flipped] != labels[flipped]).all()
    assert (noisy[flipped] == (labels ^ 1)[flipped]).mean() > 0.95  # the look-alike partner
    np.testing.assert_array_equal(flipped, plant_noise(labels, 6, 0.2, seed=0)[1])  # the same rows as symmetric
    with pytest.raises(ValueError, match="confusion"):
        plant_noise(labels, 6, 0.2, seed=0, kind="lookalike")
    ds = load_dataset(DataConfig(dataset="digits", max_train=300, noise=0.1, noise_kind="lookalike", canaries=0.05,
                                 canary_kind="pairs")).train
    assert ds.noisy.sum() == 30 and ds.canary.sum() == 15 and not (ds.noisy & ds.canary).any()
    again = load_dataset(DataConfig(dataset="digits", max_train=300, noise=0.1, noise_kind="lookalike", canaries=0.05,
                                    canary_kind="pairs")).train
    np.testing.assert_array_equal(again.labels, ds.labels)


def test_confusable_noise_flips_only_within_pairs():
    labels = np.repeat(np.arange(10), 50)
    noisy, flipped = plant_noise(labels, 10, 0.15, seed=0, kind="confusable", pairs=((4, 9), (3, 5), (7, 1)))
    assert flipped.sum() == 75
    partner = {4: 9, 9: 4, 3: 5, 5: 3, 7: 1, 1: 7}
    assert all(noisy[i] == partner[labels[i]] for i in np.flatnonzero(flipped))
    assert not flipped[np.isin(labels, [0, 2, 6, 8])].any()
    with pytest.raises(ValueError, match="at most"):
        plant_noise(labels, 10, 0.7, seed=0, kind="confusable", pairs=((4, 9),))
    with pytest.raises(ValueError, match="noise kind"):
        plant_noise(labels, 10, 0.1, seed=0, kind="pairs")


def test_dataset_keeps_canaries_apart_from_its_noise():
    ds = load_dataset(DataConfig(dataset="digits", max_train=300, noise=0.1, canaries=0.05))
    train = ds.train
    assert train.canary.sum() == 15 and train.noisy.sum() == 30
    assert not (train.canary & train.noisy).any()
    assert (train.labels[train.canary] != train.true_labels[train.canary]).all()
    confusable = load_dataset(DataConfig(dataset="digits", max_train=300, noise=0.1, noise_kind="confusable"))
    flipped = confusable.train.noisy
    pairs = {(4, 9), (9, 4), (3, 5), (5, 3), (7, 1), (1, 7)}
    assert flipped.sum() == 30
    assert {(int(t), int(y)) for t, y in zip(confusable.train.true_labels[flipped],
                                              confusable.train.labels[flipped])} <= pairs


def test_canaries_end_to_end_without_planted_noise(tmp_path, capsys):
    """No planted noise: the canaries are the only ground truth; detect measures on them, export restores them."""
    from trakscope.cli import main

    run_dir = tmp_path / "run"
    args = ["--dataset", "digits", "--model", "tiny_cnn", "--max-train", "200", "--max-test", "60", "--epochs", "6",
            "--ensemble", "2", "--batch-size", "32", "--lr", "0.1", "--proj-dim", "64", "--projector", "dense",
            "--canaries", "0.05", "--canary-kind", "random", "--no-progress", "--device", "cpu"]
    assert main(["run", "--out", str(run_dir), *args]) == 0
    assert "canaries: 10 further labels" in capsys.readouterr().out
    run = RunFolder(run_dir)
    canaries = read_csv(run.canaries_path)
    idx = sorted(int(r["index"]) for r in canaries)
    train = run.data.table("train")
    assert len(idx) == 10 and not train["noisy"].any()  # never counted as the data's own errors
    assert all(int(r["label"]) != int(r["true_label"]) for r in canaries)

    assert main(["detect", "--run", str(run_dir), "--no-cleanlab", "--no-progress", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "estimated on canaries: 10 labels" in out
    assert "these recalls are estimates" in out and "95% interval" in out
    assert "recommended: 94 canaries" in out and "more than 5% of these 200 training labels" in out
    assert "estimated wrong labels in the data: about" in out
    metrics = json.loads(run.detect_metrics_path.read_text())
    assert metrics["scorers"] == {} and metrics["n_noisy"] == 0
    can = metrics["canaries"]["scorers"]
    assert set(can) == set(default_scorers()) - {"cleanlab"}  # the opt-in scorers do not run by default
    best = max(can, key=lambda n: can[n]["roc_auc"])
    # measured: val_all best at 0.997 (loss 0.990, trak_loo 0.989, d3m 0.983, aum 0.977, self_influence 0.944)
    assert metrics["primary"] == best and can[best]["roc_auc"] > 0.95
    est = metrics["canaries"]["estimates"][best]["recall@10%"]
    assert est["estimate"] == can[best]["recall@10%"] and est["n"] == 10
    assert est["low"] <= est["estimate"] <= est["high"] and not metrics["canaries"]["weighted"]  # no k-fold: unweighted
    assert metrics["canaries"]["needed"]["widths"]["0.2"]["worst_case"] == 94
    assert metrics["wrong_labels"]["among"] == 190 and metrics["wrong_labels"]["probabilities"].startswith("in-sample")
    rows = read_csv(run.ranking_path)
    assert rows[0][f"{best}_rank"] == "1"  # ranking.csv is ordered by the best scorer on the canaries
    marked = sorted(int(r["index"]) for r in rows if r["canary"] == "1")
    assert marked == idx
    assert all(r["ground_truth"] == "canary" and r["true_label"] != "" for r in rows if r["canary"] == "1")
    assert all(r["ground_truth"] == "unknown" for r in rows if r["canary"] == "0")
    mask = np.zeros(len(rows), bool)
    mask[idx] = True
    ranking = run.results.ranking(tuple(SCORERS))
    assert roc_auc(SCORERS[best].suspicion(ranking[best]), mask) == pytest.approx(can[best]["roc_auc"])

    from trakscope.report.payload import read_ranking

    assert read_ranking(run)["primary"] == best  # the report's suspects list defaults to it

    assert main(["export", "--run", str(run_dir), "--strategy", "loss", "--fraction", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "true labels restored" in out
    keep = {int(r["index"]): int(r["label"]) for r in read_csv(run.export_paths("loss_0.1")[0])
            if r["split"] == "train"}
    removed = {int(r["index"]) for r in read_csv(run.export_paths("loss_0.1")[1])}
    truth = {int(r["index"]): int(r["true_label"]) for r in canaries}
    assert all(keep[i] == truth[i] for i in idx)  # every canary kept, with its true label
    assert not removed & set(idx) and len(keep) + len(removed) == 200
    # with k-fold probabilities the canaries are weighted by the data's own error pairs (uniform canaries here)
    assert main(["detect", "--run", str(run_dir), "--folds", "2", "--no-progress", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    metrics = json.loads(run.detect_metrics_path.read_text())
    assert metrics["wrong_labels"]["probabilities"].startswith("out-of-sample") and "cleanlab flags" in out
    from trakscope.data.neighbours import error_pairs, uniform_pairs
    from trakscope.methods.estimates import pair_weights
    from trakscope.stages.crossval import out_of_sample_probs

    labels = run.data.table("train")["label"]
    before = labels.copy()
    before[idx] = [truth[i] for i in idx]  # the labels before the canaries
    oos = out_of_sample_probs(run, 2, progress=False)
    expected = pair_weights(before[idx], labels[idx], uniform_pairs(before, 10),
                            error_pairs(oos[~mask], before[~mask], 10))
    assert metrics["canaries"]["weighted"] == (expected is not None)
    if expected is not None:
        assert "unweighted" in metrics["canaries"] and "weighted by the share" in out
        est = metrics["canaries"]["estimates"][metrics["primary"]]["recall@10%"]
        assert est["n_effective"] == pytest.approx(expected.sum() ** 2 / (expected**2).sum())


def test_mixed_canaries_are_half_pairs_half_nearest_and_replay():
    from trakscope.data import CANARY_KINDS, plant_dataset_canaries

    cfg = DataConfig(dataset="digits", max_train=300, noise=0.1, canaries=0.05, canary_kind="mixed")
    train = load_dataset(cfg).train
    assert train.canary.sum() == 15 and not (train.canary & train.noisy).any()
    before = np.where(train.canary, train.true_labels, train.labels)
    labels, canary, kind = plant_dataset_canaries(cfg.with_defaults(), train.images, before, train.noisy, 10)
    np.testing.assert_array_equal(canary, train.canary)  # detect replays the planting to know each canary's kind
    np.testing.assert_array_equal(labels, train.labels)
    assert (kind[~canary] == -1).all()
    assert sorted(CANARY_KINDS[k] for k in kind[canary]) == ["nearest"] * 8 + ["pairs"] * 7
    nearest = canary & (kind == CANARY_KINDS.index("nearest"))
    expected = nearest_confusion(train.images, before, seed=6)(np.flatnonzero(nearest))
    np.testing.assert_array_equal(labels[nearest], expected)  # the nearest half: each to its look-alike class


@pytest.fixture(scope="module")
def canary_run(tmp_path_factory):
    """A detected tiny run with 10 canaries (100 training examples, one member of one epoch)."""
    from trakscope.cli import main

    run_dir = tmp_path_factory.mktemp("canaries") / "run"
    args = ["--dataset", "digits", "--model", "tiny_cnn", "--max-train", "100", "--max-test", "30", "--epochs", "1",
            "--ensemble", "1", "--checkpoints-per-model", "1", "--proj-dim", "16", "--projector", "dense",
            "--canaries", "0.1", "--no-progress", "--device", "cpu"]
    assert main(["run", "--out", str(run_dir), *args]) == 0
    assert main(["detect", "--run", str(run_dir), "--no-cleanlab", "--no-progress", "--device", "cpu"]) == 0
    return run_dir


def test_inspect_marks_canaries_in_its_table_and_its_grid(canary_run, tmp_path, monkeypatch, capsys):
    from trakscope.cli import main
    from trakscope.commands import inspect as inspect_cmd
    from trakscope.report.grid import CANARY, influence_grid
    from trakscope.stages.canaries import canary_table

    canaries = canary_table(RunFolder(canary_run))
    drawn = {}
    monkeypatch.setattr(inspect_cmd, "influence_grid", lambda target, rows, png: drawn.update(rows))
    capsys.readouterr()
    assert main(["inspect", "--run", str(canary_run), "--target", "0", "--top", "50", "--png",
                 str(tmp_path / "g.png")]) == 0  # top and bottom 50 of 100: every training example
    lines = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip().endswith("--canaries)")]
    assert sorted(int(line[1]) for line in lines) == canaries["index"].tolist()
    names = RunFolder(canary_run).classes
    true = dict(zip(canaries["index"].tolist(), canaries["true_label"].tolist()))
    assert all(line[4] == names[true[int(line[1])]] for line in lines)  # the true label, never "?"
    tiles = [t for row in drawn.values() for t in row if t["canary"]]
    assert len(tiles) == 10 and all(", true " in t["title"] and not t["noisy"] for t in tiles)

    def purple_pixels(tiles: list[dict]) -> int:
        influence_grid({"image": tiles[0]["image"], "title": "t"}, {"row": tiles}, tmp_path / "p.png")
        rgb = np.asarray(Image.open(tmp_path / "p.png").convert("RGB")).astype(int)
        return int((np.abs(rgb - [int(CANARY[i:i + 2], 16) for i in (1, 3, 5)]).sum(-1) < 30).sum())

    assert purple_pixels(tiles[:2]) > 100 and purple_pixels([{**t, "canary": False} for t in tiles[:2]]) == 0


def test_removal_retrains_on_the_canaries_true_labels_and_never_removes_them(canary_run, monkeypatch, capsys):
    """Every retrain, the full-data reference included, trains on the canaries' true labels and keeps them; the
    table counts them apart; a cached retrain trained on their flipped labels is trained again."""
    from trakscope.cli import main
    from trakscope.methods.removal import select_removed
    from trakscope.stages import removal
    from trakscope.stages.canaries import canary_table

    run_dir = canary_run
    run = RunFolder(run_dir)
    canaries = canary_table(run)
    trained = []

    def fake_train(model_cfg, train_cfg, dataset, seed, keep=None, **kw):  # records what each retrain trains on
        trained.append((dataset.train.labels.copy(), np.arange(len(dataset.train)) if keep is None else keep))
        return None

    monkeypatch.setattr(removal, "train_final_model", fake_train)
    monkeypatch.setattr(removal, "predict_logits", lambda model, images, **kw: np.zeros((len(images), 10)))
    capsys.readouterr()
    cmd = ["removal", "--run", str(run_dir), "--strategies", "random,loss", "--fractions", "0.4", "--seeds", "1",
           "--no-progress", "--device", "cpu"]
    assert main(cmd) == 0
    out = capsys.readouterr().out
    assert len(trained) == 3  # the reference is retrained too: the ensemble member saw the flipped labels
    for labels, keep in trained:
        np.testing.assert_array_equal(labels[canaries["index"]], canaries["true_label"])
        assert set(canaries["index"]) <= set(keep.tolist())
    results = json.loads(run.removal_results_path.read_text())
    assert results["n_canaries"] == 10 and results["reference"]["source"] == ["retrained"]
    ranking = run.results.ranking(tuple(SCORERS))
    for row in results["rows"]:
        selected = select_removed(row["strategy"], 0.4, ranking, seed=run.config.train.seed)
        spared = int(np.isin(selected, canaries["index"]).sum())
        assert spared > 0 and (row["n_canaries_kept"], row["n_removed"]) == (spared, len(selected) - spared)
    assert "canaries kept |" in out and "the 10 labels trakscope flipped itself (--canaries) are never removed" in out

    cached = run.retrain_path("loss_0.4_s0")  # as a cache from before: trained on the flipped labels
    record = json.loads(cached.read_text())
    assert record.pop("canaries") == "true labels"
    cached.write_text(json.dumps(record))
    run.integrity.seal(cached)
    trained.clear()
    assert main(cmd) == 0 and len(trained) == 1
