"""The patient's report (HTML and PDF): the plan in plain language.

Written for a reading level most adults follow (short sentences, common words; the tests keep
its Flesch-Kincaid grade at or below 8): what will be done and where (with a picture), how many
small cuts and how long, the benefits, the risks of minimally invasive screw fixation, the
usual recovery (each stated as typical, not promised), a section on kyphoplasty/vertebroplasty
when the plan has it, questions to ask the surgeon, and the research-use disclaimer.

No identifying data: the patient's name appears only when passed explicitly as
``patient_name``; nothing is taken from the CT's header.

Typical recovery times are those given to patients after minimally invasive lumbar fusion
(e.g. walking the day after surgery, 1-3 days in hospital, desk work after 2-4 weeks, full
recovery in 6-12 weeks; see e.g. Foley KT, Holly LT, Schwender JD. Minimally invasive lumbar
fusion. Spine 2003;28(15 Suppl):S26-S35, and patient information from spine centres). They are
stated as typical only.
"""

from __future__ import annotations

from pathlib import Path

from spineplan import DISCLAIMER
from spineplan.report._html import Bullets, Doc, Figure, Heading, Para, render_html
from spineplan.typing import TypePath

#: Typical recovery course after minimally invasive screw fixation (see the module docstring).
RECOVERY = (
    "Most people walk within about a day after the operation.",
    "Most people stay in the hospital for about 1 to 3 days.",
    "Many people go back to desk work in about 2 to 4 weeks.",
    "Full recovery often takes about 6 to 12 weeks. Heavy work may take longer.",
    "A physiotherapist will show you safe ways to move. You will learn exercises to make your back strong.",
)

RISKS = (
    "Nerve injury. A screw or tool can press on or hurt a nerve. This can cause pain, numbness or weak legs.",
    "Problems with the metal parts. A screw can come loose. A screw or rod can break or move.",
    "A tear in the thin bag around the nerves. Fluid from the spine can leak out. "
    "This can cause a headache, and you may need to lie flat for a while.",
    "The bones do not grow together. You may then need another operation.",
    "Infection in the wound or near the screws.",
    "Blood clots in the legs or lungs.",
    "More wear on the discs and joints above or below the screws, over the years.",
    "The pain may not go away fully.",
    "X-rays are used during the operation. This means a small dose of radiation.",
)

KYPHO_RISKS = (
    "Some cement can leak out of the bone. Most leaks cause no harm. Rarely, cement can press on a nerve "
    "or travel in a vein.",
    "A nearby bone can break later, as with any weak bone.",
)

QUESTIONS = (
    "Why do you advise this operation for me? What else could I try?",
    "What will happen if I wait or do not have it?",
    "How often do you do this operation? How often do problems happen?",
    "How much pain should I expect, and how will it be treated?",
    "When can I walk, drive, go back to work and lift things?",
    "What signs should make me call you after I go home?",
    "Will I need physiotherapy? For how long?",
)

_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine",
          10: "ten", 11: "eleven", 12: "twelve"}


def _n(k: int) -> str:
    return _WORDS.get(k, str(k))


def _and(items) -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _cm(mm: float) -> str:
    cm = mm / 10.0
    return f"{cm:.0f}" if cm >= 10 else f"{cm:.1f}".replace(".0", "")


def _rods_sentence(plan) -> str:
    """What joins the screws, in plain words, as the plan has it (rods per side)."""
    sides = sorted({r.side for r in plan.rods})
    if not sides:
        return "No rod joins them in this plan." if len(plan.screws) > 1 else ""
    if len(sides) == 2:
        what = "Thin metal rods join the screws on each side."
    else:
        what = f"A thin metal rod joins the screws on the {sides[0]} side of your spine."
    return what + " They hold the bones still so that they can heal and grow together."


def _treated_bone(plan) -> str:
    """'the broken bone', or 'the bone' when no augmented level has a Genant grade on the scan
    (the surgeon chose it for another reason: the text must not call it broken)."""
    graded = [a for a in plan.access if (a.extra.get("genant_grade") or 0) >= 1]
    return "the broken bone" if graded else "the bone"


