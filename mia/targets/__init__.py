"""Targets: the models attacked, behind one interface (noise prediction, ᾱ, encode, counted queries).

``base`` is the interface; each kind has its loader, named by the ``_target_`` of its config in
``conf/query/target/``: ``folder.load_folder`` (diffusers pipeline folders, pixel or latent, and mia-train
checkpoints), ``memorizer.load_memorizer`` (the closed-form memoriser of a split), ``module.load_module`` (any
nn.Module; pytorch-ddpm checkpoints too; docs/target_interface.md).
"""

from mia.targets.base import DiffusionTarget

__all__ = ["DiffusionTarget"]
