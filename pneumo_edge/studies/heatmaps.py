"""The heat-map study: score every candidate method by the signals committed in bench/heatmaps/protocol.json,
on validation films of the bundle (carved from train as its training run carved them), and pick one by the rule.

    pneumo-edge heatmap-study --bundle export --data ../shared/data/chest_xray --out bench/heatmaps

Edge candidates (`edge.heatmap.METHODS`) run on the INT8 file unchanged; the gradient candidates at earlier,
finer stages need gradients, which the ONNX files do not give, so they run on the PyTorch twin only. The
randomization check (Adebayo et al. 2018) exports randomized twins to fp32 ONNX, so that the edge code itself is
what is checked, and compares with the shipped fp32 file (the same weights as the twin).
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pneumo_edge.edge.atomic import write_json, write_text, write_with
from pneumo_edge.edge.errors import OutputExistsError
from pneumo_edge.edge.heatmap import METHODS, cell_edges, cell_masks, filler
from pneumo_edge.edge.imaging import normalize
from pneumo_edge.edge.model import EdgeModel
from pneumo_edge.edge.progress import stage, track
from pneumo_edge.edge.targets import FP32, INT8
from pneumo_edge.train.data import decode_all, rebuild_split

PROTOCOL = Path(__file__).resolve().parents[2] / "bench" / "heatmaps" / "protocol.json"


@dataclass
class StudyConfig:
    bundle: str = "export"
    data: str = "../shared/data/chest_xray"
    out: str = "bench/heatmaps"
    protocol: str = str(PROTOCOL)
    n_films: int | None = None  # None: the protocol's
    n_random: int | None = None  # films for the randomization check; None: the protocol's
    threads: int = 2
    force: bool = False
    progress: bool = True


# ---------------------------------------------------------------- twin-only candidates (gradients)

TWIN_METHODS = {  # name -> (layer, kind, title)
    "gradcam-14": ("blocks.4", "gradcam", "Grad-CAM at blocks.4 (14x14), twin"),
    "layercam-28": ("blocks.2", "layercam", "LayerCAM at blocks.2 (28x28), twin"),
}


def twin_map(model, layer: str, kind: str, x: torch.Tensor) -> np.ndarray:
    """Grad-CAM or LayerCAM of the margin l_1 - l_0 at `layer`: (N, S, S) min-max scaled."""
    from pneumo_edge.bundle.gradcam import (
        find_layer,  # torch: training side only, kept off the light install
    )

    acts: list[torch.Tensor] = []
    handle = find_layer(model, layer).register_forward_hook(lambda _, __, out: acts.append(out))
    try:
        with torch.enable_grad():
            logits = model(x)
            act = acts[0]
            grad, = torch.autograd.grad((logits[:, 1] - logits[:, 0]).sum(), act)
    finally:
        handle.remove()
    if kind == "gradcam":
        cam = F.relu((grad.mean(dim=(2, 3), keepdim=True) * act).sum(1, keepdim=True))
    else:  # LayerCAM: positive gradients weight each position
        cam = F.relu((F.relu(grad) * act).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0].detach()
    flat = cam.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-12)).view_as(cam).numpy().astype(np.float32)


# ---------------------------------------------------------------- signals

def cell_scores(maps: np.ndarray, grid: int) -> np.ndarray:
    """(N, grid*grid): the mean of each map inside each cell."""
    e = cell_edges(maps.shape[-1], grid)
    sums = np.add.reduceat(np.add.reduceat(maps, e[:-1], axis=1), e[:-1], axis=2)
    area = np.outer(np.diff(e), np.diff(e))
    return (sums / area).reshape(len(maps), -1)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson; 0 where either map is constant (an all-zero map says nothing)."""
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    d = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / d) if d > 0 else 0.0


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    def rank(v):
        v = np.ravel(v)
        return np.argsort(np.argsort(v, kind="stable"), kind="stable").astype(np.float64) if np.ptp(v) > 0 else v * 0
    return correlation(rank(a), rank(b))


def pool(maps: np.ndarray, out: int = 28) -> np.ndarray:
    """Area averages on an out x out grid (the randomization check's resolution)."""
    return cell_scores(maps, out)


