"""The surgeon's report (HTML and PDF) and :func:`write_reports` (both reports of a plan).

Contents, in order: warnings first (danger in red), the case summary (levels, screws,
procedures, CT facts without patient identifiers), the screw table, the overview pictures
(AP and lateral virtual fluoroscopy with the planned metal, 3D rendering with screws, rods and
incision marks), rods, incisions, bone-access needles, C-arm angles per level, and one slice
picture per screw. Every page carries the research-use disclaimer.

Nothing here reads or prints patient identifiers: the CT is described by its grid and a short
hash of the file, never by its name or DICOM tags.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from spineplan import DISCLAIMER, __version__
from spineplan.report._html import (
    SEVERITY_ORDER,
    Alert,
    Doc,
    Figure,
    FigureRow,
    Heading,
    Para,
    Table,
    render_html,
)
from spineplan.typing import TypePath

#: Output file names in the plan folder.
SURGEON_HTML, SURGEON_PDF = "surgeon_report.html", "surgeon_report.pdf"
PATIENT_HTML, PATIENT_PDF = "patient_report.html", "patient_report.pdf"


def _f(x, nd=1, unit="") -> str:
    if x is None:
        return "-"
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not np.isfinite(v):
        return "-"
    return f"{_num(v, nd)}{unit}"


def _num(v: float, nd: int = 1) -> str:
    """``v`` to ``nd`` decimals, without the sign of a value that rounds to zero ("0.0", not "-0.0")."""
    s = f"{v:.{nd}f}"
    return s[1:] if s.startswith("-") and float(s) == 0.0 else s


def _pt(p) -> str:
    return "(" + ", ".join(_num(float(v)) for v in p) + ")"


def _levels_text(levels) -> str:
    levels = list(levels)
    if not levels:
        return "none"
    from spineplan.levels import level_index

    idx = [level_index(x) for x in levels]
    if len(levels) > 2 and idx == list(range(idx[0], idx[0] + len(idx))):
        return f"{levels[0]}-{levels[-1]}"
    return ", ".join(levels)


def _warning_items(plan) -> list[tuple[str, str]]:
    items = []
    for s in plan.screws:
        if s.grade not in (None, "A"):
            items.append(("danger", f"{s.label}: Gertzbein-Robbins grade {s.grade} "
                                    f"(breach {_f(s.extra.get('breach_mm'), 1)} mm {s.extra.get('breach_direction') or ''})."))
    for a in plan.access:
        g = a.extra.get("grade")
        if g not in (None, "A"):
            items.append(("danger", f"{a.level} {a.side} needle: grade {g}."))
    for w in sorted(plan.warnings, key=lambda w: SEVERITY_ORDER.get(w.severity, 1)):
        lv = f"{w.level}: " if w.level and not w.message.startswith(w.level) else ""
        items.append((w.severity, f"{lv}{w.message} [{w.code}]"))
    items.sort(key=lambda t: SEVERITY_ORDER.get(t[0], 1))
    return items


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _summary_rows(plan, ct, spine) -> list[list[str]]:
    from spineplan.anatomy.fracture import grade_text
    from spineplan.levels import sort_levels

    screw_levels = sort_levels({s.level for s in plan.screws})
    rows = []
    if plan.screws:
        rows.append(["Procedure", f"Percutaneous pedicle screw fixation {_levels_text(screw_levels)}: "
                                  f"{_count(len(plan.screws), 'screw')}, {_count(len(plan.rods), 'rod')}"])
    refused = [w for w in plan.warnings if w.code == "no-safe-screw"]
    if refused:
        asked = len(plan.screws) + len(refused)
        which = ", ".join(f"{w.level} {w.extra.get('side', '')}".strip() for w in refused)
        rows.append(["Pedicles NOT planned", f"{len(refused)} of {asked} requested ({which}): no screw obeys the "
                                             "safety rules there; reasons under Warnings"])
    acc_levels = sort_levels({a.level for a in plan.access})
    for lv in acc_levels:
        aa = [a for a in plan.access if a.level == lv]
        rows.append(["Procedure", f"{aa[0].procedure.capitalize()} {lv}: {aa[0].extra.get('approach', '')} "
                                  f"({len(aa)} needle{'s' if len(aa) > 1 else ''}, {aa[0].gauge} G)"])
    req = plan.extra.get("levels_requested")
    if req:
        rows.append(["Levels requested", _levels_text(req)])
    if plan.incisions:
        tot = plan.extra.get("incisions_total_mm") or sum(i.length_mm for i in plan.incisions)
        rows.append(["Incisions", f"{len(plan.incisions)}, total {_f(tot, 0)} mm "
                                  f"(longest {_f(max(i.length_mm for i in plan.incisions), 0)} mm)"])
    if spine is not None:
        rows.append(["Vertebrae in the scan", ", ".join(spine.names) + (
            f" (naming: {spine.naming_method}, confidence {spine.naming_confidence:.2f})" if spine.naming_method else "")])
        fr = [f"{v.name} {t}" for v in spine.vertebrae if (t := grade_text(v.fracture))]
        rows.append(["Compression fractures (Genant)", "; ".join(fr) if fr else "none graded >= 1"])
    if ct is not None:
        sp = " x ".join(f"{s:.2f}" for s in ct.spacing)
        rows.append(["CT", f"{' x '.join(str(n) for n in ct.shape)} voxels, {sp} mm, {ct.orientation()}"])
    if plan.ct is not None and plan.ct.sha256:
        rows.append(["CT file check", f"sha256 {plan.ct.sha256[:16]}..."])
    st = (plan.extra.get("planner") or {}).get("settings") or {}
    if st:
        rows.append(["Planner rules", f"bone margin {st.get('margin_mm')} mm, diameter <= "
                                      f"{100 * float(st.get('max_diameter_fraction', 0.8)):.0f} % of the isthmus, tip "
                                      f"{st.get('anterior_cortex_clearance_mm')} mm behind the anterior cortex, entry zone "
                                      f"{st.get('entry_zone_mm')} mm"])
    rows.append(["Software", f"spineplan {__version__}"])
    return rows


def _screw_table(plan) -> Table:
    rows, styles = [], []
    for s in plan.screws:
        e = s.extra
        rows.append([s.level, s.side, f"{s.diameter_mm:g} x {s.length_mm:g}", _pt(s.entry),
                     _f(s.medial_angle_deg), _f(s.cranial_angle_deg), _f(s.min_margin_mm, 2), s.grade or "-",
                     _f(e.get("mean_hu"), 0), _f(e.get("isthmus_width_mm"), 1)])
        styles.append(None if s.grade in (None, "A") else "danger")
    return Table(["Level", "Side", "Size (mm)", "Entry LPS (mm)", "Medial (deg)", "Cranial (deg)", "Margin (mm)",
                  "GR grade", "Mean HU", "Isthmus (mm)"], rows,
                 widths=[0.6, 0.6, 0.9, 2.1, 0.8, 0.8, 0.8, 0.7, 0.7, 0.8], row_styles=styles,
                 caption=f"Pedicle screws ({len(plan.screws)})")


def _size_table(plan) -> Table | None:
    """Why each screw is the size it is: what stops the next catalogue diameter and length on its
    trajectory (from the planner; None when no screw says)."""
    rows = [[s.level, s.side, f"{s.diameter_mm:g} x {s.length_mm:g}", _f(s.extra.get("isthmus_width_mm"), 1),
             s.extra.get("size_limited_by") or "-", s.extra.get("length_limited_by") or "-"]
            for s in plan.screws]
    if not any(r[4] != "-" or r[5] != "-" for r in rows):
        return None
    return Table(["Level", "Side", "Size (mm)", "Isthmus (mm)", "A wider screw is stopped by",
                  "A longer screw is stopped by"], rows, widths=[0.6, 0.6, 0.9, 0.9, 2.6, 2.6],
                 caption="Screw sizes: what limits each")


def _rod_table(plan) -> Table:
    rows = []
    for r in plan.rods:
        e = r.extra
        lv = e.get("levels") or []
        offs = ", ".join(_f(x, 1) for x in e.get("head_offsets_mm", []))
        depth = "-" if e.get("min_skin_depth_mm") is None else (
            f"{_f(e.get('min_skin_depth_mm'), 0)} mm under skin; fascia: "
            + ("ok" if not e.get("points_above_fascia") else f"{e['points_above_fascia']} points above"))
        rows.append([r.side, _levels_text(lv), f"{r.length_mm:g} (needs {_f(e.get('needed_length_mm'), 0)})",
                     _f(e.get("diameter_mm"), 1), str(e.get("contour", "-")), _f(e.get("bend_angle_deg"), 0),
                     offs or "-", depth])
    return Table(["Side", "Levels", "Length (mm)", "Diameter (mm)", "Contour", "Bend (deg)", "Head offsets (mm)",
                  "Depth"], rows, widths=[0.6, 0.8, 1.1, 0.8, 1.4, 0.7, 1.1, 1.8])


def _incision_table(plan, spine) -> Table:
    rows, styles = [], []
    for k, i in enumerate(plan.incisions, 1):
        e = i.extra
        lv = e.get("levels") or sorted({plan.screws[j].level for j in i.screws})
        rows.append([str(k), i.side, _levels_text(lv), _f(i.length_mm, 0), _f(e.get("distance_from_midline_mm"), 0),
                     _f(e.get("skin_depth_mm"), 0), e.get("flag") or ("merged" if e.get("merged") else "stab")])
        styles.append("warning" if e.get("flag") else None)
    tot = plan.extra.get("incisions_total_mm") or sum(i.length_mm for i in plan.incisions)
    return Table(["#", "Side", "Levels", "Length (mm)", "From midline (mm)", "Skin to bone (mm)", "Note"], rows,
                 widths=[0.3, 0.6, 0.8, 0.8, 0.9, 0.9, 4.0], row_styles=styles,
                 caption=f"Skin incisions: {len(plan.incisions)}, total {_f(tot, 0)} mm")


def _access_table(plan) -> Table:
    rows, styles = [], []
    for a in plan.access:
        e = a.extra
        rng = e.get("cement_ml_range_level")
        cem = f"{_f(e.get('cement_ml'), 1)}" + (f" (level {_f(rng[0], 1)}-{_f(rng[1], 1)})" if rng else "")
        rows.append([a.level, a.side, f"{a.procedure}, {e.get('approach', '-')}",
                     f"{a.gauge} G ({_f(e.get('needle_od_mm'), 2)} mm)", _pt(a.skin),
                     f"{_f(e.get('medial_angle_deg'))} / {_f(e.get('cranial_angle_deg'))}",
                     _f(e.get("skin_to_target_mm"), 0), _f(e.get("tip_from_midline_mm"), 1), cem,
                     f"{e.get('grade', '-')} ({_f(e.get('min_margin_mm'), 1)} mm)"])
        styles.append(None if e.get("grade") in (None, "A") else "danger")
    return Table(["Level", "Side", "Procedure", "Needle", "Skin entry LPS (mm)", "Medial / cranial (deg)",
                  "Skin to tip (mm)", "Tip from midline (mm)", "Cement (mL)", "Grade (margin)"], rows,
                 widths=[0.65, 0.6, 1.35, 0.95, 1.85, 0.9, 0.7, 0.75, 1.2, 0.9], row_styles=styles,
                 caption=f"Bone access needles ({len(plan.access)})")


def _carm_rows(plan, spine) -> list[dict]:
    """C-arm angles per treated level: the plan's own (``plan.extra["carm"]``), completed with
    :func:`spineplan.fluoro.views.carm_angles` for treated levels it lacks (e.g. access levels)."""
    from spineplan.levels import level_index, sort_levels

    rows = list(plan.extra.get("carm") or [])
    have = {r.get("level") for r in rows}
    levels = sort_levels({s.level for s in plan.screws} | {a.level for a in plan.access})
    missing = [lv for lv in levels if lv not in have and spine is not None and lv in spine]
    if missing:
        try:
            from spineplan.fluoro.views import carm_angles

            rows += carm_angles(spine, plan, levels=missing)
        except Exception:  # noqa: BLE001 - the angles are an aid; the report goes out without them
            pass
    return sorted(rows, key=lambda r: level_index(r["level"]))


def _carm_table(rows) -> Table:
    def cell(d):
        return "-" if not d else f"{d['orbital_deg']:+.0f} / {d['angular_deg']:+.0f}"

    from spineplan.fluoro.views import SUSPECT_NOTE

    out = [[r["level"] + ("*" if r.get("frame_suspect") else ""), cell(r.get("true_ap")), cell(r.get("true_lateral")),
            cell(r.get("owl_left")), cell(r.get("owl_right"))] for r in rows]
    caption = "C-arm angles per level: orbital / angular (deg), patient prone"
    if any(r.get("frame_suspect") for r in rows):
        caption += ". " + SUSPECT_NOTE
    return Table(["Level", "True AP", "True lateral", "Owl's eye left", "Owl's eye right"], out, caption=caption,
                 row_styles=["danger" if r.get("frame_suspect") else None for r in rows])


def surgeon_doc(plan, ct, spine, *, pictures: dict | None = None, screw_pngs: list[tuple[str, bytes]] | None = None) -> Doc:
    """The surgeon's report as a document (see :mod:`spineplan.report._html`)."""
    from spineplan.levels import sort_levels

    parts = []
    if plan.screws:
        parts.append(f"percutaneous screws {_levels_text(sort_levels({s.level for s in plan.screws}))} "
                     f"({_count(len(plan.screws), 'screw')}, {_count(len(plan.rods), 'rod')})")
    for proc in ("kyphoplasty", "vertebroplasty"):
        lv = sort_levels({a.level for a in plan.access if a.procedure == proc})
        if lv:
            parts.append(f"{proc} {_levels_text(lv)}")
    doc = Doc(title="spineplan: surgeon's report",
              subtitle="Minimally invasive plan: " + ("; ".join(parts) if parts else "no implants planned"),
              footer=DISCLAIMER)
    items = _warning_items(plan)
    doc.add(Alert(f"Warnings ({len(items)})", items) if items else Para("No warnings.", "lead"))
    doc.add(Heading("Case summary"), Table(["Item", "Value"], _summary_rows(plan, ct, spine), widths=[1.3, 5.0]))
    if plan.screws:
        doc.add(_screw_table(plan))
        doc.add(Para("Angles are in each vertebra's own frame: medial from its mid-sagittal plane (positive = "
                     "converging), cranial from its superior endplate. Margin = smallest bone left around the "
                     "screw surface; GR = Gertzbein-Robbins grade against the planning mask. Entry in patient LPS "
                     "millimetres of the original CT (x left, y posterior, z superior).", "note"))
        sizes = _size_table(plan)
        if sizes is not None:
            margin = ((plan.extra.get("planner") or {}).get("settings") or {}).get("margin_mm")
            doc.add(sizes, Para("What stops the next catalogue size on the same trajectory: \"pedicle margin N mm from "
                                "entry\" means a screw one size wider would keep less than the "
                                + (f"{margin:g} mm " if margin is not None else "")
                                + "bone margin N mm along its axis from the entry; \"tip clearance\" means a longer "
                                "screw would come closer to the anterior cortex than allowed.", "note"))
    pictures = pictures or {}
    if pictures.get("AP") is not None and pictures.get("LAT") is not None:
        doc.add(Heading("Virtual fluoroscopy with the planned metal"),
                FigureRow([Figure(pictures["AP"]["png"], pictures["AP"]["info"].get("description", "AP")),
                           Figure(pictures["LAT"]["png"], pictures["LAT"]["info"].get("description", "Lateral"))],
                          "Digitally reconstructed radiographs from the CT with screws, rods and needles at true "
                          "size (orange = patient's left, blue = right). Simulated images."))
    if pictures.get("3d") is not None:
        doc.add(Heading("3D view"), Figure(pictures["3d"], "Vertebrae (treated levels in orange), screws, rods, "
                                           "needles and skin incisions (red) on the skin over the operated levels.",
                                           width=1.0))
    if plan.rods:
        doc.add(Heading(f"Rods ({len(plan.rods)})"), _rod_table(plan))
    if plan.incisions:
        doc.add(Heading("Incisions"), _incision_table(plan, spine))
    if plan.access:
        doc.add(Heading("Vertebroplasty / kyphoplasty access"), _access_table(plan))
        src = plan.access[0].extra.get("cement_source")
        doc.add(Para("Cement: estimate = 16.2 % of the vertebral body volume (restored strength), range up to "
                     "29.8 % (restored stiffness); fill under fluoroscopy by judgement. "
                     + (f"Source: {src}." if src else ""), "note"))
    carm = _carm_rows(plan, spine)
    if carm:
        doc.add(Heading("C-arm plan"), _carm_table(carm),
                Para("Orbital = cranio-caudal tilt (+ = detector towards the head); angular = lateral rotation "
                     "(+ = detector towards the patient's left). True AP: superior endplate edge-on, spinous "
                     "process centred; owl's eye: beam along the planned screw.", "note"))
    if screw_pngs:
        doc.add(Heading("Per-screw slices"))
        for name, png in screw_pngs:
            doc.add(Figure(png, name, width=0.82))
    return doc


