"""``spineplan drr CT [--plan plan.json] [--labels FILE] --view VIEW [--size 512] -o image.png``.

Renders what the C-arm would show for a named view (AP, LAT, OBL-L, OBL-R, L4-AP, L4-LAT,
owl:L4-left ...), with the plan's screws, rods and needles drawn in at their true size, the
vertebra names and screw axes overlaid, and prints the C-arm angles to set.
"""

from __future__ import annotations

HELP = "Virtual fluoroscopy: render a named C-arm view (DRR) with the plan's metal and print the C-arm angles."
DESCRIPTION = (HELP + " Views: AP, LAT, OBL-L, OBL-R, <level>-AP (true AP), <level>-LAT (true lateral), "
               "owl:<level>-left|right (owl's eye along the planned screw or pedicle). Level views need --labels. "
               "Research software, not a medical device: a DRR is a simulation.")


def configure(parser) -> None:
    parser.add_argument("ct", help="CT: a DICOM series folder or a NIfTI/NRRD/MHA file")
    parser.add_argument("--view", required=True, help="AP, LAT, OBL-L, OBL-R, L4-AP, L4-LAT, owl:L4-left, ...")
    parser.add_argument("--labels", metavar="FILE", help="vertebra label map (VerSe or TotalSegmentator) for "
                        "level views and vertebra names")
    parser.add_argument("--plan", metavar="PLAN.json", help="plan whose screws, rods and needles are drawn")
    parser.add_argument("--size", type=int, default=512, help="detector size in pixels (default 512, ~30 cm field)")
    parser.add_argument("--mode", choices=("fast", "exact"), default="fast",
                        help="fast (numba ray marching, default) or exact (Siddon ray-voxel) rendering")
    parser.add_argument("--sampling", choices=("linear", "nearest"), default="linear",
                        help="fast mode's CT sampling (default linear: smoother on thick-slice CTs)")
    parser.add_argument("--energy", type=float, default=60.0, help="effective beam energy in keV (30-100, default 60)")
    parser.add_argument("--noise", type=float, default=None, metavar="PHOTONS",
                        help="add quantum noise with this many unattenuated photons per pixel (e.g. 20000)")
    parser.add_argument("--enhance", type=float, default=0.6,
                        help="edge enhancement 0-1 like a C-arm's imaging chain (default 0.6; 0 = plain)")
    parser.add_argument("--no-overlay", action="store_true", help="no names, axes or text on the image")
    parser.add_argument("--json", metavar="FILE", help="also write the view's C-arm angles as JSON")
    parser.add_argument("-o", "--out", required=True, metavar="IMAGE.png", help="output PNG")


def load_inputs(args, need_spine: bool):
    """CT, spine (or None) and plan (or None) from the command-line arguments."""
    from spineplan.io import read_ct

    ct = read_ct(args.ct)
    spine = None
    if getattr(args, "labels", None):
        from spineplan.anatomy.spine import build_spine
        from spineplan.io import read_labels

        labels = read_labels(args.labels, ct)
        spine = build_spine(ct, labels.volume)
    elif need_spine:
        from spineplan.errors import InputError

        raise InputError("This view needs the vertebrae: give a label map with --labels "
                         "(e.g. the labels.nii.gz written by 'spineplan anatomy').")
    plan = None
    if getattr(args, "plan", None):
        from spineplan.plan.model import Plan

        plan = Plan.load(args.plan)
    return ct, spine, plan


def run(args) -> int:
    import json
    from pathlib import Path

    import numpy as np

    from spineplan import DISCLAIMER
    from spineplan._atomic import atomic_path, write_text
    from spineplan.errors import InputError
    from spineplan.fluoro.drr import AttenuationVolume
    from spineplan.fluoro.views import GENERIC_VIEWS, check_view_name, render_view

    if not 16 <= args.size <= 4096:
        raise InputError(f"--size must be between 16 and 4096 pixels; got {args.size}.")
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise InputError(f"The output image must be a .png file; got {out}.")
    need_spine = check_view_name(args.view) not in GENERIC_VIEWS
    ct, spine, plan = load_inputs(args, need_spine)
    att = AttenuationVolume.from_ct(ct, energy_kev=args.energy)
    img, _, info = render_view(att, args.view, ct=ct, spine=spine, plan=plan, size=args.size, mode=args.mode,
                               sampling=args.sampling, enhance=args.enhance, noise=args.noise or None,
                               overlay=not args.no_overlay)
    from PIL import Image

    with atomic_path(out) as tmp:
        Image.fromarray(np.ascontiguousarray(img)).save(tmp, format="PNG")
    if args.json:
        write_text(args.json, json.dumps({**info, "disclaimer": DISCLAIMER}, indent=2) + "\n")
    print(f"{info['view']}: orbital {info['orbital_deg']:+.1f} deg, angular {info['angular_deg']:+.1f} deg "
          f"(patient prone; isocentre LPS {', '.join(f'{x:.1f}' for x in info['isocentre_lps'])} mm)")
    print(info["description"])
    print(f"wrote {out}" + (f", {args.json}" if args.json else ""))
    print(DISCLAIMER)
    return 0
