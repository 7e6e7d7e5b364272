"""``spineplan levelcheck XRAY CT --labels FILE --pixel U,V``: which vertebra is under the needle tip?"""

from __future__ import annotations

import argparse

HELP = "register an X-ray to the CT and name the vertebra under a marked pixel (needle tip), with a confidence"


def _pixel(text: str) -> tuple[float, float]:
    try:
        u, v = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--pixel must be U,V (column,row), e.g. 120,98; got {text!r}") from None
    return u, v


def configure(parser: argparse.ArgumentParser) -> None:
    from spineplan.cli.register import add_common

    add_common(parser)
    parser.add_argument("--labels", required=True, help="vertebra label map on the CT grid (VerSe or TotalSegmentator)")
    parser.add_argument("--pixel", required=True, type=_pixel, help="U,V: column,row of the needle tip in the X-ray")
    parser.add_argument("-o", "--out", default="levelcheck.png", help="overlay PNG to write (default levelcheck.png)")


def run(args) -> int:
    from spineplan import DISCLAIMER
    from spineplan.cli.register import load_and_register
    from spineplan.fluoro.levelcheck import levelcheck, overlay_png

    xray, ct, labels, att, result = load_and_register(args)
    check = levelcheck(xray, labels, result, args.pixel, affine=labels.volume.affine, shape=ct.shape)
    overlay_png(xray, result, labels.masks, labels.volume.affine, args.out, check=check)
    level = check.level or "none"
    print(f"Level: {level}  confidence: {check.confidence:.2f}")
    print(check.message)
    if not result.success:
        print(f"Registration failed: {result.reason}")
    print(f"Overlay: {args.out}")
    print(DISCLAIMER)
    return 0 if (result.success and check.level) else 1
