"""Latent text-to-image and class-conditional targets: loading, encode, guidance, counted queries, streaming."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import compose_config
from tiny_t2i import build_tiny_pixel, build_tiny_sd, write_captioned, write_labelled

from mia.attacks import PIA, PIAN, LossAttack, NoiseAggregation, SampleNoise, SecMI, SimA
from mia.attacks.clid import CLiDThreshold
from mia.data.evaluation_set import InMemoryImages, evaluation_set_for, from_folders
from mia.data.images import to_model_range
from mia.data.streamed import StreamedImages
from mia.errors import MiaError
from mia.runs.attack import run
from mia.targets.class_conditional import ClassConditionalTarget
from mia.targets.folder import load_folder
from mia.targets.latent import LATENT_STREAM, LatentTextTarget

pytestmark = pytest.mark.usefixtures("one_thread")
QUICK = ["logger=none", "metrics.bootstrap=0", "trainer.enable_progress_bar=false", "cache.enabled=false"]
ATTACKS = [(NoiseAggregation(), 5), (LossAttack(), 1), (PIA(), 2), (PIAN(), 2), (SecMI(), 12), (SimA(), 1),
           (CLiDThreshold(), 15)]


def load(path: Path, **target) -> LatentTextTarget:
    return load_folder(str(path), **target)


@pytest.fixture(scope="module")
def sd(tiny_sd: Path) -> LatentTextTarget:
    return load(tiny_sd)


@pytest.fixture(scope="module")
def pixel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny unconditional pixel pipeline (DDPM, linear β)."""
    return build_tiny_pixel(tmp_path_factory.mktemp("pixel") / "ddpm")


@pytest.fixture(scope="module")
def batch(sd, captioned):
    """Three captioned samples, their latents and their conditions."""
    evalset = evaluation_set_for({"members": str(captioned[0]), "nonmembers": str(captioned[1])}, sd.image_shape,
                                 None, "tiny", "text", stream=True)
    items = [evalset[i] for i in range(3)]
    images = torch.stack([item["image"] for item in items])
    return images, [item["caption"] for item in items], evalset.keys[:3]


def run_attack(attack, target, images, captions, keys, guidance: float = 1.0) -> torch.Tensor:
    noise = SampleNoise(keys, attack.seed)
    x0 = target.encode(to_model_range(images), noise)
    attack.check(target)
    cond = target.conditions({"caption": captions}, guidance)
    if attack.learns_from_labels:  # CLiD's score is fitted on labelled rows: compare its features
        return attack.collect(target, x0, noise, cond)
    return attack.scores_of(target, x0, noise, cond)


def test_a_stable_diffusion_folder_loads_with_its_schedule_and_shapes(tiny_sd: Path, sd: LatentTextTarget):
    from diffusers import PNDMScheduler

    assert isinstance(sd, LatentTextTarget) and sd.conditioning == "text" and sd.is_latent
    assert sd.sample_shape == (4, 8, 8) and sd.image_shape == (3, 16, 16)
    expected = PNDMScheduler.from_pretrained(tiny_sd, subfolder="scheduler").alphas_cumprod
    torch.testing.assert_close(sd.alphas_cumprod, expected.double())
    assert sd.beta_schedule == "scaled_linear" and sd.identity != load(tiny_sd, latent="sample").identity
    assert sd.image_shape_for(32) == (3, 32, 32)
    with pytest.raises(MiaError, match="multiples of 2"):
        sd.image_shape_for(15)


def test_encode_is_the_vae_latent_times_its_scaling_factor(sd: LatentTextTarget, batch, tiny_sd: Path):
    images, _, keys = batch
    x = to_model_range(images)
    posterior = sd.vae.encode(x).latent_dist
    factor = sd.vae.config.scaling_factor
    before = sd.encoder_passes
    torch.testing.assert_close(sd.encode(x), posterior.mean * factor)
    assert sd.encoder_passes - before == 3  # counted apart from the denoiser's queries
    drawn = load(tiny_sd, latent="sample")
    noise = SampleNoise(keys, 7)
    expected = (posterior.mean + posterior.std * noise.randn(posterior.mean.shape[1:], stream=LATENT_STREAM)) * factor
    torch.testing.assert_close(drawn.encode(x, noise), expected)
    assert torch.equal(drawn.encode(x, SampleNoise(keys, 7)), drawn.encode(x, noise))
    assert not torch.equal(drawn.encode(x, SampleNoise(keys, 8)), drawn.encode(x, noise))


