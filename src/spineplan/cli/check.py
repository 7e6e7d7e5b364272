"""``spineplan check PLAN --ct CT [--labels FILE] [--quick] [--json OUT]``.

Grades every screw (and bone-access needle) of a plan, whoever made it, against the vertebra
labels: Gertzbein-Robbins grade, breach distance and direction, minimum bone margin, facet
violation of the level above and the vertebra the screw actually lies in.

Exit status (a plan never hides a risk):

- 0: every screw is grade A, in its own vertebra, with no facet violation;
- 1: no screw is worse than grade B, but at least one is B, violates a facet joint, lies in
  another vertebra or could not be graded (level missing from the labels);
- 3: at least one screw is grade C, D or E (a breach of 2 mm or more);
- 2: the inputs could not be used (the message says why).
"""

from __future__ import annotations

HELP = "Grade every screw of a plan (Gertzbein-Robbins, margin, facet) against the vertebra labels."
DESCRIPTION = (
    HELP + " Exit status: 0 all grade A; 1 some grade B, facet violation, wrong vertebra or ungradable; "
    "3 some grade C-E (breach >= 2 mm); 2 unusable inputs. Research software, not a medical device."
)

#: Exit codes (see the module docstring).
EXIT_ALL_A, EXIT_WARN, EXIT_BREACH = 0, 1, 3


def configure(parser) -> None:
    parser.add_argument("plan", help="plan.json (format spineplan.plan)")
    parser.add_argument("--ct", required=True, help="the CT the plan was made on (DICOM folder or NIfTI/NRRD/MHA)")
    parser.add_argument("--labels", metavar="FILE",
                        help="vertebra label map (VerSe or TotalSegmentator); default: labels.nii.gz beside the "
                             "plan, else spineplan's own segmentation")
    parser.add_argument("--quick", action="store_true",
                        help="name breach directions in patient axes instead of measuring each vertebra's frame")
    parser.add_argument("--entry-zone", type=float, default=None, metavar="MM",
                        help="length of the entry zone excluded from the breach (default 5 mm)")
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON")


def format_table(results, plan) -> str:
    """The per-screw table printed by the command."""
    head = f"{'#':>2}  {'level':<5} {'side':<5} {'kind':<6} {'size':<8} {'grade':<5} {'breach':>7} " \
           f"{'direction':<9} {'margin':>7} {'facet':<5} {'in':<4}"
    rows = [head, "-" * len(head)]
    for r in results:
        obj = plan.screws[r.index] if r.kind == "screw" else plan.access[r.index]
        size = f"{obj.diameter_mm:g}x{obj.length_mm:g}" if r.kind == "screw" else f"{obj.gauge}G"
        facet = {True: "YES", False: "no", None: "n/a"}[r.facet_violation]
        breach = "-" if r.breach_mm != r.breach_mm else f"{r.breach_mm:.1f}"
        margin = "-" if r.min_margin_mm != r.min_margin_mm else f"{r.min_margin_mm:.1f}"
        rows.append(f"{r.index:>2}  {r.level:<5} {r.side:<5} {r.kind:<6} {size:<8} {r.grade:<5} {breach:>7} "
                    f"{(r.breach_direction or '-'):<9} {margin:>7} {facet:<5} {(r.vertebra_found or '-'):<4}")
    return "\n".join(rows)


def exit_status(results) -> int:
    if any(r.grade in ("C", "D", "E") for r in results):
        return EXIT_BREACH
    if any(r.grade != "A" or r.facet_violation or (r.vertebra_found not in (None, r.level))
           or (r.vertebra_found is None and r.grade == "A" and r.in_bone_fraction == 0) for r in results):
        return EXIT_WARN
    return EXIT_ALL_A


def run(args) -> int:
    import json
    from pathlib import Path

    from spineplan import DISCLAIMER
    from spineplan._atomic import write_text
    from spineplan.io import read_ct, read_labels
    from spineplan.plan.model import Plan
    from spineplan.safety import ENTRY_ZONE_MM, ENTRY_ZONE_RULE, check_plan

    plan = Plan.load(args.plan)
    ct = read_ct(args.ct)
    label_path = args.labels
    if label_path is None and (Path(args.plan).parent / "labels.nii.gz").exists():
        label_path = Path(args.plan).parent / "labels.nii.gz"
    if label_path is not None:
        labels = read_labels(label_path, ct).volume
        source = Path(label_path).name
    else:
        from spineplan.anatomy.segment import segment_spine

        labels = segment_spine(ct).labels
        source = "spineplan's own segmentation"
    anat = labels
    if not args.quick:
        from spineplan.anatomy.spine import build_spine

        from spineplan.levels import LEVELS, level_index

        # only the plan's levels and the two above each (the level above, past a transitional
        # T13/L6) are measured: their frames name breach directions and place the facet zone
        need = {lv for obj in [*plan.screws, *plan.access] for lv in
                LEVELS[max(0, level_index(obj.level) - 2): level_index(obj.level) + 1]}
        anat = build_spine(ct, labels, levels=need)
    zone = ENTRY_ZONE_MM if args.entry_zone is None else float(args.entry_zone)
    results = check_plan(plan, ct, anat, entry_zone_mm=zone)
    print(f"Plan {Path(args.plan).name}: {len(plan.screws)} screws, {len(plan.access)} needles, graded against "
          f"{source}.")
    if results:
        print(format_table(results, plan))
    for r in results:
        for n in r.notes:
            if not n.startswith("Entry-zone rule"):
                print(f"  #{r.index} {r.level} {r.side}: {n}")
    print(ENTRY_ZONE_RULE.format(zone=zone))
    code = exit_status(results)
    verdict = {EXIT_ALL_A: "All screws grade A, in their own vertebra, no facet violation.",
               EXIT_WARN: "Check the screws flagged above (grade B, facet violation, wrong vertebra or ungradable).",
               EXIT_BREACH: "At least one screw breaches the bone by 2 mm or more (grade C-E): revise the plan."}[code]
    print(verdict)
    print(DISCLAIMER)
    if args.json:
        write_text(args.json, json.dumps({"format": "spineplan.check", "version": 1, "plan": Path(args.plan).name,
                                          "labels": source, "entry_zone_rule": ENTRY_ZONE_RULE.format(zone=zone),
                                          "exit_status": code, "results": [r.to_dict() for r in results],
                                          "disclaimer": DISCLAIMER}, indent=2) + "\n")
    return code
