"""The reports' document model (a list of blocks) and its HTML renderer.

A report is built once as a :class:`Doc` of blocks (:class:`Heading`, :class:`Para`,
:class:`Bullets`, :class:`Table`, :class:`Figure`, :class:`Alert`, :class:`PageBreak`) and
rendered twice: to a self-contained HTML page here (pictures embedded as base64 PNG) and to a
PDF by :mod:`spineplan.report._pdf`, so the two always say the same thing.

The disclaimer is printed at the top and the bottom of the HTML page and, when printed, in a
fixed footer on every page; the PDF has it in the footer of every page.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field

#: Colours by warning severity (danger red first) and for Gertzbein-Robbins grades.
SEVERITY_COLOURS = {"danger": "#b00020", "warning": "#b35c00", "info": "#37474f"}
SEVERITY_BACKGROUND = {"danger": "#fde7ea", "warning": "#fff3e0", "info": "#eceff1"}
SEVERITY_ORDER = {"danger": 0, "warning": 1, "info": 2}
GRADE_COLOURS = {"A": "#1b5e20", "B": "#b35c00", "C": "#b00020", "D": "#b00020", "E": "#b00020"}


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Para:
    text: str
    style: str = "normal"  # "normal" | "small" | "lead" | "note"


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    #: relative column widths (PDF); None = equal
    widths: list[float] | None = None
    #: per-row severity ("danger" rows are tinted red), or None
    row_styles: list[str | None] | None = None
    caption: str | None = None
    small: bool = True


@dataclass
class Figure:
    png: bytes
    caption: str = ""
    #: width as a fraction of the text width
    width: float = 1.0


@dataclass
class FigureRow:
    """Pictures side by side (each gets an equal share of the width)."""

    figures: list[Figure]
    caption: str = ""


@dataclass
class Alert:
    """Boxed list of messages, one severity per message: [(severity, text), ...]."""

    title: str
    items: list[tuple[str, str]]


@dataclass
class PageBreak:
    pass


@dataclass
class Doc:
    title: str
    subtitle: str
    blocks: list = field(default_factory=list)
    footer: str = ""
    lang: str = "en"

    def add(self, *blocks) -> "Doc":
        self.blocks.extend(blocks)
        return self


_CSS = """
body{font-family:Helvetica,Arial,sans-serif;max-width:1000px;margin:1.2em auto;padding:0 1em;color:#111;
line-height:1.45}
h1{font-size:1.6em;margin-bottom:.1em} h2{font-size:1.25em;border-bottom:2px solid #ccc;padding-bottom:.15em;
margin-top:1.4em} h3{font-size:1.05em}
.subtitle{color:#444;margin-top:0} .lead{font-size:1.12em} .small{font-size:.85em;color:#333}
.note{font-size:.85em;color:#555;font-style:italic}
.disclaimer{font-size:.8em;color:#333;border:1px solid #999;background:#f7f7f7;padding:.4em .6em;margin:.6em 0}
table{border-collapse:collapse;margin:.4em 0 1em 0;font-size:.86em} th,td{border:1px solid #bbb;padding:.2em .45em;
text-align:left;vertical-align:top} th{background:#e8eef5} tr.danger td{background:#fde7ea}
tr.warning td{background:#fff3e0} caption{caption-side:top;text-align:left;font-weight:bold;padding:.2em 0}
.alert{border-left:6px solid;padding:.3em .8em;margin:.3em 0}
.figure{margin:.6em 0;text-align:center} .figure img{max-width:100%} .figcap{font-size:.85em;color:#333}
.row{display:flex;gap:8px} .row .figure{flex:1}
@media print{.pagebreak{page-break-after:always} .printfooter{position:fixed;bottom:0;left:0;right:0;
font-size:7pt;color:#333;background:#fff} body{margin-bottom:2em}}
@media screen{.printfooter{display:none}}
"""


def _img(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _esc(s) -> str:
    return html.escape(str(s))


def render_html(doc: Doc) -> str:
    """The document as one self-contained HTML page."""
    out = [f'<!DOCTYPE html>\n<html lang="{doc.lang}"><head><meta charset="utf-8">',
           f"<title>{_esc(doc.title)}</title><style>{_CSS}</style></head><body>",
           f"<h1>{_esc(doc.title)}</h1>", f'<p class="subtitle">{_esc(doc.subtitle)}</p>']
    if doc.footer:
        out.append(f'<div class="disclaimer">{_esc(doc.footer)}</div>')
        out.append(f'<div class="printfooter">{_esc(doc.footer)}</div>')
    for b in doc.blocks:
        if isinstance(b, Heading):
            n = min(max(b.level, 2), 4)
            out.append(f"<h{n}>{_esc(b.text)}</h{n}>")
        elif isinstance(b, Para):
            out.append(f'<p class="{b.style}">{_esc(b.text)}</p>')
        elif isinstance(b, Bullets):
            out.append("<ul>" + "".join(f"<li>{_esc(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            rows = []
            for i, r in enumerate(b.rows):
                st = b.row_styles[i] if b.row_styles and i < len(b.row_styles) else None
                cls = f' class="{st}"' if st else ""
                rows.append(f"<tr{cls}>" + "".join(f"<td>{_esc(c)}</td>" for c in r) + "</tr>")
            cap = f"<caption>{_esc(b.caption)}</caption>" if b.caption else ""
            out.append(f"<table>{cap}<thead><tr>" + "".join(f"<th>{_esc(h)}</th>" for h in b.header)
                       + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")
        elif isinstance(b, Figure):
            out.append(f'<div class="figure"><img src="{_img(b.png)}" style="width:{100 * b.width:.0f}%" '
                       f'alt="{_esc(b.caption)}"><div class="figcap">{_esc(b.caption)}</div></div>')
        elif isinstance(b, FigureRow):
            cells = "".join(f'<div class="figure"><img src="{_img(f.png)}" alt="{_esc(f.caption)}">'
                            f'<div class="figcap">{_esc(f.caption)}</div></div>' for f in b.figures)
            out.append(f'<div class="row">{cells}</div>')
            if b.caption:
                out.append(f'<p class="figcap">{_esc(b.caption)}</p>')
        elif isinstance(b, Alert):
            out.append(f"<h2>{_esc(b.title)}</h2>")
            for sev, text in b.items:
                c = SEVERITY_COLOURS.get(sev, "#37474f")
                bg = SEVERITY_BACKGROUND.get(sev, "#eceff1")
                out.append(f'<div class="alert" style="border-color:{c};background:{bg};color:{c}">'
                           f"<b>{_esc(sev.upper())}</b> {_esc(text)}</div>")
        elif isinstance(b, PageBreak):
            out.append('<div class="pagebreak"></div>')
        else:  # pragma: no cover - programming error
            raise TypeError(f"unknown report block {type(b).__name__}")
    if doc.footer:
        out.append(f'<div class="disclaimer">{_esc(doc.footer)}</div>')
    out.append("</body></html>\n")
    return "\n".join(out)
