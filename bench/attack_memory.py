"""Run one `mia-attack` in this process and print its memory as JSON (used by bench.speed).

``peak_mb`` is the process's peak resident memory during the attack: the high-water mark is reset after
the imports, so what the libraries touch while loading cannot hide what the attack itself holds.
``before_mb`` is the resident memory when the attack starts (libraries loaded, nothing else).
Usage: python -m bench.attack_memory <mia-attack overrides>
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def main() -> None:
    from hydra import compose, initialize_config_dir

    from mia.config import config_dir
    from mia.runs.attack import run

    with initialize_config_dir(config_dir=config_dir("attack"), version_base="1.3"):
        cfg = compose("attack", overrides=sys.argv[1:])
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident size (Linux)
    before = status_mb("VmRSS")
    run(cfg)
    print(json.dumps({"before_mb": before, "peak_mb": status_mb("VmHWM")}))


if __name__ == "__main__":
    main()
