"""mia: membership inference against diffusion models.

As a library (docs/api.md): ``mia.load_target``, ``mia.run_attack``, ``mia.evaluation_set``, ``mia.run_audit``,
the attacks in ``mia.attacks`` as plain dataclasses, and ``AttackResult`` / ``AuditResult`` with their numbers,
``save``/``load`` and plots. The commands ``mia-train``, ``mia-attack``, ``mia-audit`` and ``mia-split`` are
built on the same calls.
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
from mia.audit.result import AuditResult
from mia.audit.run import run_audit
from mia.version import __version__

__all__ = ["AttackResult", "AuditResult", "Protocol", "ScoringSettings", "__version__", "compare", "evaluation_set",
           "load_target", "make_attack", "plot_roc", "run_attack", "run_audit", "trainer_factory"]
