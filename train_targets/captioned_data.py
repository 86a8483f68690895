"""Training batches with captions: each item of a dataset gets its sample's caption appended."""

from __future__ import annotations

from collections.abc import Sequence

from torch.utils.data import Dataset


class WithCaptions(Dataset):
    """``dataset[i] + (captions[i],)``; the default collate turns the captions into a list of strings."""

    def __init__(self, dataset: Dataset, captions: Sequence[str]) -> None:
        if len(dataset) != len(captions):  # type: ignore[arg-type]
            raise ValueError("a caption is needed for every sample")
        self.dataset = dataset
        self.captions = list(captions)

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> tuple:
        return (*self.dataset[index], self.captions[index])


def with_captions(dataset: Dataset, captions: Sequence[str] | None) -> Dataset:
    """The dataset with captions appended to its items, or unchanged for uncaptioned data."""
    return dataset if captions is None else WithCaptions(dataset, captions)
