"""`cnnlab export`: a trained model as an ONNX file that takes raw uint8 pixels, checked against PyTorch."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a trained model to ONNX (checked against PyTorch with ONNX Runtime)",
        description="Export a run folder or model file to ONNX. The file takes uint8 images (batch, height, "
        "width, channels) of any batch size, scales them inside the graph and returns class probabilities; its "
        "metadata holds the input layout, scaling, input size and class names. Before the file is put in place, "
        "ONNX Runtime runs it on 64 images and must match PyTorch (max |difference| < 1e-4, same top class). "
        "Needs: pip install 'cnnlab[onnx]'.",
    )
    parser.add_argument("model", type=Path, metavar="MODEL", help="run folder or model file (.safetensors)")
    parser.add_argument("--format", choices=("onnx",), default="onnx", help="export format (default: onnx)")
    parser.add_argument(
        "--out", type=Path, help="output file (default: model.onnx in the run folder, or the model file's name .onnx)"
    )
    parser.set_defaults(func=run)


def default_output(model_path: Path) -> Path:
    return model_path / "model.onnx" if model_path.is_dir() else model_path.with_suffix(".onnx")


def run(args: argparse.Namespace) -> int:
    from cnnlab.evaluate.export import export_onnx
    from cnnlab.models.registry import load_model

    model = load_model(args.model, device="cpu")  # ONNX Runtime is compared with PyTorch on the CPU
    result = export_onnx(model, args.out or default_output(args.model))
    size = result.path.stat().st_size
    print(f"Wrote {result.path} ({size / 2**20:.2f} MB, {result.seconds:.1f} s)")
    print(result.summary())
    return 0