def top_cells(order: np.ndarray, k: int, grid_masks: np.ndarray) -> np.ndarray:
    return grid_masks[order[:k]].any(axis=0) if k else np.zeros(grid_masks.shape[1:], bool)


def ranking(cells: np.ndarray) -> np.ndarray:
    return np.argsort(-cells, kind="stable")  # ties by cell index


def evaluate_film(prob, film: np.ndarray, cells_by_method: dict[str, np.ndarray], mean_cells: dict[str, np.ndarray],
                  ks: list[int], k: int, grid_masks: np.ndarray, rng: np.random.Generator, draws: int) -> dict:
    """Deletion, insertion, mean-map and random deletion of one film for every method, both perturbations:
    one batch of perturbed copies through `prob` (films -> P(PNEUMONIA))."""
    copies, index = [film], {}
    fills = {how: filler(film, how) for how in ("grey", "blur")}
    n_cells = grid_masks.shape[0]
    random_orders = [rng.permutation(n_cells) for _ in range(draws)]

    def add(key, img):
        index[key] = len(copies)
        copies.append(img)

    for how, fill in fills.items():
        add((how, "all"), fill)
        for d, order in enumerate(random_orders):
            add((how, "random", d), np.where(top_cells(order, k, grid_masks), fill, film))
        for name, cells in cells_by_method.items():
            order = ranking(cells)
            for kk in ks:
                m = top_cells(order, kk, grid_masks)
                add((how, name, "del", kk), np.where(m, fill, film))
                add((how, name, "ins", kk), np.where(m, film, fill))
            add((how, name, "mean"), np.where(top_cells(ranking(mean_cells[name]), k, grid_masks), fill, film))
    p = prob(np.stack(copies))
    base, out = p[0], {}
    for how in fills:
        empty = p[index[(how, "all")]]
        rand = float(np.mean([base - p[index[(how, "random", d)]] for d in range(draws)]))
        for name in cells_by_method:
            out[(how, name)] = {"del": [base - p[index[(how, name, "del", kk)]] for kk in ks],
                                "ins": [p[index[(how, name, "ins", kk)]] - empty for kk in ks],
                                "ins_p": [p[index[(how, name, "ins", kk)]] for kk in ks],
                                "mean": base - p[index[(how, name, "mean")]], "random": rand}
    return out


def summarise(per_film: list[dict], names: list[str], ks: list[int], k: int) -> dict:
    ki = ks.index(k)
    res = {}
    for name in names:
        res[name] = {}
        for how in ("grey", "blur"):
            rows = [f[(how, name)] for f in per_film]
            dele = np.mean([r["del"] for r in rows], axis=0)
            ins = np.mean([r["ins"] for r in rows], axis=0)
            ins_p = np.mean([r["ins_p"] for r in rows], axis=0)
            mean_drop = float(np.mean([r["mean"] for r in rows]))
            rand_drop = float(np.mean([r["random"] for r in rows]))
            res[name][how] = {
                "deletion_curve": [round(float(v), 5) for v in dele], "deletion_at_k": round(float(dele[ki]), 5),
                "deletion_area": round(float(dele.mean()), 5),
                "insertion_curve": [round(float(v), 5) for v in ins], "insertion_at_k": round(float(ins[ki]), 5),
                "insertion_area": round(float(ins_p.mean()), 5),
                "mean_map_deletion_at_k": round(mean_drop, 5), "random_deletion_at_k": round(rand_drop, 5),
                "deletion_vs_mean": round(float(dele[ki] / mean_drop), 3) if mean_drop > 0 else None,
                "deletion_vs_random": round(float(dele[ki] / rand_drop), 3) if rand_drop > 0 else None}
    return res


# ---------------------------------------------------------------- randomized twins