def _screws_not_planned(plan) -> list[str]:
    """The level of every screw that was asked for but could not be planned safely."""
    return [w.level for w in plan.warnings if w.code == "no-safe-screw" and w.level]


def patient_doc(plan, *, picture: bytes | None = None, patient_name: str | None = None) -> Doc:
    """The patient's report as a document (see :mod:`spineplan.report._html`)."""
    from spineplan.levels import region, sort_levels

    screw_levels = sort_levels({s.level for s in plan.screws})
    acc_levels = sort_levels({a.level for a in plan.access})
    sub = f"Prepared for {patient_name}." if patient_name else "Made from your CT scan."
    doc = Doc(title="Your spine operation: a guide for you", subtitle=sub, footer=DISCLAIMER)
    doc.add(Para("This guide was made by a computer program used for research. It is not a medical device. "
                 "Your surgeon must check every part of the plan. Please read it, and bring your questions.", "lead"))
    # --- what and where
    doc.add(Heading("What will be done"))
    doc.add(Para("Your spine is a stack of bones. Each bone has a short name, like L4. "
                 "L bones are in your lower back. T bones are in your upper and middle back."))
    if plan.screws:
        n_s = len(plan.screws)
        doc.add(Para(f"The plan is to put {_n(n_s)} small screw{'s' if n_s > 1 else ''} into "
                     f"{_n(len(screw_levels))} bone{'s' if len(screw_levels) > 1 else ''} of your back: "
                     f"{_and(screw_levels)}. {_rods_sentence(plan)}"))
        doc.add(Para("This is done through small cuts in the skin, not one long cut. "
                     "The surgeon uses X-ray pictures to guide each screw."))
    if any(w.code == "names-uncertain" for w in plan.warnings):
        doc.add(Para("Important: the computer was not sure which bone is which on this scan. The names above "
                     "may be off by one bone. Your surgeon will count the bones on your scans and on X-rays "
                     "before and during the operation. Ask your surgeon how they check the right level."))
    missing = _screws_not_planned(plan)
    if missing:
        k = len(missing)
        doc.add(Para(f"The computer could not find a safe path for {_n(k)} of the screws that were asked for "
                     f"(in {_and(sort_levels(set(missing)))}), so this plan is not complete. Your surgeon will "
                     "decide what to do there: for example a smaller screw, another kind of fixation, or "
                     "leaving it out. Ask your surgeon about it."))
    if plan.access:
        proc = plan.access[0].procedure
        # Levels chosen by the surgeon although the scan shows no graded collapse: say so, never imply a
        # finding the scan does not show.
        unseen = sorted({a.level for a in plan.access if not (a.extra.get("genant_grade") or 0) >= 1})
        what = "a bone" if len(unseen) == len(set(acc_levels)) else "a broken bone"
        doc.add(Para(f"The plan also treats {what}: {_and(acc_levels)}. A thin needle goes through the skin "
                     f"into the bone, and bone cement is put in to make it firm ({proc}). "
                     "There is more about this below."))
        if unseen:
            doc.add(Para(f"On this scan, {_and(unseen)} does not look clearly squashed. Your surgeon chose "
                         f"{'it' if len(unseen) == 1 else 'them'} for other reasons, for example a fresh break seen "
                         "on an MRI scan. Ask your surgeon why."))
    if picture is not None:
        doc.add(Figure(picture, "Where the operation is. Left: you, seen from behind. Right: your back from "
                                "your scan. Orange shows the bones that are treated. Red shows the cuts.",
                       width=0.95))
    # --- cuts
    if plan.incisions or plan.access:
        doc.add(Heading("The cuts in your skin"))
        if plan.incisions:
            lens = [i.length_mm for i in plan.incisions]
            total = sum(lens)
            doc.add(Para(f"You will have {_n(len(lens))} small cuts in your back for the screws. "
                         f"They are about {_cm(min(lens))} to {_cm(max(lens))} cm long each. "
                         f"Together they add up to about {_cm(total)} cm."))
        if plan.access:
            k = len(plan.access)
            doc.add(Para(f"The needle for {_treated_bone(plan)} needs {_n(k)} tiny cut{'s' if k > 1 else ''}, "
                         f"{'each ' if k > 1 else ''}a few millimetres long."))
        doc.add(Para("The cuts are closed with stitches, glue or strips. They leave small scars."))
    # --- benefits
    doc.add(Heading("What it can do for you"))
    ben = []
    if plan.screws:
        ben += ["It holds the bones still, so they can heal and grow together.",
                "It can ease pain that comes from movement between the bones.",
                "Small cuts often mean less blood loss, less pain after the operation and a shorter hospital stay "
                "than one long cut."]
    if plan.access:
        ben += ["Cement can make a broken bone firm and often eases its pain within a few days."]
    doc.add(Bullets(ben))
    doc.add(Para("These are the usual results. They are not a promise. Your own result may be different."))
    # --- risks
    doc.add(Heading("Risks"))
    doc.add(Para("Every operation has risks. Most people have no serious problems. "
                 "These are the main risks of this kind of operation:"))
    doc.add(Bullets(list(RISKS)))
    doc.add(Para("Ask your surgeon how often each of these happens, and what can be done about it."))
    # --- kyphoplasty / vertebroplasty
    if plan.access:
        kypho = any(a.procedure == "kyphoplasty" for a in plan.access)
        bone = _treated_bone(plan)
        doc.add(Heading(f"Treating {bone} ({'kyphoplasty' if kypho else 'vertebroplasty'})"))
        steps = [f"{bone.capitalize()} is {_and(acc_levels)}. "
                 + ("It is in your upper or middle back." if all(region(x) == "thoracic" for x in acc_levels)
                    else "It is in your back.")]
        if kypho:
            steps.append("The surgeon puts a thin tube through the skin into the bone. A small balloon goes in "
                         "and is filled to make room and lift the bone. Then the balloon comes out and bone cement "
                         "fills the space.")
        else:
            steps.append("The surgeon puts a thin needle through the skin into the bone. Bone cement goes in "
                         "through the needle and fills the cracks.")
        steps.append("The cement gets hard in a few minutes. Many people feel less pain within a day or two. "
                     "Most go home the same day or the next day.")
        doc.add(Para(" ".join(steps)))
        doc.add(Para("Its own risks:"))
        doc.add(Bullets(list(KYPHO_RISKS)))
    # --- recovery
    doc.add(Heading("After the operation"))
    doc.add(Para("This is the usual course. Your own may be faster or slower."))
    doc.add(Bullets(list(RECOVERY)))
    doc.add(Para("Call your care team at once if you have a fever, a red or wet wound, new weak legs, "
                 "new numbness, or trouble passing water."))
    # --- questions
    doc.add(Heading("Questions to ask your surgeon"))
    doc.add(Bullets(list(QUESTIONS)))
    doc.add(Heading("Please note"))
    doc.add(Para("This plan was made by research software. It is not a medical device and it is not a medical "
                 "decision. Only your surgeon can tell you what is right for you."))
    return doc


def write_patient_report(plan, out_dir: TypePath, *, picture: bytes | None = None, patient_name: str | None = None,
                         ct=None, spine=None) -> dict[str, Path]:
    """Write ``patient_report.html`` and ``patient_report.pdf`` into ``out_dir``. The picture is
    drawn from ``ct`` and ``spine`` when not given (and left out when neither is)."""
    from spineplan._atomic import write_text
    from spineplan.report._pdf import render_pdf
    from spineplan.report.surgeon import PATIENT_HTML, PATIENT_PDF

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if picture is None and ct is not None and spine is not None:
        from spineplan.report.figures import patient_picture

        picture = patient_picture(ct, spine, plan)
    doc = patient_doc(plan, picture=picture, patient_name=patient_name)
    h = write_text(out / PATIENT_HTML, render_html(doc))
    p = render_pdf(doc, out / PATIENT_PDF)
    return {"patient_html": Path(h), "patient_pdf": p}
