"""Targets: the models attacked, behind one interface (noise prediction, ᾱ, encode, counted queries).

``base`` is the interface; ``loading`` picks a loader by ``target.kind`` (``pipeline``, ``checkpoint``,
``memorizer``, ``module``: any nn.Module, docs/target_interface.md).
"""

from mia.targets.base import DiffusionTarget

__all__ = ["DiffusionTarget"]
