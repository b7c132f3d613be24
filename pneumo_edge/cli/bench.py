"""`pneumo-edge bench ...`: every measurement, one subcommand each; results under bench/results/."""

from __future__ import annotations

import click

from pneumo_edge.benchmarks.adapt import bench_adapt as run
from pneumo_edge.benchmarks.adapt import render_bench
from pneumo_edge.benchmarks.memory import MemoryConfig, measure_decode_memory, render
from pneumo_edge.benchmarks.variants import BenchConfig, run_benchmark
from pneumo_edge.cli.common import (
    DEFAULT_DATA,
    MODEL_HELP,
    ConfigDefaults,
    DefaultGroup,
    friendly,
    model_or_shipped_int8,
    quiet_option,
)
from pneumo_edge.edge.model import default_model_path
from pneumo_edge.edge.targets import SHIPPED_BUNDLE


@click.group("bench", cls=DefaultGroup, default="variants")
def bench_group() -> None:
    """Measurements: latency of every variant, memory, engines, pipeline, browser, heat maps, node, serve."""


# Defaults: BenchConfig's fields (ConfigDefaults).
@bench_group.command("variants", cls=ConfigDefaults, config="pneumo_edge.benchmarks.variants:BenchConfig")
@click.option("--bundle", default=None, help="Bundle folder (default: the shipped export/).")
@click.option("--data", default=DEFAULT_DATA, show_default=True,
              help="Local folder or hub dataset id whose test split is timed; '' times the committed X-rays.")
@click.option("--out", show_default=True, help="Folder for the results table, JSON and plot.")
@click.option("--iters", type=int, show_default=True, help="Timed batch-1 calls per variant.")
@click.option("--batch-iters", type=int, show_default=True, help="Timed batch-16 calls per variant.")
@click.option("--smoke", is_flag=True, help="A few iterations, no end-to-end run: checks the machinery only.")
@click.option("--min-auroc", type=float, help="Fail (exit 4) if any variant's ROC-AUC is lower.")
@click.option("--max-p50-ms", type=float, help="Fail (exit 4) if INT8 batch-1 p50 latency is higher.")
@click.option("--ledger", show_default=True, help="Where reading the test split is recorded ('' for none).")
@quiet_option
@friendly
def bench(bundle, data, out, iters, batch_iters, smoke, min_auroc, max_p50_ms, ledger) -> None:
    """Latency, throughput and accuracy of PyTorch eager vs onnxruntime fp32 vs INT8."""

    cfg = BenchConfig(bundle=bundle or str(default_model_path().parent), data=data, out=out,
                      iters=5 if smoke else iters, batch_iters=2 if smoke else batch_iters,
                      warmup=1 if smoke else 10, end_to_end=not smoke, min_auroc=min_auroc, max_p50_ms=max_p50_ms,
                      ledger=ledger or None)
    run_benchmark(cfg)


# Defaults: MemoryConfig's fields (ConfigDefaults).
@bench_group.command("memory", cls=ConfigDefaults, config="pneumo_edge.benchmarks.memory:MemoryConfig")
@click.option("--model", "model_path", help="ONNX model or bundle folder (default: the shipped model).")
@click.option("--out", show_default=True, help="Folder for decode-memory.json.")
@click.option("--files", "at_limit", type=int, show_default=True,
              help="DICOMs at the pixel limit, and as many decompression bombs.")
@quiet_option
@friendly
def bench_memory(model_path, out, at_limit) -> None:
    """Peak memory of `infer` over DICOMs at the pixel limit and decompression bombs, 1 and 2 decode workers."""
    click.echo(render(measure_decode_memory(MemoryConfig(model=model_path, out=out, at_limit=at_limit, bombs=at_limit))))
    click.echo(f"wrote {out}/decode-memory.json")


@bench_group.command("heatmaps")
@click.option("--bundle", default=SHIPPED_BUNDLE, show_default=True, help="Bundle whose model.int8.onnx and model.onnx are timed.")
@click.option("--images", default="examples/xrays", show_default=True, help="Folder of films (validation or demo films).")
@click.option("--out", default="bench/results/heatmaps.json", show_default=True, help="Result JSON.")
@click.option("--films", "n_films", type=int, default=16, show_default=True, help="Films timed per method and file.")
@quiet_option
@friendly
def bench_heatmaps(bundle, images, out, n_films) -> None:
    """Cost per film of every edge heat-map method, INT8 and fp32, one film at a time."""
    from pneumo_edge.benchmarks.heatmaps import (  # here, not at the top: the name is taken in this module
        bench_heatmaps as run,
    )
    from pneumo_edge.benchmarks.heatmaps import render

    click.echo(render(run(bundle=bundle, images=images, out=out, n_films=n_films)))
    click.echo(f"wrote {out}")


