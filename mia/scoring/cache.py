"""On-disk cache of an attack's model predictions, so sweeps over post-processing make no new queries.

NA's k noise predictions per sample depend on the target, the samples and the settings that shape the
path (t, k, m, noise scale, direction, seed, device); the aggregation statistic and the metrics do not.
A sweep over those reuses the predictions. Predictions are written batch by batch with plain file writes
(not a memory map), so they stream to disk instead of piling up in the process's memory. Each writer
writes its own temporary file and publishes it with an atomic rename, so parallel jobs with the same key
(a joblib sweep over statistics) cannot corrupt one another.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)


class PredictionCache:
    """Predictions [N, *shape] float32 for one key; complete once every row has been written."""

    def __init__(self, root: str | Path, key: dict[str, Any]) -> None:
        text = json.dumps(key, sort_keys=True, default=str)
        self.key = key
        self.folder = Path(root) / hashlib.sha256(text.encode()).hexdigest()[:24]
        self._data = self.folder / "predictions.f32"
        self._meta = self.folder / "meta.json"
        self._partial: Path | None = None
        self._shape: tuple[int, ...] | None = None
        self._rows = 0
        self._written = 0

    @property
    def complete(self) -> bool:
        return self._meta.exists() and self._data.exists()

    @property
    def queries(self) -> int:
        """Sample-forwards counted when the cached predictions were made."""
        return int(json.loads(self._meta.read_text())["queries"])

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of a complete cache."""
        if self._shape is None:
            self._shape = tuple(json.loads(self._meta.read_text())["shape"])
        shape = self._shape
        row = int(np.prod(shape))
        array = np.fromfile(self._data, dtype=np.float32, count=(stop - start) * row, offset=start * row * 4)
        return torch.from_numpy(array.reshape(stop - start, *shape))

    def write(self, start: int, predictions: torch.Tensor, total_rows: int) -> None:
        """Write rows starting at ``start`` (batches arrive in order, each a contiguous range)."""
        if self._shape is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._shape = tuple(predictions.shape[1:])
            self._rows = total_rows
            self._written = 0
            handle, name = tempfile.mkstemp(prefix="predictions.", suffix=".partial", dir=self.folder)
            os.ftruncate(handle, total_rows * int(np.prod(self._shape)) * 4)
            os.close(handle)
            self._partial = Path(name)
        array = predictions.detach().to(torch.float32).cpu().numpy()
        with open(self._partial, "r+b") as handle:
            handle.seek(start * int(np.prod(self._shape)) * 4)
            handle.write(np.ascontiguousarray(array).tobytes())
        self._written += len(array)

    def finish(self, queries: int) -> None:
        """Publish the cache once every row is in (a run that stopped early leaves no cache).

        ``queries`` is the counted number of sample-forwards that made the predictions.
        """
        if self._partial is None:
            return
        if self._written != self._rows or self.complete:  # stopped early, or another job published first
            self._partial.unlink(missing_ok=True)
            return
        os.replace(self._partial, self._data)
        meta = {"shape": list(self._shape), "rows": self._rows, "queries": queries, "key": self.key}
        handle, name = tempfile.mkstemp(prefix="meta.", suffix=".json", dir=self.folder)
        with os.fdopen(handle, "w") as out:
            out.write(json.dumps(meta, default=str, indent=1))
        os.replace(name, self._meta)  # the cache counts as complete only once this lands
        log.info("cached %d samples' predictions in %s", self._rows, self.folder)
