"""The LoRA text-to-image benchmark's section of docs/results.md, from the small files bench/lora.sh keeps.

bench/lora/base_training.json                    the base model's training record
bench/lora/seed<S>/<lora|full>/training.json     each fine-tune's
bench/lora/seed<S>/<lora|full>/<kind>_<attack>.json   each attack's metrics.json (reference-calibrated too)
bench/lora/seed<S>/<lora|full>/audit.json        mia-audit's result (dataset inference)
bench/lora/seed<S>/lora/sizes.json               the adapter's and the base's weight files, in bytes
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.strength_report import cell_of, read_json

ROOT = Path(__file__).resolve().parent / "lora"
ROWS = [("defaults", a) for a in ("na", "loss", "pia", "pian", "secmi", "sima", "clid_th", "clid_vec", "rediffuse",
                                  "reconstruction")] + \
       [("absolute", "na"), ("gradient", "gsa1"), ("gradient", "gsa2")] + \
       [("tuned", a) for a in ("na", "loss", "pia", "pian", "secmi", "sima", "rediffuse")]
LABEL = {"defaults": "{}", "tuned": "{} (tuned on calibration)", "absolute": "{}, injection=absolute σ=0.1",
         "gradient": "{} (per-sample gradients, fitted on calibration)"}
BLACK_BOX = ("rediffuse", "reconstruction")  # generation calls only (docs/method.md)


def _seeds() -> list[Path]:
    return sorted(p for p in ROOT.glob("seed*") if p.is_dir() and p.name[4:].isdigit())


def _runs(seeds: list[Path], kind: str, key: tuple[str, str]) -> list[dict[str, Any]]:
    files = [seed / kind / f"{key[0]}_{key[1]}.json" for seed in seeds]
    return [read_json(f) for f in files if f.exists()]


def _minutes(trainings: list[dict[str, Any]]) -> str:
    return ", ".join(f"{t['seconds'] / 60:.1f}" for t in trainings)


def _recipe(seeds: list[Path]) -> list[str]:
    base = read_json(ROOT / "base_training.json")
    lora = [read_json(s / "lora" / "training.json") for s in seeds if (s / "lora" / "training.json").exists()]
    full = [read_json(s / "full" / "training.json") for s in seeds if (s / "full" / "training.json").exists()]
    lines = [f"Base: `text_to_image_small` ({base['parameters'] / 1e6:.2f} M parameters, 32x32 photos, 8x8x4 "
             f"latents) on {base['members']:,} Flickr8k photos, {base['steps']:,} steps at batch "
             f"{base['batch_size']} = {base['epochs']:.0f} epochs per photo, {base['seconds'] / 60:.0f} minutes; its "
             f"probe loss is {base['metrics']['val/loss_members']:.4f} on its photos and "
             f"{base['metrics']['val/loss_nonmembers']:.4f} on photos it never saw (it generalises)."]
    if lora:
        first, config = lora[0], lora[0]["config"]["target"]
        sizes = read_json(seeds[0] / "lora" / "sizes.json") if (seeds[0] / "lora" / "sizes.json").exists() else None
        size = (f"; the adapter file holds {sizes['adapter_bytes'] / 1e3:.0f} kB against the base's "
                f"{sizes['base_weights_bytes'] / 1e6:.1f} MB of weights") if sizes else ""
        lines.append(
            f"LoRA fine-tunes (`target=lora`): rank {first['lora']['rank']}, α {first['lora']['alpha']}, on "
            f"{', '.join(first['lora']['target_modules'])} ({first['lora']['trained_parameters']:,} trained "
            f"parameters{size}), AdamW at {config['lr']:g}, {first['members']} members and {first['nonmembers']} "
            f"non-members per seed drawn with `split.exclude` of the base's photos and its autoencoder's, "
            f"{first['steps']:,} steps at batch {first['batch_size']} = {first['epochs']:.0f} epochs per member; "
            f"{_minutes(lora)} minutes.")
    if full:
        first = full[0]
        lines.append(f"Full fine-tunes (`target.init_from=<base>`, every UNet and text-encoder weight, AdamW at "
                     f"{first['config']['target']['lr']:g}) on the same splits, the same {first['steps']:,} steps; "
                     f"{_minutes(full)} minutes.")
    return lines


def _table(seeds: list[Path]) -> list[str]:
    out = ["| attack | queries / sample | LoRA: AUC | TPR@1%FPR | reference-calibrated AUC | TPR@1%FPR | "
           "the base's own AUC | full fine-tune: AUC | TPR@1%FPR | reference-calibrated AUC |",
           "|" + "---|" * 10]
    for key in ROWS:
        lora, full = _runs(seeds, "lora", key), _runs(seeds, "full", key)
        if not lora and not full:
            continue
        first = (lora or full)[0]
        queries = first["queries_per_sample"]
        passes = first.get("gradient_passes_per_sample")
        calls = first.get("generation_calls_per_sample")
        extra = f" + {passes} backward" if passes else (f" in {calls} generations" if calls else "")
        label = LABEL[key[0]].format(key[1]) + (" (black box)" if key[1] in BLACK_BOX else "")
        out.append(f"| {label} | {queries}{extra} | {cell_of(lora, 'auc')} | "
                   f"{cell_of(lora, 'tpr_at_1pct_fpr')} | {cell_of(lora, 'reference_calibrated/auc')} | "
                   f"{cell_of(lora, 'reference_calibrated/tpr_at_1pct_fpr')} | "
                   f"{cell_of(lora, 'reference_model/auc')} | "
                   f"{cell_of(full, 'auc')} | {cell_of(full, 'tpr_at_1pct_fpr')} | "
                   f"{cell_of(full, 'reference_calibrated/auc')} |")
    return out


def _audit(seeds: list[Path]) -> list[str]:
    rows = []
    for kind, name in (("lora", "LoRA fine-tune"), ("full", "full fine-tune")):
        audits = [read_json(s / kind / "audit.json") for s in seeds if (s / kind / "audit.json").exists()]
        if not audits:
            continue
        cells = []
        for n in sorted({row["n"] for a in audits for row in a["pvalue_vs_size"]}):
            ps = [f"{row['p_value']:.3f}" for a in audits for row in a["pvalue_vs_size"] if row["n"] == n]
            cells.append(f"{n} suspects: p = {' / '.join(ps)}")
        control = " / ".join(f"{a['verdict']['control_false_alarms']:.0%}" for a in audits)
        rows.append(f"| {name} | {'; '.join(cells)} | {control} |")
    if not rows:
        return []
    return ["Dataset inference (`mia-audit`, suspects: the fine-tune's members; reference: its non-members; "
            "p per seed):", "", "| target | p-value against the number of suspects (seeds 0 / 1 / 2) | "
            "false-alarm control at the largest size |", "|---|---|---|", *rows, ""]


def lora_section() -> list[str]:
    seeds = _seeds()
    if not (ROOT / "base_training.json").exists() or not seeds:
        return []
    out = ["## LoRA fine-tunes of a text-to-image base (Flickr8k, "
           f"{len(seeds)} split seed{'s' if len(seeds) > 1 else ''}, mean ± standard deviation)", "",
           "Made by `bench/lora.sh`. The base model's photos (and its autoencoder's), the fine-tunes' members and "
           "their non-members are disjoint parts of one Flickr8k pool. `protocol.calibration=0.25` sets a quarter of "
           "each class aside (tuned and fitted rows choose on it); every row is measured on the rest. Every attack "
           "also runs on the base (`reference.path=<base>`): *the base's own AUC* is what the samples alone would "
           "give (the base never saw any of them), *reference-calibrated* scores each sample by target − base.", "",
           *[line for text in _recipe(seeds) for line in (text, "")], *_table(seeds), "", *_audit(seeds)]
    return out
