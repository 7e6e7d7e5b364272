"""Surgeon's and patient's reports on a phantom plan: real HTML and PDF files, PDF text
extracted with pypdf, pages rendered with poppler's pdftoppm."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from _report import flesch_kincaid_grade, image_stats, pdf_pages_text, phantom_plan, render_pages
from spineplan import DISCLAIMER

NAME = "Jane Q. Testpatient"
#: A4 at 50 dpi: 8.27 x 11.69 inches.
A4_50DPI = (413, 585)


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    from spineplan.report.patient import write_patient_report
    from spineplan.report.surgeon import write_reports

    ph, spine, plan = phantom_plan()
    out = tmp_path_factory.mktemp("reports")
    paths = write_reports(plan, ph.ct, spine, out)
    named = write_patient_report(plan, tmp_path_factory.mktemp("named"), patient_name=NAME,
                                 picture=None, ct=None, spine=None)
    return ph, spine, plan, paths, named


def _disclaimer_start():
    return DISCLAIMER.split(".")[0]  # "spineplan is research software ... medical device"


def test_plan_has_what_the_reports_show(reports):
    _, _, plan, paths, _ = reports
    assert {s.level for s in plan.screws} == {"L1", "L2"} and len(plan.screws) == 4
    assert [a.level for a in plan.access] == ["T12"] and plan.rods and plan.incisions
    assert set(paths) == {"surgeon_html", "surgeon_pdf", "patient_html", "patient_pdf"}
    assert all(p.is_file() and p.stat().st_size > 1000 for p in paths.values())


def test_surgeon_pdf_text(reports):
    _, _, plan, paths, _ = reports
    pages = pdf_pages_text(paths["surgeon_pdf"])
    text = " ".join(pages)
    for p in pages:  # the disclaimer on every page
        assert _disclaimer_start() in p
    # warnings first: the danger warning before the case summary, and before the screw table
    assert text.index("Test danger warning") < text.index("Case summary") < text.index("Pedicle screws")
    for s in plan.screws:  # every screw's level, side and size in the table
        assert re.search(rf"{s.level} {s.side} {s.diameter_mm:g} x {s.length_mm:g}", text), s.label
        assert f"{s.min_margin_mm:.2f}" in text
    assert "kyphoplasty" in text and "T12" in text and "unipedicular" in text
    # why each screw is not wider / longer, as the planner states it
    assert "Screw sizes: what limits each" in text
    flat = re.sub(r"\s+", " ", text)
    for s in plan.screws:
        why = s.extra["size_limited_by"]
        assert why and " ".join(why.split()[:3]) in flat, (s.label, why)
    cem = plan.access[0].extra["cement_ml"]
    assert f"{cem:.1f}" in text and "Molloy" in text
    assert "Skin incisions" in text and "Rods" in text and "C-arm" in text and "Per-screw slices" in text
    assert NAME not in text and "Testpatient" not in text


def test_patient_pdf_text_and_privacy(reports):
    _, _, plan, paths, named = reports
    text = " ".join(pdf_pages_text(paths["patient_pdf"]))
    for word in ("Nerve injury", "come loose", "break", "leak out", "do not grow together", "Infection",
                 "Blood clots", "More wear", "may not go away", "radiation"):
        assert word in text, word
    for course in ("within about a day", "about 1 to 3 days", "about 2 to 4 weeks", "about 6 to 12 weeks",
                   "physiotherapist"):
        assert course in text, course
    assert "typical" in text.lower() or "usual" in text.lower()
    assert "kyphoplasty" in text and "T12" in text and "L1 and L2" in text
    assert "Questions to ask your surgeon" in text and _disclaimer_start() in text
    n_inc = len(plan.incisions)
    words = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
    assert f"You will have {words.get(n_inc, n_inc)} small cuts" in text
    assert NAME not in text
    # the name only when given explicitly
    named_text = " ".join(pdf_pages_text(named["patient_pdf"]))
    assert NAME in named_text and NAME in named["patient_html"].read_text()
    assert NAME not in paths["patient_html"].read_text() and NAME not in paths["surgeon_html"].read_text()


def test_patient_text_reading_level(reports):
    from spineplan.report._html import Bullets, Para
    from spineplan.report.patient import patient_doc

    _, _, plan, _, _ = reports
    doc = patient_doc(plan)
    parts = [b.text for b in doc.blocks if isinstance(b, Para)]
    parts += [i for b in doc.blocks if isinstance(b, Bullets) for i in b.items]
    text = " ".join(p if p.rstrip()[-1:] in ".?!:" else p + "." for p in parts)
    assert len(text.split()) > 400
    grade = flesch_kincaid_grade(text)
    assert grade <= 8.0, grade
    # and the formula is not trivially low: a dense technical sentence scores far higher
    assert flesch_kincaid_grade("Percutaneous transpedicular instrumentation necessitates intraoperative "
                                "fluoroscopic verification of trajectories.") > 16


def test_pdf_pages_render(reports, tmp_path):
    _, _, _, paths, _ = reports
    for key in ("surgeon_pdf", "patient_pdf"):
        d = tmp_path / key
        d.mkdir()
        pages = render_pages(paths[key], d)
        if pages is None:
            pytest.skip("pdftoppm (poppler-utils) is not installed")
        assert len(pages) >= (3 if key == "surgeon_pdf" else 2)
        for p in pages:
            size, ink, std = image_stats(p)
            assert abs(size[0] - A4_50DPI[0]) <= 2 and abs(size[1] - A4_50DPI[1]) <= 2, size
            assert ink > 0.01 and std > 10.0, (p.name, ink, std)  # not blank
    # pages with pictures carry much more ink than text-only pages: the first surgeon pages hold
    # the virtual fluoroscopy and the 3D view
    inks = [image_stats(p)[1] for p in sorted((tmp_path / "surgeon_pdf").glob("page-*.png"))]
    assert max(inks) > 0.15


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(dict(attrs).get("src", ""))


def test_html_reports(reports):
    _, _, plan, paths, _ = reports
    html = paths["surgeon_html"].read_text()
    c = _Collect()
    c.feed(html)
    pngs = [s for s in c.imgs if s.startswith("data:image/png;base64,")]
    assert len(pngs) == len(c.imgs) == 2 + 1 + len(plan.screws)  # AP + LAT, 3D, one per screw
    assert html.count(_disclaimer_start()) >= 2
    assert html.index("Test danger warning") < html.index("Case summary")
    assert "#b00020" in html  # danger red
    ph = paths["patient_html"].read_text()
    c2 = _Collect()
    c2.feed(ph)
    assert len(c2.imgs) == 1 and _disclaimer_start() in ph


def test_report_pictures(reports):
    import io

    import numpy as np
    from PIL import Image

    from spineplan.report.figures import fluoro_pictures

    ph, spine, plan, _, _ = reports
    pics = fluoro_pictures(ph.ct, spine, plan, size_px=128)
    for view in ("AP", "LAT"):
        img = np.asarray(Image.open(io.BytesIO(pics[view]["png"])).convert("RGB"))
        assert img.shape == (128, 128, 3)
        # the implants' colours (orange left, blue right) are drawn on the image
        assert np.any((img[..., 0] > 200) & (img[..., 1] > 100) & (img[..., 1] < 180) & (img[..., 2] < 60))
        assert np.any((img[..., 0] < 60) & (img[..., 2] > 200))
    assert pics["AP"]["info"]["angular_deg"] == pytest.approx(0.0)
    assert pics["LAT"]["info"]["angular_deg"] == pytest.approx(90.0)


def test_patient_text_does_not_invent_a_fracture(reports):
    """An augmentation level without a Genant grade on the scan is not called clearly broken silently."""
    import copy

    from spineplan.report._html import Para
    from spineplan.report.patient import patient_doc

    _, _, plan, _, _ = reports
    assert plan.access, "the phantom plan has an access path"
    graded = " ".join(b.text for b in patient_doc(plan).blocks if isinstance(b, Para))
    assert "does not look clearly squashed" not in graded
    chosen = copy.deepcopy(plan)
    for a in chosen.access:
        a.extra["genant_grade"] = 0
    text = " ".join(b.text for b in patient_doc(chosen).blocks if isinstance(b, Para))
    assert f"{chosen.access[0].level} does not look clearly squashed" in text and "Ask your surgeon why" in text
    # ... and is not called "the broken bone" further on either
    assert "broken bone" not in text and "broken bone" in graded


def test_reports_say_what_was_not_planned_and_which_rods_exist(reports):
    """A partial plan (the planner refused some pedicles) is never presented as complete: the
    patient reads how many screws could not be planned and where, and that the one rod is on
    one side; the surgeon's summary lists the refused pedicles."""
    import copy

    from spineplan.plan.model import PlanWarning
    from spineplan.report._html import Para, Table
    from spineplan.report.patient import patient_doc
    from spineplan.report.surgeon import surgeon_doc

    _, spine, plan, _, _ = reports
    assert {r.side for r in plan.rods} == {"left", "right"}
    text = " ".join(b.text for b in patient_doc(plan).blocks if isinstance(b, Para))
    assert "rods join the screws on each side" in text and "safe path" not in text
    part = copy.deepcopy(plan)
    gone = [s for s in part.screws if s.side == "right"]
    part.screws = [s for s in part.screws if s.side == "left"]
    part.rods = [r for r in part.rods if r.side == "left"]
    part.warnings += [PlanWarning("no-safe-screw", f"No safe screw for {s.level} right: test", level=s.level,
                                  severity="danger", extra={"side": "right"}) for s in gone]
    text = " ".join(b.text for b in patient_doc(part).blocks if isinstance(b, Para))
    words = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
    assert f"could not find a safe path for {words[len(gone)]} of the screws" in text
    assert "not complete" in text and "on the left side of your spine" in text
    assert "on each side" not in text
    rows = [r for b in surgeon_doc(part, None, spine).blocks if isinstance(b, Table) for r in b.rows]
    refused = [r for r in rows if r[0] == "Pedicles NOT planned"]
    assert refused and refused[0][1].startswith(f"{len(gone)} of {len(plan.screws)} requested")
    for s in gone:
        assert f"{s.level} right" in refused[0][1]


