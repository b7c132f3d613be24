"""The bundle metadata: one dataclass, written by export into the ONNX file, read by everyone else.

    meta = BundleMeta.from_json(text)       # validated: a bad field fails here, by name
    text = meta.to_json()                   # what export stores under META_KEY
    flat_metadata(meta), doc_string(meta)   # what other ONNX tools show (Netron, onnxruntime's model metadata)

Everything the edge needs to turn pixels into a decision travels in the model file itself,
so an `.onnx` copied alone to another machine still classifies exactly as it did here.
The JSON under META_KEY is the one source; the flat keys beside it are derived from it at export,
checked against it at load, and never read for a decision.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .cam import CamHead
from .errors import ModelError
from .guard import Guard
from .imaging import RESIZE_RULES, PreprocessSpec
from .metafields import Fields, parse
from .monitor import Reference
from .population import Population
from .runtime import open_runtime

META_KEY = "pneumo_edge"
LABELS = ("NORMAL", "PNEUMONIA")
REQUIRED = ("labels", "preprocess", "threshold", "temperature", "model", "pneumo_edge_version")
INPUT_SIZES = (32, 1024)  # a square side outside this range is not a model this toolchain made
INPUT = {"name": "image", "layout": "NCHW", "dtype": "float32", "range": "grey level / 255, then (x - mean) / std"}
OUTPUTS = {"logits": "unnormalised class scores", "embedding": "penultimate features"}
FEATURES_OUTPUT = {"features": "last feature map after its activation (input of global pooling), for heat maps"}
PROBABILITY = "softmax(logits / temperature)[PNEUMONIA]; label PNEUMONIA if >= threshold"
LICENSE = "apache-2.0"  # of the weights and the code (SPDX id, lower case as the Hugging Face hub writes it)
# Flat metadata keys that restate a decision input: a file whose flat copy disagrees with its JSON is refused.
CHECKED_FLAT_KEYS = ("labels", "image_size", "threshold", "temperature")
KNOWN = {*REQUIRED, "target_sensitivity", "data_fingerprint", "weights_sha256", "ood", "quantization", "cam",
         "license", "created", "input", "outputs", "probability", "site_calibration", "monitor",
         "population"}


@dataclass(frozen=True)
class BundleMeta:
    model: str  # timm architecture of the twin
    labels: tuple[str, ...]
    preprocess: PreprocessSpec
    threshold: float  # on P(PNEUMONIA) after temperature scaling, chosen on validation
    temperature: float
    pneumo_edge_version: str
    target_sensitivity: float | None = None
    data_fingerprint: str | None = None
    weights_sha256: str | None = None
    ood: dict | None = None  # guard statistics (edge.guard.Guard.to_meta)
    quantization: str | None = None  # set on INT8 files
    cam: dict | None = None  # classifier weights for heat maps from the 'features' output (edge.cam.CamHead.to_meta)
    license: str | None = None
    created: str | None = None  # export time, ISO 8601 UTC
    # operating points set at sites after export, oldest first (edge.sitecal via `pneumo-edge calibrate`)
    site_calibration: list | None = None
    monitor: dict | None = None  # drift-monitor reference fitted on validation (edge.monitor.Reference)
    population: dict | None = None  # who the model was validated on (edge.population.Population)
    extra: dict = field(default_factory=dict)  # keys a newer writer added; kept, not interpreted

    def to_dict(self) -> dict:
        d = {"pneumo_edge_version": self.pneumo_edge_version, "model": self.model, "labels": list(self.labels),
             "preprocess": self.preprocess.to_dict(), "input": INPUT,
             "outputs": {**OUTPUTS, **(FEATURES_OUTPUT if self.cam is not None else {})},
             "threshold": self.threshold, "temperature": self.temperature, "probability": PROBABILITY,
             "target_sensitivity": self.target_sensitivity, "data_fingerprint": self.data_fingerprint,
             "weights_sha256": self.weights_sha256}
        for k in ("ood", "quantization", "cam", "license", "created", "site_calibration", "monitor",
                  "population"):  # when set
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        return {**self.extra, **d}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict, source: str = "model") -> "BundleMeta":
        """Every field checked by name; the guard, heat-map head and monitor reference are read once here too,
        so a file that loads is a file whose numbers are all usable."""
        if not isinstance(d, dict):
            raise ModelError(f"{source}: metadata is not a JSON object")
        f = Fields(d, "", source)
        for k in REQUIRED:
            f.get(k)
        labels = d["labels"]
        if not isinstance(labels, list) or len(labels) != 2 or not all(isinstance(x, str) and 0 < len(x) <= 100
                                                                       for x in labels):
            raise f.bad("labels", f"must be two class names, got {labels!r:.80}")
        p = _preprocess(f.child("preprocess"))
        ood, cam, monitor = (f.get(k, None) for k in ("ood", "cam", "monitor"))
        if ood is not None:
            Guard.from_meta(ood, source)
        if cam is not None:
            CamHead.from_meta(Fields(cam, "cam", source).d, source, len(labels))
        if monitor is not None:
            Reference.from_meta(monitor, source)
        site = f.get("site_calibration", None)
        if site is not None and not (isinstance(site, list) and all(isinstance(s, dict) for s in site)):
            raise f.bad("site_calibration", "must be a list of objects")
        population = f.get("population", None)
        if population is not None:
            Population.from_meta(population, source)  # validated here, by field name
        return cls(model=f.text("model"), labels=tuple(labels), preprocess=p,
                   threshold=f.number("threshold", 0.0, 1.0), temperature=f.number("temperature", 1e-3, 1e3),
                   pneumo_edge_version=f.text("pneumo_edge_version"),
                   target_sensitivity=f.number("target_sensitivity", 0.0, 1.0, default=None),
                   **{k: f.text(k, default=None) for k in ("data_fingerprint", "weights_sha256", "quantization",
                                                           "license", "created")},
                   ood=ood, cam=cam, site_calibration=site, monitor=monitor, population=population,
                   extra={k: v for k, v in d.items() if k not in KNOWN})

    @classmethod
    def from_json(cls, text: str, source: str = "model") -> "BundleMeta":
        return cls.from_dict(parse(text, source), source)


def _preprocess(f: Fields) -> PreprocessSpec:
    size = f.integer("size", *INPUT_SIZES)
    mean, std = f.number("mean", -10.0, 10.0), f.number("std", 0.0, 10.0, lo_open=True)
    if f.get("channels", 1) != 1:
        raise f.bad("channels", f"must be 1 (grey input), got {f.get('channels')!r:.60}")
    if f.get("resize", RESIZE_RULES[0]) not in RESIZE_RULES:
        raise f.bad("resize", f"must be one of {', '.join(RESIZE_RULES)}, got {f.get('resize')!r:.60}")
    return PreprocessSpec.from_dict({**f.d, "size": size, "mean": mean, "std": std})


def flat_metadata(meta: BundleMeta) -> dict[str, str]:
    """The flat `metadata_props` other ONNX tools list, beside the JSON: all derived from `meta`."""
    size = meta.preprocess.size
    flat = {"description": f"pneumo-edge {meta.model}: {' vs '.join(meta.labels)} on {_who(meta)} frontal chest "
                           "X-rays; research use, not a medical device",
            "labels": json.dumps(list(meta.labels)), "image_size": json.dumps([size, size]),
            "threshold": json.dumps(meta.threshold), "temperature": json.dumps(meta.temperature),
            "version": meta.pneumo_edge_version}
    if meta.license is not None:
        flat["license"] = meta.license
    if meta.created is not None:
        flat["date"] = meta.created
    return flat


def _who(meta: BundleMeta) -> str:
    """Whose films the model is for: its population's short name (files without a statement: paediatric)."""
    return "paediatric" if meta.population is None else Population.from_meta(meta.population).short


