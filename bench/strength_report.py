"""Write docs/results.md from the small files committed under bench/ (no run folders, no retraining).

Sections, each written only when its files are there:
- the discriminating strength benchmark (bench/strength/, made by bench/strength.sh): per target, every
  attack at its defaults, tuned on the calibration part, and the learned attacks, all on the same
  evaluation part; CIFAR-10 as mean ± standard deviation over its split seeds;
- fitted on shadows beside fitted on calibration (bench/shadows/, made by bench/shadows.sh;
  bench/shadows_report.py);
- the text-to-image target (bench/text_to_image/, made by bench/text_to_image.sh);
- LoRA and full fine-tunes of a text-to-image base (bench/lora/, made by bench/lora.sh; bench/lora_report.py);
- why NA flips (bench/na_flip/, made by `python -m bench.na_flip`);
- speed (bench/speed.json, made by `make bench`).
Everything after the notes marker of the existing docs/results.md is kept: the reading of the numbers.
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
RESULTS = REPO / "docs" / "results.md"
MARKER = "<!-- notes -->"
ROWS = [("defaults", a) for a in ("na", "loss", "pia", "pian", "secmi", "sima")] + \
       [("tuned", a) for a in ("na", "loss", "pia", "pian", "secmi", "sima")] + \
       [("learned", "secmi_nn"), ("learned", "learned"), ("variant", "na"), ("absolute", "na")] + \
       [("fremia", a) for a in ("na", "loss", "pia", "pian", "secmi")] + \
       [("gradient", "gsa1"), ("gradient", "gsa2"), ("blackbox", "rediffuse")]
LABEL = {"defaults": "{} (defaults)", "tuned": "{} (tuned)", "learned": "{}",
         "variant": "{}, statistic=magnitude (a variant, not the paper's)",
         "absolute": "{}, injection=absolute σ=0.1 (the other reading of the paper's σ)",
         "fremia": "{} + FreMIA's filter (frequency_filter=high)",
         "gradient": "{} (per-sample gradients; as many backward passes as queries)",
         "blackbox": "{} (black box: generation calls only)"}


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def calibration_queries(metrics: dict[str, Any]) -> int:
    """Queries spent on the calibration part to choose or fit: the grid's for a tuned attack, the calibration
    samples' for a fitted one, none for a fixed one (its calibration rows are simply not reported)."""
    if "tuning" in metrics:
        return int(metrics["tuning"]["calibration_queries"])
    if metrics.get("calibration"):
        return int(metrics["n_calibration"]) * int(metrics["queries_per_sample"])
    return 0


def chosen(metrics: dict[str, Any]) -> str:
    if "tuning" in metrics:
        return ", ".join(f"{k}={v}" for k, v in metrics["tuning"]["chosen"].items())
    return ""


def runs_of(folder: Path) -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for kind, attack in ROWS:
        path = folder / f"{kind}_{attack}.json"
        if path.exists():
            found[(kind, attack)] = read_json(path)
    return found


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def value_at(metrics: dict[str, Any], path: str) -> float | None:
    """The number at a slash-separated path of a metrics.json ('reference_calibrated/auc'), None where absent."""
    node: Any = metrics
    for part in path.split("/"):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return float(node)


def cell_of(runs: list[dict[str, Any]], path: str) -> str:
    """One table cell: the value at ``path`` over the runs that have it (mean ± sd over seeds), – when none."""
    values = [v for v in (value_at(m, path) for m in runs) if v is not None]
    return spread(values) if values else "–"


def target_line(training: dict[str, Any], name: str) -> str:
    config = training.get("config", {})
    data = config.get("data", {})
    dp = training.get("dp")
    line = (f"{name}: `{config.get('target', {}).get('unet', {}).get('_target_', 'UNet2DModel').split('.')[-1]}`, "
            f"{training['parameters'] / 1e6:.2f} M parameters, {data.get('image_size')}x{data.get('image_size')} "
            f"images, {training['members']} members and {training['nonmembers']} non-members, batch "
            f"{training['batch_size']}, {training['steps']:,} steps = {training['epochs']:,.0f} epochs per member, "
            f"trained in {training['seconds'] / 60:.0f} minutes; final probe loss: members "
            f"{training['metrics'].get('val/loss_members', float('nan')):.4f}, non-members "
            f"{training['metrics'].get('val/loss_nonmembers', float('nan')):.4f}")
    if dp:
        line += (f"; DP-SGD: ε = {dp['epsilon']:.2f} at δ = {dp['delta']:g} (noise multiplier "
                 f"{dp['noise_multiplier']:.3g}, max grad norm {dp['max_grad_norm']:g}, sample rate "
                 f"{dp['sample_rate']:.3g})")
    return line + "."