def randomized_twins(model, config: dict) -> dict:
    """(a) classifier + conv_head + its BN re-initialised, (b) every weight re-initialised; seed 0."""
    from pneumo_edge.train.models import (
        build_twin,  # torch: training side only, kept off the light install
    )

    torch.manual_seed(0)
    fresh = build_twin(config["model"]).eval()
    head = copy.deepcopy(model).eval()
    state = head.state_dict()
    top = ("classifier.", "conv_head.", "bn2.")
    state.update({k: v for k, v in fresh.state_dict().items() if k.startswith(top)})
    head.load_state_dict(state)
    return {"head": head, "full": fresh}


def export_twin(model, config: dict, meta_from, folder: Path, name: str, threads: int):
    from pneumo_edge.bundle.export import (  # torch: training side only, kept off the light install
        bundle_metadata,
        export_onnx,
    )

    path = folder / f"{name}.onnx"
    meta = bundle_metadata(config, meta_from.threshold, meta_from.temperature, model)
    export_onnx(model, meta.preprocess, path, meta)
    return EdgeModel(path, threads=threads)


# ---------------------------------------------------------------- the rule

def targets_met(row: dict, t: dict) -> dict[str, bool]:
    ev = row["evaluation"]
    rnd = row.get("randomization") or {}
    return {"specificity": row["specificity_median"] <= t["specificity_max"],
            "deletion_vs_mean": (ev["deletion_vs_mean"] or 0) >= t["deletion_vs_mean_min"],
            "deletion_vs_random": (ev["deletion_vs_random"] or 0) >= t["deletion_vs_random_min"],
            "randomization": bool(rnd) and all(v["median"] <= t["randomization_max"] for v in rnd.values()),
            "cost": row["cost_ms"] <= t["cost_ms_max"]}


def pick(rows: dict[str, dict], t: dict) -> dict:
    """Protocol rules 2, 3 and 5 over the eligible (edge) candidates; rule 4 for the twin-only ones."""
    eligible = {n: r for n, r in rows.items() if r["edge"]}
    met = {n: targets_met(r, t) for n, r in rows.items()}
    best_count = max(sum(met[n].values()) for n in eligible)
    pool_ = [n for n in eligible if sum(met[n].values()) == best_count]
    by_drop = sorted(pool_, key=lambda n: -rows[n]["evaluation"]["deletion_at_k"])
    top = rows[by_drop[0]]["evaluation"]["deletion_at_k"]
    near = [n for n in by_drop if rows[n]["evaluation"]["deletion_at_k"] >= 0.9 * top]
    chosen = min(near, key=lambda n: rows[n]["cost_ms"])
    folder = chosen
    if not met[chosen]["cost"]:
        ok = [n for n in eligible if met[n]["specificity"] and met[n]["deletion_vs_mean"]
              and met[n]["deletion_vs_random"] and met[n]["cost"]]
        folder = min(ok, key=lambda n: rows[n]["cost_ms"]) if ok else None
    c = rows[chosen]

    def beats(r):
        return (r["specificity_median"] < c["specificity_median"] and r["evaluation"]["deletion_at_k"] >
                c["evaluation"]["deletion_at_k"] and (r["evaluation"]["deletion_vs_mean"] or 0) >
                (c["evaluation"]["deletion_vs_mean"] or 0))
    return {"method": chosen, "all_targets_met": best_count == len(met[chosen]),
            "missed": [k for k, v in met[chosen].items() if not v], "near_ties": near, "folder_method": folder,
            "twin_only_better": [n for n, r in rows.items() if not r["edge"] and beats(r)],
            "targets_met": {n: [k for k, v in m.items() if v] for n, m in met.items()}}


# ---------------------------------------------------------------- the study