def doc_string(meta: BundleMeta) -> str:
    """One paragraph for the ONNX model's doc_string (onnxruntime: `get_modelmeta().description`)."""
    p, (negative, positive) = meta.preprocess, meta.labels
    guard = (" The 'embedding' output feeds an out-of-distribution guard whose statistics are in the metadata; "
             "a guard score above 1 means the input is refused." if meta.ood is not None else "")
    population = ""
    if meta.population is not None:
        population = f" Validated on {meta.population['description']}."
        if meta.population.get("age_years"):
            lo, hi = meta.population["age_years"]
            population = population[:-1] + f"; a DICOM whose patient age is outside {lo:g}-{hi:g} years is not assessed."

    return (f"pneumo-edge {meta.model} ({meta.quantization or 'fp32'}): classifies a {_who(meta)} frontal chest "
            f"X-ray as {negative} or {positive}. Input 'image': float32, N x {p.channels} x {p.size} x {p.size}, "
            f"the grey film resized by rule {p.resize}, then (grey / 255 - {p.mean:g}) / {p.std:g}. "
            f"P({positive}) = softmax(logits / {meta.temperature:.4f})[1]; the label is {positive} when it "
            f"reaches {meta.threshold:.4f}.{population}{guard} The '{META_KEY}' metadata entry (JSON) holds the complete "
            "rule and is what pneumo-edge reads; the other entries restate parts of it for other tools. "
            "Research use only: not a medical device.")


