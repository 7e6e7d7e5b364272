"""``spineplan views CT --labels FILE [--levels L3-L5] [--plan plan.json] [-o views.json]``.

Prints, per level, the C-arm angles of its true AP, true lateral and owl's-eye views (along
the planned screws if a plan is given, else along the pedicles) and writes them as JSON and text.
"""

from __future__ import annotations

HELP = "C-arm angle table: true AP, true lateral and owl's-eye angles for each level."
DESCRIPTION = (HELP + " Orbital = cranio-caudal tilt (+ detector towards the head); angular = lateral "
               "rotation (+ detector towards the patient's left); patient prone. "
               "Research software, not a medical device.")


def configure(parser) -> None:
    parser.add_argument("ct", help="CT: a DICOM series folder or a NIfTI/NRRD/MHA file")
    parser.add_argument("--labels", required=True, metavar="FILE",
                        help="vertebra label map (VerSe or TotalSegmentator)")
    parser.add_argument("--levels", metavar="RANGE", help="levels, e.g. L3-L5 (default: every level found)")
    parser.add_argument("--plan", metavar="PLAN.json", help="plan: owl's-eye views follow its screws")
    parser.add_argument("--pictures", metavar="DIR",
                        help="also render each level's true AP, true lateral and owl's-eye views as PNGs here")
    parser.add_argument("--size", type=int, default=384, help="picture size in pixels (default 384)")
    parser.add_argument("-o", "--out", metavar="FILE.json",
                        help="write the table as JSON here and as text beside it (FILE.txt)")


def run(args) -> int:
    import json
    from pathlib import Path

    from spineplan import DISCLAIMER
    from spineplan._atomic import write_text
    from spineplan.cli.drr import load_inputs
    from spineplan.fluoro.views import angles_table_text, carm_angles
    from spineplan.levels import level_range

    ct, spine, plan = load_inputs(args, need_spine=True)
    levels = level_range(args.levels) if args.levels else None
    rows = carm_angles(spine, plan=plan, levels=levels)
    text = angles_table_text(rows) + "\n" + DISCLAIMER + "\n"
    print(text, end="")
    if args.out:
        out = Path(args.out)
        if out.suffix.lower() != ".json":
            out = out.with_suffix(".json")
        doc = {"format": "spineplan.views", "version": 1, "frame": "LPS", "patient": "prone",
               "conventions": {"orbital_deg": "cranio-caudal tilt, + = detector towards the head",
                               "angular_deg": "lateral rotation, + = detector towards the patient's left",
                               "image": "beam's-eye view from the source, head at the top"},
               "disclaimer": DISCLAIMER, "levels": rows}
        write_text(out, json.dumps(doc, indent=2) + "\n")
        write_text(out.with_suffix(".txt"), text)
        print(f"wrote {out}, {out.with_suffix('.txt')}")
    if args.pictures:
        from PIL import Image

        from spineplan._atomic import atomic_path
        from spineplan.fluoro.drr import AttenuationVolume
        from spineplan.fluoro.views import render_view

        folder = Path(args.pictures)
        folder.mkdir(parents=True, exist_ok=True)
        att = AttenuationVolume.from_ct(ct)
        written = 0
        for row in rows:
            for key, view in (("true_ap", "AP"), ("true_lateral", "LAT"), ("owl_left", "owl-left"),
                              ("owl_right", "owl-right")):
                if row[key] is None:
                    continue
                name = row[key]["view"]
                img, _, _ = render_view(att, name, ct=ct, spine=spine, plan=plan, size=args.size)
                with atomic_path(folder / f"{row['level']}-{view}.png") as tmp:
                    Image.fromarray(img).save(tmp, format="PNG")
                written += 1
        print(f"wrote {written} pictures to {folder}")
    return 0
