"""A LoRA adapter on a Stable Diffusion folder as the target (``target.lora``): any diffusers-format adapter.

The base is loaded as any latent pipeline (mia.targets.latent); the adapter goes on through diffusers' own
API (``StableDiffusionPipeline.load_lora_weights`` on a pipeline made of the target's parts), so every format
diffusers reads is read here, and every module the adapter names must exist in the base: an adapter applied
in part is a different model, refused. With ``merge`` the adapter is fused into the weights
(``fuse_lora(lora_scale=...)``, then its layers are removed): the attacks then query plain layers, as fast as
the base; without it the adapter layers stay live at ``set_adapters(..., scale)``. The two agree to float
rounding (docs/method.md, "LoRA fine-tunes").

What labels the samples is the adapter's own ``split.json`` (beside the weights file), never the base's: a base
trained by mia-train has a split of its own, which says nothing about the fine-tune. ``training.json`` beside
the adapter (mia-train's LoRA export) records the base's fingerprint; another base is refused, and an adapter
without that record is attacked with ``base_checked: false`` in metrics.json (``target_lora``).
"""

from __future__ import annotations

import json
import logging
import math
import pickle
from pathlib import Path
from typing import Any

from mia.data.split import Split
from mia.errors import MiaError
from mia.targets.identity import file_digest
from mia.targets.latent import LatentTextTarget

log = logging.getLogger(__name__)

WEIGHT_NAMES = ("pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin")  # diffusers' LORA_WEIGHT_NAME(_SAFE)
ADAPTER_NAME = "mia"  # the adapter's name inside the pipeline (diffusers would call it default_0)
COMPONENTS = ("unet", "text_encoder")  # the StableDiffusionPipeline parts an adapter may address


def check_scale(scale: Any, merge: Any) -> float:
    """``target.lora_scale`` as a float (any finite number; 0 = the base) and ``target.lora_merge`` a bool."""
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
        raise MiaError(f"target.lora_scale must be a finite number (1.0 = the adapter as trained), got {scale!r}")
    if not isinstance(merge, bool):
        raise MiaError(f"target.lora_merge must be true or false, got {merge!r}")
    return float(scale)


def adapter_file(path: str | Path) -> Path:
    """The adapter's weights file: ``path`` itself, or the diffusers-named file in the folder ``path``."""
    given = Path(path).expanduser()
    if given.is_file():
        return given
    if not given.is_dir():
        raise MiaError(f"target.lora={path} does not exist; pass the adapter's folder or its "
                       f"{WEIGHT_NAMES[0]} file")
    for name in WEIGHT_NAMES:
        if (given / name).is_file():
            return given / name
    others = sorted(p.name for p in given.glob("*.safetensors"))
    if len(others) == 1:
        return given / others[0]
    found = f" (it holds {', '.join(others)}; pass one as target.lora=<file>)" if others else ""
    raise MiaError(f"{given} holds no LoRA weights ({' or '.join(WEIGHT_NAMES)}){found}")


def adapter_split(file: Path) -> Split | None:
    """The split that labels the fine-tune's samples: ``split.json`` beside the adapter, or None."""
    path = file.parent / "split.json"
    return Split.load(path) if path.is_file() else None


def trained_base(file: Path) -> dict[str, Any] | None:
    """The base recorded by mia-train beside the adapter (``training.json``'s ``lora.base``), or None."""
    path = file.parent / "training.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise MiaError(f"{path} is not valid JSON ({err}); restore it, or move the adapter away from it") from err
    base = (record.get("lora") or {}).get("base") if isinstance(record, dict) else None
    return base if isinstance(base, dict) and base.get("fingerprint") else None


def check_base(file: Path, base: Path, fingerprint: str) -> dict[str, Any]:
    """Refuse an adapter trained on another base; say so when nothing records what it was trained on."""
    recorded = trained_base(file)
    if recorded is None:
        log.warning("the LoRA adapter %s records no base model (no mia-train training.json beside it): whether it was "
                    "trained on %s cannot be checked (metrics.json: target_lora.base_checked = false)", file, base)
        return {"base_checked": False,
                "base_check": "not checked: no training.json with the base's fingerprint beside the adapter"}
    if recorded["fingerprint"] != fingerprint:
        raise MiaError(
            f"the LoRA adapter {file} was trained on another base model ({recorded.get('path')}, "
            f"{recorded['fingerprint'][:19]}…) than target.path={base} ({fingerprint[:19]}…); pass the base it was "
            "trained on as target.path"
        )
    return {"base_checked": True, "base_check": f"training.json's base fingerprint matches {base}"}


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _peft_keys(component: str, state: dict[str, Any]) -> set[str]:
    """The adapter's tensors for one component, named as peft names them once loaded (adapter name left out)."""
    from diffusers.utils import (
        convert_state_dict_to_diffusers,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )

    own = {k[len(component) + 1:]: v for k, v in state.items() if k.startswith(f"{component}.")}
    if not own:
        return set()
    if component == "unet":
        return set(convert_unet_state_dict_to_peft(own))
    return set(convert_state_dict_to_peft(convert_state_dict_to_diffusers(own)))  # as diffusers loads text encoders