def _relative(path: str | Path) -> str:
    """A path as the repository names it where it lies inside the current folder (no machine's layout)."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(Path.cwd().resolve()))
    except ValueError:
        return p.name


def load_protocol(path: str | Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def validation_films(bundle: str, data: str, n: int, seed: int, progress: bool) -> tuple[np.ndarray, list[str]]:
    """`n` validation films of the bundle (seeded sample, in split order), decoded as the model sees them."""
    from pneumo_edge.train.checkpoint import (
        read_config,  # torch: training side only, kept off the light install
    )

    config = read_config(bundle)
    _, _, val, _ = rebuild_split(config, data)
    pick_ = np.sort(np.random.default_rng(seed).choice(len(val), size=min(n, len(val)), replace=False))
    chosen = [val[i] for i in pick_]
    spec = config["preprocess"]
    x, _, bad = decode_all(chosen, spec["size"], progress=progress, rule=spec["resize"])
    unreadable = {b for b, _ in bad}
    return np.asarray(x), [s.name for s in chosen if s.name not in unreadable]


def run_study(cfg: StudyConfig, films: np.ndarray | None = None, names: list[str] | None = None) -> dict:
    """Score every candidate and pick one; writes results.json, results.md and deletion.png under cfg.out."""
    from pneumo_edge.edge import decision  # here, not at the top: the name is taken in this module
    from pneumo_edge.train.checkpoint import (
        load_checkpoint,  # torch: training side only, kept off the light install
    )

    proto = load_protocol(cfg.protocol)
    out = Path(cfg.out)
    if (out / "results.json").exists() and not cfg.force:
        raise OutputExistsError(f"'{out / 'results.json'}' exists: pass --force to replace it")
    out.mkdir(parents=True, exist_ok=True)
    bundle = Path(cfg.bundle)
    n = cfg.n_films or proto["films"]["n"]
    if films is None:
        stage("heatmap-study", f"{n} validation films of {bundle}")
        films, names = validation_films(str(bundle), cfg.data, n, proto["films"]["seed"], cfg.progress)
    int8 = EdgeModel(bundle / INT8.file, threads=cfg.threads)
    fp32 = EdgeModel(bundle / FP32.file, threads=cfg.threads)
    twin, config = load_checkpoint(bundle)
    torch.set_num_threads(cfg.threads)
    spec, grid, ks, k = int8.spec, proto["grid"], proto["ks"], proto["k"]
    edge_names = [m for m in proto["candidates"] if m in METHODS]
    twin_names = [m for m in proto["candidates"] if m in TWIN_METHODS]
    names_all = edge_names + twin_names

    maps, cost = study_maps(films, int8, twin, spec, edge_names, twin_names)

    probs = int8.probability(int8.logits(films))
    positive = np.flatnonzero(decision.positive(probs, int8.threshold))
    cells = {m: cell_scores(maps[m], grid) for m in names_all}
    mean_maps = {m: maps[m].mean(0) for m in names_all}
    mean_cells = {m: cell_scores(mean_maps[m][None], grid)[0] for m in names_all}
    spec_corr = {m: np.array([correlation(a, mean_maps[m]) for a in maps[m]]) for m in names_all}

    masks = cell_masks(spec.size, grid)
    prob = lambda imgs: int8.probability(int8.logits(imgs, batch_size=72))  # noqa: E731
    per_film = [evaluate_film(prob, films[i], {m: cells[m][i] for m in names_all}, mean_cells, ks, k, masks,
                              np.random.default_rng(1000 + int(i)), proto["n_random_draws"])
                for i in track(positive, len(positive), "deletion")]
    curves = summarise(per_film, names_all, ks, k)

    n_rand = min(cfg.n_random or proto["n_random"], len(films))
    rsel = np.unique(np.linspace(0, len(films) - 1, n_rand).astype(int))
    randomization, parity = randomization_check(films, rsel, maps, twin, config, fp32, spec, edge_names, twin_names,
                                                cfg.threads)

    rows = {m: candidate_row(m, proto, cost[m], spec_corr[m], curves[m], randomization[m], parity.get(m))
            for m in names_all}
    decision = pick(rows, proto["targets"])
    result = {"protocol": _relative(cfg.protocol), "bundle": str(bundle), "n_films": int(len(films)),
              "n_positive_films": int(len(positive)), "n_random_films": int(len(rsel)),
              "films": "validation split of the bundle (data.rebuild_split), never the test split",
              "threads": cfg.threads, "ks": ks, "k": k, "targets": proto["targets"], "candidates": rows,
              "pick": decision, "meaning": proto["meaning"]}
    write_json(out / "results.json", result)
    write_text(out / "results.md", render(result))
    plot_curves(result, out / "deletion.png")
    return result


def study_maps(films, int8, twin, spec, edge_names: list[str], twin_names: list[str]) -> tuple[dict, dict]:
    """Every candidate's map of every film, and its cost in ms per film: (maps, cost)."""

    names_all = edge_names + twin_names
    maps = {m: np.zeros((len(films),) + films.shape[1:], np.float32) for m in names_all}
    cost = {m: [] for m in names_all}
    for i in track(range(len(films)), len(films), "heat maps"):
        for m in edge_names:  # interleaved: contention from other work hits every method alike
            t0 = time.perf_counter()
            maps[m][i] = METHODS[m].film_map(int8, films[i])
            cost[m].append((time.perf_counter() - t0) * 1000)
        x = torch.from_numpy(normalize(films[i:i + 1], spec))
        for m in twin_names:
            layer, kind, _ = TWIN_METHODS[m]
            t0 = time.perf_counter()
            maps[m][i] = twin_map(twin, layer, kind, x)[0]
            cost[m].append((time.perf_counter() - t0) * 1000)

    return maps, cost