# Defaults: NodeBenchConfig's fields (ConfigDefaults).
@bench_group.command("node", cls=ConfigDefaults, config="pneumo_edge.benchmarks.node:NodeBenchConfig")
@click.option("--images", required=True,
              help="Folder with NORMAL/ and PNEUMONIA/ JPEG films (e.g. ../shared/data/chest_xray/train).")
@click.option("--films", "n", type=int, show_default=True, help="Films storescu sends.")
@click.option("--senders", type=int, show_default=True,
              help="storescu processes sending at once (modalities), the films dealt among them.")
@click.option("--model", "model_path", help=MODEL_HELP)
@click.option("--out", show_default=True, help="Folder for node.json (node-N-senders.json with --senders N).")
@quiet_option
@friendly
def bench_node(images, n, senders, model_path, out) -> None:
    """Films by storescu through `listen` to a local Orthanc: instances/s, C-STORE-to-SR latency, peak memory."""
    from pneumo_edge.benchmarks.node import (  # here, not at the top: the name is taken in this module
        NodeBenchConfig,
        render,
        result_name,
    )
    from pneumo_edge.benchmarks.node import bench_node as run

    click.echo(render(run(NodeBenchConfig(images=images, n=n, model=model_path, out=out, senders=senders))))
    click.echo(f"wrote {out}/{result_name(senders)}")


# Defaults: EnginesConfig's fields (ConfigDefaults).
@bench_group.command("engines", cls=ConfigDefaults, config="pneumo_edge.benchmarks.engines:EnginesConfig")
@click.option("--model", "model_path", help="ONNX model both engines run [default: the shipped bundle's INT8 file].")
@click.option("--images", required=True, help="Folder of X-rays both engines classify (e.g. ../shared/data/chest_xray/test).")
@click.option("--out", show_default=True, help="Folder for engines.json and engines.md.")
@click.option("--rounds", type=int, show_default=True, help="Alternating local/Ray rounds (best is reported).")
@quiet_option
@friendly
def bench_engines(model_path, images, out, rounds) -> None:
    """infer's local engine against --engine ray in local mode, and an estimate for a 10M-image archive."""
    from pneumo_edge.benchmarks.engines import (  # here, not at the top: the name is taken in this module
        EnginesConfig,
        render,
    )
    from pneumo_edge.benchmarks.engines import bench_engines as run

    model = model_or_shipped_int8(model_path)
    click.echo(render(run(EnginesConfig(folder=images, model=model, out=out, rounds=rounds))))
    click.echo(f"wrote {out}/engines.json and engines.md")


# Defaults: PipelineConfig's fields (ConfigDefaults).
@bench_group.command("pipeline", cls=ConfigDefaults, config="pneumo_edge.benchmarks.pipeline:PipelineConfig")
@click.option("--images", required=True, help="Folder of X-rays (e.g. ../shared/data/chest_xray/test).")
@click.option("--model", "model_path", help="ONNX file both run [default: the shipped bundle's INT8 file].")
@click.option("--out", show_default=True, help="Folder for pipeline.json and pipeline.md.")
@click.option("--rounds", type=int, show_default=True, help="Alternating rounds (the best of each is reported).")
@click.option("--batch-size", type=int, show_default=True, help="Images per onnxruntime call, in both.")
@quiet_option
@friendly
def bench_pipeline(images, model_path, out, rounds, batch_size) -> None:
    """The whole `infer` process against a bare INT8 onnxruntime session over the same images."""
    from pneumo_edge.benchmarks.pipeline import (  # here, not at the top: the name is taken in this module
        PipelineConfig,
        render,
    )
    from pneumo_edge.benchmarks.pipeline import bench_pipeline as run

    model = model_or_shipped_int8(model_path)
    click.echo(render(run(PipelineConfig(images=images, model=model, out=out, rounds=rounds, batch_size=batch_size))))
    click.echo(f"wrote {out}/pipeline.json and pipeline.md")


# Defaults: BrowserBenchConfig's fields (ConfigDefaults).
@bench_group.command("browser", cls=ConfigDefaults, config="pneumo_edge.benchmarks.browser:BrowserBenchConfig")
@click.option("--model", show_default=True, help="ONNX file both runtimes run.")
@click.option("--images", show_default=True,
              help="Folder with NORMAL/ and PNEUMONIA/ films (a runtime comparison: no metric is read).")
@click.option("--per-class", type=int, show_default=True, help="Films of each class.")
@click.option("--examples", show_default=True, help="The demo X-rays, also compared.")
@click.option("--threads", multiple=True, type=int, default=(1, 2), show_default=True,
              help="onnxruntime-web threads, one run each (more than 1: the page is cross-origin isolated).")
@click.option("--fp32-model", show_default=True,
              help="The same films through this file too ('' to skip): the page's code without INT8 rounding.")
@click.option("--external", show_default=True, help="Other films, reported apart for decoding ('' to skip).")
@click.option("--heatmap-films", type=int, show_default=True,
              help="Films whose heat map (about 50 model runs each) is drawn and compared, per run.")
