"""pneumo-edge: a pneumonia-vs-normal chest X-ray classifier from CPU training to the edge.

Library entry points (the CLI is a thin layer over these):
    pneumo_edge.train.fit            train and pick the best epoch on validation
    pneumo_edge.evaluate.evaluate    test metrics, calibration, plots, ledger
    pneumo_edge.onnx_export.export   ONNX + INT8 bundle with a parity gate
    pneumo_edge.runtime.predict_paths  onnxruntime batch inference (no torch import)
    pneumo_edge.gradcam.explain      Grad-CAM on the PyTorch twin
    pneumo_edge.bench.run_benchmark  latency, throughput and accuracy side by side
"""

__version__ = "0.1.0"
