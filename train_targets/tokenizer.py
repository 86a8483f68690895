"""CLIP's tokenizer, built offline from the BPE vocabulary that ships inside the open-clip-torch package.

``bpe_simple_vocab_16e6.txt.gz`` is the file OpenAI's CLIP (and so Stable Diffusion v1's tokenizer) was made
from. The vocabulary is rebuilt in CLIP's order (256 byte symbols, the same with ``</w>``, one token per
merge, then ``<|startoftext|>`` and ``<|endoftext|>``: 49,408 tokens), so the ids equal open_clip's and
SD v1's ``tokenizer/``. The tokenizer is saved into the exported pipeline's ``tokenizer/`` folder.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

from transformers import CLIPTokenizer

from mia.errors import MiaError

VOCAB_SIZE = 49408
_MERGES = VOCAB_SIZE - 256 - 256 - 2  # 48,894 merges: the rest of the vocabulary


def _bytes_to_unicode() -> list[str]:
    """GPT-2's and CLIP's printable stand-in for each of the 256 bytes, in CLIP's order."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in kept]
    return [chr(b) for b in kept] + [chr(256 + n) for n in range(len(shifted))]


def _vocabulary_file() -> bytes:
    # Found without importing open_clip, whose import (timm and all its models) takes seconds.
    spec = importlib.util.find_spec("open_clip")
    path = Path(spec.submodule_search_locations[0], "bpe_simple_vocab_16e6.txt.gz") if spec else None
    if path is None or not path.is_file():
        raise MiaError(
            "CLIP's BPE vocabulary (bpe_simple_vocab_16e6.txt.gz) comes with open-clip-torch, which is not "
            "installed; pip install open-clip-torch, or fine-tune a folder that has a tokenizer (target.init_from)"
        )
    return path.read_bytes()


@functools.cache
def _clip_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    lines = gzip.decompress(_vocabulary_file()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 1 + _MERGES]]  # line 0 is a version header
    symbols = _bytes_to_unicode()
    tokens = [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges)]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}, merges  # type: ignore[return-value]


def clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """CLIP's tokenizer (padding with ``<|endoftext|>``, as SD v1's), padding/truncating to ``model_max_length``."""
    vocab, merges = _clip_bpe()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=model_max_length)