def check_flat(props: dict[str, str], meta: BundleMeta, source: str) -> None:
    """Refuse a file whose flat keys restate a decision input differently from its JSON (a hand edit)."""
    expected = flat_metadata(meta)
    for key in CHECKED_FLAT_KEYS:
        if key not in props:
            continue  # files written before the flat keys existed
        try:
            same = parse(props[key], source, f"metadata key '{key}'") == json.loads(expected[key])
        except ModelError:
            same = False
        if not same:
            raise ModelError(f"{source}: metadata key '{key}' ({props[key]}) disagrees with the '{META_KEY}' JSON "
                             f"({expected[key]}); re-export the file")


def from_props(props: dict[str, str], source: str) -> BundleMeta:
    """The metadata from a model file's key-value properties (as `Runtime.metadata` reads them)."""
    if META_KEY not in props:
        raise ModelError(f"'{source}' has no pneumo-edge metadata (key '{META_KEY}' with {', '.join(REQUIRED)}); "
                         "export it with `pneumo-edge export`")
    meta = BundleMeta.from_json(props[META_KEY], source)
    check_flat(props, meta, source)
    return meta


def read_meta(path) -> BundleMeta:
    """The metadata of an ONNX file on disk."""
    return from_props(open_runtime(path, threads=1).metadata(), str(path))


def _guard_rows(ood: dict | None) -> list[tuple[str, str]]:
    """The guard's settings; `ood` as validated by Guard.from_meta (required keys present)."""
    if ood is None:
        return [("guard", "off (this file carries no guard statistics)")]
    how = (f", {ood['percentile']}th percentile of validation x margin {ood.get('margin', 1.0)}"
           if "percentile" in ood else "")
    (m_lo, s_lo, e_lo), (m_hi, s_hi, e_hi) = ood["stat_lo"], ood["stat_hi"]
    rows = [("guard", f"on ({ood.get('method', 'method not recorded')}): each check scores 1.0 at its "
                      "threshold, a maximum above 1 rejects"),
            ("  embedding", f"distance threshold {ood['threshold']:.4g} ({ood['k']} principal directions{how})"),
            ("  colour", f"max chroma {ood['max_chroma']:g}"),
            ("  grey levels", f"mean [{m_lo:.3f}, {m_hi:.3f}], spread [{s_lo:.3f}, {s_hi:.3f}], "
                              f"entropy [{e_lo:.2f}, {e_hi:.2f}] bits")]
    if ood.get("orientation"):
        rows.append(("  orientation", f"P(altered film) threshold {ood['orientation']['threshold']:.3g}"))
    if ood.get("polarity"):
        rows.append(("  polarity", f"P(inverted grey levels) threshold {ood['polarity']['threshold']:.3g} "
                                   f"({ood['polarity']['grid']}x{ood['polarity']['grid']} thumbnail)"))
    if ood.get("population"):
        rule = ood["population"].get("rule")
        rows.append(("  population", f"P(outside the population) threshold {ood['population']['threshold']:.3g} "
                                     "(films whose header gives no age)" + (f"; {rule}" if rule else "")))
    return rows


def _num(link: dict, key: str) -> str:
    """A number of a provenance link, or n/a: a hand-edited or foreign link must not break `info`."""
    v = link.get(key)
    return f"{v:.4f}" if isinstance(v, (int, float)) else "n/a"