def randomization_check(films, rsel, maps, twin, config, fp32, spec, edge_names: list[str], twin_names: list[str],
                        threads: int) -> tuple[dict, dict]:
    """Maps of randomized models against the trained one (rank correlation), and INT8 vs fp32 maps."""

    names_all = edge_names + twin_names
    randomization, parity = {m: {} for m in names_all}, {}
    with tempfile.TemporaryDirectory() as tmp:
        stage("heatmap-study", f"randomization check on {len(rsel)} films")
        twins = randomized_twins(twin, config)
        edge_models = {"trained": fp32, **{lvl: export_twin(mdl, config, fp32, Path(tmp), lvl, threads)
                                           for lvl, mdl in twins.items()}}
        twin_models = {"trained": twin, **twins}
        ref: dict = {}
        for lvl in ("trained", "head", "full"):
            got = {}
            for m in edge_names:
                got[m] = np.stack([METHODS[m].film_map(edge_models[lvl], films[i]) for i in rsel])
            for m in twin_names:
                layer, kind, _ = TWIN_METHODS[m]
                got[m] = np.concatenate([twin_map(twin_models[lvl], layer, kind,
                                                  torch.from_numpy(normalize(films[i:i + 1], spec))) for i in rsel])
            if lvl == "trained":
                ref = got
                continue
            for m in names_all:
                r = [spearman(a, b) for a, b in zip(pool(ref[m]), pool(got[m]))]
                randomization[m][lvl] = {"median": round(float(np.median(r)), 4), "max": round(float(np.max(r)), 4)}
        for m in edge_names:  # INT8 (the study's maps) vs fp32 maps of the same films
            c = [correlation(a, b) for a, b in zip(maps[m][rsel], ref[m])]
            parity[m] = {"median": round(float(np.median(c)), 4), "min": round(float(np.min(c)), 4)}

    return randomization, parity


def candidate_row(m: str, proto: dict, cost: list[float], spec_corr: np.ndarray, curves: dict, randomization: dict,
                  parity: dict | None) -> dict:
    """One candidate's line in results.json: what it is, what it cost, how it scored."""
    own = METHODS[m].perturbation if m in METHODS else None
    ev = "grey" if own == "blur" else "blur"
    return {"title": METHODS[m].title if m in METHODS else TWIN_METHODS[m][2],
            "edge": m in METHODS, "passes": METHODS[m].passes if m in METHODS else None,
            "reason": proto["candidates"][m],
            "cost_ms": round(float(np.median(cost)), 1),
            "cost_on": INT8.file if m in METHODS else "PyTorch twin (fp32, forward + backward)",
            "specificity_median": round(float(np.median(spec_corr)), 4),
            "specificity_p90": round(float(np.quantile(spec_corr, 0.9)), 4),
            "evaluation_perturbation": ev, "evaluation": curves[ev], "curves": curves,
            "randomization": randomization, "int8_vs_fp32": parity}


# ---------------------------------------------------------------- reports

