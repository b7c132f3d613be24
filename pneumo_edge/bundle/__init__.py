"""Building bundles: ONNX export and its gates, guard fitting, heat-map gates, card, manifest, push."""
