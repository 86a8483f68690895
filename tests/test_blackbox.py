"""The black-box attacks (ReDiffuse, reconstruction): generation calls only, counted queries, seeds, refusals.

Targets whose ``predict_noise`` raises run both attacks through the real scoring path (Lightning's predict
loop), so an attack that reached for it would fail here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_clid import TextMemorizer

import mia
from mia.attacks import Reconstruction, ReDiffuse, SampleNoise
from mia.attacks.similarity import ssim
from mia.data.evaluation_set import EvaluationSet, evaluation_set_for
from mia.data.images import to_model_range
from mia.errors import MiaError, NotApplicable
from mia.targets.base import DiffusionTarget
from mia.targets.folder import load_folder
from mia.targets.generation import ddim_scheduler, generate, variation_timesteps, vary
from mia.targets.latent import LatentTextTarget
from mia.targets.memorizer import MemorizingDenoiser
from mia.targets.schedule import read_schedule

pytestmark = pytest.mark.usefixtures("one_thread")


def _no_noise_api(*args, **kwargs):
    raise AssertionError("a black-box attack called predict_noise")


class PixelAPI(DiffusionTarget):
    """The closed-form memoriser, reachable only through its generation side."""

    predict_noise = _no_noise_api


class TextAPI(LatentTextTarget):
    """A latent text-to-image target, reachable only through its generation side."""

    predict_noise = _no_noise_api


@pytest.fixture(scope="module")
def memorised():
    """A memoriser of 16 random 16x16 images; an evaluation set of those 16 and 16 others."""
    from diffusers import DDPMScheduler

    alphas = DDPMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02).alphas_cumprod
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (32, 1, 16, 16), dtype=np.uint8))
    target = PixelAPI(MemorizingDenoiser(to_model_range(images[:16]), alphas), alphas, (1, 16, 16), name="memo")
    labels = torch.cat([torch.ones(16), torch.zeros(16)])
    return target, EvaluationSet(images, labels, [f"img{i}" for i in range(32)])


@pytest.fixture(scope="module")
def text_memorised(tiny_sd: Path, captioned):
    """A text memoriser of the captioned members (in the tiny SD's latent space), and the two folders' samples."""
    sd = load_folder(str(tiny_sd))
    data = {"members": str(captioned[0]), "nonmembers": str(captioned[1])}
    evalset = evaluation_set_for(data, sd.image_shape, None, "tiny", "text", stream=True)
    items = [evalset[i] for i in range(len(evalset))]
    members = evalset.labels == 1
    x0 = sd.encode(to_model_range(torch.stack([item["image"] for item in items])))
    member_captions = [item["caption"] for item, m in zip(items, members.tolist(), strict=True) if m]
    denoiser = TextMemorizer(x0[members], sd.embed(member_captions), sd.alphas_cumprod, sd.sample_shape[1])
    target = TextAPI(denoiser, sd.vae, sd.text_encoder, sd.tokenizer, read_schedule(tiny_sd), name="memo")
    return target, evalset


def _run(target, attack, evalset):
    return mia.run_attack(target, attack, evalset=evalset, protocol=mia.Protocol(bootstrap=0), blind_control=False)


def test_a_variation_runs_the_img2img_timesteps_of_diffusers_ddim(memorised):
    target, _ = memorised
    scheduler = ddim_scheduler(target, 10)
    assert variation_timesteps(scheduler, 0.2, 10).tolist() == [199, 99]  # ReDiffuse's 200 → 100 → 0
    assert variation_timesteps(ddim_scheduler(target, 20), 0.05, 20).tolist() == [49]  # its SD setting
    np.testing.assert_allclose(scheduler.alphas_cumprod.double(), target.alphas_cumprod, rtol=1e-5)
    x0 = torch.zeros(3, 1, 16, 16)
    before, calls = target.queries, target.generation_calls
    out = vary(target, x0, 0.2, 10, torch.randn(3, 1, 16, 16))
    assert out.shape == x0.shape and target.queries - before == 3 * 2 and target.generation_calls - calls == 3
    assert generate(target, None, 4, n=2).shape == (2, 1, 16, 16) and target.queries - before == 6 + 2 * 4


def test_rediffuse_scores_members_higher_through_the_scoring_path_without_predict_noise(memorised):
    target, evalset = memorised
    result = _run(target, ReDiffuse(), evalset)
    metrics = result.metrics
    assert metrics["queries_per_sample"] == 10 * 2  # n × int(steps·strength)
    assert metrics["generation_calls_per_sample"] == 10
    assert metrics["settings"]["denoiser_steps_per_generation"] == 2
    assert metrics["settings"]["generation_calls_per_sample"] == 10
    assert metrics["auc"] > 0.9  # a memorised image's variations come back to it
    again = _run(target, ReDiffuse(), evalset)
    np.testing.assert_array_equal(result.scores, again.scores)  # seeded per sample
    other = _run(target, ReDiffuse(seed=1, n=2), evalset)
    assert not np.array_equal(result.scores, other.scores) and other.metrics["queries_per_sample"] == 4


def test_rediffuse_on_a_text_target_counts_guided_steps_and_decodes(text_memorised):
    target, evalset = text_memorised
    for space, distance in (("image", "ssim"), ("latent", "l2")):
        attack = ReDiffuse(n=2, strength=0.5, steps=4, space=space, distance=distance, guidance_scale=2.0)
        metrics = _run(target, attack, evalset).metrics
        assert metrics["queries_per_sample"] == 2 * 2 * 2  # n × int(steps·strength) × 2 (guidance)
        assert metrics["generation_calls_per_sample"] == 2
        assert metrics.get("decoder_passes_per_sample", 0) == (2 if space == "image" else 0)


def test_reconstruction_finds_a_text_memorisers_members_and_counts_its_generations(text_memorised):
    target, evalset = text_memorised
    # Unguided, a member's caption makes the memoriser's DDIM land on the member's latent, up to the last step's
    # √(1−ᾱ_0) of noise (guidance would extrapolate past it: this memoriser's unconditional answer is the mixture
    # of all members).
    result = _run(target, Reconstruction(n=2, steps=5, similarity="latent", guidance_scale=1.0), evalset)
    assert result.metrics["queries_per_sample"] == 2 * 5  # n × steps
    assert result.metrics["generation_calls_per_sample"] == 2
    assert result.metrics["auc"] == 1.0
    residual = (1 - float(target.alphas_cumprod[0])) * np.prod(target.sample_shape)  # E‖√(1−ᾱ_0)·ε‖²
    assert (result.scores[evalset.labels.numpy() == 1] > -2 * residual).all()
    guided = _run(target, Reconstruction(n=2, steps=5, similarity="latent", guidance_scale=7.5), evalset)
    assert guided.metrics["queries_per_sample"] == 2 * 5 * 2  # × 2 under guidance
    again = _run(target, Reconstruction(n=2, steps=5, similarity="latent", guidance_scale=7.5), evalset)
    np.testing.assert_array_equal(guided.scores, again.scores)  # seeded per sample
    assert not np.array_equal(guided.scores, _run(target, Reconstruction(n=2, steps=5, similarity="latent",
                                                                         guidance_scale=7.5, seed=1), evalset).scores)
    for similarity in ("pixel", "ssim"):
        metrics = _run(target, Reconstruction(n=1, steps=3, similarity=similarity), evalset).metrics
        assert metrics["queries_per_sample"] == 3 and metrics["decoder_passes_per_sample"] == 1


def test_a_users_embedding_model_gives_the_cosine_of_its_embeddings(text_memorised):
    target, evalset = text_memorised
    attack = Reconstruction(n=2, steps=3, similarity="embedding", embedding={"_target_": "torch.nn.Flatten"})
    attack.check(target)
    batch = {"image": torch.stack([evalset[i]["image"] for i in range(4)]),
             "caption": [evalset[i]["caption"] for i in range(4)]}
    noise = SampleNoise(evalset.keys[:4], 0)
    images, cond = attack.inputs(target, batch, noise)
    scores = attack.collect(target, images, noise, cond)
    by_hand = torch.zeros(4, dtype=torch.float64)
    for stream in range(2):
        made = generate(target, cond, 3, noise.randn(target.sample_shape, stream=stream))
        by_hand += torch.nn.functional.cosine_similarity(((made + 1) / 2).flatten(1).double(),
                                                         ((images + 1) / 2).flatten(1).double())
    torch.testing.assert_close(scores, by_hand / 2)
    with pytest.raises(MiaError, match=r"attack.embedding._target_=nowhere.encoder cannot be built"):
        Reconstruction(similarity="embedding", embedding={"_target_": "nowhere.encoder"}).check(target)
    with pytest.raises(MiaError, match=r"needs attack.embedding"):
        Reconstruction(similarity="embedding").check(target)


def test_ssim_is_one_for_equal_images_and_falls_with_noise():
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    noisy = x + 0.3 * torch.randn_like(x)
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=torch.float64))
    assert (ssim(noisy, x) < 0.9).all() and torch.allclose(ssim(noisy, x), ssim(x, noisy))


@pytest.mark.parametrize("strength", [0, 0.0, -0.1, 1.0001, 1.5])
def test_rediffuse_refuses_a_strength_outside_zero_one(strength):
    with pytest.raises(MiaError, match=r"^attack.strength must be in \(0, 1\] .*, got"):
        ReDiffuse(strength=strength)
    assert ReDiffuse(strength=1, steps=3).strength == 1  # the whole schedule: a generation from the noised image


def test_mia_attack_refuses_a_bad_strength_before_reading_the_target(tmp_path: Path):
    from conftest import compose_config

    from mia.runs.attack import run

    cfg = compose_config("attack", [f"target.path={tmp_path}/none", "attack=rediffuse", "attack.strength=1.5",
                                    "logger=none"], tmp_path / "out")
    with pytest.raises(MiaError, match=r"^attack.strength must be in \(0, 1\]"):
        run(cfg)
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_rediffuse_refuses_a_strength_that_is_not_a_number():
    for strength in (float("nan"), "0.2", True):
        with pytest.raises(MiaError, match=r"attack.strength must be"):
            ReDiffuse(strength=strength)


def test_bad_black_box_settings_are_refused(memorised):
    target, evalset = memorised
    with pytest.raises(MiaError, match=r"leaves no denoising step .*; raise attack.steps to at least 20$"):
        ReDiffuse(strength=0.05, steps=10)
    with pytest.raises(MiaError, match=r"attack.distance=ssim compares images"):
        ReDiffuse(distance="ssim", space="latent")
    with pytest.raises(MiaError, match=r"attack.similarity must be one of"):
        Reconstruction(similarity="clip")
    with pytest.raises(MiaError, match=r"attack.steps must be at most"):
        ReDiffuse(steps=2000).check(target)
    before = target.queries
    with pytest.raises(NotApplicable, match=r"needs a text-conditional target; memo is unconditional"):
        _run(target, mia.make_attack("reconstruction"), evalset)  # its guidance 7.5 does not hide why
    assert target.queries == before  # refused before any query


def test_reconstruction_refuses_a_batch_of_empty_prompts(text_memorised):
    target, _ = text_memorised
    with pytest.raises(MiaError, match=r"every caption of the batch is empty"):
        Reconstruction(n=1, steps=1).collect(target, torch.zeros(2, 3, 16, 16), SampleNoise(torch.arange(2), 0),
                                             target.conditions({"caption": ["", ""]}))


def test_every_integer_knob_of_the_black_box_attacks_refuses_a_float():
    import dataclasses

    checked = 0
    for cls in (ReDiffuse, Reconstruction):
        for field in dataclasses.fields(cls):
            if field.type == "int":
                for bad in (1.5, True, "3"):
                    with pytest.raises(MiaError, match=rf"attack.{field.name} must be an integer"):
                        cls(**{field.name: bad})
                checked += 1
    assert checked == 6  # n, steps, seed of each


def test_rediffuse_strength_tunes_on_the_calibration_part(memorised):
    from mia.config import options

    target, evalset = memorised
    assert "rediffuse_strength" in options("tune")
    result = mia.run_attack(target, ReDiffuse(n=2), evalset=evalset, blind_control=False,
                            protocol=mia.Protocol(calibration=0.25, bootstrap=0),
                            tune={"grid": {"strength": [0.1, 0.3]}, "criterion": "auc"})
    tuning = result.metrics["tuning"]
    assert tuning["chosen"]["strength"] in (0.1, 0.3)
    steps = 1 if tuning["chosen"]["strength"] == 0.1 else 3
    assert result.metrics["queries_per_sample"] == 2 * steps  # the chosen setting's cost, the grid's apart
    assert result.metrics["generation_calls_per_sample"] == 2  # likewise (the grid's calls were counted in too)
