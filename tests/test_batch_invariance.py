"""A sample's score does not depend on the batch it is scored in (docs/method.md, "batch invariance").

float32 round-off depends on the shape of the batch the denoiser sees, and NA subtracts nearly equal
predictions, so at small noise scales a batch of 1 and a batch of 5 used to give different scores. The
target now always runs its denoiser on micro-batches of one fixed size, the last one padded. Run as a
script (``python tests/test_batch_invariance.py <batch> <threads> <out.npy>``), this file scores the
test's samples in a fresh interpreter: the two-process check below.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from mia.attacks import LossAttack, NoiseAggregation, SecMI
from mia.errors import MiaError
from mia.scoring.cache_key import cache_key
from mia.targets.base import default_micro_batch
from mia.targets.latent import encode_rows

REPO = Path(__file__).resolve().parents[1]
SAMPLES = 12
NA_SMALL_NOISE = {"t": 40, "k": 5, "m": 10, "noise_scale": 0.1}  # the setting tuning picks on CIFAR-10


def random_unet_target(num_class_embeds: int | None = None):
    """A randomly initialised 8x8 grayscale UNet2DModel under a fixed seed (the same in every process)."""
    from diffusers import DDPMScheduler, UNet2DModel

    from mia.targets.base import DiffusionTarget
    from mia.targets.class_conditional import ClassConditionalTarget

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4, num_class_embeds=num_class_embeds)
    alphas = DDPMScheduler().alphas_cumprod
    if num_class_embeds is not None:
        return ClassConditionalTarget(unet, alphas, (1, 8, 8), null_class=0)
    return DiffusionTarget(unet, alphas, (1, 8, 8))


def digits(class_labels: bool = False):
    """The first SAMPLES digits at 8x8, half labelled members (with class labels 0..2 when asked)."""
    from mia.data.evaluation_set import EvaluationSet
    from mia.data.images import load_images
    from mia.data.pools import DigitsPool

    images, _ = load_images(DigitsPool(image_size=8), range(SAMPLES))
    extras = {"class_label": [i % 3 for i in range(SAMPLES)]} if class_labels else None
    return EvaluationSet(images, torch.arange(SAMPLES) % 2, [str(i) for i in range(SAMPLES)], extras)


def cpu_trainer() -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_checkpointing=False, enable_model_summary=False)


def scores_at(attack, target, batch_size: int, evalset=None) -> tuple[np.ndarray, int]:
    """The scores and counted queries through the real scoring path (mia.scoring.engine.predict on the CPU)."""
    from mia.scoring.engine import ScoringSettings, predict

    predictions = predict(attack, target, digits() if evalset is None else evalset,
                          ScoringSettings(cpu_trainer, batch_size=batch_size))
    return attack.score(torch.from_numpy(predictions.features)).numpy(), predictions.queries


def _attacks():
    """Each attack with its queries per sample."""
    return {"na_small_noise": (NoiseAggregation(**NA_SMALL_NOISE), 5),
            "na_smaller_noise": (NoiseAggregation(t=20, k=3, m=5, noise_scale=0.01), 3),
            "na_defaults": (NoiseAggregation(), 5), "loss": (LossAttack(t=20), 1),
            "secmi": (SecMI(t_sec=20, interval=10), 4)}


# None: the target's default (64 rows for 8x8, so every batch here is one padded pass); 4: several passes.
@pytest.mark.parametrize(("name", "micro_batch"), [("na_small_noise", None), ("na_small_noise", 4),
                                                   ("na_smaller_noise", None), ("na_defaults", 4), ("loss", 4),
                                                   ("secmi", 4)])
def test_scores_do_not_depend_on_the_batch_size(name: str, micro_batch: int | None, one_thread):
    attack, queries = _attacks()[name]
    target = random_unet_target()
    if micro_batch is not None:
        target.micro_batch = micro_batch
    (one, one_queries), (five, five_queries) = scores_at(attack, target, 1), scores_at(attack, target, 5)
    np.testing.assert_array_equal(five, one)
    assert one_queries == five_queries == queries * SAMPLES  # the padding rows are not queries


def test_the_scores_without_micro_batches_do_depend_on_it(one_thread):
    """The check above can fail: with the batch as given, batches of 1, 5 and 12 round differently."""
    attack, _ = _attacks()["na_small_noise"]
    target = random_unet_target()
    target.micro_batch = None
    one, *others = (scores_at(attack, target, batch)[0] for batch in (1, 5, SAMPLES))
    assert any(not np.array_equal(one, other) for other in others)
    for other in others:
        np.testing.assert_allclose(other, one, rtol=1e-3)  # the same scores up to round-off


@pytest.mark.parametrize("threads", [1, 2])
def test_a_row_does_not_depend_on_its_position_or_the_other_rows(threads: int):
    """What the micro-batches rest on: at one batch shape, each row's ε is computed alone."""
    target = random_unet_target()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rows = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(1))
        fills = [torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(2)), torch.zeros(8, 1, 8, 8)]
        timesteps = torch.full((8,), 40)
        with torch.no_grad():
            reference = target.denoiser(rows, timesteps).sample
            for fill in fills:
                for position in (0, 3, 7):
                    batch = fill.clone()
                    batch[position] = rows[5]
                    assert torch.equal(target.denoiser(batch, timesteps).sample[position], reference[5])
    finally:
        torch.set_num_threads(before)


