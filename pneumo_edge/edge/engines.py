"""The row file is opened before the model loads (so a bad --out is refused at once), then one engine runs.

    s, labels = run_engine("local", ["xrays/"], None, "rows.csv", None, False, False, echo, batch_size=16)
"""

from __future__ import annotations

from typing import Callable

from .api import resolve_model
from .infer import InferConfig, predict_paths
from .model import EdgeModel
from .outputs import Outputs


def run_engine(engine: str, paths: list[str], model_path: str | None, out: str, json_path: str | None, resume: bool,
               force: bool, echo: Callable[[dict], None], *, batch_size: int, workers: int | None = None,
               guard: bool = True, heatmaps: str | None = None, address: str | None = None,
               manifest: str | None = None, actors: int | None = None, threads_per_actor: int | None = None):
    """(the run's summary, the model's labels) from the local engine or Ray (--engine ray)."""
    if engine == "ray":
        from .cluster import (  # the [cluster] extra, only when asked
            ClusterConfig,
            open_outputs,
            predict_cluster,
        )

        with open_outputs(out, json_path, resume, force) as outputs:
            model = EdgeModel(resolve_model(model_path), threads=1)
            cfg = ClusterConfig(address=address, actors=actors, threads_per_actor=threads_per_actor or 1,
                                batch_size=batch_size, guard=guard)
            return predict_cluster(paths, model, outputs, cfg, manifest=manifest, echo=echo), model.labels
    with Outputs(out, json_path, resume, force) as outputs:
        model = EdgeModel(resolve_model(model_path))
        cfg = InferConfig(batch_size=batch_size, workers=workers, guard=guard, heatmaps=heatmaps)
        return predict_paths(paths, model, outputs, cfg, echo=echo), model.labels
