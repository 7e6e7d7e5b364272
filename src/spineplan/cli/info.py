"""``spineplan info CT [--labels FILE]``: what is in a CT (and its label map)."""

from __future__ import annotations

HELP = "Describe a CT (size, spacing, orientation, HU range) and the vertebrae in a label map."
DESCRIPTION = (
    "Print a CT's size, voxel spacing, orientation, origin, LPS bounds, HU range, modality and "
    "any reading warnings; with --labels, the vertebrae found (cranial to caudal) with their "
    "volumes and whether the scan edge cuts them. CT: a DICOM series folder or a .nii.gz/.nii/"
    ".nrrd/.mha file."
)

#: At most this many voxels are used for the HU percentiles (a regular subsample; min/max use all).
PERCENTILE_SAMPLE = 2_000_000


def configure(parser) -> None:
    parser.add_argument("ct", metavar="CT", help="DICOM series folder or CT file (.nii.gz, .nii, .nrrd, .mha)")
    parser.add_argument("--labels", metavar="FILE", help="vertebra label map (VerSe, TotalSegmentator) or TotalSegmentator folder")
    parser.add_argument(
        "--convention",
        choices=["auto", "verse", "ts-total", "ts-folder"],
        default="auto",
        help="label convention of --labels (default: auto-detect)",
    )


def _fmt(v, digits: int = 2) -> str:
    return "(" + ", ".join(f"{x:.{digits}f}" for x in v) + ")"


def _hu_stats(arr) -> tuple[float, float, float, float]:
    import numpy as np

    step = max(1, int(round((arr.size / PERCENTILE_SAMPLE) ** (1 / 3))))
    sample = arr[::step, ::step, ::step]
    p1, p99 = np.percentile(sample, [1, 99])
    return float(arr.min()), float(arr.max()), float(p1), float(p99)


def describe(ct, labels=None) -> str:
    """The text ``spineplan info`` prints for a CT Volume and optional Labels."""
    from spineplan import DISCLAIMER

    lo, hi = ct.bounds()
    mn, mx, p1, p99 = _hu_stats(ct.array)
    meta = ct.meta
    lines = [
        f"CT:           {meta.get('source', '?')} ({meta.get('format', '?')})",
        f"size:         {' x '.join(map(str, ct.shape))} voxels",
        f"spacing:      {' x '.join(f'{s:.4g}' for s in ct.spacing)} mm",
        f"orientation:  {ct.orientation()} (array axes i, j, k point to these patient directions)",
        f"origin:       {_fmt(ct.origin)} mm (LPS, centre of voxel 0,0,0)",
        f"LPS bounds:   x {lo[0]:.1f} .. {hi[0]:.1f}, y {lo[1]:.1f} .. {hi[1]:.1f}, z {lo[2]:.1f} .. {hi[2]:.1f} mm",
        f"HU range:     {mn:.0f} .. {mx:.0f} (1st-99th percentile {p1:.0f} .. {p99:.0f})",
        f"modality:     {meta.get('modality', ct.modality)}",
    ]
    for key, label in (
        ("manufacturer", "manufacturer"),
        ("model", "model"),
        ("kernel", "kernel"),
        ("slice_thickness_mm", "thickness"),
        ("series_description", "series"),
        ("n_files", "files"),
    ):
        if meta.get(key) not in (None, ""):
            unit = " mm" if key.endswith("_mm") else ""
            lines.append(f"{label + ':':14s}{meta[key]}{unit}")
    warnings = list(meta.get("warnings", []))
    if labels is not None:
        cut = labels.cut_by_edge()
        lines.append(f"labels:       {labels.source} (convention {labels.convention}, grid {labels.volume.meta.get('grid', 'own')})")
        lines.append(f"vertebrae:    {len(labels.names)} found, cranial to caudal")
        for name in labels.names:
            edge = f"cut by the scan edge ({', '.join(cut[name])})" if name in cut else "complete in the scan"
            lines.append(f"  {name:4s} {labels.counts[name]:>9d} voxels {labels.volume_ml(name):8.1f} mL  {edge}")
        warnings += labels.warnings
    for w in warnings:
        lines.append(f"warning:      {w}")
    lines.append(DISCLAIMER)
    return "\n".join(lines)


def run(args) -> int:
    from spineplan.io import read_ct, read_labels

    ct = read_ct(args.ct)
    labels = read_labels(args.labels, ct, convention=args.convention) if args.labels else None
    print(describe(ct, labels))
    return 0
