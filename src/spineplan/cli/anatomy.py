"""``spineplan anatomy CT [--labels FILE] [--anchor L3@z=...] -o DIR``.

Writes ``labels.nii.gz`` (VerSe codes on the CT grid), ``spine.json`` (names, naming
confidence, per-vertebra measurements and fracture grades) and ``anatomy.png`` (curved
sagittal and coronal slices with every vertebra coloured and named).
"""

from __future__ import annotations

HELP = "Find, name and measure every vertebra; grade compression fractures; draw a check picture."
DESCRIPTION = (HELP + " Writes labels.nii.gz (VerSe codes), spine.json and anatomy.png into the output folder. "
               "Research software, not a medical device: check every name and number on the original images.")


def configure(parser) -> None:
    parser.add_argument("ct", help="CT: a DICOM series folder or a NIfTI/NRRD/MHA file")
    parser.add_argument("--labels", metavar="FILE",
                        help="vertebra label map (VerSe or TotalSegmentator, auto-detected); skips segmentation")
    parser.add_argument("--anchor", metavar="LEVEL@z=MM",
                        help="fix one level's name, e.g. L3@z=-210 (the others follow); used by the segmentation")
    parser.add_argument("--backend", default="builtin", choices=("builtin", "totalsegmentator"),
                        help="segmentation backend when --labels is not given (default: builtin)")
    parser.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--no-picture", action="store_true", help="do not draw anatomy.png")


def _read_ct(path):
    import spineplan.io as sio

    if hasattr(sio, "read_ct"):
        return sio.read_ct(path)
    return sio.read_nifti(path)


def _read_labels(path, ct):
    import spineplan.io as sio

    if hasattr(sio, "read_labels"):
        return sio.read_labels(path, ct).volume
    # Interim until spineplan.io.read_labels lands: a NIfTI on the CT grid, VerSe codes or
    # TotalSegmentator "total" ids (any vertebra id above 28 means TotalSegmentator).
    import numpy as np

    from spineplan.errors import LabelError
    from spineplan.levels import TS_TOTAL_IDS, verse_code

    vol = sio.read_nifti(path, modality="labels")
    if not vol.same_grid(ct):
        raise LabelError(f"{path} is not on the CT's grid; give a label map with the CT's shape and affine.")
    arr = np.rint(np.asarray(vol.array)).astype(np.int32)
    if arr.max() > 28:
        lut = np.zeros(max(int(arr.max()), 51) + 1, np.uint8)
        for tid, name in TS_TOTAL_IDS.items():
            lut[tid] = verse_code(name)
        arr = lut[arr]
    return vol.with_array(arr.astype(np.uint8))


def run(args) -> int:
    from pathlib import Path

    import numpy as np

    from spineplan.anatomy.pipeline import analyse
    from spineplan.anatomy.spine import write_spine_json
    from spineplan.io import write_volume

    out = Path(args.out)
    ct = _read_ct(args.ct)
    labels = _read_labels(args.labels, ct) if args.labels else None
    spine = analyse(ct, labels, anchor=args.anchor, backend=args.backend)
    out.mkdir(parents=True, exist_ok=True)
    lab = spine.labels.with_array(np.asarray(spine.labels.array).astype(np.uint8), modality="labels")
    write_volume(lab, out / "labels.nii.gz")
    write_spine_json(spine, out / "spine.json")
    if not args.no_picture:
        from spineplan.anatomy.figure import render_anatomy

        render_anatomy(ct, spine, out / "anatomy.png")
    for v in spine.vertebrae:
        m = v.measurements
        fr = v.fracture or {}
        bits = [v.name + ("" if v.complete else " (partial)")]
        for side in ("left", "right"):
            p = v.pedicles.get(side)
            if p is not None:
                bits.append(f"{side[0].upper()} pedicle {p.isthmus_width_mm:.1f} mm")
        if "cancellous_hu" in m:
            bits.append(f"{m['cancellous_hu']:.0f} HU")
        if fr.get("grade"):
            bits.append(f"Genant {fr['grade']} {fr['type']} ({fr['height_loss_pct']:.0f} %)")
        print("  ".join(bits))
    for w in spine.warnings:
        print(f"warning: {w}")
    print(f"wrote {out / 'labels.nii.gz'}, {out / 'spine.json'}" + ("" if args.no_picture else f", {out / 'anatomy.png'}"))
    return 0