def _site_rows(chain: list | None) -> list[tuple[str, str]]:
    """The provenance chain of site operating points, oldest first; each names its parent file's digest."""
    if not chain:
        return [("operating point from", "validation at export (no site calibration)")]
    rows = []
    for i, c in enumerate(chain, 1):
        if c.get("kind") == "adaptation":
            rows += _adaptation_rows(i, c)
            continue
        rows.append((f"site calibration {i}", f"{c.get('site')}, {c.get('date')}: threshold {_num(c, 'threshold')}"
                     f" (was {_num(c, 'parent_threshold')}), temperature {_num(c, 'temperature')}, "
                     f"{c.get('n_images')} films ({c.get('n_positive')} positive)"))
        rows.append(("  rule", f"{c.get('rule')} (target {c.get('target_sensitivity')}, confidence "
                               f"{c.get('confidence')})"))
        rows.append(("  parent", f"sha256 {c.get('parent_sha256')}"))
        if c.get("low_specificity_accepted"):
            rows.append(("  WARNING", f"specificity {_num(c, 'specificity')} below the floor "
                                      f"{_num(c, 'min_specificity')}, written with --accept-low-specificity"))
    return rows


def _adaptation_rows(i: int, c: dict) -> list[tuple[str, str]]:
    """A link written by `adapt`: the site, its patient split and what was refitted."""
    split = c.get("split") if isinstance(c.get("split"), dict) else {}
    parts = split.get("parts") if isinstance(split.get("parts"), dict) else {}
    counts = ", ".join(f"{k} {v.get('films')} films / {v.get('patients')} patients" for k, v in parts.items()
                       if isinstance(v, dict))
    refitted = c.get("refitted") if isinstance(c.get("refitted"), list) else []
    return [(f"site adaptation {i}", f"{c.get('site')}, {c.get('date')} ({c.get('method')}): threshold "
                                     f"{_num(c, 'threshold')} (was {_num(c, 'parent_threshold')}), temperature "
                                     f"{_num(c, 'temperature')}, {c.get('n_images')} films of {c.get('n_patients')} "
                                     "patients"),
            ("  split", f"by {split.get('unit')}, seed {split.get('seed')}: {counts or 'n/a'}"),
            ("  refitted", "; ".join(map(str, refitted)) or "n/a"),
            ("  rule", f"{c.get('rule')} (target {c.get('target_sensitivity')}, confidence {c.get('confidence')})"),
            ("  parent", f"{c.get('parent_file')} sha256 {c.get('parent_sha256')}")]


def _monitor_words(m: dict) -> str:
    return (f"window {m.get('window')} images, alarm above {m.get('alarm_threshold', float('nan')):.4g} "
            f"(false-alarm rate {m.get('false_alarm_rate')} per {m.get('stream_images')} images)")


def describe(meta: BundleMeta) -> list[tuple[str, str]]:
    """(name, value) pairs for people (`pneumo-edge info`): what the file does to an image, and why."""
    p, positive = meta.preprocess, meta.labels[1]
    target = (f"{meta.target_sensitivity:g} (the threshold was chosen on validation to reach it)"
              if meta.target_sensitivity is not None else "not recorded")
    return [("model", meta.model),
            ("labels", f"{', '.join(meta.labels)} (probability is P({positive}))"),
            ("input size", f"{p.size} x {p.size}, {p.channels} grey channel, float32 NCHW"),
            ("resize rule", p.resize),
            ("normalisation", f"(grey / 255 - {p.mean:g}) / {p.std:g}"),
            ("threshold", f"{meta.threshold:.4f} on P({positive}), after temperature scaling"),
            ("temperature", f"{meta.temperature:.4f}"),
            ("target sensitivity", target),
            *(Population.from_meta(meta.population).describe() if meta.population is not None
              else [("population", "not stated in this file (no age check)")]),
            *_guard_rows(meta.ood),
            *_site_rows(meta.site_calibration),
            ("drift monitor", f"reference fitted on {meta.monitor.get('fitted_on') or 'validation'}: "
             + _monitor_words(meta.monitor)
             if meta.monitor else "no reference in this file (rates only, no drift statistic)"),
            ("quantization", meta.quantization or "none (fp32)"),
            ("weights sha256", meta.weights_sha256 or "not recorded"),
            ("data fingerprint", meta.data_fingerprint or "not recorded"),
            ("licence", meta.license or "not recorded"),
            ("written by", f"pneumo-edge {meta.pneumo_edge_version}"
                           + (f", {meta.created}" if meta.created else ""))]
