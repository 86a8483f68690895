"""An audit's answer as plain data: the verdict, the p-value against the set size, the control; save and load.

The verdict is worded as the test supports it, never as proof: "evidence at p = … that the suspect set was
used in training", or "no evidence". It claims nothing when the false-alarm control says the test is not
calibrated on this data, or when the blind control finds the two sets differ without the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mia.audit.inference import Inference, InferenceSettings
from mia.errors import MiaError

AUDIT_FILE = "audit.json"


def verdict(inference: Inference, settings: InferenceSettings, blind: dict[str, Any] | None) -> dict[str, Any]:
    """What the audit may say, at the largest set size (every suspect)."""
    main = inference.sizes[-1].record(settings.alpha)
    control = inference.control[-1].record(settings.false_alarm_level)
    answer = {"n": main["n"], "reference": main["reference"], "p_value": main["p_value"],
              "median_p": main["median_p"], "alpha": settings.alpha,
              "control_false_alarms": control["fraction_below_level"], "control_n": control["n"]}
    if control["fraction_below_level"] > settings.max_false_alarms:
        answer.update(claim="none", text=(
            f"the test is not calibrated on this data: on two halves of the reference set (neither trained on) "
            f"{control['fraction_below_level']:.0%} of its p-values fall below {settings.false_alarm_level} where "
            f"at most {settings.max_false_alarms:.0%} are expected; no claim is made"))
    elif blind is not None and blind.get("differs"):
        answer.update(claim="none", text=(
            "the suspect and reference sets differ without the model (blind control AUC "
            f"{blind['auc']:.3f}); a difference the test finds could be that difference, so no claim is made"))
    elif main["p_value"] < settings.alpha:
        answer.update(claim="evidence", text=(
            f"evidence at p = {main['p_value']:.2g} (twice the median permutation p over {main['resamples']} "
            "resamplings; "
            f"{main['n']} suspect against {main['reference']} reference samples) that the suspect set was used "
            f"in training, at level {settings.alpha}"))
    else:
        answer.update(claim="no evidence", text=(
            f"no evidence at level {settings.alpha} that the suspect set was used in training (p = "
            f"{main['p_value']:.2g}: twice the median permutation p over {main['resamples']} resamplings of "
            f"{main['n']} suspect against {main['reference']} reference samples)"))
    return answer


@dataclass
class AuditResult:
    """What ``audit.json`` holds: the verdict, p-value per set size, the control, the features and their cost."""

    verdict: dict[str, Any]
    sizes: list[dict[str, Any]]
    control: list[dict[str, Any]]
    details: dict[str, Any] = field(default_factory=dict)  # sets, features, queries, settings, provenance

    @classmethod
    def of(cls, inference: Inference, settings: InferenceSettings, details: dict[str, Any],
           blind: dict[str, Any] | None = None) -> AuditResult:
        return cls(verdict(inference, settings, blind), [s.record(settings.alpha) for s in inference.sizes],
                   [s.record(settings.false_alarm_level) for s in inference.control],
                   {**details, **({"blind_control": blind} if blind is not None else {})})

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "pvalue_vs_size": self.sizes, "false_alarm_control": self.control,
                **self.details}

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / AUDIT_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1, default=float) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> AuditResult:
        path = Path(directory) / AUDIT_FILE
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise MiaError(f"{path} holds no audit result: {err}") from err
        verdict_, sizes, control = data.pop("verdict"), data.pop("pvalue_vs_size"), data.pop("false_alarm_control")
        return cls(verdict_, sizes, control, data)

    def plot(self) -> Any:
        """The p-value against the set size, with the control's, on log axes (mia.reporting.figures)."""
        from mia.reporting.figures import plot_pvalue_vs_size

        return plot_pvalue_vs_size(self.sizes, self.control, self.verdict["alpha"])
