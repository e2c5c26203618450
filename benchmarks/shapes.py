"""Generated image folders that a model can learn, for benchmarks that need data other than digits (nothing is
downloaded): ten classes of shapes (disc, ring, square, frame, triangle, diamond, cross, X, bars across, bars down),
each drawn at a random position, size and colour on a noisy background, written once as an image folder
(``DIR/train/<class>/*.png``, ``DIR/test/<class>/*.png``).

Some classes look alike by design (disc/ring, square/frame, cross/X, bars across/down, triangle/diamond), so
look-alike label noise (``--noise-kind lookalike``) has real confusions to find.

    python benchmarks/shapes.py DIR --train 1000 --test 200 --size 32
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

SHAPES = ("disc", "ring", "square", "frame", "triangle", "diamond", "cross", "x", "bars_across", "bars_down")


def draw(shape: str, size: int, rng: np.random.Generator):
    """One RGB ``size`` x ``size`` PIL image of ``shape`` at a random place, scale and colour on noise."""
    from PIL import Image, ImageDraw

    noise = rng.integers(0, 96, (size, size, 3), dtype=np.uint8)
    im = Image.fromarray(noise)
    d = ImageDraw.Draw(im)
    r = rng.uniform(0.2, 0.35) * size
    cx, cy = rng.uniform(r, size - r, 2)
    colour = tuple(int(c) for c in rng.integers(128, 256, 3))
    w = max(1, round(r / 3))
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "disc":
        d.ellipse(box, fill=colour)
    elif shape == "ring":
        d.ellipse(box, outline=colour, width=w)
    elif shape == "square":
        d.rectangle(box, fill=colour)
    elif shape == "frame":
        d.rectangle(box, outline=colour, width=w)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    elif shape == "diamond":
        d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=colour)
    elif shape == "cross":
        d.rectangle((cx - w, cy - r, cx + w, cy + r), fill=colour)
        d.rectangle((cx - r, cy - w, cx + r, cy + w), fill=colour)
    elif shape == "x":
        d.line((cx - r, cy - r, cx + r, cy + r), fill=colour, width=w)
        d.line((cx - r, cy + r, cx + r, cy - r), fill=colour, width=w)
    else:
        for k in (-1, 0, 1):
            off = k * r * 0.6
            across = (cx - r, cy + off, cx + r, cy + off)
            line = across if shape == "bars_across" else (cx + off, cy - r, cx + off, cy + r)
            d.line(line, fill=colour, width=w)
    return im


def make_folder(root: Path, n_train: int, n_test: int, size: int, seed: int = 0) -> Path:
    """``root`` as an image folder of ``n_train`` + ``n_test`` generated images (kept when already complete)."""
    done = root / "done.json"
    if done.exists() and json.loads(done.read_text()) == [n_train, n_test, size, seed]:
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            shape = SHAPES[i % len(SHAPES)]
            folder = root / split / shape
            folder.mkdir(parents=True, exist_ok=True)
            draw(shape, size, rng).save(folder / f"{i:06d}.png")
    done.write_text(json.dumps([n_train, n_test, size, seed]))
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="the image folder to write (kept when already complete)")
    parser.add_argument("--train", type=int, default=1000, help="training images (spread evenly over the classes)")
    parser.add_argument("--test", type=int, default=200, help="test images")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(make_folder(args.root, args.train, args.test, args.size, args.seed))


if __name__ == "__main__":
    main()
