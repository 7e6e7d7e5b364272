"""``spineplan register XRAY CT``: find the C-arm pose of an X-ray relative to the CT (2D/3D registration)."""

from __future__ import annotations

import argparse
import math

HELP = "register an X-ray (DICOM/PNG/TIFF) to the CT: C-arm pose, similarity score and an honest success flag"


def add_common(parser: argparse.ArgumentParser) -> None:
    """Arguments shared with ``spineplan levelcheck``."""
    parser.add_argument("xray", help="X-ray image: DICOM (DX, CR, XA, RF), PNG or TIFF")
    parser.add_argument("ct", help="the CT: DICOM folder, NIfTI, NRRD or MHA")
    parser.add_argument("--view", default="AP", help="the view the shot was meant to be (start pose): AP, LAT, OBL-L, OBL-R")
    parser.add_argument("--pixel-mm", type=float, default=None, help="detector pixel size in mm (needed for PNG/TIFF)")
    parser.add_argument("--sdd-mm", type=float, default=None, help="source-to-detector distance in mm (PNG/TIFF)")
    parser.add_argument("--sid-mm", type=float, default=None,
                        help="source-to-isocentre distance in mm (default: from the DICOM, else 600)")
    parser.add_argument("--frame", type=int, default=None, help="frame of a multi-frame DICOM (default: the last)")
    parser.add_argument("--mode", choices=("rigid", "per-vertebra"), default="rigid",
                        help="one rigid pose, or each vertebra on its own (needs --labels)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the optimiser")


def configure(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument("--labels", default=None, help="vertebra label map on the CT grid (VerSe or TotalSegmentator)")
    parser.add_argument("-o", "--out", required=True, help="output folder (registration.json, overlay.png, drr.png)")


def load_and_register(args):
    """Read the inputs named in ``args`` and register; returns (xray, ct, labels, att, result)."""
    from spineplan.fluoro.drr import AttenuationVolume
    from spineplan.fluoro.geometry import DEFAULT_SID_MM, CArm
    from spineplan.fluoro.register import register
    from spineplan.fluoro.views import named_view
    from spineplan.fluoro.xray import read_xray
    from spineplan.io import read_ct, read_labels

    xray = read_xray(args.xray, pixel_mm=args.pixel_mm, sdd_mm=args.sdd_mm, frame=args.frame)
    ct = read_ct(args.ct)
    labels = read_labels(args.labels, ct) if getattr(args, "labels", None) else None
    if args.mode == "per-vertebra" and labels is None:
        from spineplan.errors import InputError

        raise InputError("--mode per-vertebra needs --labels (the vertebra label map of the CT).")
    sid = args.sid_mm or xray.meta.get("sid_mm") or DEFAULT_SID_MM
    carm, _info = named_view(args.view, ct=ct, detector=xray.detector(), sid_mm=float(sid))
    att = AttenuationVolume.from_ct(ct)
    result = register(xray, att, CArm(xray.detector(), carm.pose), mode=args.mode, spine=labels, seed=args.seed)
    return xray, ct, labels, att, result


def _mm(x) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else round(float(x), 3)


def result_dict(result, view: str) -> dict:
    from spineplan import DISCLAIMER
    from spineplan.fluoro.geometry import carm_angles_of_direction

    pose = result.carm.pose
    orb, ang = carm_angles_of_direction(pose.beam_direction)
    out = {
        "format": "spineplan.registration", "version": 1, "frame": "LPS", "units": "mm",
        "view_requested": view, "success": bool(result.success), "reason": result.reason,
        "score_gradient_correlation": round(float(result.score), 4),
        # the optimality check's remaining move: how far the pose would still move towards a better
        # score on some axis (in the image plane, and mean 3-D over the vertebrae incl. depth)
        "optimality_residual_mm": _mm(result.consistency_mm),
        "optimality_residual_3d_mm": _mm(result.meta.get("consistency_3d_mm")),
        "polarity": "bone bright" if result.polarity > 0 else "bone dark",
        "pose_world_to_carm": {"rotation": pose.rotation.round(8).tolist(), "translation": pose.translation.round(5).tolist()},
        "source_lps": pose.source_lps.round(3).tolist(), "beam_direction_lps": pose.beam_direction.round(6).tolist(),
        "carm_angles": {"orbital_deg": round(orb, 2), "angular_deg": round(ang, 2)},
        "detector": {"width_px": result.carm.detector.width_px, "height_px": result.carm.detector.height_px,
                     "pixel_mm": result.carm.detector.pixel_mm, "sdd_mm": result.carm.detector.sdd_mm},
        "drrs_rendered": int(result.iterations), "seconds": round(float(result.seconds), 2),
        "levels_in_view": list(result.meta.get("levels_in_view", [])),
        "disclaimer": DISCLAIMER,
    }
    if result.per_vertebra:
        out["per_vertebra"] = {n: {"success": v.success, "score": round(v.score, 4), "shift_mm": round(v.shift_mm, 2),
                                   "reason": v.reason} for n, v in result.per_vertebra.items()}
    return out


def run(args) -> int:
    import json
    from pathlib import Path

    import numpy as np

    from spineplan._atomic import atomic_path, write_text
    from spineplan.fluoro.drr import render, to_display
    from spineplan.fluoro.levelcheck import overlay_png

    xray, ct, labels, att, result = load_and_register(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "registration.json", json.dumps(result_dict(result, args.view), indent=2))
    drr = to_display(render(att, result.carm))
    from PIL import Image

    with atomic_path(out / "drr.png") as tmp:
        Image.fromarray(np.asarray(drr, np.uint8)).save(tmp, format="PNG")
    if labels is not None:
        overlay_png(xray, result, labels.masks, labels.volume.affine, out / "overlay.png",
                    title=f"Registered vertebrae ({args.view})")
    state = "succeeded" if result.success else "FAILED"
    print(f"Registration {state}: gradient correlation {result.score:.3f}, {result.seconds:.1f} s. {result.reason}.")
    print(f"Wrote {out / 'registration.json'}")
    return 0 if result.success else 1
