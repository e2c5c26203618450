"""``trakscope inspect``: the training examples with the highest and lowest TRAK scores for one test example."""

from __future__ import annotations

import argparse

import numpy as np

from ..methods.topk import top_and_bottom
from ..report.grid import influence_grid
from ..run_folder import RunFolder

HELP = "print and save (PNG grid) the training examples with the highest and lowest scores for a test example"
LOCK = "shared"  # reads stage outputs, writes only its own file: beside other readers (trakscope.run_lock)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run folder made by `trakscope run`")
    parser.add_argument("--target", type=int, required=True, help="index of the example in the target split")
    parser.add_argument("--split", default="test", choices=("test", "val"), help="target split")
    parser.add_argument("--top", type=int, default=8, help="how many highest and how many lowest to show")
    parser.add_argument("--png", default=None,
                        help="where to save the grid (default: RUN/inspect/<split>_<target>.png)")


def run(args: argparse.Namespace) -> int:
    folder = RunFolder(args.run)
    scores = folder.scores(args.split)
    if not 0 <= args.target < scores.shape[1]:
        raise ValueError(f"--target must be in [0, {scores.shape[1] - 1}] for the {args.split} split")
    if args.top < 1:
        raise ValueError("--top must be at least 1")
    classes, train, target = folder.classes, folder.table("train"), folder.table(args.split)
    pred = folder.probs(args.split)[args.target].argmax()
    column = np.asarray(scores[:, args.target])
    top, bottom = top_and_bottom(column, args.top)
    t_label = int(target["true_label"][args.target])
    print(f"{args.split} example {args.target} ({target['source_id'][args.target]}): label {classes[t_label]}, "
          f"ensemble predicts {classes[pred]}")
    thumbs = folder.thumbs("train")
    rows = {}
    for name, idx in (("highest scores (pushed this prediction up)", top),
                      ("lowest scores (pushed it down)", bottom)):
        print(f"\n{name}:")
        print(f"  {'rank':>4} {'train':>6} {'score':>11} {'label':>12} {'true':>12}  source")
        tiles = []
        for r, i in enumerate(idx):
            lab, true = classes[train["label"][i]], classes[train["true_label"][i]]
            flag = "  NOISY" if train["noisy"][i] else ""
            print(f"  {r + 1:>4} {i:>6} {column[i]:>11.4g} {lab:>12} {true:>12}  {train['source_id'][i]}{flag}")
            title = f"#{i}  {column[i]:+.3g}\nlabel {lab}" + (f", true {true}" if train["noisy"][i] else "")
            tiles.append({"image": thumbs[i], "title": title, "noisy": bool(train["noisy"][i])})
        rows[name] = tiles
    png = args.png or folder.inspect_path(args.split, args.target)
    tt = {"image": folder.thumbs(args.split)[args.target],
          "title": f"{args.split} #{args.target}\nlabel {classes[t_label]}\npredicted {classes[pred]}"}
    influence_grid(tt, rows, png)
    print(f"\ngrid saved to {png}")
    return 0
