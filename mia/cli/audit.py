"""`mia-audit`: was this set of images used to train the target? (mia.runs.audit)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from mia.config import AUDIT_CONFIG_DIR
from mia.reporting.console import quiet_libraries
from mia.runs.audit import run
from mia.runs.exit import run_or_exit


@hydra.main(version_base="1.3", config_path=AUDIT_CONFIG_DIR, config_name="audit")
def main(cfg: DictConfig) -> None:
    quiet_libraries()
    run_or_exit("mia-audit", run, cfg)


if __name__ == "__main__":
    main()
