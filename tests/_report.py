"""Helpers of the report tests: a small phantom plan (screws, rods, incisions, kyphoplasty
access), the Flesch-Kincaid grade, and PDF text/page rendering."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np

from _phantoms import get_phantom
from _planner import spine_from_truth

PHANTOM_KW = dict(levels="T12-L3", spacing=1.5, fracture=("T12", 2, "wedge"))
SCREW_LEVELS = ["L1", "L2"]


def phantom_plan():
    """(phantom, spine from truth, plan with screws L1-L2, rods, incisions and T12 kyphoplasty)."""
    from spineplan.plan.access import plan_access
    from spineplan.plan.incisions import plan_incisions
    from spineplan.plan.rods import plan_rods
    from spineplan.plan.screws import plan_screws
    from spineplan.plan.skin import SkinSurface

    ph = get_phantom(**PHANTOM_KW)
    spine = spine_from_truth(ph)
    for v in spine.vertebrae:
        t = ph.truth["vertebrae"][v.name]
        v.fracture = dict(t["fracture"])
        v.measurements = {"body_ap_depth_mm": t["body_ap_depth_mm"]}
    plan = plan_screws(ph.ct, spine, SCREW_LEVELS)
    skin = SkinSurface(ph.ct)
    plan_rods(plan, skin=skin, spine=spine)
    plan_incisions(plan, skin, spine=spine)
    acc, warns = plan_access(ph.ct, spine, skin=skin)
    plan.access = acc
    plan.warnings += warns
    # a danger warning, to check that warnings come first and in red
    plan.warn("test-danger", "Test danger warning: check the L2 left pedicle.", level="L2", severity="danger")
    return ph, spine, plan


def syllables(word: str) -> int:
    """Vowel-group syllable count (the usual approximation of readability tools)."""
    w = word.lower()
    n = len(re.findall(r"[aeiouy]+", w))
    if w.endswith("e") and not w.endswith(("le", "ee", "ye")) and n > 1:
        n -= 1
    return max(1, n)


def flesch_kincaid_grade(text: str) -> float:
    """Flesch-Kincaid grade level: 0.39 words/sentence + 11.8 syllables/word - 15.59
    (Kincaid JP et al., Naval Technical Training Command report 8-75, 1975)."""
    sents = [s for s in re.split(r"[.!?:]+(?:\s|$)", text) if re.search(r"[A-Za-z0-9]", s)]
    words = re.findall(r"[A-Za-z0-9]+(?:'[a-z]+)?", text)
    syl = sum(syllables(w) for w in words)
    return 0.39 * len(words) / len(sents) + 11.8 * syl / len(words) - 15.59


def pdf_pages_text(path) -> list[str]:
    from pypdf import PdfReader

    return [re.sub(r"\s+", " ", p.extract_text() or "") for p in PdfReader(str(path)).pages]


def render_pages(pdf, out_dir, dpi: int = 50) -> list:
    """Render every page with poppler's pdftoppm; returns the PNG paths (sorted)."""
    exe = shutil.which("pdftoppm")
    if exe is None:
        return None
    subprocess.run([exe, "-r", str(dpi), "-png", str(pdf), str(out_dir / "page")], check=True,
                   capture_output=True, timeout=120)
    return sorted(out_dir.glob("page-*.png"))


def image_stats(path) -> tuple[tuple[int, int], float, float]:
    """(size, fraction of non-white pixels, standard deviation of the grey values)."""
    from PIL import Image

    a = np.asarray(Image.open(path).convert("L"), float)
    return (a.shape[1], a.shape[0]), float(np.mean(a < 245)), float(a.std())