@pytest.mark.parametrize("guidance", [1.0, 3.0])
@pytest.mark.parametrize(("attack", "queries"), ATTACKS, ids=[a.name for a, _ in ATTACKS])
def test_every_attack_counts_its_queries_on_a_latent_target(sd, batch, attack, queries, guidance):
    sd.reset_queries()
    scores = run_attack(attack, sd, *batch, guidance=guidance)
    assert torch.isfinite(scores).all() and len(scores) == 3
    assert sd.queries == queries * 3 * (2 if guidance > 1 else 1)


@pytest.mark.parametrize("attack", [a for a, _ in ATTACKS], ids=[a.name for a, _ in ATTACKS])
def test_same_seed_same_scores_and_a_caption_moves_only_its_own_score(sd, batch, attack):
    images, captions, keys = batch
    first = run_attack(attack, sd, images, captions, keys)
    assert torch.equal(first, run_attack(attack, sd, images, captions, keys))
    changed = run_attack(attack, sd, images, ["a red ball near the water", *captions[1:]], keys)
    assert not torch.allclose(changed[0], first[0], rtol=1e-6, atol=0)
    torch.testing.assert_close(changed[1:], first[1:], rtol=1e-5, atol=1e-7)


def test_pia_takes_the_papers_t_for_stable_diffusion_schedules(sd, pixel: Path):
    attack = PIA()
    attack.check(sd)
    assert attack.settings()["t"] == 500 and attack.settings()["t_default"] is True
    pixel_pia = PIA()
    pixel_pia.check(load(pixel))
    assert pixel_pia.settings()["t"] == 200
    explicit = PIA(t=300)
    explicit.check(sd)
    assert explicit.settings()["t"] == 300 and "t_default" not in explicit.settings()  # never silently changed


def test_guidance_is_classifier_free_guidance_inside_the_noise_prediction(sd, batch):
    images, captions, _ = batch
    x0 = sd.encode(to_model_range(images))
    guided = sd.predict_noise(x0, 100, sd.conditions({"caption": captions}, 3.0))
    t = torch.full((3,), 100)
    conditional = sd.denoiser(x0, t, encoder_hidden_states=sd.embed(captions)).sample
    unconditional = sd.denoiser(x0, t, encoder_hidden_states=sd.embed([""] * 3)).sample
    torch.testing.assert_close(guided, unconditional + 3.0 * (conditional - unconditional), rtol=1e-4, atol=1e-5)
    with pytest.raises(MiaError, match="guidance_scale must be a number ≥ 1"):
        sd.conditions({"caption": captions}, 0.5)


def test_latent_evaluation_sets_stream_from_the_files(sd, captioned):
    data = {"members": str(captioned[0]), "nonmembers": str(captioned[1])}
    streamed = evaluation_set_for(data, sd.image_shape, None, "tiny", "text", stream=True)
    assert isinstance(streamed.source, StreamedImages) and streamed.image_shape == (3, 16, 16)
    in_memory = from_folders(data["members"], data["nonmembers"], 16, 3)
    assert isinstance(in_memory.source, InMemoryImages)
    assert streamed.ids == in_memory.ids and torch.equal(streamed[4]["image"], in_memory[4]["image"])
    assert torch.equal(streamed.stack([4, 0]), in_memory.stack([4, 0]))  # decoded on demand, the same pixels
    assert torch.equal(streamed.stack(), in_memory.stack())
    captions = json.loads((captioned[0] / "metadata.jsonl").read_text().splitlines()[4])
    assert streamed[4]["caption"] == captions["text"] and streamed[4]["label"] == 1
    again = evaluation_set_for(data, sd.image_shape, None, "tiny", "text", stream=True)
    assert again.digest == streamed.digest
    empty = evaluation_set_for({**data, "caption": "none"}, sd.image_shape, None, "tiny", "text", stream=True)
    assert empty[0]["caption"] == "" and empty.digest != streamed.digest  # captions key the prediction cache
    assert streamed.first(2).ids == [*streamed.ids[:2], *streamed.ids[10:12]]


@pytest.mark.parametrize("scheduler", ["DDIMScheduler", "EulerDiscreteScheduler", "DDPMScheduler"])
def test_ddpm_family_schedulers_give_their_own_alphas(tmp_path: Path, scheduler: str):
    import diffusers

    folder = build_tiny_sd(tmp_path / "sd", scheduler=scheduler)
    target = load(folder)
    expected = getattr(diffusers, scheduler).from_pretrained(folder, subfolder="scheduler").alphas_cumprod
    torch.testing.assert_close(target.alphas_cumprod, expected.double())