def strength_table(seeds: list[dict[tuple[str, str], dict[str, Any]]]) -> list[str]:
    many = len(seeds) > 1
    head = ("| attack | AUC | TPR@1%FPR | TPR@0.1%FPR | calibrated ASR | queries / sample | calibration "
            "samples | calibration queries | chosen on calibration |")
    out = [head, "|" + "---|" * 9]
    for key in ROWS:
        present = [s[key] for s in seeds if key in s]
        if not present:
            continue
        first = present[0]

        def cell(metric: str, present=present) -> str:
            values = [m[metric] for m in present]
            if many:
                return spread(values)
            ci = present[0].get(f"{metric}_ci")
            return f"{values[0]:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{values[0]:.3f}"

        label = LABEL[key[0]].format(key[1] if key[1] != "learned" else "learned (NA features)")
        choices = "; ".join(dict.fromkeys(chosen(m) for m in present if chosen(m)))
        out.append(f"| {label} | {cell('auc')} | {cell('tpr_at_1pct_fpr')} | {cell('tpr_at_0.1pct_fpr')} | "
                   f"{cell('asr_calibrated')} | {first['queries_per_sample']} | {first['n_calibration']} | "
                   f"{calibration_queries(first):,} | {choices} |")
    return out


def strength_section() -> list[str]:
    root = BENCH / "strength"
    if not root.exists():
        return []
    out = ["## Attack strength: a benchmark that discriminates", "",
           "Made by `bench/strength.sh` (targets `experiment=strength_cifar10` / `strength_celeba`; the runs' "
           "metrics.json, summary.csv and training.json are kept under `bench/strength/`). On every target "
           "`protocol.calibration=0.25` sets a quarter of the members and of the non-members aside; every row "
           "is measured on the same remaining three quarters. Defaults fit nothing; tuned rows choose their "
           "knobs on the calibration part (`tune=<grid>`, by AUC) and run once on the rest; learned rows train "
           "on the calibration part. Scores are as measured: an AUC below 0.5 is an attack inverted on this "
           "target, never flipped.", ""]
    for dataset, title in (("cifar10", "CIFAR-10"), ("celeba", "CelebA")):
        folders = sorted(p for p in (root / dataset).glob("seed*") if p.is_dir() and p.name[4:].isdigit()) \
            if (root / dataset).exists() else []
        if folders:
            seeds = [runs_of(f) for f in folders]
            trainings = [read_json(f / "training.json") for f in folders]
            out += [f"### {title}" + (f", {len(folders)} split seeds (mean ± standard deviation)" if len(folders) > 1
                                      else ", split seed 0 (95% bootstrap intervals)"), ""]
            minutes = ", ".join(f"{t['seconds'] / 60:.0f}" for t in trainings)
            line = target_line(trainings[0], "Target")
            if len(folders) > 1:
                line += f" Each seed draws its own members; training took {minutes} minutes."
            out += [line, "", *strength_table(seeds), ""]
            if len(folders) > 1:
                per_seed = " · ".join(
                    f"seed {i}: " + ", ".join(f"{a} {s[('defaults', a)]['auc']:.3f}" for _, a in ROWS[:6]
                                             if ("defaults", a) in s) for i, s in enumerate(seeds))
                out += [f"AUC per seed at the defaults: {per_seed}.", ""]
        dp = root / dataset / "dp_seed0"
        if dp.exists():
            training = read_json(dp / "training.json")
            out += [f"### {title}, a DP-SGD target on the seed-0 split", "",
                    target_line(training, "Target"), "", *strength_table([runs_of(dp)]), ""]
            same_step = root / dataset / f"seed0_step{training['steps']}"
            if same_step.exists():
                out += [f"The undefended seed-0 target at the same step ({training['steps']:,}, its kept checkpoint, "
                        "`target.checkpoint=`), every attack at its defaults on the same evaluation part:", "",
                        *strength_table([runs_of(same_step)]), ""]
    return out


