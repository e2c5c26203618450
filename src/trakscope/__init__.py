"""trakscope: which training examples made my image classifier do that?

The notebook API: :class:`TRAK` attributes any ``nn.Module`` over checkpoints you give it, and the methods
below are plain functions from arrays to arrays (pandas-friendly: wrap any of them in a ``DataFrame``).
The command line (``trakscope --help``) runs the same engine over a run folder.
"""

__version__ = "0.2.0"

from .attribution.masks import dropconnect
from .attribution.output import Margin, ModelOutput
from .attribution.trak import TRAK
from .config import SettingError
from .methods.d3m import alignment_scores, auto_groups, group_losses
from .methods.lds import ci95, lds, predicted_outputs, spearman_columns, subset_masks
from .methods.metrics import average_precision, detection_metrics, recall_at_fraction, roc_auc
from .methods.registry import SCORERS, STRATEGIES
from .methods.removal import remove_and_retrain, select_removed
from .methods.scorers import cleanlab_quality, d3m_scores, training_loss, val_influence
from .methods.topk import top_and_bottom, top_k
from .stages.labels import label_issues

__all__ = [
    "SCORERS",
    "STRATEGIES",
    "TRAK",
    "SettingError",
    "Margin",
    "ModelOutput",
    "alignment_scores",
    "auto_groups",
    "average_precision",
    "ci95",
    "cleanlab_quality",
    "d3m_scores",
    "detection_metrics",
    "dropconnect",
    "group_losses",
    "label_issues",
    "lds",
    "predicted_outputs",
    "recall_at_fraction",
    "remove_and_retrain",
    "roc_auc",
    "select_removed",
    "spearman_columns",
    "subset_masks",
    "top_and_bottom",
    "top_k",
    "training_loss",
    "val_influence",
]
