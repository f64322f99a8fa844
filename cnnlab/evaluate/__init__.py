"""Using and judging trained models: metrics, robustness to rotations and sizes, predictions on files,
test-time augmentation, ImageNet predictions, ONNX export, and explanations (Grad-CAM, filters).
"""