def text_to_image_section() -> list[str]:
    root = BENCH / "text_to_image"
    if not (root / "training.json").exists():
        return []
    training = read_json(root / "training.json")
    out = ["## Text-to-image target (Flickr8k)", "",
           "Made by `bench/text_to_image.sh`: `mia-train experiment=text_to_image_demo` (a latent text-conditional "
           "model in Stable Diffusion's folder format, trained here), then `mia-attack "
           "experiment=compare_attacks` on it. Members and non-members come from the same Flickr8k pool, each "
           "with its own caption (caption #0); CLiD's two scores fit on a calibration part (0.2 of each class) "
           "and report the rest, the other attacks score every sample.", "",
           f"Target: {training['parameters'] / 1e6:.2f} M-parameter conditional UNet on 8x8x4 latents of 32x32 "
           f"photos, {training['members']} members and {training['nonmembers']} non-members, "
           f"{training['steps']:,} steps = {training['epochs']:,.0f} epochs per member, trained in "
           f"{training['seconds'] / 60:.1f} minutes on 2 CPU cores (autoencoder included).", "",
           "| attack | AUC [95% CI] | TPR@1%FPR | TPR@0.1%FPR | calibrated ASR | denoiser queries / sample | "
           "members / non-members evaluated |", "|---|---|---|---|---|---|---|"]
    for path in sorted(root.glob("metrics_*.json"), key=lambda p: ROW_ORDER_T2I.index(p.stem[8:])
                       if p.stem[8:] in ROW_ORDER_T2I else 99):
        m = read_json(path)
        ci = m.get("auc_ci") or [float("nan")] * 2
        out.append(f"| {m['attack']} | {m['auc']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] | {m['tpr_at_1pct_fpr']:.3f} | "
                   f"{m['tpr_at_0.1pct_fpr']:.3f} | {m['asr_calibrated']:.3f} | {m['queries_per_sample']} | "
                   f"{m['n_members']} / {m['n_nonmembers']} |")
    return [*out, ""]


ROW_ORDER_T2I = ["na", "loss", "pia", "pian", "secmi", "sima", "clid_th", "clid_vec"]


def _flip_rows(path: Path) -> dict[tuple[str, int, float], dict[str, str]]:
    with open(path) as handle:
        return {(r["statistic"], int(r["t"]), float(r["noise_scale"])): r for r in csv.DictReader(handle)}


def na_flip_section() -> list[str]:
    root = BENCH / "na_flip"
    if not (root / "na_flip.csv").exists():
        return []
    rows = _flip_rows(root / "na_flip.csv")
    if (root / "na_flip_scaling.csv").exists():
        rows |= _flip_rows(root / "na_flip_scaling.csv")
    scales = sorted({s for _, _, s in rows})
    timesteps = sorted({t for _, t, _ in rows})
    out = ["## Why NA flips", "",
           "Made by `python -m bench.na_flip target.path=runs/strength/cifar10/seed0/target "
           "flip.timesteps=[40,80,120,200]` on the CIFAR-10 seed-0 strength target (128 members, 256 non-members; "
           "a measurement, nothing is tuned on it; the CSVs are in `bench/na_flip/`). Per start timestep t and "
           "noise scale s: the AUC of the paper's statistic (pairwise_l2, the predictions' scatter), then the AUC "
           "of their magnitude (1/k)·Σ‖ε̂_i‖², and in brackets the members' / non-members' median magnitude over "
           "s²·D, the expected size of the injected noise:", "",
           "| t | " + " | ".join(f"s = {s:g}" for s in scales) + " |", "|---|" + "---|" * len(scales)]
    for t in timesteps:
        cells = []
        for s in scales:
            scatter, size = rows.get(("pairwise_l2", t, s)), rows.get(("magnitude / s²D", t, s))
            cell = "" if scatter is None else f"{float(scatter['auc']):.3f}"
            if size is not None:
                cell += (f" / {float(size['auc']):.3f} ({float(size['member_median']):.3g} / "
                         f"{float(size['nonmember_median']):.3g})")
            cells.append(cell)
        out.append(f"| {t} | " + " | ".join(cells) + " |")
    out += ["", "![NA's statistics against the start timestep, per noise scale](images/na_flip.png)", ""]
    return out


