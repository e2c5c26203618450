"""The model's own preprocessing and class order (issue 18, items 1 and 2): trakscope's input tensor for an image
file is the model library's own output for that file, and a label map decides the class order.

Every model here is built from a config (no download); images are tiny non-square PNGs, so that a resize or crop
other than the library's shows in the pixels.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trakscope.cli import main
from trakscope.config import DataConfig, ModelConfig, RunConfig, SettingError
from trakscope.data import decode_file, load_dataset
from trakscope.data.images import decode_image
from trakscope.models import resolve_config

NATURAL = ["zero", "one", "two"]  # a head's order that is not alphabetical


def make_folder(root: Path, classes: list[str], n_train: int = 3, n_test: int = 2, seed: int = 0) -> Path:
    """``root/{train,test}/<class>/<i>.png``: random RGB images of sizes 37..44 x 50 (never square)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (37 + i, 50, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
    return root


def make_hf_model(path: Path, labels: list[str] | None, size: int = 32) -> Path:
    """A tiny random ResNetForImageClassification (``labels``: its id2label; None: transformers' LABEL_i) and the
    issue's processor, ``ConvNextImageProcessor(size={"shortest_edge": size}, crop_pct=1.0)``, in one folder."""
    transformers = pytest.importorskip("transformers")
    names = {"id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}} if labels else {}
    config = transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                       layer_type="basic", num_labels=len(labels or NATURAL), **names)
    torch.manual_seed(0)
    transformers.ResNetForImageClassification(config).save_pretrained(path)
    transformers.ConvNextImageProcessor(size={"shortest_edge": size}, crop_pct=1.0).save_pretrained(path)
    return path


def _data(root: Path, **kw) -> DataConfig:
    """The image folder at ``root``, a third of the training pool carved out as validation."""
    return DataConfig(dataset="imagefolder", data_root=str(root), val_fraction=0.34, **kw)


def _inputs_of(cfg: RunConfig, split: str = "test") -> dict[str, torch.Tensor]:
    """source id -> trakscope's float32 [3, S, S] model input, through the configuration as resolved."""
    resolved = resolve_config(cfg)
    images = load_dataset(resolved.data).split(split)
    batch = images.images.batch(np.arange(len(images)))
    return dict(zip(images.source_ids, batch))


def _rgb(path: Path) -> Image.Image:
    return Image.open(path).convert("RGB")


def _max_diff(inputs: dict[str, torch.Tensor], root: Path, reference) -> float:
    """Largest |trakscope - library| over every image of ``inputs`` (``reference``: PIL image -> [3, S, S])."""
    diffs = [(inputs[sid] - reference(_rgb(root / sid)).float()).abs().max().item() for sid in inputs]
    return max(diffs)


# --------------------------------------------------------------------------------------------- item 1


def test_hf_input_is_the_image_processors_output(tmp_path):
    """ConvNextImageProcessor, shortest_edge 32, crop_pct 1.0, bicubic: trakscope's resize (short side to
    32 * 256 / 224, bilinear, centre crop) differs by up to ~1.5 here; the processor's own output by 0."""
    transformers = pytest.importorskip("transformers")
    root = make_folder(tmp_path / "data", NATURAL)
    model = make_hf_model(tmp_path / "model", None)
    cfg = RunConfig(data=_data(root), model=ModelConfig(name=f"hf:{model}"))
    processor = transformers.AutoImageProcessor.from_pretrained(model)
    inputs = _inputs_of(cfg)
    assert next(iter(inputs.values())).shape == (3, 32, 32)
    assert _max_diff(inputs, root, lambda im: processor(im, return_tensors="pt")["pixel_values"][0]) <= 1e-5
    recorded = resolve_config(cfg).data.preprocessing
    assert recorded["library"] == "transformers" and recorded["settings"]["crop_pct"] == 1.0
    test = load_dataset(resolve_config(cfg).data).test  # what a decoding worker receives: the source, pickled
    shipped = pickle.loads(pickle.dumps(test.images))  # noqa: S301 - our own object, as DataLoader workers get it
    assert torch.equal(shipped.batch(np.arange(len(test))), test.images.batch(np.arange(len(test))))
    assert RunConfig.from_dict(json.loads(json.dumps(resolve_config(cfg).to_dict()))) == resolve_config(cfg)


def test_hf_preprocessing_reaches_the_in_memory_builtin_digits(tmp_path):
    """digits (8 px, in memory) with an hf: model: each digit goes through the processor at its own size."""
    transformers = pytest.importorskip("transformers")
    from sklearn.datasets import load_digits

    model = make_hf_model(tmp_path / "model", None)
    data = DataConfig(dataset="digits", max_test=5)
    cfg = resolve_config(RunConfig(data=data, model=ModelConfig(name=f"hf:{model}")))
    test = load_dataset(cfg.data).test
    processor = transformers.AutoImageProcessor.from_pretrained(model)
    digits = load_digits().data
    for i, sid in enumerate(test.source_ids):
        grey = np.round(np.clip(digits[int(sid.split(":")[1])] / 16.0, 0, 1) * 255).astype(np.uint8).reshape(8, 8)
        expected = processor(Image.fromarray(np.stack([grey] * 3, axis=-1)), return_tensors="pt")["pixel_values"]
        assert (test.images.batch(np.array([i])) - expected).abs().max().item() <= 1e-5


def test_timm_input_is_timms_eval_transform(tmp_path):
    """timm:resnet18 with weights from elsewhere (imported checkpoints): resolve_data_config + create_transform."""
    timm = pytest.importorskip("timm")
    from timm.data import create_transform, resolve_data_config

    root = make_folder(tmp_path / "data", NATURAL, n_train=3, n_test=1)
    model = ModelConfig(name="timm:resnet18", checkpoints=(str(tmp_path / "member.safetensors"),))
    inputs = _inputs_of(RunConfig(data=_data(root), model=model))
    reference = create_transform(**resolve_data_config({}, model=timm.create_model("resnet18")), is_training=False)
    assert next(iter(inputs.values())).shape == (3, 224, 224)
    assert _max_diff(inputs, root, reference) <= 1e-5


def test_torchvision_pretrained_input_is_the_weights_transforms(tmp_path):
    from torchvision.models import ResNet18_Weights

    root = make_folder(tmp_path / "data", NATURAL, n_train=3, n_test=1)
    model = ModelConfig(name="torchvision:resnet18", weights="pretrained")
    inputs = _inputs_of(RunConfig(data=_data(root), model=model))
    assert next(iter(inputs.values())).shape == (3, 224, 224)
    assert _max_diff(inputs, root, ResNet18_Weights.DEFAULT.transforms()) <= 1e-5


def test_builtin_models_and_a_given_image_size_keep_trakscopes_resize(tmp_path):
    """tiny_cnn, a random-weights torchvision model, and an hf: model with --image-size: no library preprocessing,
    the input is trakscope's own resize, as before."""
    root = make_folder(tmp_path / "data", NATURAL, n_train=3, n_test=1)
    model = make_hf_model(tmp_path / "model", None)
    data = _data(root)
    for cfg in (RunConfig(data=data, model=ModelConfig(name="tiny_cnn")),
                RunConfig(data=data, model=ModelConfig(name="torchvision:resnet18")),
                RunConfig(data=_data(root, image_size=40),
                          model=ModelConfig(name=f"hf:{model}"))):
        resolved = resolve_config(cfg)
        assert resolved.data.preprocessing is None
        inputs = _inputs_of(cfg)
        own = decode_image(root / "test/one/0.png", resolved.data.image_size)[None]
        mean = torch.tensor(resolved.data.mean).view(1, 3, 1, 1)
        std = torch.tensor(resolved.data.std).view(1, 3, 1, 1)
        assert torch.allclose(inputs["test/one/0.png"], ((own / 255.0 - mean) / std)[0], atol=1e-6)


def test_inspect_decodes_a_new_image_like_the_runs_images(tmp_path):
    transformers = pytest.importorskip("transformers")
    root = make_folder(tmp_path / "data", NATURAL, n_train=3, n_test=1)
    model = make_hf_model(tmp_path / "model", None)
    cfg = resolve_config(RunConfig(data=_data(root),
                                   model=ModelConfig(name=f"hf:{model}")))
    x, raw = decode_file(str(root / "test/two/0.png"), cfg.data)
    processor = transformers.AutoImageProcessor.from_pretrained(model)
    expected = processor(_rgb(root / "test/two/0.png"), return_tensors="pt")["pixel_values"]
    assert (x - expected).abs().max().item() <= 1e-5 and raw.dtype == torch.uint8 and raw.shape == (1, 3, 32, 32)


# --------------------------------------------------------------------------------------------- item 2


def test_hf_id2label_decides_the_class_order(tmp_path):
    root = make_folder(tmp_path / "data", NATURAL, n_train=3, n_test=1)
    model = make_hf_model(tmp_path / "model", NATURAL)
    cfg = resolve_config(RunConfig(data=_data(root),
                                   model=ModelConfig(name=f"hf:{model}", weights="pretrained")))
    assert cfg.data.classes == tuple(NATURAL)
    dataset = load_dataset(cfg.data)
    assert dataset.classes == NATURAL
    for split in (dataset.train, dataset.test):
        assert [NATURAL[y] for y in split.labels] == [s.split("/")[1] for s in split.source_ids]


def test_placeholder_id2label_is_not_a_label_map(tmp_path):
    root = make_folder(tmp_path / "data", NATURAL, n_train=3, n_test=1)
    model = make_hf_model(tmp_path / "model", None)  # LABEL_0, LABEL_1, LABEL_2
    cfg = resolve_config(RunConfig(data=_data(root),
                                   model=ModelConfig(name=f"hf:{model}", checkpoints=(str(tmp_path / "a"),))))
    assert cfg.data.classes is None and load_dataset(cfg.data).classes == sorted(NATURAL)


def test_a_pretrained_head_for_other_classes_is_replaced_not_refused(tmp_path):
    """A pretrained model whose id2label names other classes (ImageNet's, say) is fine-tuned on the data's."""
    root = make_folder(tmp_path / "data", ["cat", "dog"], n_train=3, n_test=1)
    model = make_hf_model(tmp_path / "model", NATURAL)
    cfg = resolve_config(RunConfig(data=_data(root),
                                   model=ModelConfig(name=f"hf:{model}", weights="pretrained")))
    assert cfg.data.classes is None


def test_imported_head_whose_classes_the_data_lacks_is_refused_before_anything_is_written(tmp_path, capsys):
    root = make_folder(tmp_path / "data", ["cat", "dog", "eel"], n_train=3, n_test=1)
    model = make_hf_model(tmp_path / "model", NATURAL)
    with pytest.raises(SettingError) as err:
        resolve_config(RunConfig(data=_data(root),
                                 model=ModelConfig(name=f"hf:{model}", checkpoints=(str(tmp_path / "a"),))))
    message = str(err.value)
    assert "[zero, one, two]" in message and "[cat, dog, eel]" in message and "\n" not in message
    out = tmp_path / "run"
    args = ["run", "--out", str(out), "--dataset", "imagefolder", "--data-root", str(root), "--model", f"hf:{model}",
            "--checkpoints", str(tmp_path / "a.safetensors"), "--device", "cpu", "--no-progress"]
    assert main(args) == 2
    assert "[zero, one, two]" in capsys.readouterr().err and not out.exists()


def test_classes_in_another_order_than_the_head_are_refused(tmp_path):
    root = make_folder(tmp_path / "data", NATURAL, n_train=3, n_test=1)
    model = make_hf_model(tmp_path / "model", NATURAL)
    both = r"orders its classes \[zero, one, two\].*--classes gives \[one, two, zero\]"
    with pytest.raises(SettingError, match=both):
        resolve_config(RunConfig(data=_data(root, classes=("one", "two", "zero")),
                                 model=ModelConfig(name=f"hf:{model}", weights="pretrained")))


def test_classes_keep_the_order_given(tmp_path):
    root = make_folder(tmp_path / "data", NATURAL, n_train=3, n_test=1)
    dataset = load_dataset(_data(root, classes=("zero", "one")))
    assert dataset.classes == ["zero", "one"]
    assert [["zero", "one"][y] for y in dataset.train.labels] == [s.split("/")[1] for s in dataset.train.source_ids]


@pytest.mark.parametrize("form", ["json", "lines"])
def test_class_map_file_orders_a_timm_models_classes(tmp_path, form):
    pytest.importorskip("timm")
    root = make_folder(tmp_path / "data", NATURAL, n_train=3, n_test=1)
    path = tmp_path / "classes.txt"
    path.write_text(json.dumps(NATURAL) if form == "json" else "\n".join(NATURAL) + "\n")
    cfg = resolve_config(RunConfig(data=_data(root, image_size=16),
                                   model=ModelConfig(name="timm:resnet18", class_map=str(path))))
    assert load_dataset(cfg.data).classes == NATURAL
    path.write_text("zero\none\nzero\n")
    with pytest.raises(SettingError, match="repeats class name"):
        resolve_config(RunConfig(data=_data(root, image_size=16),
                                 model=ModelConfig(name="timm:resnet18", class_map=str(path))))


def test_class_map_flag_is_parsed_and_stored_absolute(tmp_path, monkeypatch):
    import argparse

    from trakscope.commands._config_args import add_config_arguments, config_from_args

    monkeypatch.chdir(tmp_path)
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    cfg = config_from_args(parser.parse_args(["--class-map", "classes.txt"]))
    assert cfg.model.class_map == str(tmp_path / "classes.txt")
    assert "--preprocessing" not in parser.format_help()


# --------------------------------------------------------------------------------------------- acceptance


def _striped_folder(root: Path, n_train: int, n_test: int) -> Path:
    """40 x 40 grey noise whose class is a 2 px stripe of its colour along the left and right edges: the
    processor (short side to 32, bicubic, crop_pct 1.0) keeps the stripes, trakscope's own resize (short side to
    36.6, centre crop 32) cuts them off."""
    rng = np.random.default_rng(0)
    colours = {"zero": (230, 30, 30), "one": (30, 230, 30), "two": (30, 30, 230)}
    for split, n in (("train", n_train), ("test", n_test)):
        for c, colour in colours.items():
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(90, 166, (40, 40, 1), dtype=np.uint8).repeat(3, axis=2)
                pixels[:, :2] = pixels[:, -2:] = colour
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
    return root


def _through_own_processor(model_dir: Path, folder: Path):
    """The folder's model, and ``folder``'s images as its own processor prepares them with their labels in its
    label map: ``(model, pixel_values [n, 3, S, S], labels [n])``."""
    transformers = pytest.importorskip("transformers")
    model = transformers.ResNetForImageClassification.from_pretrained(model_dir)
    processor = transformers.AutoImageProcessor.from_pretrained(model_dir)
    files = sorted(folder.glob("*/*.png"))
    x = processor([_rgb(f) for f in files], return_tensors="pt")["pixel_values"]
    y = torch.tensor([model.config.label2id[f.parent.name] for f in files])
    return model, x, y


def _train_with_transformers(model_dir: Path, root: Path, out: Path) -> list[Path]:
    """The user's side: the folder's model trained on ``root/train`` through its own processor, in its own
    (non-alphabetical) label order; two checkpoints of one run saved as safetensors."""
    from safetensors.torch import save_file

    model, x, y = _through_own_processor(model_dir, root / "train")
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    saved = []
    for step in range(1, 31):
        model.train()
        loss = torch.nn.functional.cross_entropy(model(pixel_values=x).logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step in (20, 30):
            saved.append(out / f"step{step}.safetensors")
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(saved[-1]))
    return saved


def _transformers_accuracy(model_dir: Path, root: Path, checkpoints: list[Path]) -> tuple[list[float], float]:
    """Test accuracy of each checkpoint and of their mean softmax, computed with transformers alone."""
    from safetensors.torch import load_file

    model, x, y = _through_own_processor(model_dir, root / "test")
    probs = []
    for path in checkpoints:
        model.load_state_dict(load_file(str(path)))
        with torch.no_grad():
            probs.append(torch.softmax(model.eval()(pixel_values=x).logits.double(), 1))
    members = [float((p.argmax(1) == y).float().mean()) for p in probs]
    return members, float((torch.stack(probs).mean(0).argmax(1) == y).float().mean())


def test_imported_hf_model_scores_in_trakscope_as_in_transformers(tmp_path, capsys):
    """The issue's acceptance test: a tiny HF ResNet trained through its own processor with a non-alphabetical
    id2label, imported with --checkpoints: models/metrics.json's accuracies equal those transformers computes on
    the same test files (within 0.005). Measured: transformers 1.000 for both; with trakscope's own resize instead
    of the processor 0.333 (the stripes cut off), with the classes in alphabetical order 0.000."""
    transformers = pytest.importorskip("transformers")
    root = _striped_folder(tmp_path / "data", n_train=10, n_test=8)
    model_dir = make_hf_model(tmp_path / "model", NATURAL)
    checkpoints = _train_with_transformers(model_dir, root, tmp_path)
    members, ensemble = _transformers_accuracy(model_dir, root, checkpoints)
    assert min(members) >= 0.8  # the model learned the stripes: a wrong reading shows
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), "--dataset", "imagefolder", "--data-root", str(root), "--model",
                 f"hf:{model_dir}", "--checkpoints", *map(str, checkpoints), "--ensemble", "2", "--proj-dim", "32",
                 "--device", "cpu", "--no-progress"]) == 0
    metrics = json.loads((out / "models" / "metrics.json").read_text())
    assert [m["test_acc"] for m in metrics["models"]] == pytest.approx(members, abs=0.005)
    assert metrics["ensemble"]["test_acc"] == pytest.approx(ensemble, abs=0.005)
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["classes"] == NATURAL and config["data"]["preprocessing"]["library"] == "transformers"
    assert transformers.AutoConfig.from_pretrained(model_dir).id2label == dict(enumerate(NATURAL))
