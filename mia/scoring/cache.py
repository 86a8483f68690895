"""On-disk store of an attack's per-sample outputs, in chunks: the prediction cache, and what a killed run resumes from.

What is stored per sample is what the attack's ``collect`` returns: NA's k noise predictions (a sweep over
the statistic or the metrics then makes no new queries), CLiD's losses, other attacks' scores. One folder per key
(``mia.scoring.cache_key``)::

    chunks/<first row>-<token>.npz   index [n] int64, values [n, ...] (any shape), queries and passes_<name>
                                     (the other networks' passes, mia.targets.base.DiffusionTarget.passes): one chunk
    meta.json                        written once every row is stored: the entry is complete
    used                             touched at every open and chunk: the entry's last use, for eviction

A chunk counts once it has its final name: it is written under a temporary name, synced, then renamed,
so a run killed at any moment leaves only complete chunks, and the same command computes only the rows
that no chunk holds. Several writers (the ranks of a multi-device run, parallel jobs with one key) each
write their own chunks; one of them (rank zero) publishes ``meta.json``. A row two writers stored is read
from the first of their chunks by name; a complete entry reads only the chunks its ``meta.json`` lists.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import uuid
import zipfile
from collections import Counter, OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mia.checks import require_integer
from mia.errors import MiaError

log = logging.getLogger(__name__)

_LOADED_CHUNKS = 4  # chunks' values kept in memory while reading (batches read chunks in order)


@dataclass(frozen=True)
class _Chunk:
    name: str
    rows: int
    queries: int  # sample-forwards counted when its rows were computed
    passes: dict[str, int]  # the other networks' passes then (VAE, text encoder, backward, generation)


class PredictionCache:
    """Per-sample outputs ``[rows, ...]`` for one key, stored in chunks; complete once every row is in."""

    def __init__(self, root: str | Path, key: dict[str, Any], rows: int, chunk_size: int = 512) -> None:
        require_integer("cache.chunk_size", chunk_size, minimum=1)  # samples per chunk
        text = json.dumps(key, sort_keys=True, default=str)
        self.key = key
        self.rows = rows
        self.chunk_size = chunk_size
        self.root = Path(root)
        self.folder = self.root / hashlib.sha256(text.encode()).hexdigest()[:24]
        self._chunk_dir = self.folder / "chunks"
        self._meta = self.folder / "meta.json"
        # (index, values, queries, passes) not in a chunk yet
        self._pending: list[tuple[np.ndarray, np.ndarray, int, dict[str, int]]] = []
        self._published = 0
        self._loaded: OrderedDict[int, np.ndarray] = OrderedDict()
        self.read_cost = Fraction(0)  # queries of the rows this process read from the store
        self.read_passes: Counter[str] = Counter()  # and their other passes (Fractions)
        try:
            self._chunk_dir.mkdir(parents=True, exist_ok=True)
            if not (self.folder / "key.json").exists():
                _write_atomic(self.folder / "key.json", json.dumps(key, default=str, indent=1, sort_keys=True))
        except OSError as err:
            raise MiaError(f"cannot write the prediction cache at {self.root}: {err}; set cache.dir=<a writable "
                           "folder> or cache.enabled=false") from err
        self.touch()
        self._index()

    # -- what is stored -----------------------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        return self._meta.exists()

    @property
    def queries(self) -> int:
        """Sample-forwards counted when the stored predictions were made (a complete entry)."""
        return int(json.loads(self._meta.read_text())["queries"])

    @property
    def stored_rows(self) -> int:
        return int((self._where >= 0).sum())

    def available(self, index: torch.Tensor) -> torch.Tensor:
        """bool [n]: which of these rows a complete chunk holds."""
        return torch.from_numpy(self._where[index.cpu().numpy()] >= 0)

    def read(self, index: torch.Tensor) -> torch.Tensor:
        """The stored outputs of these rows, in this order (every one must be available)."""
        rows = index.cpu().numpy()
        chunks, positions = self._where[rows], self._pos[rows]
        if (chunks < 0).any():
            raise ValueError("reading rows the cache does not hold")
        parts = {c: self._values(int(c)) for c in np.unique(chunks)}
        first = next(iter(parts.values()))
        out = np.empty((len(rows), *first.shape[1:]), dtype=first.dtype)
        for c, values in parts.items():
            mask = chunks == c
            out[mask] = values[positions[mask]]
            chunk, read = self._chunks[c], int(mask.sum())
            self.read_cost += Fraction(chunk.queries, chunk.rows) * read
            self.read_passes.update({name: Fraction(count, chunk.rows) * read for name, count in chunk.passes.items()})
        return torch.from_numpy(out)

    # -- writing --------------------------------------------------------------------------------------------

    def add(self, index: torch.Tensor, values: torch.Tensor, queries: int,
            passes: dict[str, int] | None = None) -> None:
        """Rows computed now, with the sample-forwards (and other passes) they took; written a chunk at a time."""
        self._pending.append((index.cpu().numpy().astype(np.int64), values.detach().cpu().numpy(), int(queries),
                              dict(passes or {})))
        if sum(len(p[0]) for p in self._pending) >= self.chunk_size:
            self.flush()

    def flush(self) -> None:
        """Publish the rows added since the last chunk as one chunk."""
        if not self._pending:
            return
        index = np.concatenate([p[0] for p in self._pending])
        values = np.concatenate([p[1] for p in self._pending])
        queries = sum(p[2] for p in self._pending)
        passes: Counter[str] = Counter()
        for *_, made in self._pending:
            passes.update(made)
        self._pending = []
        if self.complete:  # another writer completed the entry meanwhile: these rows are there already
            return
        name = f"{int(index.min()):09d}-{uuid.uuid4().hex[:12]}.npz"
        partial = self._chunk_dir / f".{name}.partial"
        try:
            with open(partial, "wb") as handle:
                np.savez(handle, index=index, values=values, queries=np.int64(queries),
                         **{f"passes_{name}": np.int64(count) for name, count in passes.items()})
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, self._chunk_dir / name)
        except FileNotFoundError:  # the entry was evicted by another job meanwhile: these rows stay unstored
            log.warning("cache entry %s disappeared while this run wrote it; its rows are not cached", self.folder)
            return
        except OSError as err:
            raise MiaError(f"cannot write the prediction cache at {self.folder}: {err}; free space, set "
                           "cache.dir=<a writable folder> or cache.enabled=false") from err
        self._published += 1
        self.touch()

    def finish(self) -> bool:
        """Publish the entry when every row is stored (by one process, after every writer flushed)."""
        if self.complete:
            return True
        self._index()
        if self.stored_rows < self.rows:
            log.info("cached %d of %d samples in %s (incomplete: a rerun computes only the rest)",
                     self.stored_rows, self.rows, self.folder)
            return False
        used = [int(c) for c in np.unique(self._where)]
        share = {c: Fraction(int((self._where == c).sum()), self._chunks[c].rows) for c in used}
        queries = sum(self._chunks[c].queries * share[c] for c in used)
        passes: Counter[str] = Counter()
        for c in used:
            passes.update({name: count * share[c] for name, count in self._chunks[c].passes.items()})
        sample = self._values(used[0])
        meta = {"rows": self.rows, "shape": list(sample.shape[1:]), "dtype": str(sample.dtype),
                "queries": round(queries), "passes": {name: round(count) for name, count in passes.items()},
                "chunks": [self._chunks[c].name for c in used], "key": self.key}
        _write_atomic(self._meta, json.dumps(meta, default=str, indent=1))  # complete once this lands
        for leftover in self._chunk_dir.glob(".*.partial"):  # killed writers' temporary files
            leftover.unlink(missing_ok=True)
        log.info("cached %d samples' predictions in %s", self.rows, self.folder)
        return True

    def touch(self) -> None:
        with contextlib.suppress(OSError):  # a cache shared read-only still reads; its entries are not aged
            (self.folder / "used").touch()

    # -- index ----------------------------------------------------------------------------------------------

    def _index(self) -> None:
        """Which chunk holds each row (-1: none), and where in it."""
        if self._meta.exists():
            names = json.loads(self._meta.read_text())["chunks"]
        else:
            names = sorted(p.name for p in self._chunk_dir.glob("*.npz"))
        self._chunks: list[_Chunk] = []
        self._where = np.full(self.rows, -1, dtype=np.int64)
        self._pos = np.zeros(self.rows, dtype=np.int64)
        self._loaded.clear()
        for name in names:
            try:
                with np.load(self._chunk_dir / name) as data:
                    index, queries = data["index"], int(data["queries"])
                    passes = {key[len("passes_"):]: int(data[key]) for key in data.files if key.startswith("passes_")}
            except FileNotFoundError as err:
                raise MiaError(f"the cache entry {self.folder} lost a chunk (evicted by another job?): "
                               "run again, or raise cache.max_gb") from err
            except (OSError, ValueError, KeyError, zipfile.BadZipFile):
                log.warning("ignoring unreadable cache chunk %s", self._chunk_dir / name)
                continue
            if len(index) == 0 or index.min() < 0 or index.max() >= self.rows:
                log.warning("ignoring cache chunk %s: its rows do not fit the entry", self._chunk_dir / name)
                continue
            number = len(self._chunks)
            self._chunks.append(_Chunk(name, len(index), queries, passes))
            new = self._where[index] < 0  # a row two writers stored: the first chunk by name
            self._where[index[new]] = number
            self._pos[index[new]] = np.nonzero(new)[0]

    def _values(self, number: int) -> np.ndarray:
        if number not in self._loaded:
            path = self._chunk_dir / self._chunks[number].name
            try:
                with np.load(path) as data:
                    self._loaded[number] = data["values"]
            except FileNotFoundError as err:
                raise MiaError(f"the cache entry {self.folder} was evicted while this run read it: run again, "
                               "or raise cache.max_gb") from err
            while len(self._loaded) > _LOADED_CHUNKS:
                self._loaded.popitem(last=False)
        self._loaded.move_to_end(number)
        return self._loaded[number]


def _write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def _last_use(entry: Path) -> float:
    used = entry / "used"
    return used.stat().st_mtime if used.exists() else entry.stat().st_mtime


def _size(entry: Path) -> int:
    return sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())


def evict(root: str | Path, max_gb: float, keep: Path) -> list[str]:
    """Remove the least recently used entries until the cache holds at most ``max_gb`` GB; never ``keep``.

    An entry is removed by renaming it away first, so another process sees it whole or not at all.
    """
    root = Path(root)
    for trash in root.glob(".evicted-*"):  # left by an evicting process that was killed
        shutil.rmtree(trash, ignore_errors=True)
    entries = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    sizes = {p: _size(p) for p in entries}
    total, limit = sum(sizes.values()), max_gb * 1e9
    evicted = []
    for entry in sorted(entries, key=_last_use):
        if total <= limit:
            break
        if entry.resolve() == keep.resolve():
            continue
        trash = root / f".evicted-{entry.name}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(entry, trash)
        except OSError:  # another process evicted it first
            continue
        shutil.rmtree(trash, ignore_errors=True)
        total -= sizes[entry]
        evicted.append(entry.name)
    if evicted:
        log.info("cache.max_gb=%s: evicted %d least recently used entries from %s", max_gb, len(evicted), root)
    if total > limit:
        log.warning("the prediction cache at %s holds %.2f GB, over cache.max_gb=%s, in the entry this run uses",
                    root, total / 1e9, max_gb)
    return evicted
