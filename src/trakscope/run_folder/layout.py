"""Where everything in a run folder lives: the layout table, its document, and every path, as a base class.

The only module besides the TRAK store (:mod:`trakscope.attribution.store`) that names run-folder files;
:class:`trakscope.run_folder.RunFolder` adds the typed reads and writes on top.
"""

from __future__ import annotations

import shlex
from pathlib import Path

FORMAT = 2
SPLITS = ("train", "val", "test")
TARGET_SPLITS = ("test", "val")
TABLE_COLUMNS = ("index", "source_id", "label", "true_label", "noisy")

# (path pattern, what it holds): the run folder's whole layout; docs/run-folder.md is generated from it.
LAYOUT: tuple[tuple[str, str], ...] = (
    ("config.json", "every setting (`RunConfig`) with `format`; another configuration in the same folder is "
                    "refused unless `--overwrite`"),
    ("timings.json", "seconds per stage"),
    ("manifest.json", "the integrity record: every file trakscope wrote (`pending` while a matrix is being filled), "
                      "recorded when it was final: size, sha256 (chunked over 64 MiB), shape and dtype of `.npy`, "
                      "and the content of `config.json` and `data/fingerprint.json` (rebuilt from it when damaged); "
                      "it carries the sha256 of its own body. Every read verifies the file against it (once per "
                      "process), and an unrecorded file is never trusted; `run` "
                      "recomputes what is damaged or unrecorded from verified inputs, `--overwrite` removes only "
                      "what it records"),
    ("manifest.copy.json", "a second copy of `manifest.json`, which restores it when it is damaged"),
    (".trakscope.lock", "held (`flock`) by the command at work on the folder, with its pid, command and start time; "
                        "a second writer is refused (`trakscope.run_lock`)"),
    ("data/classes.json", "class names, index = class id"),
    ("data/fingerprint.json", "per split: count and sha256 of the ordered source ids and labels, of the image "
                              "files' sizes, and of the images' content; later commands refuse data that no longer "
                              "matches, naming the files that changed"),
    ("data/digests.json", "cache of the image files' sha256 by path, size, inode, mtime and ctime, so that checking "
                          "the fingerprint reads only files that changed"),
    ("data/{split}.csv", "`index` (row/column in the score arrays), `source_id` (stable id in the source dataset), "
                         "`label` (as trained), `true_label`, `noisy` (0/1)"),
    ("data/canaries.csv", "`index`, `source_id`, `label` (the canary's flipped label, as trained), `true_label` "
                          "of the canaries (`--canaries`): flips planted to measure detection, never counted as "
                          "the data's own errors"),
    ("data/thumbs_{split}.npy", "uint8 `[n, T, T, 3]` thumbnails for `inspect` and the report"),
    ("models/model{m}_ckpt{c}.safetensors", "checkpoint `c` of ensemble member `m` (the last `c` is the final "
                                            "model), with the run's fingerprint in its metadata"),
    ("models/metrics.json", "accuracy of each model and of the ensemble on val and test (`kind: model_metrics`)"),
    ("models/aum[_model{m}].npy", "float64 `[n_train]` area under the margin (Pleiss et al. 2020): each training "
                                  "example's margin (given-label logit minus largest other) during training, "
                                  "averaged over epochs, per member and over the ensemble"),
    ("models/probs_{split}.npy", "float32 `[n, C]` ensemble-mean softmax probabilities"),
    ("features/", "the TRAK store (`trakscope.attribution.store`): projected features per checkpoint and split, "
                  "done flags, out-to-loss weights, `(X^T X + lambda I)^-1` per checkpoint"),
    ("scores/{target}.npy", "float32 `[n_train, n_target]` TRAK scores `scores[train, target]` for test and val, "
                            "each with a `.json` record"),
    ("scores/{target}.json", "the record of a score matrix: checkpoints, ridge, lambdas, shape"),
    ("scores/self.npy", "float32 `[n_train]` self-influence `scores[i, i]`"),
    ("scores/meta.json", "projector, dimension, lambda per checkpoint, number of checkpoints; `kronecker_exact`: "
                         "checkpoint -> the layers the Kronecker projector's self-check computed exactly (when any)"),
    ("detect/ranking.csv", "every scorer's natural score and rank (1 = inspect first) per training example, sorted "
                           "by the primary scorer (`inspect_order`), class names beside labels, `ground_truth` "
                           "(`planted`, or `unknown`: then `true_label` is empty and `noisy` 0 means unverified), "
                           "`suggested_label` (name, probability, and `suggestion_source`: `out_of_sample` k-fold "
                           "or `ensemble` probabilities)"),
    ("detect/ranking.parquet", "the same table as Parquet, with `trakscope detect --format parquet`"),
    ("detect/metrics.json", "each scorer's quality against planted noise (`kind: detect_metrics`), and how often "
                            "the suggested label is the true one among the flagged (`suggestions`)"),
    ("detect/crossval/folds.npy", "k-fold assignment of the training split (cleanlab's cross-validation)"),
    ("detect/crossval/fold{f}.npy", "out-of-sample probabilities of fold `f`, cached"),
    ("removal/results.json", "remove-and-retrain experiment (`kind: removal_results`)"),
    ("removal/accuracy_vs_fraction.png", "its plot"),
    ("removal/retrains/{job}.json", "one finished retrain each, so an interrupted experiment resumes"),
    ("export/{keep,removed}_{strategy}_{fraction}.{csv,parquet}", "keep-list and removed list with reasons "
                                                                  "(`--format`)"),
    ("lds.json", "linear datamodeling score of the run's scores (`kind: lds`)"),
    ("lds/lds_{name}.json", "LDS of another attribution matrix (`trakscope lds --scores`)"),
    ("lds/{name}_per_target.csv", "per-target Spearman correlations behind an LDS result"),
    ("lds/subsets/alpha{a}_seed{s}[_ep{E}]/model{i}.json", "a cached subset model's record"),
    ("lds/subsets/alpha{a}_seed{s}[_ep{E}]/model{i}_{split}.npy", "its margins on a split"),
    ("inspect/{split}_{target}.png", "`trakscope inspect` grids"),
    ("report/index.html", "the self-contained report"),
)
OWNED = ("data", "models", "features", "scores", "detect", "removal", "lds", "report", "inspect", "export",
         "config.json", "timings.json", "lds.json", "manifest.json", "manifest.copy.json")
