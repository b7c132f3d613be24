"""The HTTP service: serve, its API tokens, and push of a bundle to the hub."""

from __future__ import annotations

import click

from pneumo_edge.cli.common import ConfigDefaults, friendly
from pneumo_edge.edge.access import bind_names, check_bind, is_loopback
from pneumo_edge.edge.tokens import TokenStore, default_path


# Defaults: ServeConfig's fields and serve()'s parameters (ConfigDefaults; edge.serve imports no fastapi until it runs).
@click.command(cls=ConfigDefaults, config="pneumo_edge.edge.serve:ServeConfig,pneumo_edge.edge.serve:serve")
@click.option("--model", "model_path", help="ONNX model, bundle folder or hub id (default: the shipped export/model.onnx).")
@click.option("--host", show_default=True, help="Address to bind; 0.0.0.0 exposes it to the network.")
@click.option("--port", type=int, show_default=True, help="TCP port to listen on.")
@click.option("--workers", type=int, show_default=True, help="Processes, each with its own onnxruntime session.")
@click.option("--threads", type=int, help="onnxruntime threads per worker (default: cores / workers).")
@click.option("--concurrency", type=int, show_default=True, help="Images classified at once per worker.")
@click.option("--queue", type=int, show_default=True, help="Requests waiting per worker before 503 Busy.")
@click.option("--max-upload-mb", type=float, default=50, show_default=True,  # = serve.DEFAULT_MAX_UPLOAD_MB (a test)
              help="Larger uploads get 413.")
@click.option("--guard/--no-guard", show_default=True, help="Refuse out-of-distribution images.")
@click.option("--certfile", type=click.Path(exists=True, dir_okay=False), help="TLS certificate (PEM): serve HTTPS.")
@click.option("--keyfile", type=click.Path(exists=True, dir_okay=False), help="TLS private key (PEM).")
@click.option("--insecure-http", is_flag=True, help="Allow a non-loopback bind without TLS (warned at every start).")
@click.option("--tokens", "tokens_file", type=click.Path(dir_okay=False),
              help="API token file (see `pneumo-edge token`); always used off loopback [default: ~/.config/pneumo-edge/tokens.json].")
@click.option("--allow-host", multiple=True, help="Another Host name clients may use (besides the bind name and loopback).")
@click.option("--per-client", type=int, show_default=True, help="Requests in progress per client address.")
@click.option("--header-timeout", type=float, show_default=True, help="Seconds for a request's headers.")
@click.option("--body-timeout", type=float, show_default=True, help="Seconds for a request's body.")
@friendly
def serve(model_path, host, port, workers, threads, concurrency, queue, max_upload_mb, guard, certfile, keyfile,
          insecure_http, tokens_file, allow_host, per_client, header_timeout, body_timeout) -> None:
    """HTTP service and web page: POST /v1/predict, GET /v1/model, /metrics, /healthz, / (page), /openapi.json."""
    from pneumo_edge.edge.serve import (  # here, not at the top: the name is taken in this module
        ServeConfig,
        serve,
    )

    if tokens_file is None and not is_loopback(host):
        tokens_file = str(default_path())
    n_tokens = len(TokenStore(tokens_file).records) if tokens_file else None
    for line in check_bind(host, tls=bool(certfile), insecure_http=insecure_http, tokens=n_tokens):
        click.echo(line, err=True)
    config = ServeConfig(model=model_path, max_upload_bytes=int(max_upload_mb * 1024 * 1024), queue=queue,
                         concurrency=concurrency, threads=threads, guard=guard, tokens=tokens_file,
                         allowed_hosts=(*bind_names(host), *allow_host), per_client=per_client,
                         body_timeout=body_timeout)
    serve(config=config, host=host, port=port, workers=workers, certfile=certfile, keyfile=keyfile,
          insecure_http=insecure_http, header_timeout=header_timeout)


@click.group()
def token() -> None:
    """API tokens for `serve` off loopback: create (shown once), list, revoke. Only hashes are stored."""


def _token_file_option(f):
    return click.option("--tokens", "tokens_file", type=click.Path(dir_okay=False),
                        help="Token file [default: ~/.config/pneumo-edge/tokens.json].")(f)


@token.command("create")
@click.argument("name")
@_token_file_option
@friendly
def token_create(name, tokens_file) -> None:
    """Make a token named NAME and print it once (it is not stored, only its hash)."""
    store = TokenStore(tokens_file)
    secret = store.create(name)
    click.echo(f"created token '{name}' in {store.path}; it is shown only now:", err=True)
    click.echo(secret)


@token.command("list")
@_token_file_option
@friendly
def token_list(tokens_file) -> None:
    """The tokens' names and creation times."""
    store = TokenStore(tokens_file)
    for r in store.records:
        click.echo(f"{r.name}\tcreated {r.created}")
    click.echo(f"{len(store.records)} token(s) in {store.path}", err=True)


@token.command("revoke")
@click.argument("name")
@_token_file_option
@friendly
def token_revoke(name, tokens_file) -> None:
    """Remove the token named NAME; a running server refuses it from its next request."""
    TokenStore(tokens_file).revoke(name)
    click.echo(f"revoked token '{name}'")


@click.command()
@click.argument("bundle", type=click.Path())
@click.option("--repo-id", required=True, help="Hugging Face model repository, e.g. me/pneumo-edge-lite0.")
@click.option("--dry-run", is_flag=True, help="List what would be uploaded; upload nothing.")
@click.option("--public", is_flag=True, help="Make a new repository public (default: private).")
@click.option("--include-patient-images", is_flag=True,
              help="Also upload the files that show patients' films (the bundle's contact sheet).")
@friendly
def push(bundle, repo_id, dry_run, public, include_patient_images) -> None:
    """Upload a bundle's own files (model card included) to the Hugging Face hub, privately unless --public."""
    from pneumo_edge.bundle.hub import left_out, push  # here, not at the top: the name is taken in this module

    files = push(bundle=bundle, repo_id=repo_id, dry_run=dry_run, public=public,
                 include_patient_images=include_patient_images)
    total = sum(f.stat().st_size for f in files) / 1e6
    for f in files:
        click.echo(f"{'would upload' if dry_run else 'uploaded'} {f}  ({f.stat().st_size / 1e6:.2f} MB)")
    for f, why in left_out(bundle, include_patient_images):
        click.echo(f"left out {f}: {why}")
    click.echo(f"{len(files)} files, {total:.1f} MB {'(dry run)' if dry_run else f'-> https://huggingface.co/{repo_id}'}"
               f" ({'public' if public else 'private'})")

