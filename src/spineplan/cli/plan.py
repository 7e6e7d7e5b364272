"""``spineplan plan CT --levels L3-L5 -o DIR``: plan percutaneous screws, rods and incisions."""

from __future__ import annotations

HELP = "plan percutaneous pedicle screws, rods and incisions on a CT and write the plan folder"
DESCRIPTION = (
    "Plan percutaneous pedicle screws (with safety grades), rods and skin incisions on a spine CT. "
    "Writes DIR/plan.json, screws.csv, carm.csv (C-arm angles), a 3D Slicer folder and a picture per screw. "
    "Research software for planning support, not a certified medical device."
)

_SEVERITY_ORDER = {"danger": 0, "warning": 1, "info": 2}


def configure(parser) -> None:
    parser.add_argument("ct", help="CT: a DICOM series folder or a .nii.gz/.nii/.nrrd/.mha file")
    parser.add_argument("--labels", metavar="FILE", help="vertebra label map (VerSe or TotalSegmentator) to use "
                        "instead of spineplan's own segmentation")
    parser.add_argument("--anchor", metavar="LEVEL@z=MM",
                        help="fix one level's name for spineplan's own segmentation, e.g. L3@z=-210 (LPS z in mm; "
                             "the other names follow); for scans that show neither the sacrum nor the last rib")
    parser.add_argument("--levels", required=True, metavar="SPEC",
                        help="levels to instrument, e.g. L3-L5 or L4,L5 (required: spineplan does not guess)")
    parser.add_argument("--sides", choices=("both", "left", "right"), default="both",
                        help="patient side(s) to instrument (default: both)")
    parser.add_argument("--catalogue", metavar="CSV", help="screw catalogue CSV (columns diameter_mm,length_mm)")
    parser.add_argument("--margin", type=float, metavar="MM",
                        help="minimum bone margin around every screw in mm (default: the planner's, 1.0)")
    parser.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder (created; an earlier "
                        "plan there is replaced only when the new one is complete)")
    parser.add_argument("--access", default="auto", metavar="auto|none|LEVELS",
                        help="vertebroplasty/kyphoplasty needle access: 'auto' (default) for the levels with a "
                             "Genant compression fracture among --levels and one level beyond each end (fractures "
                             "further away are reported, not planned), 'none', or levels such as T12 or T12,L1")
    parser.add_argument("--procedure", choices=("kyphoplasty", "vertebroplasty"), default="kyphoplasty",
                        help="augmentation procedure for the access levels (default: kyphoplasty)")
    parser.add_argument("--gauge", type=int, choices=(11, 13), default=11, help="access needle gauge (default 11)")
    parser.add_argument("--no-reports", action="store_true", help="do not write the surgeon's and patient's reports")
    parser.add_argument("--patient-name", metavar="NAME", help="name to print on the reports (never taken "
                        "from the DICOM; omitted unless given here)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def summary(plan) -> str:
    """The text printed after a run: warnings first, then screws, rods and incisions."""
    from spineplan import DISCLAIMER

    lines = []
    warns = sorted(plan.warnings, key=lambda w: _SEVERITY_ORDER.get(w.severity, 1))
    if warns:
        lines.append(f"WARNINGS ({len(warns)}):")
        for w in warns:
            lv = f"{w.level} " if w.level else ""
            lines.append(f"  [{w.severity}] {lv}{w.code}: {w.message}")
        lines.append("")
    lines.append(f"SCREWS ({len(plan.screws)}):")
    lines.append(f"  {'level':<6}{'side':<7}{'size (mm)':<11}{'grade':<7}{'margin (mm)':<13}{'mean HU':<8}")
    for s in plan.screws:
        m = "-" if s.min_margin_mm is None else f"{s.min_margin_mm:.1f}"
        hu = s.extra.get("mean_hu")
        lines.append(f"  {s.level:<6}{s.side:<7}{f'{s.diameter_mm:g}x{s.length_mm:g}':<11}{s.grade or '-':<7}"
                     f"{m:<13}{'-' if hu is None else f'{float(hu):.0f}':<8}")
    if plan.rods:
        lines.append("")
        lines.append("RODS:")
        for r in plan.rods:
            e = r.extra
            offs = ", ".join(f"{x:.1f}" for x in e.get("head_offsets_mm", []))
            lines.append(f"  {r.side:<6} {'-'.join([e['levels'][0], e['levels'][-1]]) if e.get('levels') else ''}: "
                         f"{r.length_mm:g} mm rod, {e.get('contour', '')}, bend {e.get('bend_angle_deg', 0):.0f} deg, "
                         f"head offsets {offs} mm")
    if plan.incisions:
        lines.append("")
        lines.append(f"INCISIONS ({len(plan.incisions)}, total {plan.extra.get('incisions_total_mm', 0):.0f} mm):")
        for i in plan.incisions:
            e = i.extra
            flag = "  FLAGGED" if e.get("flag") else ""  # set by plan_incisions with its reason
            lines.append(f"  {i.side:<6} {'/'.join(e.get('levels', [])):<9} {i.length_mm:.0f} mm, "
                         f"{e.get('distance_from_midline_mm', float('nan')):.0f} mm from the midline{flag}")
    if plan.access:
        lines.append("")
        lines.append(f"NEEDLE ACCESS ({len(plan.access)}):")
        for a in plan.access:
            e = a.extra
            cement = e.get("cement_ml")
            lines.append(f"  {a.level:<6}{a.side:<7}{a.procedure}, {e.get('approach', '')}, {a.gauge} G, "
                         f"grade {e.get('grade', '-')}" + ("" if cement is None else f", cement ~{float(cement):.1f} mL"))
    if plan.extra.get("carm"):
        from spineplan.fluoro.views import angles_table_text

        lines.append("")
        lines.append("C-ARM ANGLES (degrees):")
        lines += ["  " + ln for ln in angles_table_text(plan.extra["carm"]).splitlines()]
    lines.append("")
    lines.append(DISCLAIMER)
    return "\n".join(lines)


def run(args) -> int:
    from dataclasses import replace

    from spineplan.plan.settings import PlannerSettings
    from spineplan.workflow import run_plan

    settings = PlannerSettings()
    if args.margin is not None:
        settings = replace(settings, margin_mm=float(args.margin))
    sides = ("left", "right") if args.sides == "both" else (args.sides,)
    plan = run_plan(args.ct, args.out, labels=args.labels, levels=args.levels, sides=sides,
                    catalogue=args.catalogue, settings=settings, progress=not args.no_progress,
                    access_levels=None if args.access == "none" else args.access, procedure=args.procedure,
                    gauge=args.gauge, reports=not args.no_reports, patient_name=args.patient_name,
                    anchor=args.anchor)
    print(summary(plan))
    outputs = "plan.json, screws.csv, carm.csv, slicer/, screws/" + ("" if args.no_reports else
                                                                      ", surgeon and patient reports (HTML, PDF)")
    print(f"\nPlan written to {args.out}/ ({outputs})")
    return 0
