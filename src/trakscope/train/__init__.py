"""Training: one deterministic model on any subset of the training split, and its predictions."""

from .trainer import (
    MarginRecorder,
    architecture_only,
    checkpoint_epochs,
    load_trained,
    predict_logits,
    random_crop,
    train_final_model,
    train_model,
)

__all__ = [
    "MarginRecorder",
    "architecture_only",
    "checkpoint_epochs",
    "load_trained",
    "predict_logits",
    "random_crop",
    "train_final_model",
    "train_model",
]