def _screw_pngs(plan, ct, spine, folder: Path | None) -> list[tuple[str, bytes]]:
    """The per-screw slice pictures: reuse ``folder/<level>_<side>.png`` when present, else draw them."""
    from spineplan.report.screw_figures import screw_figure

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for s in plan.screws:
            p = None if folder is None else folder / f"{s.level}_{s.side}.png"
            if p is None or not p.is_file():
                p = screw_figure(ct, s, Path(tmp) / f"{s.level}_{s.side}.png", spine=spine,
                                 labels=None if spine is None else spine.labels)
            out.append((f"{s.label}: grade {s.grade or '-'}", Path(p).read_bytes()))
    return out


def write_surgeon_report(plan, ct, spine, out_dir: TypePath, *, pictures: dict | None = None,
                         screw_dir: TypePath | None = None) -> dict[str, Path]:
    """Write ``surgeon_report.html`` and ``surgeon_report.pdf`` into ``out_dir``."""
    from spineplan._atomic import write_text
    from spineplan.report._pdf import render_pdf

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if pictures is None:
        pictures = make_pictures(plan, ct, spine)
    pngs = _screw_pngs(plan, ct, spine, None if screw_dir is None else Path(screw_dir))
    doc = surgeon_doc(plan, ct, spine, pictures=pictures, screw_pngs=pngs)
    html_path = write_text(out / SURGEON_HTML, render_html(doc))
    pdf_path = render_pdf(doc, out / SURGEON_PDF)
    return {"surgeon_html": Path(html_path), "surgeon_pdf": pdf_path}