def speed_section() -> list[str]:
    path = BENCH / "speed.json"
    if not path.exists():
        return []
    s = read_json(path)
    rows = []
    if "attack_overhead" in s:
        a = s["attack_overhead"]
        rows.append(f"| attack overhead: NA ÷ k plain UNet passes (pixel) | {a['ratio']:.3f} | ≤ 1.10 | "
                    f"{a['na_seconds']:.2f} s vs {a['plain_seconds_k_passes']:.2f} s over {a['samples']} samples |")
    if "latent_overhead" in s:
        a = s["latent_overhead"]
        rows.append(f"| attack overhead, latent text-to-image target: NA ÷ (k UNet passes + one VAE encode + one "
                    f"text-encoder pass) | {a['ratio']:.3f} | ≤ 1.10 | {a['na_seconds']:.2f} s vs "
                    f"{a['plain_seconds']:.2f} s over {a['samples']} samples |")
    if "lora_overhead" in s:
        a = s["lora_overhead"]
        rows.append(f"| LoRA fine-tune: NA on base + adapter (`target.lora`, merged at load) ÷ NA on the merged "
                    f"model saved as a folder by diffusers | {a['ratio']:.3f} | ≤ 1.10 | {a['na_seconds']:.2f} s vs "
                    f"{a['na_seconds_fused_folder']:.2f} s over {a['samples']} samples; scores differ from the "
                    f"folder's by ≤ {a['max_score_difference_fused_folder']:.1e}, from the adapter left live "
                    f"(`target.lora_merge=false`, {a['na_seconds_live']:.2f} s: {a['live_ratio']:.3f}×) by "
                    f"≤ {a['max_score_difference_live']:.1e} |")
    if "training" in s:
        a = s["training"]
        rows.append(f"| training: mia-train ÷ plain loop (steps/s) | {a['ratio']:.3f} | ≥ 0.95 | "
                    f"{a['mia_train_steps_per_s']:.2f} vs {a['plain_steps_per_s']:.2f} steps/s |")
    if "memory" in s:
        a = s["memory"]
        rows.append(f"| memory: peak RSS 8,000 ÷ 1,000 samples | {a['ratio']:.3f} | ≤ 1.2 | "
                    f"{a['peak_rss_mb_8000']:.0f} MB vs {a['peak_rss_mb_1000']:.0f} MB |")
    if "compiled_na" in s:
        for key, what in (("compiled_na", "pixel"), ("compiled_na_latent", "latent text-to-image")):
            if key in s:
                a = s[key]
                seconds = ", ".join(f"{k} {v:.0f} s" for k, v in a["compile"]["compile_seconds"].items())
                rows.append(f"| compile=true: compiled NA ÷ eager NA ({what}) | {a['ratio']:.3f} | ≤ 0.75 | "
                            f"{a['na_seconds_compiled']:.2f} s vs {a['na_seconds_eager']:.2f} s over {a['samples']} "
                            f"samples; compiling: {seconds}; scores differ by ≤ {a['max_score_difference']:.1e} |")
    if "compiled_training" in s:
        a = s["compiled_training"]
        first = a["first_step_seconds_compiled"][0]
        rows.append(f"| compile=true: mia-train steps/s, compiled ÷ eager | {a['ratio']:.3f} | ≥ 1 | "
                    f"{a['compiled_steps_per_s']:.2f} vs {a['eager_steps_per_s']:.2f} steps/s; first step "
                    f"(compiling): {first:.0f} s (later runs in the process reuse the compiled code) |")
    return ["## Speed", "", f"`make bench` ({s['machine']}); each ratio is measured within one run:", "",
            "| ratio | measured | goal | numbers |", "|---|---|---|---|", *rows, "",
            "Synthetic images; pixel: 16x16 `ddpm_small`, NA at its defaults over 512 samples; latent: the "
            "text-to-image demo's model size (`text_to_image_small`, 32x32 images, 8x8x4 latents), NA at its "
            "defaults over 256 captioned samples; the compiled rows run compile=true's defaults (static shapes, "
            "inductor freezing, channels-last) after one untimed compiled run. The earlier pixel numbers are in "
            "[memorisation.md](memorisation.md).", ""]


def main() -> None:
    notes = RESULTS.read_text().split(MARKER, 1)[1] if RESULTS.exists() and MARKER in RESULTS.read_text() else "\n"
    out = ["# Results", "",
           "Generated by `python -m bench.strength_report` from the small files under `bench/`; every number below "
           "is read from a run's own metrics.json or training.json. Hardware: 2 CPU cores, no GPU. The earlier "
           "benchmark in the memorisation regime (64 members, 5,000 epochs: every attack saturated) is in "
           "[memorisation.md](memorisation.md).", ""]
    # Imported here, not at the top: these modules read their files with this module's helpers.
    from bench.lora_report import lora_section
    from bench.shadows_report import shadows_section

    out += (strength_section() + shadows_section() + text_to_image_section() + lora_section() + na_flip_section()
            + speed_section())
    RESULTS.write_text("\n".join(out) + "\n" + MARKER + notes)
    print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
