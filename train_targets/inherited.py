"""What a model's starting weights trained on: a fine-tune's base (``init_from``, a LoRA's ``base``) and an
autoencoder taken from another folder (``vae_from``), as those folders' split.json files record it.

The fine-tune's split.json carries it forward (``also_trained_on``), so a later ``split.exclude`` of that split
keeps the base's samples out too; and a split whose non-members the base trained on is refused before training,
since their non-member label would be wrong.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mia.data.split import Split
from mia.errors import MiaError

log = logging.getLogger(__name__)


def inherited_training(started_from: Mapping[str, str], data_config: Mapping[str, Any]) -> dict[str, list[str]]:
    """Samples of this dataset the starting weights trained on, by part: ``base`` (the base's members, and
    what its own split carried forward) and ``autoencoder``. ``started_from``: part -> folder."""
    records: list[Mapping[str, list[str]]] = []
    for part, folder in started_from.items():
        path = Path(folder) / "split.json"
        if not path.exists():  # e.g. hub weights: what they trained on is not recorded, so nothing to carry
            log.info("%s has no split.json: what its weights trained on is unknown to mia", folder)
            continue
        split = Split.load(path)
        if split.dataset.get("name") != data_config.get("name"):  # another dataset's ids name other images
            log.info("%s trained on %s, not %s: none of its samples is in this pool", folder,
                     split.dataset.get("name"), data_config.get("name"))
            continue
        if part == "base":  # every weight came from there: its members and whatever it carried forward
            records += [{"base": split.members}, split.also_trained_on]
        else:  # only the autoencoder came from there
            records.append({"autoencoder": split.also_trained_on.get("autoencoder", [])})
    return merged(*records)


def check_nonmembers_unseen(split: Split, inherited: Mapping[str, list[str]],
                            started_from: Mapping[str, str]) -> None:
    """Refuse a split whose non-members the starting weights trained on (their label would be wrong)."""
    for part, ids in inherited.items():
        seen = set(ids).intersection(split.nonmembers)
        if seen:
            source = ", ".join(started_from.values())
            raise MiaError(f"{len(seen)} of the split's non-members (e.g. {sorted(seen)[0]}) were trained on by the "
                           f"{part} of {source} (its split.json), so they are not non-members of this model; draw "
                           f"the split without them: split.exclude=[{source}/split.json]")


def merged(*records: Mapping[str, list[str]]) -> dict[str, list[str]]:
    """``also_trained_on`` records joined part by part, each id once."""
    out: dict[str, list[str]] = {}
    for record in records:
        for part, ids in record.items():
            out[part] = list(dict.fromkeys([*out.get(part, []), *ids]))
    return out
