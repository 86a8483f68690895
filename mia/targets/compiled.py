"""``compile=true``: the target's denoiser (and a latent target's VAE encoder) through ``torch.compile``.

Only the modules' ``forward`` is compiled, in place: the forward pre-hooks that count queries stay eager, so
a compiled target counts exactly what an eager one does. Shapes are static at first (``dynamic=None``): every
pass has ``target.micro_batch`` rows (batch invariance pads the last one), so one graph, specialised to that
size, serves the whole run; a pass of another size (``micro_batch=null``, GSA's one-sample passes) makes
dynamo recompile once with a dynamic batch size. ``fullgraph=True`` makes a forward that cannot be captured
whole (data-dependent Python, unsupported calls) fail at its first call, which is turned into one line naming
the module and the reason, instead of silently running half eager. The first call of each compiled forward
(compiling plus one forward) is timed apart: ``compile_seconds``.

Two options that bench/compile_options.py measured faster on CPU (docs/results.md, "Compiled denoisers"):
``freeze`` (inductor's freezing: the weights are folded into the graph as constants at the first no-grad
call, so the mia targets, whose weights never change after loading, lose nothing; passes that need
gradients, GSA's, are compiled without it) and ``channels_last`` (the module's weights and its 4-D inputs
in NHWC, the layout the CPU and GPU convolution kernels prefer).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mia.errors import MiaError
from mia.targets.base import DiffusionTarget

log = logging.getLogger(__name__)

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class CompiledForward:
    """A module's forward through ``torch.compile``; the first call's wall time is its compile time."""

    def __init__(self, module: nn.Module, what: str, mode: str, freeze: bool = False,
                 channels_last: bool = False) -> None:
        self.what = what
        self.channels_last = channels_last
        if channels_last:
            module.to(memory_format=torch.channels_last)
        # ``mode`` and ``options`` cannot both be given to torch.compile: the mode's options, plus freezing.
        options = {**torch._inductor.list_mode_options(mode), "freezing": freeze}
        self.compiled = torch.compile(module.forward, dynamic=None, fullgraph=True, options=options)
        self.seconds: float | None = None

    def _layout(self, value: Any) -> Any:
        if self.channels_last and isinstance(value, torch.Tensor) and value.dim() == 4:
            return value.contiguous(memory_format=torch.channels_last)
        return value

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        args = tuple(self._layout(a) for a in args)
        kwargs = {k: self._layout(v) for k, v in kwargs.items()}
        if self.seconds is not None:
            return self.compiled(*args, **kwargs)
        started = time.perf_counter()
        try:
            output = self.compiled(*args, **kwargs)
        except (torch._dynamo.exc.Unsupported, torch._dynamo.exc.UserError) as reason:
            first = str(reason).strip().splitlines()[0] if str(reason).strip() else type(reason).__name__
            raise MiaError(f"compile=true cannot capture the {self.what}'s forward as one graph ({first}); "
                           "run it eager with compile=false") from reason
        self.seconds = time.perf_counter() - started
        log.info("compiled the %s in %.1f s (its first batch)", self.what, self.seconds)
        return output


def check_compile_mode(mode: Any) -> None:
    """One line for a mode torch.compile does not have (mia-attack, mia-audit and mia-train alike)."""
    if mode not in MODES:
        raise MiaError(f"compile_mode must be one of {', '.join(MODES)}, got {mode!r}")


def compile_target(target: DiffusionTarget, mode: str = "default", freeze: bool = True,
                   channels_last: bool = True) -> Callable[[], dict[str, Any]]:
    """Compile ``target``'s denoiser (and VAE encoder) in place; returns what to record once it has run."""
    check_compile_mode(mode)
    if not any(True for _ in target.denoiser.parameters()):
        raise MiaError(f"compile=true applies to trained denoisers; {target.name}'s has no weights (the closed-form "
                       "memoriser runs in float64 and has nothing to fuse); run it with compile=false")
    parts = {"denoiser": target.denoiser}
    vae = getattr(target, "vae", None)
    if vae is not None:
        parts["VAE encoder"] = vae.encoder
    forwards = {}
    for what, module in parts.items():
        forwards[what] = CompiledForward(module, what, mode, freeze, channels_last)
        module.forward = forwards[what]

    def record() -> dict[str, Any]:
        seconds = {what: forward.seconds for what, forward in forwards.items()}
        return {"mode": mode, "freeze": freeze, "channels_last": channels_last, "compiled": list(forwards),
                "compile_seconds": seconds}

    return record
