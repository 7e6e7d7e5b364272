"""``spineplan segment CT -o labels.nii.gz``: label and name every vertebra (VerSe codes)."""

from __future__ import annotations

import argparse

HELP = "label and name every vertebra of a CT (VerSe codes, no model weights needed)"
DESCRIPTION = (
    "Segment each vertebra (posterior elements included) of a CT with the built-in classical "
    "method, or read another segmenter's labels, and write a VerSe label map on the CT's grid. "
    "Prints the names, the naming confidence and what to confirm. Research software, not a "
    "certified medical device: confirm the levels on the images."
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ct", help="CT: a DICOM series folder, .nii/.nii.gz, .nrrd or .mha file")
    parser.add_argument("-o", "--output", required=True, help="label map to write (.nii.gz, .nrrd, .mha)")
    parser.add_argument("--anchor", help="fix one level, e.g. L3@z=-210.5 (LPS z, mm) or L3@120,80,40 (voxel i,j,k)")
    parser.add_argument("--backend", default="builtin", choices=["builtin", "totalsegmentator"],
                        help="builtin (default; no weights) or totalsegmentator (if installed with its weights)")
    parser.add_argument("--labels", help="use this label map (VerSe or TotalSegmentator, auto-detected) instead of segmenting")


def run(args: argparse.Namespace) -> int:
    from spineplan import DISCLAIMER
    from spineplan.anatomy.segment import labels_to_segmentation, segment_spine
    from spineplan.io import read_ct, write_volume

    ct = read_ct(args.ct)
    if args.labels:
        seg = labels_to_segmentation(ct, args.labels, method=f"labels from {args.labels}", anchor=args.anchor)
    else:
        seg = segment_spine(ct, anchor=args.anchor, backend=args.backend)
    write_volume(seg.labels, args.output, dtype="uint8")
    print(f"levels: {' '.join(seg.names)}")
    print(f"naming confidence: {seg.confidence:.2f} ({seg.method})")
    for w in seg.warnings:
        print(f"warning: {w}")
    if not args.labels and not args.anchor:
        print("note: these names are automatic. `spineplan anatomy` / `plan` on the CT also check the bone "
              "quality (osteoporotic bone lowers this confidence); given this label map with --labels, they take "
              "the names as confirmed: confirm them on the images first.")
    print(f"wrote {args.output}")
    print(DISCLAIMER)
    return 0
