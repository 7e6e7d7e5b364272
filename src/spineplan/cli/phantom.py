"""``spineplan phantom -o DIR``: write a synthetic spine CT, its VerSe labels and ground truth."""

from __future__ import annotations

import argparse

HELP = "write a synthetic spine CT (T11-S1) with VerSe labels and exact ground truth"
DESCRIPTION = (
    "Build a synthetic lower thoracic/lumbar/sacral spine CT with exact ground truth and write "
    "ct.nii.gz, labels.nii.gz (VerSe codes) and truth.json into DIR. Synthetic research data, not a "
    "medical device."
)


def _fracture(text: str):
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError("use LEVEL:GRADE[:TYPE], e.g. L1:2 or L1:3:crush")
    return text


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--levels", default="T11-S1", help="level range, e.g. T11-S1 (default) or T12-S1")
    parser.add_argument("--spacing", type=float, default=1.0, help="isotropic voxel size in mm (0.5-3; default 1)")
    parser.add_argument("--lordosis", type=float, default=40.0, help="L1-S1 lordosis in degrees (default 40)")
    parser.add_argument("--scoliosis", type=float, default=0.0,
                        help="lumbar coronal Cobb angle in degrees; positive = convex left (default 0)")
    parser.add_argument("--rotation", type=float, default=0.0,
                        help="axial rotation of the apical vertebra in degrees (default 0)")
    parser.add_argument("--fracture", type=_fracture, action="append", default=None, metavar="LEVEL:GRADE[:TYPE]",
                        help="compression fracture, Genant grade 1-3, type wedge|biconcave|crush (e.g. L1:2:wedge); "
                             "repeat for several")
    parser.add_argument("--osteoporosis", action="store_true", help="osteoporotic bone (~80 HU cancellous)")
    parser.add_argument("--pedicle-scale", type=float, default=1.0, help="scale pedicle isthmus widths (e.g. 0.6)")
    parser.add_argument("--fat", type=float, default=25.0, help="posterior subcutaneous fat in mm (default 25)")
    parser.add_argument("--noise", type=float, default=10.0, help="image noise SD in HU (default 10)")
    parser.add_argument("--blur", type=float, default=0.0, help="Gaussian scanner blur SD in mm (default 0)")
    parser.add_argument("--crop-top", type=float, default=0.0, metavar="MM",
                        help="lower the top of the field of view by MM, cutting the top vertebra (default 0)")
    parser.add_argument("--crop-bottom", type=float, default=0.0, metavar="MM",
                        help="raise the bottom of the field of view by MM (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (dimensions jitter, noise)")
    parser.add_argument("--lumbar-count", type=int, default=5, choices=(5, 6), help="5, or 6 for an L6")
    parser.add_argument("--no-ribs", action="store_true", help="draw no ribs")
    parser.add_argument("--fov", choices=("full", "spine"), default="full",
                        help="field of view: 'full' (with the back's skin; default) or 'spine' (tight box, small files)")
    parser.add_argument("--jitter", type=float, default=0.03,
                        help="largest relative per-level size change drawn from the seed (default 0.03; 0 = table values)")


def run(args: argparse.Namespace) -> int:
    import time

    from spineplan import DISCLAIMER
    from spineplan.phantom import make_phantom, write_phantom

    t0 = time.perf_counter()
    ph = make_phantom(levels=args.levels, spacing=args.spacing, lordosis_deg=args.lordosis,
                      scoliosis_deg=args.scoliosis, rotation_deg=args.rotation, fracture=args.fracture,
                      osteoporosis=args.osteoporosis, pedicle_scale=args.pedicle_scale, fat_mm=args.fat,
                      noise_hu=args.noise, seed=args.seed, lumbar_count=args.lumbar_count, ribs=not args.no_ribs,
                      fov=args.fov, jitter=args.jitter, blur_mm=args.blur, crop_top_mm=args.crop_top,
                      crop_bottom_mm=args.crop_bottom)
    paths = write_phantom(ph, args.out)
    dt = time.perf_counter() - t0
    names = list(ph.truth["vertebrae"])
    sp = "x".join(f"{s:g}" for s in ph.ct.spacing)
    print(f"Synthetic spine phantom: {names[0]}-{names[-1]} ({len(names)} vertebrae), "
          f"{'x'.join(map(str, ph.ct.shape))} voxels at {sp} mm, {dt:.1f} s")
    for key, p in paths.items():
        print(f"  {key:7s} {p}")
    frac = [(n, v["fracture"]) for n, v in ph.truth["vertebrae"].items() if v["fracture"]["grade"]]
    for n, f in frac:
        print(f"  fracture: {n} Genant grade {f['grade']} {f['type']} ({f['height_loss_pct']:.1f} % height loss)")
    cut = [n for n, v in ph.truth["vertebrae"].items() if not v["complete"]]
    if cut:
        print(f"  cut by the field of view: {', '.join(cut)}")
    print(DISCLAIMER)
    return 0