def test_guided_conditions_are_split_padded_and_counted_twice(one_thread):
    """Classifier-free guidance doubles each pass; the conditions follow their rows into the micro-batches."""
    target = random_unet_target(num_class_embeds=3)
    target.micro_batch = 4
    x = torch.randn(SAMPLES, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    labels = torch.arange(SAMPLES) % 3
    whole = target.predict_noise(x, 30, target.conditions({"class_label": labels}, guidance_scale=2.0))
    assert target.queries == 2 * SAMPLES
    for batch in (1, 5):
        parts = [target.predict_noise(x[s:s + batch], 30,
                                      target.conditions({"class_label": labels[s:s + batch]}, guidance_scale=2.0))
                 for s in range(0, SAMPLES, batch)]
        assert torch.equal(torch.cat(parts), whole)
    assert target.queries == 3 * 2 * SAMPLES
    with pytest.raises(MiaError, match="condition of type list cannot be split into passes"):
        target.predict_noise(x, 30, cond=["a list"] * SAMPLES)  # one item per row, or one per field? refused


def test_a_dict_of_conditions_follows_its_rows_into_the_passes(one_thread):
    """A custom module's keyword conditions: each value split with its rows, padding included."""

    class KeywordTarget(type(random_unet_target(num_class_embeds=3))):
        def denoise(self, x_t, timesteps, cond):
            return self.denoiser(x_t, timesteps, class_labels=cond["labels"]["class"]).sample

    target = random_unet_target(num_class_embeds=3)
    target.micro_batch = 4
    x = torch.randn(SAMPLES, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    labels = torch.arange(SAMPLES) % 3
    expected = target.predict_noise(x, 30, target.conditions({"class_label": labels}))  # a Condition's rows
    target.__class__ = KeywordTarget
    for batch in (SAMPLES, 5):  # 5: passes of 4, 1 padded to 4
        parts = [target.predict_noise(x[s:s + batch], 30, {"labels": {"class": labels[s:s + batch]}})
                 for s in range(0, SAMPLES, batch)]
        assert torch.equal(torch.cat(parts), expected)


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_class_conditional_scores_do_not_depend_on_the_batch_size(guidance: float, one_thread):
    """Through the scoring path with each sample's class label as its condition (Condition.rows)."""
    attack = NoiseAggregation(**NA_SMALL_NOISE, guidance_scale=guidance)
    target = random_unet_target(num_class_embeds=3)
    target.micro_batch = 4
    (one, one_queries), (five, five_queries) = (scores_at(attack, target, batch, digits(class_labels=True))
                                                for batch in (1, 5))
    np.testing.assert_array_equal(five, one)
    assert one_queries == five_queries == 5 * SAMPLES * (2 if guidance > 1 else 1)


def test_text_to_image_scores_do_not_depend_on_the_batch_size(tiny_sd: Path, captioned, one_thread):
    """A latent text-conditional target (VAE latents, CLIP captions, cross-attention), batches of 1 and 4."""
    from mia.data.evaluation_set import evaluation_set_for
    from mia.targets.folder import load_folder

    target = load_folder(str(tiny_sd))
    assert target.micro_batch == 64  # the default for 4x8x8 latents
    target.micro_batch = 3
    evalset = evaluation_set_for({"members": str(captioned[0]), "nonmembers": str(captioned[1])},
                                 target.image_shape, None, "tiny", "text", stream=True).first(4)
    for attack in (NoiseAggregation(**NA_SMALL_NOISE), NoiseAggregation(**NA_SMALL_NOISE, guidance_scale=2.0)):
        (one, one_queries), (four, four_queries) = (scores_at(attack, target, batch, evalset) for batch in (1, 4))
        np.testing.assert_array_equal(four, one)
        assert one_queries == four_queries == 5 * len(evalset) * (2 if attack.guidance_scale > 1 else 1)


def test_default_micro_batches_bound_a_pass_and_key_the_cache():
    assert default_micro_batch((1, 8, 8)) == default_micro_batch((3, 32, 32)) == 64  # the default data.batch_size
    assert default_micro_batch((3, 64, 64)) == default_micro_batch((4, 64, 64)) == 16  # Stable Diffusion's latents
    assert default_micro_batch((3, 256, 256)) == 1
    target = random_unet_target()
    key = cache_key(NoiseAggregation(), target, digits(), cpu_trainer(), "code")
    target.micro_batch = 4
    assert cache_key(NoiseAggregation(), target, digits(), cpu_trainer(), "code") != key


def test_encoder_passes_bound_memory_at_stable_diffusions_size_and_stay_large_below():
    assert encode_rows((3, 512, 512)) == 8  # Stable Diffusion's images: a whole batch would not fit
    assert encode_rows((3, 256, 256)) == 32
    assert encode_rows((3, 64, 64)) == encode_rows((3, 32, 32)) == 64  # small passes would cost time
    assert encode_rows((3, 2048, 2048)) == 1


def test_two_processes_with_other_batch_sizes_and_threads_give_the_same_scores(tmp_path: Path, one_thread):
    """Fresh interpreters (about 10 s each here): batch 1 on one thread, batch 5 on two; this process at 7."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    runs = {"1": (1, 1), "5": (5, 2)}  # name: (batch size, torch threads)
    for name, (batch, threads) in runs.items():  # one after the other: two children would fight for the cores
        child = subprocess.run([sys.executable, __file__, str(batch), str(threads), str(tmp_path / f"{name}.npy")],
                               capture_output=True, text=True, env=env, timeout=600)
        assert child.returncode == 0, child.stderr[-3000:]
        assert child.stdout.strip().splitlines()[-1] == str(REPO)  # the child ran this checkout's mia
    one, five = np.load(tmp_path / "1.npy"), np.load(tmp_path / "5.npy")
    assert one.shape == (len(_attacks()), SAMPLES)
    np.testing.assert_array_equal(five, one)
    here = np.stack([scores_at(attack, random_unet_target(), 7)[0] for attack, _ in _attacks().values()])
    np.testing.assert_array_equal(here, one)


if __name__ == "__main__":  # the child of test_two_processes_...: score at one batch size, save the scores
    batch_size, thread_count, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    torch.set_num_threads(thread_count)
    import mia

    scores = [scores_at(attack, random_unet_target(), batch_size)[0] for attack, _ in _attacks().values()]
    np.save(out, np.stack(scores))
    print(Path(mia.__file__).resolve().parents[1])  # which mia ran: the parent checks it is this checkout's
    sys.exit(0)
