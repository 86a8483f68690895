"""An attack run's output files (docs/architecture.md, "outputs of one attack run")."""

from __future__ import annotations

from pathlib import Path

from mia.evaluation.result import AttackResult
from mia.reporting.figures import plot_score_histogram

OUTPUT_FILES = ("metrics.json", "scores.csv", "roc.png", "scores_histogram.png")


def write_outputs(result: AttackResult, directory: str | Path) -> dict[str, Path]:
    """``metrics.json``, ``scores.csv``, ``roc.png`` (linear + log-log) and ``scores_histogram.png``.

    The pictures show the evaluation rows, as the metrics do.
    """
    directory = Path(directory)
    result.save(directory)
    paths = {"roc": directory / "roc.png", "histogram": directory / "scores_histogram.png"}
    result.plot_roc().savefig(paths["roc"], dpi=120)
    plot_score_histogram(*result.evaluation_part(), title=f"{result.attack} scores").savefig(
        paths["histogram"], dpi=120
    )
    return paths
