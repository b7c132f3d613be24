"""pneumo-edge: a pneumonia-vs-normal chest X-ray classifier from CPU training to the edge.

    import pneumo_edge
    m = pneumo_edge.load("export/model.int8.onnx")   # onnxruntime only: no torch needed
    m.predict("xray.jpeg")

Library entry points (the CLI is a thin layer over these):
    pneumo_edge.load                     the Python API (pneumo_edge.edge.api)
    pneumo_edge.edge.predict_paths       batch inference over files and folders
    pneumo_edge.train.fit                train and pick the best epoch on validation
    pneumo_edge.studies.recipes.run_study          the recipe study and its selection rule
    pneumo_edge.train.evaluate.evaluate        test metrics, calibration, plots, ledger
    pneumo_edge.bundle.export.export       ONNX + INT8 bundle with a parity gate
    pneumo_edge.site.validate.validate        an exported .onnx file on a labelled folder, with its stored rule
    pneumo_edge.edge.heatmap.explain     heat maps (evidence for PNEUMONIA) from an .onnx file, no torch
    pneumo_edge.bundle.gradcam.explain          the same heat maps (or Grad-CAM at a layer) on the PyTorch twin
    pneumo_edge.studies.heatmaps.run_study  heat-map methods scored on validation, picked by a committed rule
    pneumo_edge.benchmarks.variants.run_benchmark      latency, throughput and accuracy side by side
"""

__version__ = "0.1.0"

from pneumo_edge.edge.api import load  # noqa: E402 - torch-free

__all__ = ["load", "__version__"]
