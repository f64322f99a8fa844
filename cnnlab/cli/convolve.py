"""`cnnlab convolve`: the lab's part 1 — filter an image, save the responses, tabulate output shapes."""

from __future__ import annotations

import argparse
from pathlib import Path

from cnnlab.convolution import (
    ASCENT_HELP,
    FILTER_SPEC_HELP,
    MODES,
    convolve,
    kernel_from_spec,
    load_ascent,
    load_image,
    output_shape,
    plot_responses,
)
from cnnlab.core.errors import CnnlabError

DEFAULT_FILTERS = ("gaussian:15,4", "sobel-x", "sobel-y")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convolve",
        help="convolve an image with Gaussian, Sobel or your own kernels (lab part 1)",
        description=(
            "Convolve an image with 2-D kernels (scipy.signal.convolve2d, zero padding; colour images channel\n"
            "by channel), save a figure of the original and the absolute responses, and print each kernel's\n"
            "output shape in every mode: full n+k-1, same n (odd kernels only), valid n-k+1."
        ),
        epilog=(
            "examples:\n"
            "  cnnlab convolve                         # ascent, gaussian:15,4 sobel-x sobel-y, mode same\n"
            "  cnnlab convolve photo.jpg --filter sobel-x --mode valid\n"
            "  cnnlab convolve --filter 'kernel:0,1,0;1,-4,1;0,1,0' --filter my_kernel.npy --mode full"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "image",
        nargs="?",
        help=f"image file (default: scipy.datasets.ascent(), 512x512 grey; offline without it, {ASCENT_HELP})",
    )
    parser.add_argument(
        "--filter",
        dest="filters",
        action="append",
        metavar="SPEC",
        help=f"a kernel, repeatable (default: {' '.join(DEFAULT_FILTERS)}). SPEC is {FILTER_SPEC_HELP}",
    )
    parser.add_argument(
        "--mode", choices=MODES, default="same", help="convolution mode of the responses in the figure (default: same)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("convolution-out"), help="folder for the figure (default: ./convolution-out)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    image = load_image(args.image) if args.image else load_ascent()
    source = args.image or "scipy.datasets.ascent()"
    kernels = dict(kernel_from_spec(spec) for spec in args.filters or DEFAULT_FILTERS)
    responses = {name: convolve(image, kernel, args.mode) for name, kernel in kernels.items()}
    figure = plot_responses(image, responses, args.out / f"convolution-{args.mode}.png")

    print(f"Output shapes for {source}, shape {image.shape} (scipy.signal.convolve2d):")
    rows = [["filter", "kernel", *MODES]]
    for name, kernel in kernels.items():
        rows.append([name, str(kernel.shape), *(_shape_or_reason(image.shape, kernel.shape, mode) for mode in MODES)])
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    print(f"Figure of the original and the |responses| in mode {args.mode!r}: {figure}")
    return 0


def _shape_or_reason(image_shape: tuple[int, ...], kernel_shape: tuple[int, ...], mode: str) -> str:
    try:
        return str(output_shape(image_shape, kernel_shape, mode))
    except CnnlabError:  # the image and kernel are valid here, so only these two combinations fail
        return "n/a: even kernel" if mode == "same" else "n/a: kernel > image"
