"""`mia-attack`: run a membership-inference attack against a target and report it (mia.runs.attack)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from mia.config import ATTACK_CONFIG_DIR
from mia.reporting.console import quiet_libraries
from mia.runs.attack import run
from mia.runs.exit import run_or_exit


@hydra.main(version_base="1.3", config_path=ATTACK_CONFIG_DIR, config_name="attack")
def main(cfg: DictConfig) -> float:
    quiet_libraries()
    metrics = run_or_exit("mia-attack", run, cfg)
    return metrics["auc"]  # what a Hydra sweeper optimises


if __name__ == "__main__":
    main()