def test_variance_exploding_and_unnamed_schedulers_are_refused(tmp_path: Path):
    folder = build_tiny_pixel(tmp_path / "ve", ve=True)
    with pytest.raises(MiaError, match="ScoreSdeVeScheduler, which is not a DDPM-family"):
        load(folder)
    pixel = build_tiny_pixel(tmp_path / "ddpm")
    config_file = pixel / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "_class_name": "FlowMatchEulerDiscreteScheduler"}))
    with pytest.raises(MiaError, match="not a DDPM-family"):
        load(pixel)
    config.pop("_class_name")
    config_file.write_text(json.dumps(config))
    index = json.loads((pixel / "model_index.json").read_text())
    (pixel / "model_index.json").write_text(json.dumps({**index, "scheduler": [None, None]}))
    with pytest.raises(MiaError, match="does not name its scheduler class"):
        load(pixel)


def test_class_conditional_models_take_the_class_folder_as_condition(tmp_path: Path):
    folder = build_tiny_pixel(tmp_path / "cc", num_class_embeds=3)
    write_labelled(tmp_path / "members", [0, 1, 2], seed=0)
    write_labelled(tmp_path / "nonmembers", [2, 1, 0], seed=1)
    target = load(folder)
    assert isinstance(target, ClassConditionalTarget) and target.conditioning == "class"
    data = {"members": str(tmp_path / "members"), "nonmembers": str(tmp_path / "nonmembers")}
    evalset = evaluation_set_for(data, target.image_shape, None, "cc", "class")
    assert [evalset[i]["class_label"] for i in range(6)] == [0, 1, 2, 0, 1, 2]  # ids in path order
    images = torch.stack([evalset[i]["image"] for i in range(3)])
    x0, keys = to_model_range(images), evalset.keys[:3]
    scores = LossAttack().scores_of(target, x0, SampleNoise(keys, 0), target.conditions({"class_label": [0, 1, 2]}))
    relabelled = LossAttack().scores_of(target, x0, SampleNoise(keys, 0), target.conditions({"class_label": [1, 1, 2]}))
    assert scores[0] != relabelled[0] and torch.equal(scores[1:], relabelled[1:])
    with pytest.raises(MiaError, match=r"set target\.null_class"):
        target.conditions({"class_label": [0, 1, 2]}, 2.0)
    guided = load(folder, null_class=2)
    guided.reset_queries()
    LossAttack().scores_of(guided, x0, SampleNoise(keys, 0), guided.conditions({"class_label": [0, 1, 2]}, 2.0))
    assert guided.queries == 2 * 3
    write_labelled(tmp_path / "members" / "extra", [0], seed=2)  # members/extra/0/000.png has a label ...
    write_labelled(tmp_path / "loose", [0], seed=99)  # an image of its own (a copy would be a duplicate)
    (tmp_path / "loose" / "0" / "000.png").rename(tmp_path / "members" / "loose.png")
    with pytest.raises(MiaError, match=r"1 of 8 images have no class label \(first: members/loose\.png"):
        evaluation_set_for(data, target.image_shape, None, "cc", "class")


def expect_one_line(overrides: list[str], out: Path, message: str) -> None:
    with pytest.raises(MiaError, match=message) as caught:
        run(compose_config("attack", [*QUICK, *overrides], out))
    assert "\n" not in str(caught.value)


def test_bad_text_to_image_input_gets_one_line(tiny_sd: Path, captioned, tmp_path: Path):
    members, nonmembers = captioned
    folders = [f"target.path={tiny_sd}", f"data.members={members}", f"data.nonmembers={nonmembers}"]
    broken = tmp_path / "broken"
    shutil.copytree(tiny_sd, broken)
    shutil.rmtree(broken / "tokenizer")
    expect_one_line([f"target.path={broken}", *folders[1:]], tmp_path, "tokenizer/ is missing")
    index = json.loads((broken / "model_index.json").read_text())
    (broken / "model_index.json").write_text(json.dumps({**index, "text_encoder": [None, None]}))
    expect_one_line([f"target.path={broken}", *folders[1:]], tmp_path, "has no text_encoder")
    partial = tmp_path / "partial"
    shutil.copytree(members, partial)
    rows = (partial / "metadata.jsonl").read_text().splitlines()
    (partial / "metadata.jsonl").write_text("\n".join(rows[3:]) + "\n")
    expect_one_line([*folders[:1], f"data.members={partial}", folders[2]], tmp_path,
                    "3 of 10 images in .* have no caption in metadata.jsonl .first: 000.png")
    (partial / "metadata.jsonl").write_text(json.dumps({"file_name": "elsewhere/1.png", "text": "a dog"}) + "\n")
    expect_one_line([*folders[:1], f"data.members={partial}", folders[2]], tmp_path, "names no image in")
    (partial / "metadata.jsonl").unlink()
    expect_one_line([*folders[:1], f"data.members={partial}", folders[2]], tmp_path, "or pass data.caption=none")
    expect_one_line([*folders, "attack.guidance_scale=0.5"], tmp_path, "guidance_scale must be a number ≥ 1")
    expect_one_line([*folders, "data.image_size=15"], tmp_path, "multiples of 2")
    expect_one_line([*folders, "target.latent=median"], tmp_path, "target.latent must be mean or sample")