def table(result: dict) -> str:
    lines = ["| method | runs on | passes | cost ms/film | corr. with mean map (median) | deletion @k | "
             "by mean map | by random cells | vs mean map | vs random | insertion @k | "
             "randomized head / all (Spearman) | INT8 vs fp32 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["candidates"].items():
        ev, rnd = r["evaluation"], r["randomization"]
        par = r["int8_vs_fp32"]
        mark = " **(pick)**" if name == result["pick"]["method"] else ""
        lines.append(
            f"| {name}{mark} | {'edge (INT8)' if r['edge'] else 'twin only'} | {r['passes'] or '-'} | {r['cost_ms']} | "
            f"{r['specificity_median']:.2f} | {ev['deletion_at_k']:.4f} ({r['evaluation_perturbation']}) | "
            f"{ev['mean_map_deletion_at_k']:.4f} | {ev['random_deletion_at_k']:.4f} | "
            f"{_x(ev['deletion_vs_mean'])} | {_x(ev['deletion_vs_random'])} | {ev['insertion_at_k']:.4f} | "
            f"{rnd.get('head', {}).get('median', float('nan')):.2f} / {rnd.get('full', {}).get('median', float('nan')):.2f} | "
            f"{'-' if par is None else format(par['median'], '.3f')} |")
    return "\n".join(lines)


def _x(v) -> str:
    return "-" if v is None else f"{v:.2f}x"


def render(result: dict) -> str:
    p, t = result["pick"], result["targets"]
    k = result["k"]
    lines = ["# Heat-map study: results", "",
             f"{result['n_films']} validation films of `{result['bundle']}` ({result['films']}); deletion and "
             f"insertion on the {result['n_positive_films']} the INT8 model decides PNEUMONIA, k = {k} of 49 cells; "
             f"randomization on {result['n_random_films']} films. Protocol: `{Path(result['protocol']).name}`. "
             "Deletion: the drop in P(PNEUMONIA) when the k cells are hidden by the evaluation perturbation; a ratio "
             "is '-' where its denominator is not positive (hiding those cells did not lower P(PNEUMONIA)), and "
             "then counts as a missed target.", "",
             table(result), "",
             f"Targets: corr. with mean map <= {t['specificity_max']}; deletion >= {t['deletion_vs_mean_min']}x the mean "
             f"map's and >= {t['deletion_vs_random_min']}x random cells'; randomized maps Spearman <= "
             f"{t['randomization_max']}; <= {t['cost_ms_max']} ms per film at INT8.", "",
             f"**Pick: `{p['method']}`** ({'every target met' if p['all_targets_met'] else 'missed: ' + ', '.join(p['missed'])}). "
             + (f"`infer --heatmaps`: `{p['folder_method']}`." if p["folder_method"] else
              "`infer --heatmaps`: rule 5 found no candidate that meets the cost, specificity and deletion targets "
              "together, so folders use the pick as well."),
             f"Targets met per candidate: " + "; ".join(f"{n}: {', '.join(v) or 'none'}" for n, v in p["targets_met"].items())
             + ".", ""]
    if p["twin_only_better"]:
        lines += [f"Twin-only candidates better than the pick on every signal (next step, needs a gradient graph): "
                  f"{', '.join(p['twin_only_better'])}.", ""]
    lines += [f"What a map means: {result['meaning']['PNEUMONIA']}. On a NORMAL decision: {result['meaning']['NORMAL']}.",
              f"Scale: {result['meaning']['scale']}."]
    return "\n".join(lines) + "\n"


def plot_curves(result: dict, path: Path) -> Path:
    import matplotlib  # matplotlib: the [plots] extra, only when drawing

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # matplotlib: the [plots] extra, only when drawing

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, r in result["candidates"].items():
        ev = r["curves"][r["evaluation_perturbation"]]
        axes[0].plot(result["ks"], ev["deletion_curve"], marker=".", label=name)
        axes[1].plot(result["ks"], ev["insertion_curve"], marker=".", label=name)
    axes[0].set(xlabel="cells deleted (of 49)", ylabel="drop in P(PNEUMONIA)", title="deletion (higher = more faithful)")
    axes[1].set(xlabel="cells restored (of 49)", ylabel="rise in P(PNEUMONIA)", title="insertion (higher = better)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return path