@click.option("--out", show_default=True, help="Result file.")
@click.option("--force", is_flag=True, help="Overwrite --out.")
@quiet_option
@friendly
def bench_browser(model, images, per_class, examples, threads, fp32_model, external, heatmap_films, out,
                  force) -> None:
    """The page's in-browser runtime (headless Chromium) against `infer`: parity per film and ms per film."""
    from pneumo_edge.benchmarks.browser import (  # here, not at the top: the name is taken in this module
        BrowserBenchConfig,
        render,
    )
    from pneumo_edge.benchmarks.browser import bench_browser as run

    click.echo(render(run(BrowserBenchConfig(out=out, model=model, images=images, per_class=per_class,
                                             examples=examples, threads=list(threads), fp32_model=fp32_model or None,
                                             external=external or None, heatmap_films=heatmap_films,
                                             force=force))))
    click.echo(f"wrote {out}")


# Defaults: LoadConfig's fields (ConfigDefaults).
@bench_group.command("serve", cls=ConfigDefaults, config="pneumo_edge.benchmarks.serve:LoadConfig")
@click.option("--model", "model_path", help="Model the server under test runs [default: the shipped bundle's INT8 file].")
@click.option("--images", required=True, help="Folder of X-rays to send (e.g. ../shared/data/chest_xray/test).")
@click.option("--requests", "n_requests", type=int, default=2000, show_default=True,  # = LoadConfig.requests (a test)
              help="Requests to send in all.")
@click.option("--clients", type=int, show_default=True, help="Concurrent clients on loopback.")
@click.option("--heatmap", is_flag=True, help="Ask every request for a heat map.")
@click.option("--workers", type=int, show_default=True, help="Server worker processes.")
@click.option("--threads", type=int, help="onnxruntime threads per server worker.")
@click.option("--out", show_default=True, help="Folder for the serve-*.json result.")
@click.option("--slow-clients", type=int, show_default=True,
              help="Instead: a normal client's latency (--requests of them) while this many slow clients are connected.")
@friendly
def bench_serve(model_path, images, n_requests, clients, heatmap, workers, threads, out, slow_clients) -> None:
    """Load-test `pneumo-edge serve` on loopback: throughput, p50/p95/p99, errors, memory growth."""
    from pneumo_edge.benchmarks.serve import (  # here, not at the top: the name is taken in this module
        LoadConfig,
        load_test,
        render,
    )

    model_path = model_or_shipped_int8(model_path)
    r = load_test(LoadConfig(model=model_path, images=images, requests=n_requests, clients=clients, heatmap=heatmap,
                             workers=workers, threads=threads, out=out, slow_clients=slow_clients))
    click.echo(render(r))
    if r.get("errors") or r.get("status_codes", {}).keys() - {"200"}:
        raise SystemExit(1)



# Defaults: NodeBoundsConfig's fields (ConfigDefaults).
@bench_group.command("node-bounds", cls=ConfigDefaults, config="pneumo_edge.benchmarks.node_bounds:NodeBoundsConfig")
@click.option("--model", "model", help=MODEL_HELP)
@click.option("--out", show_default=True, help="Folder for node-bounds.json.")
@quiet_option
@friendly
def bench_node_bounds(model, out) -> None:
    """Hostile input against `listen`: a deflate bomb, trickling and silent peers, a stalled PACS, odd headers."""
    from pneumo_edge.benchmarks.node_bounds import (  # here, not at the top: the name is taken in this module
        NodeBoundsConfig,
        render,
    )
    from pneumo_edge.benchmarks.node_bounds import bench_node_bounds as run

    click.echo(render(run(NodeBoundsConfig(out=out, model=model))))
    click.echo(f"wrote {out}/node-bounds.json")


@bench_group.command("adapt")
@click.argument("site")
@click.option("--bundle", default=SHIPPED_BUNDLE, show_default=True, help="The parent bundle folder.")
@click.option("--data", default=DEFAULT_DATA, show_default=True, help="Home data (replayed; home validation).")
@click.option("--out", default="bench/results/adapt.json", show_default=True, help="The result file.")
@click.option("--work", default="bench/adapt", show_default=True, help="Folder for the adapted bundles.")
@click.option("--fine-tune", is_flag=True, help="Also the fine-tune depth (about 8 minutes on 2 cores).")
@click.option("--reuse", multiple=True, type=(click.Choice(["head refit", "fine-tune"]), click.Path(exists=True)),
              help="METHOD FOLDER: summarise an adapted bundle written before instead of running it again.")
@click.option("--force", is_flag=True, help="Overwrite the bundles in --work.")
@quiet_option
@friendly
def bench_adapt(site, bundle, data, out, work, fine_tune, reuse, force) -> None:
    """Adapt BUNDLE to the labelled SITE folder and hold the result against the targets (bench/results/adapt.json)."""
    r = run(site, bundle, data, out, work, fine_tune, dict(reuse), force)
    click.echo(render_bench(r))
    click.echo(f"wrote {out}")