def test_unconditional_targets_refuse_text_knobs(pixel: Path, tmp_path: Path):
    folders = [f"target.path={pixel}", f"data.members={tmp_path}", f"data.nonmembers={tmp_path}"]
    expect_one_line([*folders, "attack=clid"], tmp_path, "needs a text-conditional target; ddpm is unconditional")
    expect_one_line([*folders, "attack.guidance_scale=2"], tmp_path, "is unconditional")
    expect_one_line([*folders, "data.caption=none"], tmp_path, "data.caption applies to")
    expect_one_line([*folders, "target.latent=sample"], tmp_path, "has no vae")


def test_a_caption_csv_works_like_the_jsonl(sd, tmp_path: Path):
    captions = write_captioned(tmp_path / "members", 3, seed=5, csv=True)
    write_captioned(tmp_path / "nonmembers", 3, seed=6)
    data = {"members": str(tmp_path / "members"), "nonmembers": str(tmp_path / "nonmembers")}
    evalset = evaluation_set_for(data, sd.image_shape, None, "tiny", "text", stream=True)
    assert [evalset[i]["caption"] for i in range(3)] == list(captions.values())


def test_a_captioned_split_streams_and_its_captions_are_fingerprinted(tiny_sd: Path, captioned, tmp_path: Path):
    from mia.data.pools import FolderPool
    from mia.data.split import Split, fingerprint

    pool_root, target = captioned[0], tmp_path / "target"
    shutil.copytree(tiny_sd, target)
    ids = FolderPool(str(pool_root), 16).ids
    captions = {i: f"caption of {i[:3]}" for i in ids}
    raws = [(pool_root / i).read_bytes() for i in ids]
    dataset = {"name": "folder", "root": str(pool_root), "image_size": 16, "channels": 3,
               "fingerprint": fingerprint(ids, raws, [captions[i] for i in ids]), "pool_size": len(ids)}
    Split(ids[:5], ids[5:], seed=0, dataset=dataset, captions=captions).save(target / "split.json")
    metrics = run(compose_config("attack", [f"target.path={target}", "attack=loss", *QUICK], tmp_path / "run"))
    assert metrics["n_members"] == 5 and metrics["queries_per_sample"] == 1
    assert metrics["encoder_passes_per_sample"] == 1 and metrics["text_encoder_passes_per_sample"] == 1
    # Through the cache: the run that fills it and the hit report the same VAE and text-encoder passes.
    cached = [f"target.path={target}", "attack=loss", *QUICK[:-1], f"cache.dir={tmp_path}/cache"]
    made = run(compose_config("attack", cached, tmp_path / "made"))
    hit = run(compose_config("attack", cached, tmp_path / "hit"))
    assert made["queries_per_sample_this_run"] == 1 and hit["queries_per_sample_this_run"] == 0
    for counts in (made, hit):
        assert counts["encoder_passes_per_sample"] == 1 and counts["text_encoder_passes_per_sample"] == 1
    expect_one_line([f"target.path={target}", "data.caption=text"], tmp_path, "records the captions it was trained")
    tampered = {**captions, ids[0]: "another caption"}
    Split(ids[:5], ids[5:], seed=0, dataset=dataset, captions=tampered).save(target / "split.json")
    expect_one_line([f"target.path={target}"], tmp_path, "fingerprint mismatch")
    uncaptioned = {**dataset, "fingerprint": fingerprint(ids, raws)}
    Split(ids[:5], ids[5:], seed=0, dataset=uncaptioned).save(target / "split.json")
    expect_one_line([f"target.path={target}"], tmp_path, "records no captions")
