"""The edge side: everything that runs on the box that classifies X-rays. Never imports torch.

    from pneumo_edge.edge import EdgeModel, Outputs, predict_paths
    model = EdgeModel("export/model.int8.onnx")
    with Outputs("predictions.csv") as out:
        predict_paths(["./xrays"], model, out)

Modules, each owning one thing:
    runtime    the runtime seam: open a model file, read its metadata, run it (onnxruntime)
    meta       BundleMeta: the metadata every model file carries, validated at load
    model      EdgeModel: a runtime plus its metadata, guard and heat-map head
    imaging    decoding (an explicit list of formats), grey levels, crop and resize: the preprocessing
    guard      the out-of-distribution check and its reasons
    decision   Scored: the one record of a scored image, and the one place the threshold is applied
    cam        heat maps (CAM) and their overlays; `explain` with onnxruntime
    inputs     files and folders named by the user -> the files to classify and rows for odd paths
    outputs    the CSV / JSON Lines row files: lock, flush, fsync, resume
    infer      the local engine: decode pool, batches, rows
    cluster    the Ray engine (the [cluster] extra)
    api        the Python API (`pneumo_edge.load`)
    serve      the HTTP service and its page (the [serve] extra)
    stats      metrics and bootstrap intervals in numpy (validate on the light install)
    patients   patient ids from file names
    hub        Hugging Face hub downloads
    progress   bars, heartbeats, --quiet
    atomic, errors   temp-then-rename writes and locks; error classes with their exit codes
The training side imports from here, never the reverse.
"""

from .errors import ImageError, ModelError, PneumoEdgeError
from .infer import InferConfig, predict_paths
from .meta import BundleMeta, read_meta
from .model import EdgeModel
from .outputs import Outputs

__all__ = ["BundleMeta", "EdgeModel", "ImageError", "InferConfig", "ModelError", "Outputs", "PneumoEdgeError",
           "predict_paths", "read_meta"]
