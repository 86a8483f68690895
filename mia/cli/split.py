"""`mia-split`: turn a literature split file (SecMI/PIA ``.npz``) into a ``split.json`` for a dataset on disk.

    mia-split CIFAR10_train_ratio0.5.npz --data cifar10 --root data/cifar10 --out split.json

The record is the one ``mia-train split.import_from=<file>`` writes for the same data (members, non-members,
the data config and the fingerprint of the indexed images), so ``mia-attack target.split=split.json`` labels
the evaluation set of a model trained elsewhere (e.g. ``target=pytorch_ddpm``) exactly as the paper did.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mia.config import config_dir
from mia.data.literature import literature_split
from mia.data.registry import build_pool, with_absolute_root
from mia.errors import MiaError
from mia.runs.exit import run_or_exit

log = logging.getLogger(__name__)

DATASETS = ("cifar10", "cifar100")  # the datasets whose torchvision order the literature's indices refer to


def parser() -> argparse.ArgumentParser:
    parse = argparse.ArgumentParser(prog="mia-split", description=__doc__.splitlines()[0].split(": ", 1)[1])
    parse.add_argument("npz", help="the split file: mia_train_idxs (members) and mia_eval_idxs (non-members)")
    parse.add_argument("--data", choices=DATASETS, default="cifar10", help="the dataset the indices refer to")
    parse.add_argument("--root", required=True,
                       help="folder holding torchvision's files (cifar-10-batches-py/ or cifar-100-python/)")
    parse.add_argument("--out", required=True, help="the split.json to write")
    parse.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return parse


def convert(args: argparse.Namespace) -> Path:
    """Write the split record; returns its path."""
    out = Path(args.out).expanduser()
    if out.exists() and not args.overwrite:
        raise MiaError(f"{out} exists; pass --overwrite to replace it")
    # The data config mia-train records for data=<name> (conf/train/data/), composed as mia-train composes it.
    with initialize_config_dir(config_dir=config_dir("train"), version_base="1.3"):
        data = compose("train", overrides=[f"data={args.data}"]).data
    data.root = args.root  # set, not parsed as an override: any path works
    dataset = with_absolute_root(OmegaConf.to_container(data, resolve=True))
    split = literature_split(args.npz, build_pool(dataset), dataset)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.partial")
    split.save(staging)
    os.replace(staging, out)  # all or nothing
    log.info("wrote %s: %d members, %d non-members of %s", out, len(split.members), len(split.nonmembers), args.data)
    return out


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run_or_exit("mia-split", convert, parser().parse_args(argv))


if __name__ == "__main__":
    main()