def _loaded_keys(module: Any) -> set[str]:
    marker = f".{ADAPTER_NAME}."
    return {name.replace(marker, ".") for name, _ in module.named_parameters() if marker in name}


def _pipeline(target: LatentTextTarget) -> Any:
    """A StableDiffusionPipeline around the target's own parts (so the adapter lands in the modules attacked)."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    # The scheduler is a placeholder (the target keeps its own ᾱ); these settings silence the pipeline's checks.
    return StableDiffusionPipeline(vae=target.vae, text_encoder=target.text_encoder, tokenizer=target.tokenizer,
                                   unet=target.denoiser, scheduler=DDPMScheduler(steps_offset=1, clip_sample=False),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def _read(file: Path) -> dict[str, Any]:
    from diffusers import StableDiffusionPipeline

    try:
        state, _, _ = StableDiffusionPipeline.lora_state_dict(str(file.parent), weight_name=file.name,
                                                               return_lora_metadata=True, local_files_only=True)
    except pickle.UnpicklingError as err:
        raise MiaError(f"{file} holds Python objects that would run code when loaded (it does not load with "
                       "torch.load(weights_only=True)); mia refuses it. Ask for the .safetensors file") from err
    except (OSError, ValueError, KeyError, RuntimeError, EOFError) as err:
        raise MiaError(f"{file} is not a diffusers LoRA adapter mia can read: {_first_line(err)}") from err
    return state


def apply_lora(target: LatentTextTarget, base: Path, adapter: str | Path, scale: float, merge: bool) -> None:
    """Load ``adapter`` onto ``target`` (a Stable Diffusion folder's target) at ``scale``, merged or live."""
    file = adapter_file(adapter)
    check = check_base(file, base, target.fingerprint or "")
    state = _read(file)
    expected = {component: _peft_keys(component, state) for component in COMPONENTS}
    foreign = sorted({key.split(".", 1)[0] for key in state if key.split(".", 1)[0] not in COMPONENTS})
    if foreign:
        raise MiaError(f"the LoRA adapter {file} addresses {', '.join(foreign)}, which a StableDiffusionPipeline does "
                       "not have (an adapter of another model family, e.g. SDXL's text_encoder_2); mia cannot apply it")
    pipeline = _pipeline(target)
    # diffusers warns "No LoRA keys associated to CLIPTextModel" for every UNet-only adapter (the usual kind):
    # not a problem here, where what loaded is checked against the file below.
    quiet = logging.getLogger("diffusers.loaders.lora_base")
    level = quiet.level
    if not expected["text_encoder"]:
        quiet.setLevel(logging.ERROR)
    try:
        pipeline.load_lora_weights(str(file.parent), weight_name=file.name, adapter_name=ADAPTER_NAME,
                                   local_files_only=True)
    except (ValueError, RuntimeError, KeyError) as err:
        if "not found in the base model" in str(err):  # peft, when no module the adapter names exists
            example = min(f"{c}.{key}" for c in COMPONENTS for key in expected[c])
            raise MiaError(f"the LoRA adapter {file} matches no module of the base model {base} (e.g. {example}); "
                           "pass the base it was trained on as target.path") from err
        raise MiaError(f"the LoRA adapter {file} does not fit the base model {base} ({_first_line(err)[:200]}); "
                       "pass the base it was trained on as target.path") from err
    finally:
        quiet.setLevel(level)
    loaded = {"unet": _loaded_keys(target.denoiser), "text_encoder": _loaded_keys(target.text_encoder)}
    missing = sorted(f"{c}.{key}" for c in COMPONENTS for key in expected[c] - loaded[c])
    total = sum(len(keys) for keys in expected.values())
    if len(missing) == total:
        raise MiaError(f"the LoRA adapter {file} matches no module of the base model {base} (e.g. {missing[0]}); "
                       "pass the base it was trained on as target.path")
    if missing:
        raise MiaError(f"{len(missing)} of the {total} tensors of the LoRA adapter {file} match no module of the base "
                       f"model {base} (e.g. {missing[0]}): applied in part it would be another model; pass the base it "
                       "was trained on as target.path")
    components = [c for c in COMPONENTS if expected[c]]
    if merge:
        # fuse_lora multiplies the layers' scaling (α/r) by lora_scale itself; a set_adapters(scale) before it
        # would apply the scale twice. Then the adapter layers are removed and only the fused weights stay.
        pipeline.fuse_lora(components=components, lora_scale=scale, adapter_names=[ADAPTER_NAME])
        pipeline.unload_lora_weights()
    else:
        pipeline.set_adapters([ADAPTER_NAME], adapter_weights=[scale])  # scaling = scale · α / r, layers live
    # peft adds its layers in training mode: an adapter trained with dropout would draw at every query.
    for module in (target.denoiser, target.text_encoder):
        module.eval().requires_grad_(False)
    target.identity = f"{target.identity}:lora=sha256:{file_digest(file)}:scale={scale!r}:merge={merge}"
    target.lora = {"adapter": str(file.resolve()), "scale": scale, "merged": merge, "components": components,
                   "tensors": total, "base": str(base.resolve()), "base_fingerprint": target.fingerprint, **check}
    log.info("LoRA adapter %s on %s (%s, scale %g, %d tensors)", file, base, "merged" if merge else "live", scale,
             total)
