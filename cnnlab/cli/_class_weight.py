"""`--class-weight` of the training commands: the note on unbalanced classes and the weights chosen.

Own image folders are often unbalanced (500 cats, 50 dogs); the note says so before training, and with
``--class-weight balanced`` the weights used are printed, so the run's output explains its per-class accuracy.
"""

from __future__ import annotations

import argparse

from cnnlab.train.class_weights import BALANCED, UNBALANCED_RATIO, imbalance, resolve_class_weight

MAX_WEIGHTS_PRINTED = 20  # more classes: the smallest and largest weight only


def add_class_weight_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--class-weight",
        choices=(BALANCED,),
        help="balanced: weigh each training image's loss by n / (classes * its class's count), so a rare class "
        "counts as much as a common one (validation loss stays unweighted); default: no weights",
    )


def class_weight_from_args(args: argparse.Namespace, data) -> dict[int, float] | None:
    """The class weights fit takes for --class-weight ({class_index: weight}, or None), after printing the
    note on unbalanced training classes or the weights chosen."""
    names = data.class_names
    found = imbalance(data.y_train, names)
    ratio_text = ""
    if found is not None:
        ratio, (large, n_large), (small, n_small) = found
        ratio_text = f"{ratio:.1f}:1, {large} {n_large} vs {small} {n_small}"
        if ratio > UNBALANCED_RATIO and not args.class_weight:
            print(
                f"Note: classes are unbalanced ({ratio_text}): --class-weight balanced weighs the loss by "
                "inverse class frequency"
            )
    if not args.class_weight:
        return None
    weights = resolve_class_weight(args.class_weight, data.y_train, len(names))
    if len(names) <= MAX_WEIGHTS_PRINTED:
        shown = ", ".join(f"{name} {weight:.3f}" for name, weight in zip(names, weights, strict=True))
    else:
        shown = f"{weights.min():.3f} to {weights.max():.3f} over {len(names)} classes"
    about = f" (training classes {ratio_text})" if ratio_text else ""
    print(f"Class weights, {args.class_weight} = n / (classes * count){about}: {shown}")
    return {index: float(weight) for index, weight in enumerate(weights)}
