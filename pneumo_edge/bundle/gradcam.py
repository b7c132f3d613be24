"""Grad-CAM (Selvaraju et al. 2017) on the PyTorch twin of a bundle.

    with GradCAM(model, "conv_head") as cam:
        heat, logits = cam(x)             # (N, S, S) in [0, 1], and the logits of the same pass
    explain(["xray.png"], bundle="export", out="cams")

Hooks are owned by the context manager and removed on exit, also on error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pneumo_edge.edge.atomic import prepare_out_dir, write_with
from pneumo_edge.edge.cam import overlay_names, rejected_record, target_index
from pneumo_edge.edge.decision import decide, score_images
from pneumo_edge.edge.errors import ImageError, ModelError
from pneumo_edge.edge.heatmap import METHODS, SHIPPED, caption
from pneumo_edge.edge.imaging import input_box, normalize, read_film, resize_gray
from pneumo_edge.edge.model import EdgeModel, prob_from_logits
from pneumo_edge.edge.progress import track
from pneumo_edge.edge.targets import FP32
from pneumo_edge.site.metrics import outcome

CMAP, ALPHA = "jet", 0.45  # the overlay's colour map and opacity


def find_layer(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules:
        convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
        raise ModelError(f"no layer '{name}' in the model; last conv layers: {', '.join(convs[-3:])}")
    return modules[name]


def features_layer(model: nn.Module) -> str:
    """The module whose output is `model.forward_features(x)` (for timm EfficientNets 'bn2', conv + BN + activation).

    Grad-CAM there equals the CAM the edge computes from the ONNX 'features' output (`edge.cam`).
    """
    outputs: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda _, __, out, name=name: outputs.setdefault(name, out))
               for name, m in model.named_modules() if name]
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    try:
        with torch.no_grad():
            feats = model.eval().forward_features(torch.zeros(1, first.in_channels, 64, 64))
    finally:
        for h in handles:
            h.remove()
    names = [n for n, out in outputs.items() if out is feats]
    if not names:
        raise ModelError("no single layer outputs the model's feature map")
    return names[-1]  # the outermost: in-place activations make inner modules share the tensor


class GradCAM:
    """Class-activation maps from the gradients flowing into `layer`."""

    def __init__(self, model: nn.Module, layer: str = "conv_head"):
        self.model = model.eval()
        self.layer = find_layer(model, layer)
        self._handles: list = []
        self._act: torch.Tensor | None = None
        self._grad: torch.Tensor | None = None

    def __enter__(self) -> "GradCAM":
        def forward_hook(_, __, output):
            if output.requires_grad:  # a no_grad forward (plain prediction) has nothing to explain
                self._act = output
                output.register_hook(self._save_grad)

        self._handles.append(self.layer.register_forward_hook(forward_hook))
        return self

    def _save_grad(self, grad: torch.Tensor) -> None:
        self._grad = grad

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return None  # never swallow errors

    def __call__(self, x: torch.Tensor, target: int | None = None, decide=None) -> tuple[np.ndarray, np.ndarray]:
        """Heat maps (N, H, W) at the input's size, and the logits (N, C) of the same forward pass.

        The mapped class is `target`, else `decide(logits of one image) -> class index`, else the argmax.
        """
        if not self._handles:
            raise RuntimeError("use GradCAM inside a `with` block")
        x = x.detach().requires_grad_(False)
        with torch.enable_grad():
            logits = self.model(x)
            if target is not None:
                classes = torch.full((len(x),), target)
            elif decide is not None:
                lg = logits.detach().numpy()
                classes = torch.tensor([decide(lg[i:i + 1]) for i in range(len(lg))])
            else:
                classes = logits.argmax(1)
            self.model.zero_grad(set_to_none=True)
            logits.gather(1, classes[:, None]).sum().backward()
        weights = self._grad.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * self._act).sum(1, keepdim=True))
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        flat = cam.flatten(1)
        lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
        cam = ((flat - lo) / (hi - lo).clamp_min(1e-12)).view_as(cam)
        return cam.detach().numpy(), logits.detach().numpy()


class TwinHeatmap:
    """The shipped edge map (`edge.heatmap.SHIPPED`, forward passes only) drawn on the twin: the same code as the
    ONNX files run, fed by the twin's logits; the twin side of the ONNX-vs-twin heat-map parity.
    Called like GradCAM: (normalised x, target, decide) -> (maps, logits); the map is the evidence for
    `target`, by default PNEUMONIA, whatever the decision."""

    def __init__(self, model: nn.Module, spec, temperature: float, method: str | None = None, batch: int = 64):
        self.model, self.spec, self.temperature, self.batch = model.eval(), spec, temperature, batch
        self.method = METHODS[method or SHIPPED]
        if self.method.draw is None:
            raise ModelError(f"heat-map method '{self.method.name}' needs the ONNX 'features' output, not the twin")

    def __enter__(self) -> "TwinHeatmap":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def score(self, target: int):
        def margin(films: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                lg = torch.cat([self.model(torch.from_numpy(normalize(films[i:i + self.batch], self.spec)))
                                for i in range(0, len(films), self.batch)]).double().numpy()
            return (lg[:, target] - lg[:, 1 - target]) / self.temperature
        return margin

    def films(self, x: torch.Tensor) -> np.ndarray:
        """Normalised input back to the uint8 films it came from (normalisation is affine in the grey level)."""
        unit = x[:, 0].numpy() * self.spec.std + self.spec.mean
        return np.clip(np.round(unit * 255), 0, 255).astype(np.uint8)

    def __call__(self, x: torch.Tensor, target: int | None = None, decide=None) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            logits = self.model(x).numpy()
        cls = 1 if target is None else target
        heat = np.stack([self.method.draw(self.score(cls), f) for f in self.films(x)])
        return heat, logits


def _figure_png(path: Path, panels: list[tuple[np.ndarray, np.ndarray, tuple, str]], cols: int,
                what: str = "Grad-CAM of the decided class") -> Path:
    """Per panel: the full film, and beside it the film with the map laid back over the region the model saw."""
    import matplotlib  # matplotlib: the [plots] extra, only when drawing

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # matplotlib: the [plots] extra, only when drawing
    from matplotlib.cm import (
        ScalarMappable,  # matplotlib: the [plots] extra, only when drawing
    )
    from matplotlib.colors import (
        Normalize,  # matplotlib: the [plots] extra, only when drawing
    )
    from matplotlib.patches import (
        Rectangle,  # matplotlib: the [plots] extra, only when drawing
    )

    rows = (len(panels) + cols - 1) // cols
    height = rows * 2.5 + 0.3  # + one line of caption
    fig, axes = plt.subplots(rows, cols * 2, figsize=(cols * 4.4 + 0.5, height), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (film01, heat, (left, top, right, bottom), title) in enumerate(panels):
        r, c = divmod(i, cols)
        plain, mapped = axes[r, 2 * c], axes[r, 2 * c + 1]
        for ax in (plain, mapped):
            ax.imshow(film01, cmap="gray", vmin=0, vmax=1)
        # extent stretches the model-sized map back over the film pixels it was computed from
        mapped.imshow(heat, cmap=CMAP, vmin=0, vmax=1, alpha=ALPHA,
                      extent=(left - .5, right - .5, bottom - .5, top - .5))
        mapped.add_patch(Rectangle((left - .5, top - .5), right - left, bottom - top, fill=False, ec="white", ls="--",
                                   lw=0.8))
        mapped.set(xlim=(-.5, film01.shape[1] - .5), ylim=(film01.shape[0] - .5, -.5))
        plain.set_title(title, fontsize=7, loc="left")  # may run over the map beside it, which has no title
    fig.tight_layout(rect=(0, 0.3 / height, 0.93, 1))
    fig.text(0.01, 0.08 / height, f"Each pair: the full film, then the {what} laid back over it; "
             "dashed box: the part of the film the model sees.", fontsize=7)
    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), CMAP), cax=fig.add_axes([0.945, 0.15, 0.012, 0.7]))
    bar.set_label(what.split(";")[0].split(" (")[0][:40] + " (0 none, 1 highest)", fontsize=7)
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return path


def explain(images: list[str], bundle: str | Path, out: str | Path, layer: str | None = None,
            target: str | None = None, force: bool = False, guard: bool = True,
            truth: list[str | None] | None = None) -> list[dict]:
    """One overlay PNG per image plus a contact sheet; returns one record per image.

    guard: the bundle's model.onnx judges each image first (its guard was fitted on that file's
    embedding); a refused image gets status "rejected", the reason and no PNG.
    truth: each image's true label where known; its panel then says true/false positive/negative.
    """
    from pneumo_edge.train.checkpoint import (
        load_checkpoint,  # torch: training side only, kept off the light install
    )

    model, _ = load_checkpoint(bundle)
    edge = EdgeModel(Path(bundle) / FP32.file, threads=1)  # threshold, temperature and guard live there
    meta = edge.meta
    spec, labels = meta.preprocess, list(meta.labels)
    target_idx = target_index(labels, target)
    out = prepare_out_dir(out, force)
    records, panels = [], []

    # the shipped edge method by default (the same map as `explain --model`); --layer: Grad-CAM there
    cam = GradCAM(model, layer) if layer else TwinHeatmap(model, spec, meta.temperature)
    what = (f"Grad-CAM at {layer} of the decided class" if layer else
            caption(cam.method, labels[1 if target_idx is None else target_idx]))
    with cam:
        for src, name, true in track(zip(images, overlay_names(images), truth or [None] * len(images)),
                                     len(images), "explain"):
            try:
                record, panel = _explain_one(cam, src, out / name, spec, meta, target_idx, edge if guard else None,
                                             true, what)
            except ImageError as e:
                record, panel = {"path": str(src), "status": "error", "error": str(e)}, None
            except Exception as e:  # one odd file must never end the run  # noqa: BLE001
                record, panel = {"path": str(src), "status": "error",
                                 "error": f"unexpected {e.__class__.__name__}: {e}"}, None
            records.append(record)
            if panel:
                panels.append(panel)
    if len(panels) > 1:
        _figure_png(out / "contact_sheet.png", panels, cols=min(3, len(panels)), what=what)
    return records


def _explain_one(cam: GradCAM | TwinHeatmap, src: str, png: Path, spec, meta, target_idx: int | None,
                 guard=None, truth: str | None = None, what: str = "Grad-CAM of the decided class"
                 ) -> tuple[dict, tuple | None]:
    """The overlay PNG of one image: (its record, its contact-sheet panel); no PNG if `guard` refuses it."""

    labels = list(meta.labels)
    film = read_film(src, size=spec.size)
    resized = resize_gray(film.gray, spec.size, spec.resize)
    guard_score = None
    if guard is not None:
        judged = score_images(guard, [(resized, film.chroma, film.age_years)], use_guard=True)[0]
        if not judged.heatmap_allowed:
            return rejected_record(src, judged), None
        guard_score = judged.guard_score
    x = torch.from_numpy(normalize(resized[None], spec))
    # One forward pass: the probability printed is the one the map came from, and the map
    # explains the class the bundle decides (calibrated threshold), not the argmax.
    heat, logits = cam(x, target_idx, decide=lambda lg: labels.index(
        decide(meta, float(prob_from_logits(lg, meta.temperature)[0])).label))
    scored = decide(meta, float(prob_from_logits(logits, meta.temperature)[0]), guard_score)
    p, label = scored.probability, scored.label
    explained = labels[target_idx] if target_idx is not None else (
        labels[1] if isinstance(cam, TwinHeatmap) else label)
    title = f"{Path(src).name[:40]}\nP(pneumonia) {p:.3f} (threshold {meta.threshold:.3f}) -> {label}; map for {explained}"
    known = {}
    if truth is not None:  # the outcome first: a wrong case must read as one at a glance
        known = {"true_label": truth, "outcome": outcome(labels.index(truth), labels.index(label))}
        title = f"{known['outcome'].upper()}: true {truth}, predicted {label}\n{title}"
    panel = (film.gray / 255.0, heat[0], input_box(film.gray.shape, spec.resize), title)
    _figure_png(png, [panel], cols=1, what=what)
    return ({"path": str(src), **scored.fields(), "error": None, "explained_class": explained, "png": str(png),
             **known}, panel)