# The command that writes each top-level entry (default: run); messages name it as a complete command line.
PRODUCERS = {"detect": "detect", "removal": "removal", "lds": "lds", "lds.json": "lds", "report": "report"}
SCHEMAS = {  # kind -> keys a reader relies on
    "model_metrics": ("models", "ensemble"),
    "detect_metrics": ("n_train", "n_noisy", "scorers", "chance"),
    "removal_results": ("n_train", "n_noisy", "reference", "rows"),
    "lds": ("lds_mean", "lds_ci95", "num_models", "split"),
}




class Layout:
    """Every path of one run folder, and the command that makes each (no I/O). :class:`~trakscope.run_folder.RunFolder`
    derives from it; its parts (:mod:`.integrity`, :mod:`.dataset`, :mod:`.results`) are handed one."""

    path: Path

    # --- layout -------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def timings_path(self) -> Path:
        return self.path / "timings.json"

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    @property
    def manifest_copy_path(self) -> Path:
        return self.path / "manifest.copy.json"

    @property
    def data_digests_path(self) -> Path:
        return self.path / "data" / "digests.json"

    @property
    def lock_path(self) -> Path:
        """``.trakscope.lock``: never removed (not in :data:`OWNED`), so every holder locks the same inode."""
        return self.path / ".trakscope.lock"

    @property
    def classes_path(self) -> Path:
        return self.path / "data" / "classes.json"

    @property
    def data_fingerprint_path(self) -> Path:
        return self.path / "data" / "fingerprint.json"

    def table_path(self, split: str) -> Path:
        return self.path / "data" / f"{split}.csv"

    @property
    def canaries_path(self) -> Path:
        return self.path / "data" / "canaries.csv"

    def aum_path(self, model: int | None = None) -> Path:
        """``models/aum.npy`` (ensemble mean) or ``models/aum_model{m}.npy`` (one member)."""
        return self.path / "models" / ("aum.npy" if model is None else f"aum_model{model}.npy")

    def thumbs_path(self, split: str) -> Path:
        return self.path / "data" / f"thumbs_{split}.npy"

    def checkpoint_path(self, model: int, ckpt: int) -> Path:
        return self.path / "models" / f"model{model}_ckpt{ckpt}.safetensors"

    @property
    def metrics_path(self) -> Path:
        return self.path / "models" / "metrics.json"

    def probs_path(self, split: str) -> Path:
        return self.path / "models" / f"probs_{split}.npy"

    @property
    def features_dir(self) -> Path:
        return self.path / "features"

    def scores_path(self, split: str) -> Path:
        """``scores/{test,val,self}.npy``."""
        return self.path / "scores" / f"{split}.npy"

    def scores_record_path(self, split: str) -> Path:
        """``scores/{test,val,self}.json``: how a score matrix was made."""
        return self.scores_path(split).with_suffix(".json")

    @property
    def scores_meta_path(self) -> Path:
        return self.path / "scores" / "meta.json"

    @property
    def ranking_path(self) -> Path:
        return self.path / "detect" / "ranking.csv"

    @property
    def ranking_parquet_path(self) -> Path:
        return self.path / "detect" / "ranking.parquet"

    @property
    def detect_metrics_path(self) -> Path:
        return self.path / "detect" / "metrics.json"

    @property
    def crossval_dir(self) -> Path:
        return self.path / "detect" / "crossval"

    @property
    def fold_assignment_path(self) -> Path:
        return self.crossval_dir / "folds.npy"

    def fold_probs_path(self, fold: int) -> Path:
        return self.crossval_dir / f"fold{fold}.npy"

    @property
    def removal_results_path(self) -> Path:
        return self.path / "removal" / "results.json"

    @property
    def removal_plot_path(self) -> Path:
        return self.path / "removal" / "accuracy_vs_fraction.png"

    def retrain_path(self, job: str) -> Path:
        return self.path / "removal" / "retrains" / f"{job}.json"

    def export_paths(self, name: str, folder: Path | None = None, fmt: str = "csv") -> tuple[Path, Path]:
        """``(keep, removed)`` tables (``fmt``: csv or parquet) of one exported selection, in ``folder`` (default
        ``export/``)."""
        folder = self.path / "export" if folder is None else Path(folder)
        return folder / f"keep_{name}.{fmt}", folder / f"removed_{name}.{fmt}"

    @property
    def lds_path(self) -> Path:
        return self.path / "lds.json"

    def lds_result_path(self, scores_stem: str | None) -> Path:
        """``lds.json`` for the run's own scores, ``lds/lds_<stem>.json`` for another matrix."""
        return self.lds_path if scores_stem is None else self.path / "lds" / f"lds_{scores_stem}.json"

    def lds_results(self) -> list[Path]:
        """Every LDS result: ``lds.json`` first, then ``lds/lds_*.json``."""
        return [self.lds_path, *sorted((self.path / "lds").glob("lds_*.json"))]

    def lds_per_target_path(self, result: Path) -> Path:
        return self.path / "lds" / f"{Path(result).stem}_per_target.csv"

    def lds_subset_dir(self, alpha: float, seed: int, epochs: int | None) -> Path:
        name = f"alpha{alpha:g}_seed{seed}" + (f"_ep{epochs}" if epochs is not None else "")
        return self.path / "lds" / "subsets" / name

    @staticmethod
    def subset_model_paths(folder: Path, i: int, splits: tuple[str, ...]) -> tuple[Path, dict[str, Path]]:
        """``(model{i}.json, {split: model{i}_{split}.npy})`` of one cached subset model."""
        return folder / f"model{i}.json", {s: folder / f"model{i}_{s}.npy" for s in splits}

    def inspect_path(self, split: str, target: int | str) -> Path:
        return self.path / "inspect" / f"{split}_{target}.png"

    @property
    def report_path(self) -> Path:
        return self.path / "report" / "index.html"

    def relative(self, path: Path) -> str:
        """``path`` relative to the run folder, for messages and records."""
        return str(Path(path).relative_to(self.path))

    # --- commands -----------------------------------------------------------------------------
    def command(self, producer: str = "run") -> str:
        """The complete command line that (re)makes a stage's outputs here: ``trakscope detect --run DIR``.

        ``producer`` is a command name, or ``"trakscope <name>"`` as older callers pass it.
        """
        name = (producer.removeprefix("trakscope ").split() or ["run"])[0]
        folder = shlex.quote(str(self.path))
        return f"trakscope run --out {folder}" if name == "run" else f"trakscope {name} --run {folder}"

    def producer(self, path: Path) -> str:
        """The command that writes ``path`` (from its top-level folder, :data:`PRODUCERS`)."""
        return PRODUCERS.get(self.relative(path).split("/")[0], "run")


def checkpoint_key(path: Path) -> tuple[int, int]:
    """``(model m, checkpoint c)`` of ``models/model{m}_ckpt{c}.safetensors``: the reverse of ``checkpoint_path``."""
    model, ckpt = Path(path).stem.removeprefix("model").split("_ckpt")
    return int(model), int(ckpt)


def layout_markdown() -> str:
    """``docs/run-folder.md``, generated from :data:`LAYOUT` (a test keeps the file in step)."""
    lines = ["# The run folder", "",
             "Every stage reads its inputs from the run folder and writes its outputs there, so each stage can be",
             "rerun or resumed alone. Arrays are `.npy` (read with `allow_pickle=False`), checkpoints are",
             "safetensors, everything else is JSON or CSV. All writes are atomic (temp file + rename). JSON results",
             f"carry `format` ({FORMAT}) and `kind`; a folder from another version gets one clear message.",
             "This page is generated from `trakscope.run_folder.LAYOUT`, the only place that names these paths.",
             "", "| path | what |", "| --- | --- |"]
    lines += [f"| `{p}` | {what} |" for p, what in LAYOUT]
    return "\n".join(lines) + "\n"
