"""Export a zoo model to a Triton-layout repository entry: ONNX (and a TensorRT plan on a GPU),
parity-checked, with its config.pbtxt, labels and serving parameters."""
