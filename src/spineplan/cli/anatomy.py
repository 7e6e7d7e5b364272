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


def run(args) -> int:
    from pathlib import Path

    from spineplan.anatomy.fracture import grade_text
    from spineplan.anatomy.pipeline import analyse
    from spineplan.anatomy.spine import write_spine_json
    from spineplan.io import read_ct, read_labels, write_labels

    out = Path(args.out)
    ct = read_ct(args.ct)
    labels = read_labels(args.labels, ct) if args.labels else None
    spine = analyse(ct, labels.volume if labels is not None else None, anchor=args.anchor, backend=args.backend)
    if labels is not None:
        spine.warnings.extend(labels.warnings)
    out.mkdir(parents=True, exist_ok=True)
    write_labels(spine.labels, out / "labels.nii.gz")
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
        if text := grade_text(fr):
            bits.append(text)
        print("  ".join(bits))
    for w in spine.warnings:
        print(f"warning: {w}")
    n_own = sum(len(v.warnings) for v in spine.vertebrae)
    if n_own:
        print(f"{n_own} more warnings about single vertebrae (pedicles, heights, endplates) are in {out / 'spine.json'}.")
    print(f"wrote {out / 'labels.nii.gz'}, {out / 'spine.json'}" + ("" if args.no_picture else f", {out / 'anatomy.png'}"))
    return 0