def make_pictures(plan, ct, spine, *, skin_mask=None) -> dict:
    """The report pictures: ``{"AP", "LAT"}`` (virtual fluoroscopy, see
    :func:`spineplan.report.figures.fluoro_pictures`), ``"3d"`` and ``"patient"`` (PNG bytes)."""
    from spineplan.report import figures as F

    pics: dict = {}
    pics.update(F.fluoro_pictures(ct, spine, plan))
    pics["3d"] = F.spine_3d_picture(ct, spine, plan, skin_mask=skin_mask)
    pics["patient"] = F.patient_picture(ct, spine, plan)
    return pics


def write_reports(plan, ct, spine, out_dir: TypePath, *, patient_name: str | None = None,
                  screw_dir: TypePath | None = None) -> dict[str, Path]:
    """Write both reports of ``plan`` into ``out_dir``: ``surgeon_report.html/.pdf`` and
    ``patient_report.html/.pdf``. ``patient_name`` appears in the patient's report only when given.

    The per-screw slice pictures in ``screw_dir`` (default ``out_dir/screws/``, as written by the
    plan run) are reused when present. Returns ``{"surgeon_html", "surgeon_pdf", "patient_html", "patient_pdf"}``."""
    from spineplan.report.patient import write_patient_report

    out = Path(out_dir)
    pics = make_pictures(plan, ct, spine)
    paths = write_surgeon_report(plan, ct, spine, out, pictures=pics, screw_dir=out / "screws" if screw_dir is None else screw_dir)
    paths.update(write_patient_report(plan, out, picture=pics["patient"], patient_name=patient_name))
    return paths
