"""Captioned data and the text-to-image target: captions read and refused, recorded in the split, trained on,
exported as a folder StableDiffusionPipeline loads and samples from, and fine-tuned from such a folder."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
import torch
from conftest import compose_config, write_images
from diffusers import StableDiffusionPipeline

from mia.data.captions import CaptionedFolderPool, read_captions
from mia.data.duplicates import exclusion
from mia.data.images import load_split_images
from mia.data.split import Split, fingerprint
from mia.errors import MiaError
from train_targets.tokenizer import clip_tokenizer
from train_targets.train import train

IMAGES = 40
TINY_T2I = [
    "data=captioned_folder",
    "data.image_size=16",
    "target=text_to_image_tiny",
    "split.members=8",
    "split.nonmembers=8",
    "batch_size=8",
    "probe_size=8",
    "logger=none",
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.enable_progress_bar=false",
    "target.warmup_steps=1",
    "target.autoencoder.steps=2",
]


def _captions(i: int) -> list[str]:
    return [f"photo {i} of a {'red' if i % 2 else 'blue'} thing, take {k}" for k in range(3)]


def captioned_folder(root: Path, count: int = IMAGES, skip: int | None = None, prefix: str = "images/") -> Path:
    """root/images/NNNN.png and root/metadata.jsonl (text = caption #0, captions = three), like Flickr8k."""
    write_images(root / "images", count, (16, 16), seed=0)
    rows = [{"file_name": f"{prefix}{i:04d}.png", "text": _captions(i)[0], "captions": _captions(i)}
            for i in range(count) if i != skip]
    (root / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


@pytest.fixture(scope="module")
def t2i_target(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """(data folder, export folder, training summary) of a tiny text-to-image target."""
    tmp = tmp_path_factory.mktemp("t2i")
    data = captioned_folder(tmp / "data")
    info = train(compose_config("train", [*TINY_T2I, f"data.root={data}"], tmp / "run"))
    return data, tmp / "run" / "target", info


# --- reading captions --------------------------------------------------------------------------------------


def test_read_captions_follows_the_imagefolder_convention(tmp_path: Path):
    folder = captioned_folder(tmp_path / "jsonl", count=4)
    assert read_captions(folder) == {f"images/{i:04d}.png": _captions(i)[0] for i in range(4)}
    assert read_captions(folder, "captions.2")["images/0003.png"] == _captions(3)[2]
    csv_folder = tmp_path / "csv"
    write_images(csv_folder, 3, (8, 8), seed=1)
    with open(csv_folder / "metadata.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "text"])
        writer.writerows([[f"{i:04d}.png", f"caption, {i}"] for i in range(3)])
    assert read_captions(csv_folder) == {f"{i:04d}.png": f"caption, {i}" for i in range(3)}


@pytest.mark.parametrize(
    ("make", "column", "message"),
    [
        (lambda root: captioned_folder(root, count=6, skip=3), "text",
         r"1 of 6 images .* have no caption .*first: images/0003.png"),
        (lambda root: captioned_folder(root, count=3, prefix="pics/"), "text", "names no image .*pics/0000.png"),
        (lambda root: captioned_folder(root, count=3), "captions", "holds a list of captions"),
        (lambda root: captioned_folder(root, count=3), "captions.7", "no caption #7"),
        (lambda root: captioned_folder(root, count=3), "title", "no 'title' column"),
        (lambda root: write_images(root, 2, (8, 8), seed=0), "text", "has no caption file"),
    ],
)
def test_bad_caption_files_are_refused_with_what_to_do(tmp_path: Path, make, column, message):
    make(tmp_path / "data")
    with pytest.raises(MiaError, match=message):
        read_captions(tmp_path / "data", column)


def test_a_name_given_twice_is_refused(tmp_path: Path):
    folder = captioned_folder(tmp_path, count=2)
    with open(folder / "metadata.jsonl", "a") as handle:
        handle.write(json.dumps({"file_name": "images/0000.png", "text": "again"}) + "\n")
    with pytest.raises(MiaError, match="a second time"):
        read_captions(folder)


def test_the_tokenizer_is_clips():
    tokenizer = clip_tokenizer(8)
    assert len(tokenizer) == 49408 and tokenizer.eos_token_id == 49407 and tokenizer.pad_token_id == 49407
    # CLIP's (and SD v1's) ids: <|startoftext|> a dog . <|endoftext|>, padded with <|endoftext|>
    ids = tokenizer("A  dog.", padding="max_length", max_length=8).input_ids
    assert ids == [49406, 320, 1929, 269, 49407, 49407, 49407, 49407]


# --- the split record --------------------------------------------------------------------------------------


def test_the_fingerprint_covers_captions_and_is_unchanged_without_them():
    ids, raws = ["a.png", "b.png"], [b"one", b"two"]
    old = hashlib.sha256()
    for sample_id, raw in zip(ids, raws, strict=True):
        old.update(sample_id.encode() + b"\0" + hashlib.sha256(raw).digest())
    assert fingerprint(ids, raws) == "sha256:" + old.hexdigest()  # old split.json files still verify
    with_captions = fingerprint(ids, raws, ["a dog", "a cat"])
    assert with_captions != fingerprint(ids, raws)
    assert with_captions != fingerprint(ids, raws, ["a dog", "a cat ."])


def test_split_records_round_trip_with_and_without_captions(tmp_path: Path):
    captioned = Split(members=["a"], nonmembers=["b"], seed=0, captions={"a": "x", "b": "y"})
    captioned.save(tmp_path / "captioned.json")
    assert Split.load(tmp_path / "captioned.json") == captioned
    (tmp_path / "old.json").write_text('{"format": "mia-split/1", "seed": 0, "members": ["1"], "nonmembers": ["2"]}')
    assert Split.load(tmp_path / "old.json").captions is None  # no captions = unconditional
    with pytest.raises(MiaError, match="captions do not match"):
        Split(members=["a"], nonmembers=["b"], seed=0, captions={"a": "x"}).check()


def test_a_changed_caption_changes_the_split_fingerprint(tmp_path: Path):
    folder = captioned_folder(tmp_path, count=6)
    before = load_split_images(CaptionedFolderPool(str(folder), 16), [0, 1], [2, 3])[2]
    text = (folder / "metadata.jsonl").read_text().replace("photo 2 of", "photo two of")
    (folder / "metadata.jsonl").write_text(text)
    after = load_split_images(CaptionedFolderPool(str(folder), 16), [0, 1], [2, 3])[2]
    assert before != after


# --- training and export -----------------------------------------------------------------------------------


def test_export_loads_in_stable_diffusion_and_samples_with_a_prompt(t2i_target):
    _, target, _ = t2i_target
    pipeline = StableDiffusionPipeline.from_pretrained(
        target, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipeline.set_progress_bar_config(disable=True)
    images = pipeline(["a red thing", "a blue thing"], num_inference_steps=2, guidance_scale=2.0,
                      generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (2, 16, 16, 3) and images.min() >= 0.0 and images.max() <= 1.0
    scheduler = pipeline.scheduler.config
    assert (scheduler.beta_schedule, scheduler.beta_start, scheduler.beta_end) == ("scaled_linear", 0.00085, 0.012)
    assert pipeline.vae.config.latent_channels == 4 and pipeline.unet.config.sample_size == 4
    assert pipeline.vae.config.scaling_factor != 0.18215  # measured on the autoencoder's training images


def test_the_split_records_the_autoencoders_images_and_exclude_keeps_them_out(t2i_target):
    data, target, _ = t2i_target
    split = Split.load(target / "split.json")
    trained_on = split.also_trained_on["autoencoder"]
    # 40 images, 16 in the split: the autoencoder trained on the other 24 (fewer than target.autoencoder.images).
    assert len(trained_on) == len(set(trained_on)) == IMAGES - 16
    assert not set(trained_on) & set(split.members + split.nonmembers)
    pool = CaptionedFolderPool(str(data), 16)
    excluded = exclusion([str(target / "split.json")], pool, {"name": split.dataset["name"], "root": str(data)})
    assert excluded.ids == set(trained_on) | set(split.members) | set(split.nonmembers) == set(pool.ids)


def test_the_split_records_every_caption_and_the_run(t2i_target):
    data, target, info = t2i_target
    split = Split.load(target / "split.json")
    truth = read_captions(data)
    assert split.captions == {i: truth[i] for i in split.members + split.nonmembers}
    assert split.dataset["name"] == "captioned_folder" and split.dataset["caption"] == "text"
    pool = CaptionedFolderPool(str(data), 16)
    position = {sample_id: i for i, sample_id in enumerate(pool.ids)}
    recomputed = load_split_images(pool, [position[i] for i in split.members],
                                   [position[i] for i in split.nonmembers])[2]
    assert recomputed == split.dataset["fingerprint"]
    assert info["steps"] == 4 and {"val/loss_members", "val/loss_nonmembers", "val/loss_gap"} <= set(info["metrics"])
    assert json.loads((target / "training.json").read_text())["members"] == 8


@pytest.mark.parametrize("key", ["init_from", pytest.param("vae_from", marks=pytest.mark.slow)])
def test_a_previous_folder_gives_everything_or_the_autoencoder(t2i_target, tmp_path: Path, key: str):
    data, target, _ = t2i_target
    train(compose_config("train", [*TINY_T2I, f"data.root={data}", f"target.{key}={target}", "trainer.max_steps=2",
                                   "target.unet.block_out_channels=[8,8]"], tmp_path / "tuned"))
    source = StableDiffusionPipeline.from_pretrained(target, safety_checker=None)
    tuned = StableDiffusionPipeline.from_pretrained(tmp_path / "tuned" / "target", safety_checker=None)
    source_vae, tuned_vae = source.vae.state_dict(), tuned.vae.state_dict()
    assert all(torch.equal(source_vae[k], tuned_vae[k]) for k in source_vae)  # taken as is, not retrained
    if key == "init_from":  # fine-tuned: the folder's sizes, its weights trained further
        assert tuned.unet.config.block_out_channels == source.unet.config.block_out_channels
        source_unet, tuned_unet = source.unet.state_dict(), tuned.unet.state_dict()
        assert any(not torch.equal(source_unet[k], tuned_unet[k]) for k in source_unet)
    else:  # a new UNet of the configured size on the old autoencoder
        assert list(tuned.unet.config.block_out_channels) == [8, 8]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.image_size=18"], "VAE downsamples by 4, so it cannot encode 18x18"),
        (["++target.unet.cross_attention_dim=8"], "attends to 8-wide text features"),
        (["data=digits", "data.image_size=16", "data.channels=3"], "trains on captioned data"),
        (["split.members=20", "split.nonmembers=20"], "none is left to train the autoencoder"),
        (["target.init_from={tmp}/nowhere"], "lacks unet/, vae/"),
        (["data.caption=captions.9"], "no caption #9"),
        (["data.root={tmp}/partial"], r"1 of 40 images .* have no caption .*first: images/0005.png"),
        (["data.root={tmp}/unmatched"], "names no image"),
    ],
)
def test_bad_input_stops_before_training(tmp_path: Path, overrides, message):
    data = captioned_folder(tmp_path / "data")
    captioned_folder(tmp_path / "partial", skip=5)
    captioned_folder(tmp_path / "unmatched", prefix="pics/")
    root = [] if "data=digits" in overrides else [f"data.root={data}"]
    cfg = compose_config("train", [*TINY_T2I, *root, *(o.format(tmp=tmp_path) for o in overrides)], tmp_path / "run")
    with pytest.raises(MiaError, match=message):
        train(cfg)
    assert not (tmp_path / "run" / "target").exists()


@pytest.mark.slow
def test_resume_keeps_the_autoencoder_of_the_checkpoint(t2i_target, tmp_path: Path):
    data = t2i_target[0]
    common = [*TINY_T2I, f"data.root={data}", "callbacks.model_checkpoint.every_n_train_steps=2"]
    train(compose_config("train", [*common, "trainer.max_steps=2"], tmp_path / "first"))
    checkpoint = tmp_path / "first" / "checkpoints" / "last.ckpt"
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)["autoencoder"]["state_dict"]
    # Another autoencoder seed would train another VAE; resuming must not train one at all.
    info = train(compose_config("train", [*common, "trainer.max_steps=4", f"ckpt_path={checkpoint}",
                                          "target.autoencoder.seed=1"], tmp_path / "second"))
    assert info["steps"] == 4
    resumed = StableDiffusionPipeline.from_pretrained(tmp_path / "second" / "target", safety_checker=None).vae
    assert all(torch.equal(saved[k], v) for k, v in resumed.state_dict().items())
    measured = torch.load(checkpoint, map_location="cpu", weights_only=False)["autoencoder"]["config"]["scaling_factor"]
    assert resumed.config.scaling_factor == measured != 0.18215


def test_a_checkpoints_autoencoder_keeps_its_measured_scaling_factor():
    from diffusers import AutoencoderKL

    from train_targets.text_to_image import autoencoder_from

    vae = AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=8)
    vae.register_to_config(scaling_factor=0.5)  # as on_fit_start does once it has measured it
    checkpoint = {"config": dict(vae.config), "state_dict": vae.state_dict()}  # as on_save_checkpoint keeps it
    assert AutoencoderKL.from_config(checkpoint["config"]).config.scaling_factor == 0.18215  # diffusers' reset
    restored = autoencoder_from(checkpoint["config"], checkpoint["state_dict"])
    assert restored.config.scaling_factor == 0.5 and not restored.training
    assert all(torch.equal(v, restored.state_dict()[k]) for k, v in vae.state_dict().items())


def test_mia_attack_on_the_trained_target_reads_its_captioned_split(t2i_target, tmp_path: Path):
    # The whole loop: the exported folder's split (captions fingerprinted with the images) verifies against
    # the data on disk, and every sample is attacked under its own recorded caption.
    from mia.runs.attack import run

    _, target, _ = t2i_target
    overrides = [f"target.path={target}", "attack=loss", "logger=none", "metrics.bootstrap=0",
                 "trainer.enable_progress_bar=false", f"cache.dir={tmp_path}/cache"]
    metrics = run(compose_config("attack", overrides, tmp_path))
    assert metrics["evaluation_set"]["labels_verified"] is True and metrics["conditioning"] == "text"
    assert metrics["n_members"] == 8 and metrics["n_nonmembers"] == 8
    assert metrics["encoder_passes_per_sample"] == 1


def test_preview_grids_are_drawn_with_the_exported_ema_weights(t2i_target, tmp_path: Path):
    # The last validation's grid (step 4) is what the exported pipeline draws for the same prompts and seed.
    import numpy as np
    from PIL import Image
    from torchvision.utils import save_image

    from train_targets.denoising import preview_grid

    _, target, _ = t2i_target
    split = Split.load(target / "split.json")
    pipeline = StableDiffusionPipeline.from_pretrained(target, safety_checker=None)
    pipeline.set_progress_bar_config(disable=True)
    hparams = json.loads((target / "training.json").read_text())["config"]["target"]
    prompts = [split.captions[i] for i in split.members[: hparams["sample_count"]]]
    images = pipeline(prompts, num_inference_steps=hparams["sample_steps"], guidance_scale=hparams["sample_guidance"],
                      generator=torch.Generator("cpu").manual_seed(0), output_type="pt").images
    save_image(preview_grid(images.float()), tmp_path / "regenerated.png")
    saved = np.asarray(Image.open(target.parent / "samples" / "samples_step0000004.png"))
    assert np.array_equal(saved, np.asarray(Image.open(tmp_path / "regenerated.png")))


def test_a_fine_tune_carries_what_its_base_trained_on_and_never_evaluates_on_it(t2i_target, tmp_path: Path):
    from train_targets.inherited import inherited_training

    data, base, _ = t2i_target
    base_split = Split.load(base / "split.json")
    assert inherited_training({"base": str(base)}, {"name": "captioned_folder"}) == {
        "base": base_split.members, "autoencoder": base_split.also_trained_on["autoencoder"]}
    assert inherited_training({"autoencoder": str(base)}, {"name": "captioned_folder"}) == {
        "autoencoder": base_split.also_trained_on["autoencoder"]}
    assert inherited_training({"base": str(base)}, {"name": "flickr8k"}) == {}  # another dataset's ids
    assert inherited_training({"base": str(tmp_path)}, {"name": "captioned_folder"}) == {}  # no split.json
    # The base's members as the fine-tune's non-members: their label would be wrong, refused before training.
    tune = [*TINY_T2I, f"data.root={data}", f"target.init_from={base}", "trainer.max_steps=2",
            f"export_dir={tmp_path}/tuned"]
    with pytest.raises(MiaError, match=r"non-members \(e\.g\. .*\) were trained on by the base of .*split\.exclude="):
        train(compose_config("train", [*tune, "split.seed=3"], tmp_path / "refused"))
    assert not (tmp_path / "tuned").exists()
    # Drawn without the base's samples (from a folder with 16 more photos): its split.json carries the base's on.
    more = captioned_folder(tmp_path / "more", count=IMAGES + 16)
    train(compose_config("train", [*tune, f"data.root={more}", "split.members=4", "split.nonmembers=4",
                                   f"split.exclude=[{base}/split.json]"], tmp_path / "run"))
    tuned = Split.load(tmp_path / "tuned" / "split.json")
    assert tuned.also_trained_on["base"] == base_split.members
    assert tuned.also_trained_on["autoencoder"] == base_split.also_trained_on["autoencoder"]
