"""`cnnlab lab`: run the lab's parts in order and write the report (HTML and Markdown)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cnnlab.cli._data import add_data_options


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "lab",
        help="run the whole lab and write a report",
        description="Run every part of the lab in order and write a self-contained HTML report (and a Markdown "
        "twin) with figures, tables and the lab's questions answered from this run's measurements. It runs on "
        "CIFAR-10 by default; --data runs it on another data set (parts written for CIFAR-10 say so). Finished "
        "parts are reused on a rerun, so a killed run continues where it stopped. A part whose input is "
        "missing is skipped, and the report says how to provide it.",
    )
    parser.add_argument("--out", type=Path, default=Path("lab-report"), help="report folder (default: lab-report)")
    parser.add_argument("--quick", action="store_true", help="fewer epochs and settings: minutes instead of an hour")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests: a few hundred images
    parser.add_argument("--photos", type=Path, help="folder of photos for ResNet50 (default: $CNNLAB_PHOTOS)")
    parser.add_argument("--weights", type=Path, help="ResNet50 ImageNet weights (default: $CNNLAB_RESNET50_WEIGHTS)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--no-carbon", action="store_true", help="do not track the energy of training runs")
    parser.add_argument("--only", nargs="+", metavar="PART", help="run only these parts (names as printed)")
    parser.add_argument("--fresh", action="store_true", help="redo every part instead of reusing finished ones")
    add_data_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cnnlab.core.errors import ConfigError
    from cnnlab.core.locks import folder_lock
    from cnnlab.lab.runner import discover_parts

    data_path = None if args.data in (None, "cifar10", "cifar100") else Path(args.data)  # else a data set's name
    for option, path in (("--data", data_path), ("--photos", args.photos), ("--weights", args.weights)):
        if path is not None and not path.exists():
            raise ConfigError(f"{option} {path} does not exist; give an existing path or leave {option} out")
    parts = discover_parts()
    if args.only:
        unknown = sorted(set(args.only) - {key for key, _ in parts})
        if unknown:
            raise ConfigError(f"unknown parts {unknown}; choose from {[key for key, _ in parts]}")
        parts = [(key, part) for key, part in parts if key in args.only]
    if args.out.exists() and not args.out.is_dir():
        raise ConfigError(f"--out {args.out} is a file, not a folder; give a folder for the report (new or existing)")
    with folder_lock(args.out, what="lab output folder"):
        return _run_lab(args, parts)


def _run_lab(args: argparse.Namespace, parts: list) -> int:
    import shutil

    from cnnlab.lab.context import LabContext
    from cnnlab.lab.report import ReportInfo, write_report
    from cnnlab.lab.runner import run_parts

    if args.fresh:
        shutil.rmtree(args.out / "parts", ignore_errors=True)
        shutil.rmtree(args.out / "runs", ignore_errors=True)
    ctx = LabContext(
        out=args.out,
        quick=args.quick,
        tiny=args.tiny,
        data_source=args.data,
        data_options={
            "image_size": args.image_size,
            "color_mode": args.color_mode,
            "crop_to_aspect_ratio": args.crop_to_aspect_ratio,
            "pad_to_aspect_ratio": args.pad_to_aspect_ratio,
            "class_names": args.class_names,
            "validation_split": args.validation_split,
            "strict": args.strict,
        },
        photos=args.photos,
        weights=args.weights,
        device=args.device,
        carbon=not args.no_carbon,
    )
    sections = run_parts(ctx, parts)
    html_report, markdown_report = write_report(sections, args.out, ReportInfo.for_run(ctx, sections))
    print(f"Report: {html_report} (Markdown: {markdown_report})")
    failed = [section.key for section in sections if section.failed]
    if failed:
        print(f"cnnlab lab: {len(failed)} part(s) failed: {', '.join(failed)}; see their sections in the report",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0
