"""PDF renderer of the reports' document model (:mod:`spineplan.report._html`), with reportlab.

A4 portrait; the title on the first page, then the blocks; every page has a footer with the
disclaimer and the page number. reportlab is imported inside :func:`render_pdf` (optional
dependency of the core).
"""

from __future__ import annotations

import io
from pathlib import Path

from spineplan.report._html import (
    SEVERITY_BACKGROUND,
    SEVERITY_COLOURS,
    Alert,
    Bullets,
    Doc,
    Figure,
    FigureRow,
    Heading,
    PageBreak,
    Para,
    Table,
)

#: JPEG quality of the pictures embedded in the PDF.
JPEG_QUALITY = 88
#: Characters the PDF's built-in Helvetica (WinAnsi) cannot show, and their replacements.
_ASCII = {"\u2265": ">=", "\u2264": "<=", "\u2192": "->", "\u2212": "-", "\u00d7": "x", "\u2248": "~"}


def _clean(s) -> str:
    from xml.sax.saxutils import escape

    s = str(s)
    for k, v in _ASCII.items():
        s = s.replace(k, v)
    return escape(s)


def render_pdf(doc: Doc, path) -> Path:
    """Write ``doc`` as a PDF at ``path`` (atomically). Returns the path."""
    from PIL import Image as PILImage
    from reportlab.lib import colors
    from reportlab.lib.enums import TA_CENTER
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.platypus import (
        Image,
        KeepTogether,
        ListFlowable,
        ListItem,
        Paragraph,
        SimpleDocTemplate,
        Spacer,
    )
    from reportlab.platypus import PageBreak as RLPageBreak
    from reportlab.platypus import Table as RLTable
    from reportlab.platypus import TableStyle

    from spineplan._atomic import atomic_path

    ss = getSampleStyleSheet()
    body = ParagraphStyle("body", parent=ss["BodyText"], fontName="Helvetica", fontSize=10, leading=13.5)
    styles = {
        "normal": body,
        "lead": ParagraphStyle("lead", parent=body, fontSize=11.5, leading=15.5),
        "small": ParagraphStyle("small", parent=body, fontSize=8.5, leading=11),
        "note": ParagraphStyle("note", parent=body, fontSize=8.5, leading=11, textColor=colors.HexColor("#555555"),
                               fontName="Helvetica-Oblique"),
    }
    # headings stay with the block that follows them (no heading alone at the foot of a page)
    h = {2: ParagraphStyle("h2", parent=ss["Heading2"], fontSize=13.5, leading=16, spaceBefore=8, spaceAfter=4,
                           keepWithNext=1),
         3: ParagraphStyle("h3", parent=ss["Heading3"], fontSize=11.5, leading=14, spaceBefore=6, spaceAfter=3,
                           keepWithNext=1),
         4: ParagraphStyle("h4", parent=ss["Heading4"], fontSize=10.5, leading=13, keepWithNext=1)}
    cell = ParagraphStyle("cell", parent=body, fontSize=7.6, leading=9.2)
    cell_big = ParagraphStyle("cellb", parent=body, fontSize=9.5, leading=12)
    head_cell = ParagraphStyle("hcell", parent=cell, fontName="Helvetica-Bold")
    cap = ParagraphStyle("cap", parent=body, fontSize=8.5, leading=10.5, alignment=TA_CENTER,
                         textColor=colors.HexColor("#333333"))
    title = ParagraphStyle("title", parent=ss["Title"], fontSize=18, leading=22, spaceAfter=2, alignment=0)
    sub = ParagraphStyle("sub", parent=body, textColor=colors.HexColor("#444444"))
    disc = ParagraphStyle("disc", parent=body, fontSize=8.5, leading=10.5, borderColor=colors.HexColor("#999999"),
                          borderWidth=0.6, borderPadding=4, backColor=colors.HexColor("#f4f4f4"))

    page_w, page_h = A4
    margin = 16 * mm
    text_w = page_w - 2 * margin

    def image(png: bytes, width: float, max_h: float = 175 * mm):
        im = PILImage.open(io.BytesIO(png))
        w_px, h_px = im.size
        # embedded as JPEG (quality JPEG_QUALITY): reportlab passes JPEG through unchanged, which
        # is much faster and smaller than re-compressing PNG pixels
        buf = io.BytesIO()
        if im.mode in ("RGBA", "LA", "P"):
            im = im.convert("RGBA")
            bg = PILImage.new("RGB", im.size, "white")
            bg.paste(im, mask=im.split()[-1])
            im = bg
        im.convert("RGB").save(buf, format="JPEG", quality=JPEG_QUALITY)
        png = buf.getvalue()
        w = width
        hgt = w * h_px / w_px
        if hgt > max_h:
            hgt, w = max_h, max_h * w_px / h_px
        return Image(io.BytesIO(png), width=w, height=hgt)

    story = [Paragraph(_clean(doc.title), title), Paragraph(_clean(doc.subtitle), sub), Spacer(1, 4)]
    if doc.footer:
        story += [Paragraph(_clean(doc.footer), disc), Spacer(1, 8)]
    pending: list = []  # headings waiting for the block they introduce (kept on the same page)

    def put(items: list, keep: bool = True) -> None:
        nonlocal pending
        items = pending + items
        pending = []
        story.append(KeepTogether(items) if keep else items[0])
        if not keep:
            story.extend(items[1:])

    for b in doc.blocks:
        if isinstance(b, Heading):
            pending.append(Paragraph(_clean(b.text), h[min(max(b.level, 2), 4)]))
        elif isinstance(b, Para):
            put([Paragraph(_clean(b.text), styles.get(b.style, body)), Spacer(1, 3)])
        elif isinstance(b, Bullets):
            put([ListFlowable([ListItem(Paragraph(_clean(i), body), leftIndent=12) for i in b.items],
                              bulletType="bullet", start="\u2022", leftIndent=12, bulletFontSize=8), Spacer(1, 3)],
                keep=len(b.items) < 12)
        elif isinstance(b, Table):
            cs = cell if b.small else cell_big
            hs = head_cell if b.small else ParagraphStyle("hb", parent=cell_big, fontName="Helvetica-Bold")
            data = [[Paragraph(_clean(x), hs) for x in b.header]]
            data += [[Paragraph(_clean(x), cs) for x in r] for r in b.rows]
            n = len(b.header)
            rel = b.widths or [1.0] * n
            widths = [text_w * w / sum(rel) for w in rel]
            t = RLTable(data, colWidths=widths, repeatRows=1)
            st = [("GRID", (0, 0), (-1, -1), 0.4, colors.HexColor("#bbbbbb")),
                  ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e8eef5")),
                  ("VALIGN", (0, 0), (-1, -1), "TOP"),
                  ("TOPPADDING", (0, 0), (-1, -1), 1.5), ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5)]
            for i, rs in enumerate(b.row_styles or []):
                if rs in SEVERITY_BACKGROUND and rs != "info":
                    st.append(("BACKGROUND", (0, i + 1), (-1, i + 1), colors.HexColor(SEVERITY_BACKGROUND[rs])))
            t.setStyle(TableStyle(st))
            items = [t, Spacer(1, 6)]
            if b.caption:
                items.insert(0, Paragraph("<b>" + _clean(b.caption) + "</b>", cell_big))
            put(items, keep=len(b.rows) < 25)
        elif isinstance(b, Figure):
            put([image(b.png, text_w * b.width), Paragraph(_clean(b.caption), cap), Spacer(1, 6)])
        elif isinstance(b, FigureRow):
            k = len(b.figures)
            gap = 4 * mm
            w = (text_w - gap * (k - 1)) / k
            row = [[image(f.png, w) for f in b.figures], [Paragraph(_clean(f.caption), cap) for f in b.figures]]
            t = RLTable(row, colWidths=[w + (gap if i < k - 1 else 0) for i in range(k)])
            t.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (-1, -1), 0),
                                   ("RIGHTPADDING", (0, 0), (-1, -1), 0)]))
            items = [t]
            if b.caption:
                items.append(Paragraph(_clean(b.caption), cap))
            items.append(Spacer(1, 6))
            put(items)
        elif isinstance(b, Alert):
            items = [Paragraph(_clean(b.title), h[2])]
            for sev, text in b.items:
                c = SEVERITY_COLOURS.get(sev, "#37474f")
                bg = SEVERITY_BACKGROUND.get(sev, "#eceff1")
                ps = ParagraphStyle(f"al-{sev}", parent=body, fontSize=8.3, leading=10, textColor=colors.HexColor(c),
                                    backColor=colors.HexColor(bg), borderPadding=(2, 4, 2, 5), leftIndent=4,
                                    borderColor=colors.HexColor(c), borderWidth=0)
                items.append(Paragraph(f"<b>{_clean(sev.upper())}</b>  {_clean(text)}", ps))
                items.append(Spacer(1, 4.5))
            put(items, keep=len(b.items) < 12)
        elif isinstance(b, PageBreak):
            if pending:
                story.extend(pending)
                pending = []
            story.append(RLPageBreak())
        else:  # pragma: no cover - programming error
            raise TypeError(f"unknown report block {type(b).__name__}")
    story.extend(pending)

    foot = ParagraphStyle("foot", parent=body, fontSize=7, leading=8.5, textColor=colors.HexColor("#333333"))

    def on_page(canvas, d):
        canvas.saveState()
        canvas.setStrokeColor(colors.HexColor("#999999"))
        canvas.line(margin, 16 * mm, page_w - margin, 16 * mm)
        p = Paragraph(_clean(f"{doc.footer}   Page {d.page}"), foot)
        _, fh = p.wrap(text_w, 14 * mm)
        p.drawOn(canvas, margin, 15 * mm - fh)
        canvas.setFont("Helvetica", 7.5)
        canvas.setFillColor(colors.HexColor("#555555"))
        canvas.drawString(margin, page_h - 10 * mm, _strip(doc.title))
        canvas.restoreState()

    with atomic_path(path, suffix=".pdf") as tmp:
        pdf = SimpleDocTemplate(str(tmp), pagesize=A4, leftMargin=margin, rightMargin=margin, topMargin=14 * mm,
                                bottomMargin=22 * mm, title=_strip(doc.title), author="spineplan",
                                subject=_strip(doc.subtitle))
        pdf.build(story, onFirstPage=on_page, onLaterPages=on_page)
    return Path(path)


def _strip(s: str) -> str:
    for k, v in _ASCII.items():
        s = s.replace(k, v)
    return s
