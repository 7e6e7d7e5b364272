"""One ``spineplan plan`` run: CT (+ labels) -> anatomy -> screws -> rods -> incisions -> outputs.

Everything is written into a temporary folder beside ``out_dir`` and renamed into place at the
end, so a failed or interrupted run leaves no half-made plan (and an earlier plan in
``out_dir`` stays untouched until the new one is complete).

Outputs in ``out_dir``:

- ``plan.json`` (format ``spineplan.plan``), ``screws.csv``, ``labels.nii.gz`` (the VerSe vertebra
  labels the plan was made on), ``spine.json`` (names, naming confidence, measurements, Genant grades);
- ``slicer/`` (markups, STL models, ``vertebrae.seg.nrrd``; see :mod:`spineplan.export.slicer`);
- ``screws/<level>_<side>.png`` (axial and sagittal slices through each screw);
- ``carm.csv`` and ``plan.extra["carm"]``: per level, the C-arm angles of the true AP, true lateral
  and owl's-eye views (:func:`spineplan.fluoro.views.carm_angles`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from spineplan._progress import progress_steps, silenced
from spineplan.errors import InputError
from spineplan.typing import TypePath

#: Said in every plan made from spineplan's own segmentation: the grades are only as good as the
#: vertebra masks they are computed against, and the built-in segmentation is not validated for
#: clinical use (on the shared real CTs its per-vertebra Dice is below the reference labels').
AUTOMATIC_LABELS_WARNING = (
    "The vertebrae were segmented and named automatically by spineplan (no reviewed labels were given). "
    "Screw grades and margins are computed against these automatic masks, which can be wrong at the pedicles "
    "and facets: review labels.nii.gz and every level name on the CT (e.g. in 3D Slicer), or re-plan with "
    "--labels from a reviewed segmentation, before relying on any grade.")

#: Level names below this confidence (spineplan.anatomy.naming: 0.5 when the sacrum count and the
#: last rib disagree or no rib is found where T12 should be, 0.15 when neither anchor is in the
#: scan) get a danger warning in the plan: a wrong level is a wrong-site operation.
NAMING_CONFIDENCE_MIN = 0.6
_ANCHOR_ADVICE = ("Count the levels on the CT (or a whole-spine image) and re-run with --anchor NAME@z=MM (the "
                  "LPS z of one vertebra you have identified; the others follow), or give reviewed --labels.")

#: Levels planned by the demo when none are given.
DEMO_LEVELS = ("L1", "L2", "L3", "L4", "L5")
#: ``access_levels="auto"`` plans augmentation for the Genant-graded levels among the instrumented
#: levels and this many levels beyond each end (a fracture at the end of a construct is augmented
#: with it). A grade found further away is reported, not planned: augmenting a level is a decision
#: of its own (pain, acuity on MRI/STIR), and an automatic grade can come from a segmentation error.
AUTO_ACCESS_REACH = 1


def _check_out_dir(out: Path) -> None:
    if out.exists():
        if not out.is_dir():
            raise InputError(f"The output {out} exists and is a file. Give a folder name with -o.")
        entries = [p for p in out.iterdir()]
        if entries and not (out / "plan.json").is_file():
            raise InputError(f"The output folder {out} exists and is not an earlier spineplan plan (no plan.json): "
                             "spineplan will not overwrite it. Give a new or empty folder with -o.")


def _replace_dir(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` (an earlier plan) is replaced."""
    if out.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, trash / out.name)
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(trash / out.name, out)
            raise
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, out)


def carm_plan(spine, plan, levels=None) -> list[dict]:
    """C-arm angles per level (true AP, true lateral, owl's eye left/right along the planned
    screws) from :func:`spineplan.fluoro.views.carm_angles`, for ``levels`` present in ``spine``."""
    from spineplan.fluoro.views import carm_angles

    if levels is not None:
        levels = [lv for lv in levels if lv in spine]
    return carm_angles(spine, plan, levels=levels)


#: Columns of ``carm.csv``: one row per level and view.
CARM_COLUMNS = ("level", "view", "orbital_deg", "angular_deg", "isocentre_x", "isocentre_y", "isocentre_z",
                "beam_x", "beam_y", "beam_z", "patient", "description", "frame_suspect")
CARM_VIEWS = ("true_ap", "true_lateral", "owl_left", "owl_right")


