"""CLiD: the degradation rule, the features by hand, both fitted scores, and mia-attack on a Stable Diffusion folder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config

from mia.attacks import SampleNoise
from mia.attacks.clid import CLiDClassifier, CLiDThreshold, degrade
from mia.attacks.moves import forward_noise
from mia.data.evaluation_set import evaluation_set_for
from mia.data.images import to_model_range
from mia.errors import MiaError
from mia.evaluation.protocol import Protocol, apply, roles
from mia.runs.attack import run
from mia.targets.folder import load_folder

pytestmark = pytest.mark.usefixtures("one_thread")
EOT = "<|endoftext|>"


def test_degradation_replaces_the_most_important_words_first():
    caption = "a dog runs on the grass"
    assert degrade(caption, 0.3, EOT) == f"a dog {EOT} on the {EOT}"  # ⌈0.3 × 6⌉ = 2: grass, runs
    assert degrade(caption, 0.5, EOT) == f"a {EOT} {EOT} on the {EOT}"  # content words, longest first
    assert degrade(caption, 0.7, EOT) == f"a {EOT} {EOT} {EOT} {EOT} {EOT}"  # then function words, longest first
    assert degrade("one two three four five six seven eight nine ten", 0.3, "_") == \
        "one two _ four five six _ _ nine ten"  # ⌈0.3 × 10⌉ = 3 words, not 4; ties: earlier first
    assert degrade("", 0.5, EOT) == "" and degrade("dog", 0.3, EOT) == EOT


@pytest.fixture(scope="module")
def sd(tiny_sd: Path):
    return load_folder(str(tiny_sd))


def test_features_are_the_papers_losses_by_hand(sd, captioned, monkeypatch: pytest.MonkeyPatch):
    # The denoiser runs on passes of 2 rows, as the by-hand losses below do: the same round-off.
    monkeypatch.setattr(sd, "micro_batch", 2)
    data = {"members": str(captioned[0]), "nonmembers": str(captioned[1])}
    evalset = evaluation_set_for(data, sd.image_shape, None, "tiny", "text", stream=True)
    items = [evalset[i] for i in range(2)]
    captions = [item["caption"] for item in items]
    x0 = sd.encode(to_model_range(torch.stack([item["image"] for item in items])))
    noise = SampleNoise(evalset.keys[:2], 3)
    attack = CLiDThreshold(seed=3)
    attack.check(sd)
    sd.reset_queries()
    features = attack.collect(sd, x0, noise, sd.conditions({"caption": captions}))
    assert features.shape == (2, 5) and sd.queries == 15 * 2

    texts = [captions, *[[degrade(c, r, EOT) for c in captions] for r in (0.3, 0.5, 0.7)], ["", ""]]
    losses = torch.zeros(2, 5, dtype=torch.float64)
    for stream, t in enumerate((440, 450, 460)):
        eps = noise.randn(x0.shape[1:], stream=stream)  # one noise per timestep, shared by every caption
        x_t = forward_noise(sd, x0, eps, t).float()
        for column, text in enumerate(texts):
            prediction = sd.denoiser(x_t, torch.full((2,), t), encoder_hidden_states=sd.embed(text)).sample
            losses[:, column] += (prediction.double() - eps.double()).pow(2).flatten(1).mean(1) / 3
    expected = torch.cat([losses[:, :1], losses[:, 1:] - losses[:, :1]], dim=1)
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-8, check_dtype=False)


def synthetic(n: int = 120, seed: int = 0) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Features of the CLiD shape: members have a lower L₀ and larger gaps."""
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(n // 2, int), np.zeros(n // 2, int)]
    loss = 1.0 - 0.3 * labels + 0.1 * rng.normal(size=n)
    gaps = (0.02 + 0.05 * labels)[:, None] + 0.02 * rng.normal(size=(n, 4))
    return np.c_[loss, gaps], [f"s{i}" for i in range(n)], labels


@pytest.mark.parametrize("make", [CLiDThreshold, CLiDClassifier], ids=["clid_th", "clid_vec"])
def test_both_scores_fit_on_calibration_only_and_say_higher_is_member(make):
    features, ids, labels = synthetic()
    protocol = Protocol(calibration=0.3, bootstrap=0)
    outcome = apply(make(), features, labels, roles(ids, labels, protocol), protocol)
    assert outcome.metrics["auc"] > 0.9 and outcome.metrics["n_calibration"] == 36
    # Whatever the evaluation part holds, what was fitted (and the calibration rows' scores) cannot move.
    perturbed = features.copy()
    perturbed[~outcome.calibration] = perturbed[~outcome.calibration][::-1]
    again = apply(make(), perturbed, labels, roles(ids, labels, protocol), protocol)
    assert again.chosen == outcome.chosen
    np.testing.assert_array_equal(again.scores[outcome.calibration], outcome.scores[outcome.calibration])


def test_clid_th_picks_alpha_on_calibration_auc():
    features, ids, labels = synthetic()
    features[:, 0] = np.random.default_rng(1).normal(size=len(ids))  # L₀ says nothing: only the gaps separate
    protocol = Protocol(calibration=0.5, bootstrap=0)
    outcome = apply(CLiDThreshold(), features, labels, roles(ids, labels, protocol), protocol)
    assert outcome.chosen["alpha"] >= 0.8 and outcome.metrics["auc"] > 0.9
    with pytest.raises(RuntimeError, match="must be fitted"):
        CLiDThreshold().score(torch.from_numpy(features))


def test_bad_clid_settings_are_refused():
    for make, message in ((lambda: CLiDThreshold(timesteps=[]), "attack.timesteps"),
                          (lambda: CLiDThreshold(degradation=[0.0]), "attack.degradation"),
                          (lambda: CLiDThreshold(alphas=[1.5]), "attack.alphas"),
                          (lambda: CLiDClassifier(n_estimators=0), "attack.n_estimators")):
        with pytest.raises(MiaError, match=message):
            make()
    with pytest.raises(MiaError, match="outside the target's timesteps"):
        CLiDThreshold(timesteps=[1000]).check(_Text())


class TextMemorizer(torch.nn.Module):
    """The optimal denoiser of a few (latent, caption) pairs: it snaps to the pair whose caption it is given.

    ``forward(x, t, encoder_hidden_states=e).sample`` like a UNet2DConditionModel. Given a training caption
    it denoises towards that pair's latent; given any other text, towards the mixture of all training latents.
    """

    def __init__(self, latents: torch.Tensor, embeddings: torch.Tensor, alphas: torch.Tensor, sample_size: int):
        super().__init__()
        self.register_buffer("latents", latents.flatten(1).double())
        self.register_buffer("embeddings", embeddings.flatten(1).double())
        self.register_buffer("alphas", alphas.double())
        self.weight = torch.nn.Parameter(torch.zeros(1), requires_grad=False)  # a dtype and device for the target
        self.config = type("Config", (), {"sample_size": sample_size, "in_channels": latents.shape[1]})()

    def forward(self, sample, timestep, encoder_hidden_states):
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        x, a = sample.double().flatten(1), self.alphas[timestep[0]]  # one timestep per batch, as attacks ask
        logits = -torch.cdist(x, a.sqrt() * self.latents).pow(2) / (2 * (1 - a))
        match = torch.cdist(encoder_hidden_states.double().flatten(1), self.embeddings) < 1e-4
        logits = torch.where(match.any(1, keepdim=True) & ~match, -torch.inf, logits)
        x0 = torch.softmax(logits, 1) @ self.latents
        return UNet2DConditionOutput(sample=((x - a.sqrt() * x0) / (1 - a).sqrt()).view_as(sample).float())


def test_both_scores_find_the_members_of_a_text_memorizer(sd, tiny_sd, captioned):
    from mia.targets.latent import LatentTextTarget
    from mia.targets.schedule import read_schedule

    data = {"members": str(captioned[0]), "nonmembers": str(captioned[1])}
    evalset = evaluation_set_for(data, sd.image_shape, None, "tiny", "text", stream=True)
    items = [evalset[i] for i in range(len(evalset))]
    captions = [item["caption"] for item in items]
    x0 = sd.encode(to_model_range(torch.stack([item["image"] for item in items])))
    members = evalset.labels == 1
    member_captions = [c for c, m in zip(captions, members.tolist(), strict=True) if m]
    denoiser = TextMemorizer(x0[members], sd.embed(member_captions), sd.alphas_cumprod, sd.sample_shape[1])
    target = LatentTextTarget(denoiser, sd.vae, sd.text_encoder, sd.tokenizer, read_schedule(tiny_sd), name="memo")
    features = CLiDThreshold().collect(target, x0, SampleNoise(evalset.keys, 0), target.conditions(
        {"caption": captions})).double().numpy()
    assert (features[members.numpy(), 1:] > 0).all()  # a member's loss grows when its caption is degraded
    np.testing.assert_allclose(features[~members.numpy(), 1:], 0, atol=1e-9)  # a non-member's does not move
    # Half of the 20 for calibration: with fewer rows XGBoost's default min_child_weight allows no split at all.
    for make in (CLiDThreshold, CLiDClassifier):
        protocol = Protocol(calibration=0.5, bootstrap=0)
        labels = evalset.labels.numpy()
        outcome = apply(make(), features, labels, roles(evalset.ids, labels, protocol), protocol)
        assert outcome.metrics["auc"] == 1.0, make.name  # higher = member, on the evaluation part


def test_clid_refuses_a_batch_of_empty_prompts(sd):
    x0 = torch.zeros(2, *sd.sample_shape)
    with pytest.raises(MiaError, match="every caption of the batch is empty"):
        CLiDThreshold().collect(sd, x0, SampleNoise(torch.arange(2), 0), sd.conditions({"caption": ["", ""]}))


class _Text:
    """Just enough of a text-conditional target for ``check``."""

    conditioning, name, num_timesteps = "text", "text", 1000


QUICK = ["logger=none", "metrics.bootstrap=0", "trainer.enable_progress_bar=false"]


@pytest.mark.parametrize(("attack", "queries"), [("clid", 15), ("na", 5)])
def test_mia_attack_on_a_stable_diffusion_folder_writes_the_output_contract(tiny_sd, captioned, tmp_path, attack,
                                                                             queries):
    overrides = [f"target.path={tiny_sd}", f"data.members={captioned[0]}", f"data.nonmembers={captioned[1]}",
                 f"attack={attack}", f"cache.dir={tmp_path}/cache", *QUICK]
    metrics = run(compose_config("attack", overrides, tmp_path))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics)) and (tmp_path / "roc.png").stat().st_size > 0
    assert saved["queries_per_sample"] == queries and saved["conditioning"] == "text"
    assert saved["encoder_passes_per_sample"] == 1  # one VAE pass per sample, reused by every step
    assert saved["text_encoder_passes_per_sample"] >= 1
    with open(tmp_path / "scores.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 20 and [r["label"] for r in rows] == ["1"] * 10 + ["0"] * 10
    if attack == "na":
        assert saved["n_calibration"] == 0 and "role" not in rows[0]
        return
    # Fitted on a calibration part (0.2 of each class), measured on the rest.
    assert saved["n_calibration"] == 4 and saved["n_members"] + saved["n_nonmembers"] == 16
    assert sum(r["role"] == "calibration" for r in rows) == 4 and "calibration" in saved
    assert saved["attack"] == ("clid_th" if attack == "clid" else "clid_vec")
    # The same command again reads the cached features and gives the same scores.
    again = run(compose_config("attack", overrides, tmp_path / "again"))
    assert again["queries_per_sample_this_run"] == 0
    assert (tmp_path / "scores.csv").read_bytes() == (tmp_path / "again" / "scores.csv").read_bytes()
