"""What reading images through the model's own library costs, against trakscope's own resize (issue 18).

CPU time per image, one torch thread, decoding included: ``FileImages.batch`` over generated 300 x 400 JPEGs, with
trakscope's resize (no library preprocessing) and through a Hugging Face ConvNeXt image processor (a tiny
``ResNetForImageClassification`` folder saved here), torchvision's ResNet-18 weights' ``transforms()`` and timm's
``resnet18`` eval transform, to 32 and 224 px. Nothing is downloaded. Not a test.

    PYTHONPATH=src python benchmarks/preprocess_cost.py --n 200
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from trakscope.config import ModelConfig
from trakscope.data import FileImages
from trakscope.models import FAMILIES


def jpegs(folder: Path, n: int) -> list[str]:
    """``n`` random 400 x 300 RGB JPEGs (smooth noise, so that they compress like photos)."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        small = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
        path = folder / f"{i:04d}.jpg"
        Image.fromarray(small).resize((400, 300), Image.BILINEAR).save(path, quality=90)
        paths.append(str(path))
    return paths


def hf_folder(folder: Path, size: int) -> Path:
    """A tiny Hugging Face model folder whose processor resizes to ``size`` (shortest edge, crop_pct 1.0)."""
    import transformers

    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8], depths=[1], num_labels=3)
    transformers.ResNetForImageClassification(config).save_pretrained(folder)
    transformers.ConvNextImageProcessor(size={"shortest_edge": size}, crop_pct=1.0).save_pretrained(folder)
    return folder


def per_image_ms(paths: list[str], size: int, preprocess) -> float:
    """CPU milliseconds per image of ``FileImages.batch`` over ``paths`` (after one warm-up image)."""
    images = FileImages(paths, size, preprocess=preprocess)
    images.batch(np.arange(1))
    start = time.process_time()
    images.batch(np.arange(len(paths)))
    return 1000 * (time.process_time() - start) / len(paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="images timed per case")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        paths = jpegs(Path(tmp), args.n)
        print("| target size | trakscope's resize | HF ConvNeXt processor | torchvision `transforms()` | timm |")
        print("| --- | --- | --- | --- | --- |")
        for size in (32, 224):
            folder = hf_folder(Path(tmp) / f"hf{size}", size)
            pre = {"hf": FAMILIES["hf"].library_preprocess(str(folder), ModelConfig(name=f"hf:{folder}"))}
            if size == 224:  # the weights' own size; they are described, not loaded
                imported = {"weights": "random", "checkpoints": ("weights.safetensors",)}
                pre["torchvision"] = FAMILIES["torchvision"].library_preprocess(
                    "resnet18", ModelConfig(name="torchvision:resnet18", **imported))
                pre["timm"] = FAMILIES["timm"].library_preprocess(
                    "resnet18", ModelConfig(name="timm:resnet18", **imported))
            cells = [per_image_ms(paths, size, None)] + [
                per_image_ms(paths, size, pre[k]) if k in pre else None for k in ("hf", "torchvision", "timm")]
            print(f"| {size} px | " + " | ".join("–" if c is None else f"{c:.2f} ms" for c in cells) + " |")


if __name__ == "__main__":
    main()