def write_carm_csv(rows: list[dict], path: TypePath) -> None:
    """``carm.csv``: per level, the radiographer's angles of each view (orbital = cranio-caudal
    tilt, angular = lateral rotation; see :mod:`spineplan.fluoro.views`), isocentre and beam in LPS;
    ``frame_suspect`` "yes" where the level's endplates look misread (its angles may be wrong;
    :func:`spineplan.fluoro.views.carm_angles`)."""
    import csv
    import io

    from spineplan import DISCLAIMER
    from spineplan._atomic import write_text

    buf = io.StringIO()
    buf.write(f"# spineplan C-arm plan; positions LPS mm, angles in degrees. {DISCLAIMER}\n")
    w = csv.DictWriter(buf, fieldnames=CARM_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        for view in CARM_VIEWS:
            v = r.get(view)
            if v is None:
                continue
            iso = v.get("isocentre_lps") or [None] * 3
            beam = v.get("beam_direction_lps") or [None] * 3
            w.writerow({"level": r["level"], "view": view, "orbital_deg": v.get("orbital_deg"),
                        "angular_deg": v.get("angular_deg"), "isocentre_x": iso[0], "isocentre_y": iso[1],
                        "isocentre_z": iso[2], "beam_x": beam[0], "beam_y": beam[1], "beam_z": beam[2],
                        "patient": v.get("patient", ""), "description": v.get("description", ""),
                        "frame_suspect": "yes" if r.get("frame_suspect") else "no"})
    write_text(path, buf.getvalue())


def _auto_access_levels(spine, level_list, plan) -> list[str]:
    """The Genant-graded levels within :data:`AUTO_ACCESS_REACH` of the instrumented ``level_list``;
    a warning on ``plan`` for each graded level further away."""
    from spineplan.anatomy.fracture import grade_text
    from spineplan.levels import level_index
    from spineplan.plan.access import fractured_levels

    # positions along this spine's own levels (T12 is next to L1 unless the scan shows a T13)
    order = sorted(set(spine.names) | set(level_list), key=level_index)
    pos = [order.index(lv) for lv in level_list]
    lo, hi = min(pos) - AUTO_ACCESS_REACH, max(pos) + AUTO_ACCESS_REACH
    chosen = []
    for lv in fractured_levels(spine):
        if lo <= order.index(lv) <= hi:
            chosen.append(lv)
            continue
        plan.warn("fracture-not-planned",
                  f"{lv}: the scan shows a compression, {grade_text(spine[lv].fracture)}"
                  f", away from the instrumented levels ({level_list[0]}-{level_list[-1]}); no augmentation "
                  f"was planned there. Confirm it on the images (an automatic grade can come from a segmentation "
                  f"error; MRI/STIR shows whether it is acute) and plan it with --access {lv} if indicated.",
                  level=lv, severity="warning")
    return chosen


def run_plan(ct_path: TypePath, out_dir: TypePath, *, labels: TypePath | None = None, levels=None,
             sides=("left", "right"), catalogue=None, settings=None, progress: bool = True,
             access_levels="auto", procedure: str = "kyphoplasty", gauge: int = 11,
             reports: bool = True, patient_name: str | None = None, anchor: str | None = None):
    """Plan ``levels`` on the CT at ``ct_path`` and write every output into ``out_dir``.

    ``labels``: a vertebra label map (VerSe / TotalSegmentator) to use instead of spineplan's
    own segmentation. ``levels``: level names or a spec such as ``"L3-L5"`` (required; the demo
    passes :data:`DEMO_LEVELS`). ``catalogue``: a :class:`~spineplan.plan.catalogue.ScrewCatalogue`
    or a CSV path. ``settings``: :class:`~spineplan.plan.settings.PlannerSettings`. Returns the
    :class:`~spineplan.plan.model.Plan` (as written to ``plan.json``).

    ``access_levels``: vertebral augmentation (``procedure`` "kyphoplasty" or "vertebroplasty",
    needle ``gauge`` 11 or 13) for ``"auto"`` = the levels with a Genant grade >= 1 among ``levels`` and
    :data:`AUTO_ACCESS_REACH` level beyond each end (other graded levels are reported), a level spec
    such as ``"T12"`` / a list, or ``None`` for no access planning. ``reports``: write the surgeon's
    and the patient's reports (HTML + PDF); ``patient_name`` appears in them only when given.
    ``anchor``: fix one level's name for the built-in segmentation, e.g. ``"L3@z=-210.5"`` (the
    others follow; see :func:`spineplan.anatomy.segment.segment_spine`). Names with a confidence
    below :data:`NAMING_CONFIDENCE_MIN` get a danger warning in the plan (wrong-level risk), and a
    request for levels that are not in the scan says that the names were guessed.
    """
    from spineplan.errors import PlanningError
    from spineplan.levels import level_range

    if levels is None or (not isinstance(levels, str) and len(levels) == 0):
        raise PlanningError("No levels given: say which levels to instrument, e.g. --levels L3-L5.")
    level_list = level_range(levels)
    # a bad access level spec fails now, before the CT is read and segmented
    access_list = None if access_levels in (None, "auto") else level_range(access_levels)
    if anchor is not None and labels is not None:
        raise InputError("--anchor names the vertebrae of spineplan's own segmentation; with --labels the names "
                         "come from the label map. Drop one of the two options.")
    sides = tuple(sides)
    out = Path(out_dir)
    _check_out_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    state: dict = {}

    def read():
        from spineplan.io import read_ct, read_labels

        state["ct"] = read_ct(ct_path)
        state["labels"] = None if labels is None else read_labels(labels, state["ct"]).volume

    def anatomy():
        from spineplan.anatomy.pipeline import analyse

        state["spine"] = analyse(state["ct"], state["labels"], anchor=anchor)

    def screws():
        from spineplan.plan.catalogue import ScrewCatalogue
        from spineplan.plan.model import CTRef
        from spineplan.plan.screws import plan_screws

        cat = catalogue
        if cat is not None and not isinstance(cat, ScrewCatalogue):
            cat = ScrewCatalogue.from_csv(cat)
        spine = state["spine"]
        guessed = spine.naming_confidence < NAMING_CONFIDENCE_MIN
        if guessed and not any(lv in spine for lv in level_list):
            raise PlanningError(
                f"None of the requested levels ({', '.join(level_list)}) is among the vertebrae found, but their "
                f"names are uncertain ({spine.naming_method}, confidence {spine.naming_confidence:.2f}; found "
                f"{', '.join(spine.names)}). {_ANCHOR_ADVICE}")
        plan = plan_screws(state["ct"], spine, level_list, sides=sides, settings=settings, catalogue=cat)
        plan.ct = CTRef.of(ct_path, state["ct"])
        plan.extra.setdefault("levels_requested", level_list)
        plan.extra.setdefault("sides", list(sides))
        plan.extra["labels_source"] = (f"given: {Path(labels).name}" if labels is not None
                                       else "spineplan built-in segmentation (automatic)")
        plan.extra["naming"] = {"method": spine.naming_method, "confidence": round(spine.naming_confidence, 2),
                                "levels": spine.names}
        if labels is None:
            plan.warn("labels-automatic", AUTOMATIC_LABELS_WARNING, severity="danger")
        if guessed:
            plan.warn("names-uncertain", f"The level names are uncertain ({spine.naming_method}, confidence "
                      f"{spine.naming_confidence:.2f}): the screws may be planned at the WRONG LEVEL. "
                      + _ANCHOR_ADVICE, severity="danger")
        for w in spine.warnings:
            plan.warn("anatomy", w, severity="warning")
        state["plan"] = plan

    def rods():
        from spineplan.plan.rods import plan_rods
        from spineplan.plan.skin import SkinSurface

        state["skin"] = SkinSurface(state["ct"])
        plan_rods(state["plan"], skin=state["skin"], spine=state["spine"])

    def incisions():
        from spineplan.plan.incisions import plan_incisions

        plan_incisions(state["plan"], state["skin"], spine=state["spine"])

    def access():
        from spineplan.plan.access import plan_access

        if access_levels is None:
            return
        if access_levels == "auto":
            chosen = _auto_access_levels(state["spine"], level_list, state["plan"])
        else:
            chosen = access_list
        acc, warns = plan_access(state["ct"], state["spine"], chosen, procedure=procedure, gauge=gauge,
                                 settings=settings, skin=state["skin"])
        state["plan"].access.extend(acc)
        state["plan"].warnings.extend(warns)
        state["plan"].extra["access_levels"] = sorted({a.level for a in acc})

    def carm():
        rows = carm_plan(state["spine"], state["plan"], level_list)
        state["plan"].extra["carm"] = rows
        write_carm_csv(rows, tmp / "carm.csv")

    def tables():
        from spineplan.export.tables import screw_mean_hu, write_screws_csv

        plan = state["plan"]
        for s in plan.screws:
            if s.extra.get("mean_hu") is None:
                s.extra["mean_hu"] = round(screw_mean_hu(state["ct"], s), 1)
        write_screws_csv(plan, tmp / "screws.csv", ct=state["ct"], spine=state["spine"])
        plan.save(tmp / "plan.json")

    def slicer():
        from spineplan.export.slicer import export_slicer
        from spineplan.io import write_labels

        from spineplan.anatomy.spine import write_spine_json

        # the vertebra labels the plan was made on (VerSe codes), read by ``spineplan check`` by default,
        # and the names, measurements and fracture grades behind the plan
        write_labels(state["spine"].labels, tmp / "labels.nii.gz")
        write_spine_json(state["spine"], tmp / "spine.json")

        export_slicer(state["plan"], tmp / "slicer", labels=state["spine"].labels)

    def pictures():
        from spineplan.report.screw_figures import screw_figures

        screw_figures(state["ct"], state["plan"], tmp / "screws", spine=state["spine"], labels=state["spine"].labels)

    def write_reports_step():
        from spineplan.report.surgeon import write_reports

        write_reports(state["plan"], state["ct"], state["spine"], tmp, patient_name=patient_name)

    steps: list[tuple[str, Callable[[], None]]] = [
        ("read CT", read), ("anatomy", anatomy), ("screws", screws), ("rods", rods), ("incisions", incisions),
        ("access", access), ("C-arm angles", carm), ("tables", tables), ("Slicer folder", slicer),
        ("screw pictures", pictures)]
    if reports:
        steps.append(("reports", write_reports_step))
    try:
        with silenced(not progress):
            for name, fn in progress_steps(steps, "spineplan plan"):
                fn()
        _replace_dir(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        raise
    return state["plan"]