def test_patient_reads_when_the_level_names_are_uncertain(reports):
    """A plan whose names are a flagged guess (workflow's names-uncertain warning) never reads to
    the patient as if the levels were sure; a cross-checked plan carries no such paragraph."""
    import copy

    from spineplan.plan.model import PlanWarning
    from spineplan.report._html import Para
    from spineplan.report.patient import patient_doc

    _, _, plan, _, _ = reports
    sure = " ".join(b.text for b in patient_doc(plan).blocks if isinstance(b, Para))
    assert "not sure which bone is which" not in sure
    unsure = copy.deepcopy(plan)
    unsure.warnings.append(PlanWarning("names-uncertain", "The level names are uncertain (test)", severity="danger"))
    blocks = [b.text for b in patient_doc(unsure).blocks if isinstance(b, Para)]
    text = " ".join(blocks)
    assert "not sure which bone is which" in text and "off by one bone" in text
    # said right after what will be done, before risks and recovery
    i = next(k for k, t in enumerate(blocks) if "not sure which bone" in t)
    j = next(k for k, t in enumerate(blocks) if "small screw" in t)
    assert i == j + 2  # after the screws and the small-cuts paragraphs


def test_report_numbers_never_show_a_negative_zero():
    """A cranial angle of -0.01 deg reads "0.0" in the tables, not "-0.0" (which a reader takes for a
    real sign); real negatives keep theirs."""
    from spineplan.report.surgeon import _f, _pt

    assert [_f(-0.01), _f(-0.04), _f(-0.05), _f(-0.2), _f(0.0), _f(-0.004, 2)] == ["0.0", "0.0", "-0.1", "-0.2", "0.0", "0.00"]
    assert _pt([-0.04, 1.26, -3.3]) == "(0.0, 1.3, -3.3)"
