"""Faults and scale-out: a killed attack resumes to the same scores; two processes score what one does.

Both run real processes without paying for a fresh interpreter: the child is forked from the test
process (its imports, the tiny target and the evaluation set are already in memory). Every process
computes with one torch thread, because oneDNN rounds float32 convolutions differently with another
thread count.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import compose_config

from mia.attacks import NoiseAggregation
from mia.attacks.gsa import GSA1
from mia.config import build
from mia.data.evaluation_set import evaluation_set_for
from mia.errors import MiaError
from mia.runs.attack import run
from mia.scoring.engine import ScoringSettings, predict
from mia.scoring.ranks import WholeBatches, assemble

QUICK = ["logger=none", "metrics.bootstrap=20", "trainer.enable_progress_bar=false"]


@contextmanager
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _child(function: Callable[..., None], args: tuple) -> None:
    torch.set_num_threads(1)
    try:
        function(*args)
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    os._exit(0)  # not the test session's exit handlers


def in_forked_processes(function: Callable[..., None], *argument_lists: tuple, timeout: float = 300) -> list[int]:
    """Run ``function(*args)`` in one forked process per argument list; their exit codes (-N: signal N)."""
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_child, args=(function, args)) for args in argument_lists]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout)
    stuck = [p for p in processes if p.is_alive()]
    for process in stuck:
        process.kill()
        process.join()
    assert not stuck, f"a forked process was still running after {timeout} s"
    return [p.exitcode for p in processes]


@pytest.mark.parametrize("attack", ["na", "pia"])  # NA stores its predictions, PIA its scores
def test_a_killed_attack_resumes_from_its_last_complete_chunk(tiny_target: Path, tmp_path: Path, attack: str):
    overrides = [f"target.path={tiny_target}", *QUICK, f"attack={attack}", "data.batch_size=8", "cache.chunk_size=8"]
    cached = [*overrides, f"cache.dir={tmp_path}/cache"]
    killed = compose_config("attack", cached, tmp_path / "killed")

    def killed_after_two_chunks() -> None:
        # In the forked child only: once two chunks are published, the third is torn in half and the process
        # killed (SIGKILL) before it is renamed into place: what a kill in the middle of a long attack leaves.
        publish, published = os.replace, []

        def replace(source, destination) -> None:
            if str(destination).endswith(".npz"):
                if len(published) == 2:
                    with open(source, "r+b") as handle:
                        handle.truncate(Path(source).stat().st_size // 2)
                    os.kill(os.getpid(), signal.SIGKILL)
                published.append(destination)
            publish(source, destination)

        os.replace = replace
        run(killed)

    assert in_forked_processes(killed_after_two_chunks, ()) == [-signal.SIGKILL]
    [entry] = list((tmp_path / "cache").iterdir())
    assert len(list((entry / "chunks").glob("*.npz"))) == 2  # 16 of 48 samples, in two complete chunks
    assert list((entry / "chunks").glob(".*.partial"))  # the third, torn by the kill
    assert not (entry / "meta.json").exists() and not (tmp_path / "killed" / "scores.csv").exists()

    with one_thread():  # the same command again (in another run folder, as Hydra would name it)
        resumed = run(compose_config("attack", cached, tmp_path / "resumed"))
        reference = run(compose_config("attack", [*overrides, "cache.enabled=false"], tmp_path / "reference"))
    per_sample = reference["queries_per_sample"]
    assert resumed["queries_per_sample_this_run"] == pytest.approx(per_sample * 32 / 48)  # the rest only
    assert resumed["queries_per_sample"] == per_sample  # what all the predictions took, then and now
    assert (tmp_path / "resumed/scores.csv").read_bytes() == (tmp_path / "reference/scores.csv").read_bytes()
    assert (entry / "meta.json").exists() and not list((entry / "chunks").glob(".*.partial"))


def _ddp_rank(rank: int, port: int, out: Path, attack, target, evalset, cache_dir: str) -> None:
    os.environ.update(LOCAL_RANK=str(rank), NODE_RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")

    def trainer() -> L.Trainer:
        return L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False)

    scores = predict(attack, target, evalset, ScoringSettings(trainer, batch_size=7, cache_dir=cache_dir, chunk_size=7))
    np.save(out / f"values{rank}.npy", scores.features)
    # A second predict loop in the same processes (as the timestep profile runs), on a subset, uncached.
    np.save(out / f"subset{rank}.npy", predict(attack, target, evalset.first(9), ScoringSettings(trainer, 7)).features)
    (out / f"cost{rank}.json").write_text(json.dumps([scores.queries, scores.queries_this_run, scores.main,
                                                       scores.device]))
    # Backward passes (GSA's), counted on each rank's batches and summed over the ranks as the queries are.
    gradients = predict(GSA1(k=2, layers=["conv_in.*"]), target, evalset.first(9), ScoringSettings(trainer, 7))
    (out / f"passes{rank}.json").write_text(json.dumps([gradients.passes, gradients.queries]))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_score_exactly_what_one_does(tiny_target: Path, tmp_path: Path):
    cfg = compose_config("attack", [f"target.path={tiny_target}", *QUICK], tmp_path)
    target = build(cfg.target)
    evalset = evaluation_set_for(cfg.data, target.image_shape, target.split, str(tiny_target))
    attack = NoiseAggregation(t=40)
    port, cache_dir = _free_port(), str(tmp_path / "cache")
    # 48 samples in batches of 7: rank 0 scores batches 0, 2, 4, 6 (the last one of 6), rank 1 batches 1, 3, 5.
    assert in_forked_processes(_ddp_rank, *[(rank, port, tmp_path, attack, target, evalset, cache_dir)
                                            for rank in (0, 1)]) == [0, 0]
    def one_device() -> L.Trainer:
        return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False)

    with one_thread():
        one = predict(attack, target, evalset, ScoringSettings(one_device, batch_size=7))
        hit = predict(attack, target, evalset, ScoringSettings(one_device, batch_size=7, cache_dir=cache_dir))
        subset = predict(attack, target, evalset.first(9), ScoringSettings(one_device, batch_size=7))
    for rank in (0, 1):  # every rank holds every sample's score, exactly as one process computes it
        np.testing.assert_array_equal(np.load(tmp_path / f"values{rank}.npy"), one.features)
        np.testing.assert_array_equal(np.load(tmp_path / f"subset{rank}.npy"), subset.features)
    costs = [json.loads((tmp_path / f"cost{rank}.json").read_text()) for rank in (0, 1)]
    assert costs == [[48 * 5, 48 * 5, True, "cpu x 2"], [48 * 5, 48 * 5, False, "cpu x 2"]]  # summed over ranks
    for rank in (0, 1):  # 18 samples in batches of 7: rank 0 made (7 + 4) x 2 backward passes, rank 1 7 x 2
        assert json.loads((tmp_path / f"passes{rank}.json").read_text()) == [{"gradient_passes": 18 * 2}, 18 * 2]
    # The two ranks wrote their chunks, rank zero published the entry: one process reads it whole.
    assert hit.queries_this_run == 0 and hit.queries == 48 * 5
    np.testing.assert_array_equal(hit.features, one.features)


@pytest.mark.parametrize(("rows", "batch"), [(48, 8), (48, 7), (5, 8), (13, 4)])
def test_whole_batches_reach_every_rank_once(rows: int, batch: int):
    single = WholeBatches(range(rows), batch).indices(1, 0)
    assert single == list(range(rows))
    batches = [single[i:i + batch] for i in range(0, rows, batch)]
    for world in (2, 3):
        dealt = [WholeBatches(range(rows), batch).indices(world, rank) for rank in range(world)]
        assert sorted(i for part in dealt for i in part) == single  # none lost, none twice
        for rank, part in enumerate(dealt):  # each rank's batches are batches of the one-device run
            assert [part[i:i + batch] for i in range(0, len(part), batch)] == batches[rank::world]


def test_missing_or_repeated_samples_are_refused():
    def batch(*index: int) -> dict[str, torch.Tensor]:
        return {"index": torch.tensor(index), "features": torch.tensor(index, dtype=torch.float64)[:, None]}

    assert assemble([batch(2, 3), batch(0, 1)], 4)[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0]  # [N, F] outputs too
    with pytest.raises(MiaError, match="scored 3 of 4 samples"):
        assemble([batch(0, 1), batch(3)], 4)
    with pytest.raises(MiaError, match=r"\(1 more than once\)"):
        assemble([batch(0, 1), batch(1, 2, 3)], 4)


def test_devices_need_the_ddp_strategy_and_a_batch_each(tiny_target: Path, tmp_path: Path):
    from mia.scoring.ranks import check_devices

    spawn = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False)
    with pytest.raises(MiaError, match=r"trainer\.strategy=ddp"):
        check_devices(spawn, 48, 8)
    ddp = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)
    with pytest.raises(MiaError, match="make 1 batches, fewer than the 2 devices"):
        check_devices(ddp, 48, 64)
    check_devices(ddp, 48, 8)


@pytest.mark.slow
def test_mia_attack_on_two_cpu_processes_writes_the_scores_csv_of_one(tiny_target: Path, tmp_path: Path):
    """The command line itself: Lightning's ddp starts the command again for rank 1 (about 1-2 minutes here)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    common = [sys.executable, "-m", "mia", f"target.path={tiny_target}", *QUICK, "data.batch_size=8",
              f"paths.log_dir={tmp_path}/runs"]
    for name, extra in (("one", []), ("two", ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"])):
        process = subprocess.run([*common, *extra, f"hydra.run.dir={tmp_path}/{name}"], capture_output=True,
                                 text=True, env=env, timeout=600)
        assert process.returncode == 0, process.stderr[-3000:]
    assert (tmp_path / "two/scores.csv").read_bytes() == (tmp_path / "one/scores.csv").read_bytes()
    # Rank 1 wrote nothing but its own Hydra log: the reports are rank zero's.
    files = {name: {p.name for p in (tmp_path / name).iterdir()} for name in ("one", "two")}
    assert files["two"] - files["one"] == {"train_ddp_process_1.log"} and files["one"] <= files["two"]
    metrics = json.loads((tmp_path / "two/metrics.json").read_text())
    assert metrics["device"] == "cpu x 2" and metrics["queries_per_sample"] == 5
