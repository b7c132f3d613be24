"""The edge side: everything that runs on the box that classifies X-rays. Never imports torch.

    from pneumo_edge.edge import EdgeModel, predict_paths
    model = EdgeModel("export/model.int8.onnx")
    predict_paths(["./xrays"], model, out_csv="predictions.csv")

Modules: `imaging` (decode, resize, normalise), `meta` (the bundle metadata), `model`
(onnxruntime session), `guard` (out-of-distribution scoring), `infer` (folders -> rows),
`atomic` and `errors` (shared by both sides). The training side imports from here,
never the reverse.
"""

from .errors import ImageError, ModelError, PneumoEdgeError
from .infer import predict_paths
from .meta import BundleMeta, read_meta
from .model import EdgeModel

__all__ = ["BundleMeta", "EdgeModel", "ImageError", "ModelError", "PneumoEdgeError", "predict_paths", "read_meta"]
