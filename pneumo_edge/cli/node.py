"""The DICOM node: listen."""

from __future__ import annotations

import click

from pneumo_edge.cli.common import MODEL_HELP, ConfigDefaults, friendly, quiet_option
from pneumo_edge.edge.errors import PneumoEdgeError


# Defaults: NodeConfig's fields (ConfigDefaults).
@click.command(cls=ConfigDefaults, config="pneumo_edge.edge.node.service:NodeConfig")
@click.option("--port", type=int, required=True, help="DICOM port to listen on.")
@click.option("--ae-title", required=True, help="This node's AE title (what senders call).")
@click.option("--send-to", "send_to", multiple=True, required=True,
              help="Where each result goes: AET@HOST:PORT (C-STORE) or a DICOMweb base URL https://host/path "
                   "(STOW-RS). Repeat for several destinations.")
@click.option("--spool", required=True, type=click.Path(file_okay=False),
              help="Folder for received instances, queued results, the dead-letter folder and audit.jsonl.")
@click.option("--model", "model_path", help=MODEL_HELP)
@click.option("--host", show_default=True, help="Address to bind (0.0.0.0: every interface).")
@click.option("--calling-ae", "calling_aes", multiple=True,
              help="Accept associations only from this calling AE title (repeatable; default: any).")
@click.option("--max-attempts", type=int, show_default=True,
              help="Refused sends of one result before it goes to the dead-letter folder.")
@click.option("--retry-after", "retry_after_s", type=float, show_default=True,
              help="Seconds before the first retry; doubles per failure, capped at 30 s.")
@click.option("--guard/--no-guard", show_default=True, help="Refuse out-of-distribution images.")
@click.option("--heatmaps", is_flag=True,
              help="Also send a Secondary Capture of the heat-map overlay ('NOT FOR DIAGNOSIS' burned in) for each "
                   "image the guard accepts.")
@click.option("--links", type=int, show_default=True,
              help="Associations at once to each C-STORE destination (a PACS may allow fewer per caller).")
@click.option("--max-associations", type=int, show_default=True, help="Incoming associations open at once, in all.")
@click.option("--max-per-peer", type=int, show_default=True, help="Incoming associations open at once from one IP address.")
@click.option("--request-timeout", "request_timeout_s", type=float, show_default=True,
              help="Seconds a caller has for its whole association request, from connecting.")
@click.option("--max-instance-mb", type=float, show_default=True, help="Largest data set received (MB); larger: cut off.")
@click.option("--send-timeout", "send_timeout_s", type=float, show_default=True,
              help="Seconds a destination has to answer; past it, it counts as unreachable (backed off, no attempt).")
@click.option("--stop-timeout", "stop_timeout_s", type=float, show_default=True,
              help="Seconds from SIGTERM to exit, at most; what is not done stays spooled.")
@quiet_option
@friendly
def listen(port, ae_title, send_to, spool, model_path, host, calling_aes, max_attempts, retry_after_s, guard,
           heatmaps, links, **limits) -> None:
    """Receive X-rays by DICOM C-STORE, classify each, and send a DICOM SR per image to --send-to.

    An instance is on disk before C-STORE success is answered; results go out through a durable outbox.
    SIGTERM (or Ctrl-C) stops accepting, finishes what is in hand within --stop-timeout, flushes and exits 0;
    a stage that ends on an error stops the node with exit code 3.
    """
    try:
        from pneumo_edge.edge.node.service import NodeConfig
        from pneumo_edge.edge.node.service import listen as run
    except ImportError as e:
        raise PneumoEdgeError(f"`listen` needs the node extra ({e.name} is missing): pip install \".[node]\"") from None
    run(NodeConfig(port=port, ae_title=ae_title, destinations=list(send_to), spool=spool, model=model_path, host=host,
                   calling_aes=tuple(calling_aes), guard=guard, max_attempts=max_attempts, retry_after_s=retry_after_s,
                   heatmaps=heatmaps, links=links, **limits))

