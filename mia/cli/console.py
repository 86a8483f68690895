"""A quiet console: mia's own lines, the progress bars and the results, without the libraries' chatter.

Known noise is lowered to debug level (Lightning's device banner and tips, the seed line) or filtered
(warnings that say nothing about the user's run); everything else still shows.
"""

from __future__ import annotations

import logging
import os
import warnings

# Lightning's INFO lines: "GPU available ...", "TPU available ...", a LitLogger advertisement, "Seed set to 0",
# "`Trainer.fit` stopped: `max_steps=...` reached". mia logs what matters of these itself.
_CHATTY_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning.fabric.utilities.seed",
)
_KNOWN_NOISE = (
    r".*isinstance\(treespec, LeafSpec\)",  # torch deprecation inside Lightning's own code
    r"The number of training batches .* is smaller than the logging interval",  # step-based logging works
)


def quiet_libraries() -> None:
    """Lower the libraries' known chatter; call once at the start of an entry point."""
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in _KNOWN_NOISE:
        warnings.filterwarnings("ignore", message=pattern)
    # W&B's own terminal lines ("syncing is set to offline", "anonymous setting ..."); mia names the run
    # folder itself. The user's own WANDB_SILENT wins.
    os.environ.setdefault("WANDB_SILENT", "true")
