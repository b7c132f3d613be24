"""Site tools on the light install (numpy + onnxruntime): validate, calibrate, adapt, monitor; metrics and plots."""
