"""Reports and pictures for people: per-screw figures (``screw_figures``); surgeon and patient reports."""
