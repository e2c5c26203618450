"""``hf:<folder or hub id>``: any transformers ``AutoModelForImageClassification``, with a head for our classes.

Everything is read with ``local_files_only=True`` (a local folder, or the Hugging Face cache) unless
``ModelConfig.download`` is set. Preprocessing is the model's own image processor (``preprocessor_config.json``,
through ``AutoImageProcessor``), and the class order its ``config.json`` ``id2label`` where it names classes.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

from ..config import ModelConfig
from ..data.preprocess import LibraryPreprocess
from ..progress import on_terminal
from .base import ModelFamily, Preprocessing, WeightsError, wants_pretrained
from .weights import one_line

# The logger transformers' from_pretrained writes its "LOAD REPORT" to (the head re-initialised for our classes).
REPORT_LOGGER = "transformers.modeling_utils"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_DEFAULT_LABEL = re.compile(r"LABEL_\d+")  # what transformers names a class it was not told the name of


class LoadReportOnce(logging.Filter):
    """Lets each distinct transformers load report through once per process (``run`` builds the model once per
    ensemble member), as plain text where stderr is not a terminal (the report's title is bold-faced with ANSI)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "LOAD REPORT" not in message:
            return True
        if message in self.seen:
            return False
        self.seen.add(message)
        if not on_terminal():
            record.msg, record.args = _ANSI.sub("", message), ()
        return True


_REPORT_FILTER = LoadReportOnce()


def quiet_transformers() -> None:
    """Print transformers' load report once per process, and no progress bars of its own into a log file."""
    logger = logging.getLogger(REPORT_LOGGER)
    if _REPORT_FILTER not in logger.filters:
        logger.addFilter(_REPORT_FILTER)
    if not on_terminal():
        from transformers.utils import logging as hf_logging  # lazy: transformers is heavy and optional

        hf_logging.disable_progress_bar()


class HFModels(ModelFamily):
    """Hugging Face image classifiers: ``from_pretrained`` for pretrained weights, ``from_config`` otherwise."""

    def network(self, spec: str, cfg: ModelConfig, num_classes: int, classes: Sequence[str] | None) -> nn.Module:
        from transformers import AutoConfig, AutoModelForImageClassification  # lazy: optional (hf extra), slow import

        labels = label_maps(num_classes, classes)
        quiet_transformers()
        with hf_errors(spec, cfg, "the model"):
            if wants_pretrained(cfg):
                model = AutoModelForImageClassification.from_pretrained(
                    spec, ignore_mismatched_sizes=True, local_files_only=not cfg.download, **labels
                )
            else:
                config = AutoConfig.from_pretrained(spec, local_files_only=not cfg.download, **labels)
                model = AutoModelForImageClassification.from_config(config)
        # Checkpoints saved in half precision load as such in transformers 5; trakscope trains in float32.
        return model.float().train()

    def preprocessing(self, spec: str, cfg: ModelConfig) -> Preprocessing:
        processor = image_processor(spec, cfg)
        return Preprocessing(
            size=processor_size(processor),
            mean=tuple(float(v) for v in processor.image_mean),
            std=tuple(float(v) for v in processor.image_std),
        )

    def library_preprocess(self, spec: str, cfg: ModelConfig) -> LibraryPreprocess | None:
        """The processor's own settings (its ``to_dict()``), applied by transformers itself to every image."""
        processor = image_processor(spec, cfg)
        size = processor_size(processor)
        if size is None:
            return None
        normalizes = getattr(processor, "do_normalize", True)
        mean = tuple(float(v) for v in processor.image_mean) if normalizes else (0.0, 0.0, 0.0)
        std = tuple(float(v) for v in processor.image_std) if normalizes else (1.0, 1.0, 1.0)
        settings = json.dumps(json.loads(processor.to_json_string()), sort_keys=True)
        return LibraryPreprocess("transformers", settings, size, mean, std)  # type: ignore[arg-type]

    def label_map(self, spec: str, cfg: ModelConfig) -> list[str] | None:
        """``config.json``'s ``id2label`` in output order, or None where it only has ``LABEL_i`` placeholders."""
        from transformers import AutoConfig  # lazy: transformers is optional (the hf extra), slow to import

        with hf_errors(spec, cfg, "config.json"):
            config = AutoConfig.from_pretrained(spec, local_files_only=not cfg.download)
        id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
        if sorted(id2label) != list(range(len(id2label))):
            return None
        names = [id2label[i] for i in range(len(id2label))]
        return None if all(_DEFAULT_LABEL.fullmatch(n) for n in names) else names


def image_processor(spec: str, cfg: ModelConfig) -> Any:
    """The model's own image processor, through ``AutoImageProcessor`` (local files unless ``cfg.download``).

    Raises:
        WeightsError: ``preprocessor_config.json`` is not on this machine; the message says what to do.
    """
    from transformers import AutoImageProcessor  # lazy: transformers is optional (the hf extra), slow to import

    quiet_transformers()
    with hf_errors(spec, cfg, "preprocessor_config.json"):
        return AutoImageProcessor.from_pretrained(spec, local_files_only=not cfg.download)


def label_maps(num_classes: int, classes: Sequence[str] | None) -> dict[str, dict]:
    """``id2label`` and ``label2id`` for the new head (``LABEL_i`` where the class names are not given)."""
    names = list(classes) if classes is not None else [f"LABEL_{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} classes")
    return {"id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}


def processor_size(processor: Any) -> int | None:
    """Side of the square the processor hands the model: its crop if it crops, else its resize target."""
    if getattr(processor, "do_center_crop", False) and _side(getattr(processor, "crop_size", None)):
        return _side(processor.crop_size)
    return _side(getattr(processor, "size", None))


def _side(size: Any) -> int | None:
    """An int from a processor size: an int, or a dict / ``SizeDict`` with height, shortest_edge or longest_edge."""
    if size is None or isinstance(size, int):
        return size
    for key in ("height", "shortest_edge", "longest_edge"):
        value = size.get(key) if isinstance(size, Mapping) else getattr(size, key, None)
        if value:
            return int(value)
    return None


@contextmanager
def hf_errors(spec: str, cfg: ModelConfig, what: str) -> Iterator[None]:
    """Turn transformers' "not found" errors into one :class:`WeightsError` that says what to do."""
    try:
        yield
    except (OSError, ValueError) as e:
        raise WeightsError(_not_found_message(spec, cfg, what, e)) from e


def _not_found_message(spec: str, cfg: ModelConfig, what: str, error: BaseException) -> str:
    reason = one_line(error, 200)
    folder = "a folder holding config.json, model.safetensors and preprocessor_config.json"
    if spec.startswith(("/", ".", "~")) and not Path(spec).expanduser().exists():
        return f"hf:{spec}: no such folder; pass --model hf:<{folder}>, or hf:<hub id> with --download"
    if cfg.download:
        return f"hf:{spec}: cannot load {what}, even with --download ({reason})"
    from huggingface_hub import constants  # lazy: huggingface_hub is optional (the hf extra)

    return (
        f"hf:{spec}: {what} is not on this machine ({reason}). Pass --model hf:<{folder}>, or add --download "
        f"to fetch {spec} from the Hugging Face Hub into the cache {constants.HF_HUB_CACHE}"
    )
