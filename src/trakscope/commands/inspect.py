"""``trakscope inspect``: the training examples that raise and lower one class's margin on one target."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..attribution.views import DEFAULT_VIEW, VIEWS
from ..report.grid import influence_grid
from ..run_folder import RunFolder
from ..stages.inspect import Inspection, headers, inspect_image, inspect_target, train_rows

HELP = "print and save (PNG grid) the training examples with the highest and lowest scores for a test example"
LOCK = "shared"  # reads stage outputs, writes only its own file: beside other readers (trakscope.run_lock)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run folder made by `trakscope run`")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--target", default=None,
                      help="example of the target split: its index, its source_id, or its file name")
    what.add_argument("--image", default=None, metavar="PATH",
                      help="a new image file, scored on the fly against the training split")
    parser.add_argument("--class", dest="margin_class", default=None, metavar="NAME_OR_INDEX",
                        help="attribute the margin of this class (default: the target's label; for --image the "
                             "ensemble's predicted class)")
    parser.add_argument("--split", default="test", choices=("test", "val", "train"),
                        help="target split (train: a training example, scored on the fly; its own score is its "
                             "self-influence)")
    parser.add_argument("--top", type=int, default=8, help="how many highest and how many lowest to show")
    parser.add_argument("--png", default=None,
                        help="where to save the grid (default: RUN/inspect/<split>_<target>_<view>.png)")
    parser.add_argument("--view", default=DEFAULT_VIEW, choices=tuple(VIEWS),
                        help="how to rank the training examples (default %(default)s, chosen on validation targets): "
                             + "; ".join(f"{v.name}: {v.question}" for v in VIEWS.values()))


def run(args: argparse.Namespace) -> int:
    folder = RunFolder(args.run)
    if args.image is not None:
        found = inspect_image(folder, args.image, args.margin_class, args.top, args.view)
    else:
        found = inspect_target(folder, args.split, args.target, args.margin_class, args.top, args.view)
    classes = folder.classes
    print(_describe(classes, found))
    tables = train_rows(folder, found)
    rows = {}
    for name, examples in zip(headers(classes, found), tables):
        print(f"\n{name}:")
        print(f"  {'rank':>4} {'train':>6} {found.view:>11} {'label':>12} {'true':>12}  source")
        for r, e in enumerate(examples):
            flag = "  NOISY" if e["noisy"] else ("  CANARY (flipped by --canaries)" if e["canary"] else "")
            print(f"  {r + 1:>4} {e['index']:>6} {e['score']:>11.4g} {e['label']:>12} {e['true']:>12}  "
                  f"{e['source_id']}{flag}")
        rows[name] = [{"image": folder.data.thumbs("train")[e["index"]], "noisy": e["noisy"], "canary": e["canary"],
                       "title": f"#{e['index']}  {e['score']:+.3g}\nlabel {e['label']}"
                                + (f", true {e['true']}" if e["noisy"] or e["canary"] else "")} for e in examples]
    png = args.png or found.png
    label = "" if found.label is None else f"\nlabel {classes[found.label]}"
    title = f"{found.description}{label}\npredicted {classes[found.predicted]}\nview: {found.view}"
    influence_grid({"image": found.image, "title": title}, rows, png)
    folder.integrity.seal(Path(png))  # recorded where it is inside the run folder
    print(f"\ngrid saved to {png}")
    return 0


def _describe(classes: list[str], found: Inspection) -> str:
    label = "" if found.label is None else f"label {classes[found.label]}, "
    return (f"{found.description}: {label}ensemble predicts {classes[found.predicted]}\n"
            f"scores are for the margin of class '{classes[found.margin_class]}' ({found.margin_role})\n"
            f"view: {found.view}, {VIEWS[found.view].question}")
