"""``spineplan report PLAN_DIR --ct CT [--labels FILE] [--patient-name NAME] [-o DIR]``.

Regenerates the surgeon's and the patient's reports (HTML and PDF) of a plan folder written by
``spineplan plan``, from its ``plan.json`` and the CT (and, optionally, the vertebra labels used
for the plan; without them spineplan segments the CT itself).
"""

from __future__ import annotations

HELP = "write the surgeon's and the patient's reports (HTML and PDF) of a plan folder"
DESCRIPTION = (
    HELP + ". The CT must be the one the plan was made on (checked by its sha256 when the plan records it). "
    "The patient's name appears in the patient's report only when given with --patient-name. "
    "Research software for planning support, not a certified medical device."
)


def configure(parser) -> None:
    parser.add_argument("plan_dir", metavar="PLAN_DIR", help="plan folder (with plan.json) written by 'spineplan plan'")
    parser.add_argument("--ct", required=True, help="the plan's CT: a DICOM series folder or a NIfTI/NRRD/MHA file")
    parser.add_argument("--labels", metavar="FILE", help="vertebra label map (VerSe or TotalSegmentator) used for the "
                        "plan (default: spineplan segments the CT)")
    parser.add_argument("--patient-name", metavar="NAME", help="name printed on the patient's report (never taken "
                        "from the CT)")
    parser.add_argument("-o", "--out", metavar="DIR", help="where to write the reports (default: PLAN_DIR)")


def run(args) -> int:
    from pathlib import Path

    from spineplan import DISCLAIMER
    from spineplan.errors import InputError
    from spineplan.plan.model import Plan, file_sha256

    plan_dir = Path(args.plan_dir)
    plan_file = plan_dir / "plan.json" if plan_dir.is_dir() else plan_dir
    if not plan_file.is_file():
        raise InputError(f"{plan_dir}: no plan.json here. Give the folder written by 'spineplan plan'.")
    plan = Plan.load(plan_file)
    ct_path = Path(args.ct)
    if plan.ct is not None and plan.ct.sha256 and ct_path.is_file() and file_sha256(ct_path) != plan.ct.sha256:
        raise InputError(f"{ct_path} is not the CT this plan was made on (its sha256 differs from the one in "
                         f"{plan_file}). Give the plan's CT with --ct.")
    from spineplan.anatomy.pipeline import analyse
    from spineplan.io import read_ct, read_labels

    ct = read_ct(ct_path)
    if plan.ct is not None and plan.ct.shape and list(plan.ct.shape) != list(ct.shape):
        raise InputError(f"{ct_path} has {list(ct.shape)} voxels but the plan's CT had {plan.ct.shape}. "
                         "Give the plan's CT with --ct.")
    labels = None if args.labels is None else read_labels(args.labels, ct).volume
    spine = analyse(ct, labels)
    from spineplan.report.surgeon import write_reports

    out = Path(args.out) if args.out else plan_file.parent
    paths = write_reports(plan, ct, spine, out, patient_name=args.patient_name,
                          screw_dir=plan_file.parent / "screws")
    for key in ("surgeon_pdf", "surgeon_html", "patient_pdf", "patient_html"):
        print(f"wrote {paths[key]}")
    print(DISCLAIMER)
    return 0
