"""mia: membership inference against diffusion models.

As a library (docs/api.md): ``mia.load_target``, ``mia.run_attack``, ``mia.evaluation_set``, the attacks in
``mia.attacks`` as plain dataclasses, and ``AttackResult`` with its metrics, scores, ``save``/``load`` and
``plot_roc``. The commands ``mia-train``, ``mia-attack`` and ``mia-split`` are built on the same calls.
"""

from mia.api import (
    AttackResult,
    Protocol,
    ScoringSettings,
    compare,
    evaluation_set,
    load_target,
    make_attack,
    plot_roc,
    run_attack,
    trainer_factory,
)
from mia.version import __version__

__all__ = ["AttackResult", "Protocol", "ScoringSettings", "__version__", "compare", "evaluation_set", "load_target",
           "make_attack", "plot_roc", "run_attack", "trainer_factory"]
