"""The training data module: a seeded member split of a pool, and a fixed probe of members and non-members."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from mia.checks import require_integer
from mia.data.captions import captions_of
from mia.data.duplicates import Candidates, Exclusion, distinct_rows, draw_distinct_split
from mia.data.images import load_split_images
from mia.data.pools import ImagePool
from mia.data.split import Split
from mia.errors import MiaError
from train_targets.captioned_data import with_captions

log = logging.getLogger(__name__)


class MemberDataModule(L.LightningDataModule):
    """Trains on the members of a seeded split; validates on a fixed probe of members and non-members.

    The probe (same images, noise and timesteps at every validation) shows the loss gap between members
    and non-members growing as the model memorises. Non-members are never used for gradients.
    """

    def __init__(
        self,
        pool: ImagePool,
        data_config: dict[str, Any],
        members: int | None,
        nonmembers: int | None,
        seed: int = 0,
        batch_size: int = 64,
        num_workers: int = 0,
        probe_size: int = 128,
        indices: tuple[np.ndarray, np.ndarray] | None = None,
        poisson_sampling: bool = False,
        exclude: Exclusion | None = None,
        within: Candidates | None = None,
    ) -> None:
        super().__init__()
        require_integer("batch_size", batch_size, minimum=1)
        self.pool = pool
        self.data_config = data_config
        self.sizes = (members, nonmembers)
        self.seed = seed
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.probe_size = probe_size
        self.indices = indices  # members' and non-members' pool indices given (split.import_from), else drawn
        self.poisson_sampling = poisson_sampling  # DP-SGD: each member joins each batch independently
        self.exclude = exclude  # split.exclude: samples (and their pixel copies) the split must not draw
        self.within = within  # split.pool: the only samples the split may draw (a shadow model's pool)
        self.split: Split | None = None
        self.members: torch.Tensor | None = None
        self.nonmembers: torch.Tensor | None = None
        self.captions: tuple[list[str], list[str]] | None = None  # members', non-members' (captioned data)

    def prepare(self) -> Split:
        """Draw the split and decode its images (once); raises MiaError on any bad input."""
        if self.split is None:
            if self.indices is not None:
                self.split, self.members, self.nonmembers = self._given_split(*self.indices)
            else:
                # Exact pixel duplicates are skipped as the split is drawn: no non-member repeats a member.
                self.split, self.members, self.nonmembers = draw_distinct_split(
                    self.pool, self.data_config, *self.sizes, seed=self.seed, exclude=self.exclude,
                    within=self.within)
            index_of = {sample_id: i for i, sample_id in enumerate(self.pool.ids)}
            ids = self.split.members + self.split.nonmembers
            captions = captions_of(self.pool, [index_of[sample_id] for sample_id in ids])
            if captions is not None:  # captioned data: the split records every sample's caption
                self.split.captions = dict(zip(ids, captions, strict=True))
                n_members = len(self.split.members)
                self.captions = captions[:n_members], captions[n_members:]
            self.split.check()
            drawn = self.split.drawn_from  # split.pool: drawn from that split's samples, not the whole pool
            source = (f"{drawn['samples']} samples of {drawn['split']}" if drawn else f"pool {len(self.pool)}")
            log.info(
                "split of %s: %d members, %d non-members (%s, seed %d)",
                self.pool.name, len(self.split.members), len(self.split.nonmembers), source, self.seed,
            )
        return self.split

    def _given_split(self, member_idx, nonmember_idx) -> tuple[Split, torch.Tensor, torch.Tensor]:
        """A split given by its indices (split.import_from), kept exactly as given.

        Exact duplicates inside it are recorded in split.json (and left out at attack time, members
        first), never moved between members and non-members: the file is the literature's split.
        """
        members, nonmembers, digest = load_split_images(self.pool, member_idx, nonmember_idx)
        member_ids = [self.pool.ids[int(i)] for i in member_idx]
        nonmember_ids = [self.pool.ids[int(i)] for i in nonmember_idx]
        _, duplicates = distinct_rows(torch.cat([members, nonmembers]),
                                      [1] * len(member_ids) + [0] * len(nonmember_ids), member_ids + nonmember_ids)
        split = Split(members=member_ids, nonmembers=nonmember_ids, seed=self.seed,
                      dataset=dict(self.data_config, fingerprint=digest, pool_size=len(self.pool)),
                      duplicates=duplicates)
        split.check()
        return split, members, nonmembers

    def setup(self, stage: str) -> None:
        self.prepare()

    def train_dataloader(self) -> DataLoader:
        assert self.members is not None
        dataset = with_captions(TensorDataset(self.members), self.captions[0] if self.captions else None)
        batch_size = min(self.batch_size, len(self.members))
        if self.poisson_sampling:
            from opacus.data_loader import DPDataLoader

            # DP-SGD's accounting assumes Poisson sampling: every member joins every batch with probability
            # q, independently, so batch sizes vary around batch_size (Opacus' DPDataLoader, built here
            # rather than from the loader below, whose drop_last it would ignore with a warning).
            return DPDataLoader(dataset, sample_rate=self.sample_rate, num_workers=self.num_workers,
                                persistent_workers=self.num_workers > 0)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=True,
            drop_last=True,  # equal-sized batches: no tiny last batch with a noisy gradient
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    @property
    def sample_rate(self) -> float:
        """The chance a member is in a given training batch: 1 / (batches per epoch), as DP-SGD accounts it."""
        assert self.members is not None
        return 1 / (len(self.members) // min(self.batch_size, len(self.members)))

    def val_dataloader(self) -> DataLoader:
        assert self.members is not None and self.nonmembers is not None
        n = min(self.probe_size, len(self.members), len(self.nonmembers))
        images = torch.cat([self.members[:n], self.nonmembers[:n]])
        labels = torch.cat([torch.ones(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)])
        # Member j and non-member j share noise and timestep: the loss gap is then a paired comparison,
        # not drowned by which samples happened to draw a small (hard) timestep.
        generator = torch.Generator().manual_seed(self.seed)
        noise = torch.randn((n, *images.shape[1:]), generator=generator).repeat(2, 1, 1, 1)
        timesteps = torch.randint(0, self._num_timesteps(), (n,), generator=generator).repeat(2)
        captions = self.captions[0][:n] + self.captions[1][:n] if self.captions else None
        return DataLoader(with_captions(TensorDataset(images, labels, noise, timesteps), captions),
                          batch_size=self.batch_size)

    def _num_timesteps(self) -> int:
        """The length of the model's noise schedule: the probe's timesteps are drawn from [0, that)."""
        scheduler = getattr(self.trainer.lightning_module, "noise_scheduler", None) if self.trainer else None
        if scheduler is None:
            raise MiaError("the validation probe needs the model's noise_scheduler (diffusers) to draw its timesteps")
        return int(scheduler.config.num_train_timesteps)

    def state_dict(self) -> dict[str, Any]:
        split = self.prepare()
        fingerprint = split.dataset.get("fingerprint")
        return {"members": split.members, "nonmembers": split.nonmembers, "fingerprint": fingerprint}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        split = self.prepare()
        same = (
            state_dict.get("members") == split.members
            and state_dict.get("nonmembers") == split.nonmembers
            and state_dict.get("fingerprint") == split.dataset.get("fingerprint")
        )
        if not same:
            raise MiaError(
                "the checkpoint was trained on a different member split or dataset than this run's; "
                "resume with the same data and split settings as the run that wrote it"
            )
