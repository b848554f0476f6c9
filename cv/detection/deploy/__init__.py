"""Running a trained detector elsewhere: ONNX export and ONNX Runtime, INT8 quantization, video."""
