"""The factory of gradient projectors: a projector's name (``dense`` or ``kronecker``) to its class.

It sits above :mod:`.projector` (the base class) and the projectors themselves (:mod:`.dense`,
:mod:`.kronecker`), so each of those imports only the base and nothing imports upwards.
"""

from __future__ import annotations

from torch import nn

from ..config import PROJECTORS
from .dense import DenseProjector
from .kronecker import KroneckerProjector
from .output import ModelOutput
from .projector import GradientProjector


def make_projector(name: str, model: nn.Module, proj_dim: int, seed: int, proj_type: str = "rademacher",
                   kron_k: int = 16, output: ModelOutput | None = None, precision: str = "fp32") -> GradientProjector:
    """The projector called ``name`` (``dense`` or ``kronecker``) for ``model``.

    ``proj_type`` sets the dense projector's entries; ``kron_k`` the Kronecker projector's per-layer input and
    output widths (each layer contributes ``kron_k ** 2`` features before the final map to ``proj_dim``);
    ``output`` the function whose gradient is projected (the margin if None); ``precision`` ``fp32`` or ``bf16``
    (the Kronecker projector's forward pass under bf16 autocast; the dense reference is fp32 only).
    """
    if precision != "fp32" and name != "kronecker":
        raise ValueError(f"the {name} projector computes in fp32 only; use the kronecker projector for "
                         f"{precision} featurization")
    if name == "dense":
        return DenseProjector(model, proj_dim, seed, proj_type=proj_type, output=output)
    if name == "kronecker":
        return KroneckerProjector(model, proj_dim, seed, k_in=kron_k, k_out=kron_k, output=output,
                                  precision=precision)
    raise ValueError(f"unknown projector {name!r}; choose {' or '.join(PROJECTORS)}")
