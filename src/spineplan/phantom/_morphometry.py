"""Per-level dimensions of the phantom, from published morphometry (one table, one place).

All lengths in mm, angles in degrees, densities in HU. Values are rounded, approximate means
read from the cited cadaver/CT series (adult, mixed sex), interpolated where a series gives no
value for a level; the phantom jitters them by a few percent per seed. They make a plausible
average spine, not a reference standard: series differ (e.g. Zindrick's L5 isthmus width of
~18 mm against 13.6 mm in Christodoulou AG et al., Clin Anat 2005;18:404-408), so check the
cited papers before using the numbers quantitatively.

Sources (the column each one feeds is named in brackets):

- [ped_w, ped_h, ped_ang] Zindrick MR et al., "Analysis of the morphometric characteristics of
  the thoracic and lumbar pedicles", Spine 1987;12(2):160-166: transverse isthmus width
  (~8.7 mm at L1 rising to ~18 mm at L5), sagittal pedicle height (~15 mm lumbar, ~16-17 mm
  at T11-T12) and transverse angle (~11 deg at L1 rising to ~30 deg at L5; ~5-8 deg in the
  lower thoracic spine, where the angle is smallest).
- [body_w, body_d, body_h, canal_w, canal_d] Panjabi MM et al., "Human lumbar vertebrae:
  quantitative three-dimensional anatomy", Spine 1992;17(3):299-306 (upper endplate width
  ~40 mm at L1 to ~49 mm at L5, depth ~33-35 mm, posterior body height ~27-28 mm falling to
  ~26 mm at L5, canal width ~22-26 mm, canal depth ~17-19 mm); Panjabi MM et al., "Thoracic
  human vertebrae: quantitative three-dimensional anatomy", Spine 1991;16(8):888-901 for T10-T12
  (endplate width ~37-41 mm, depth ~29-31 mm, posterior height ~22-25 mm, canal ~17-20 mm wide).
- [tp_len, sp_len] transverse process length from its root and spinous process length from the
  lamina junction: Panjabi 1991/1992 (the L3 transverse process is the longest; the T12
  transverse process is rudimentary).
- [disc_post] posterior intervertebral disc height: ~5-8 mm lumbar, smaller thoracic
  (Amonoo-Kuofi HS, "Morphometric changes in the heights and anteroposterior diameters of the
  lumbar intervertebral discs with age", J Anat 1991;175:159-168). The anterior disc height
  follows from the segmental lordosis (wedge-shaped discs).
- [facet] facet joint angle to the sagittal plane: thoracic joints are near-coronal, lumbar
  joints turn from ~25-30 deg at L1-L2 to ~45-50 deg at L4-S1 (Masharawi Y et al., "Facet
  orientation in the thoracolumbar spine", Spine 2004;29(16):1755-1763).
- [cancellous] trabecular attenuation of healthy adults ~150-300 HU (Pickhardt PJ et al.,
  "Opportunistic screening for osteoporosis using abdominal CT", Ann Intern Med
  2013;158:588-595; L1 <= 100 HU is highly specific for osteoporosis, hence ~80 HU here).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# ---------------------------------------------------------------------------- tissues (HU)
#: Cortical shell of vertebrae as seen on clinical CT (partial volume of a ~1 mm shell):
#: ~700-1200 HU (issue brief; consistent with Pickhardt 2013 cortical ROI values).
CORTICAL_HU = 1000.0
#: Osteoporotic cortex: thinner and less dense shell.
CORTICAL_HU_OSTEOPOROTIC = 750.0
#: Cortical shell thickness as resolved by CT (~1 mm; Silva MJ et al., J Bone Miner Res 1994
#: report 0.2-0.5 mm micro-CT shells, which clinical CT blurs to ~1 mm).
CORTEX_MM = 1.0
CORTEX_MM_OSTEOPOROTIC = 0.6
#: Cancellous bone of an osteoporotic spine (Pickhardt 2013: <= 100 HU at L1).
CANCELLOUS_HU_OSTEOPOROTIC = 80.0
#: Intervertebral disc: annulus ~90 HU, nucleus ~70 HU (disc 70-100 HU on CT).
ANNULUS_HU = 90.0
NUCLEUS_HU = 70.0
#: Cerebrospinal fluid in the thecal sac (water-like, 0-15 HU).
CSF_HU = 8.0
#: Epidural fat around the thecal sac and subcutaneous fat (~-100 HU).
EPIDURAL_FAT_HU = -90.0
FAT_HU = -100.0
#: Skeletal muscle (~40-60 HU) and skin/dermis (~30-50 HU).
MUSCLE_HU = 50.0
SKIN_HU = 35.0
SKIN_MM = 2.0
AIR_HU = -1000.0
#: Rib and iliac marrow/cancellous bone.
RIB_CANCELLOUS_HU = 180.0
ILIUM_CANCELLOUS_HU = 200.0

# ----------------------------------------------------------------------------- shape constants
#: Maximum central endplate concavity (outer cortex) in mm; endplates are concave mainly in
#: their centre (Palepu V et al., Int J Spine Surg 2019;13(4):361-370: ~1-2 mm max depth).
ENDPLATE_CONCAVITY_MM = 1.0
#: Genant semiquantitative grades (Genant HK et al., J Bone Miner Res 1993;8:1137-1148):
#: grade 1 20-25 %, grade 2 25-40 %, grade 3 > 40 % height loss.  The phantom aims at the
#: middle of each band.
GENANT_BANDS = {1: (20.0, 25.0), 2: (25.0, 40.0), 3: (40.0, 60.0)}
GENANT_TARGET_LOSS = {1: 22.5, 2: 32.5, 3: 50.0}
#: Segmental share of the L1-S1 lordosis per disc, cranial to caudal: about two thirds of the
#: lumbar lordosis lies at L4-S1 (Bernhardt M, Bridwell KH, Spine 1989;14(7):717-721).
LORDOSIS_SHARE = (0.08, 0.12, 0.17, 0.25, 0.38)
#: Segmental kyphosis per disc above L1 (thoracolumbar junction is near neutral, a few degrees
#: of kyphosis over T10-L2; Bernhardt & Bridwell 1989).
THORACOLUMBAR_KYPHOSIS_PER_DISC_DEG = 2.0
#: Sacral slope the pelvis is modelled at (adult mean ~40 deg; Legaye J et al., Eur Spine J
#: 1998;7:99-103).  The pelvis is drawn in this posture and rotates with S1 otherwise.
NOMINAL_SACRAL_SLOPE_DEG = 40.0


@dataclass(frozen=True)
class LevelDims:
    """Morphometry of one level (see the module docstring for sources)."""

    body_w: float  # endplate width (x), mm
    body_d: float  # endplate depth, mid-sagittal (y), mm
    body_h: float  # body height at the rim, mm
    ped_w: float  # pedicle isthmus width, mm
    ped_h: float  # pedicle isthmus height, mm
    ped_ang: float  # transverse (medial) pedicle angle, deg
    ped_sag: float  # sagittal pedicle angle (cranial going anteriorly), deg
    canal_w: float  # canal transverse (interpedicular) diameter, mm
    canal_d: float  # canal AP diameter, mm
    tp_len: float  # transverse process length from its root, mm
    sp_len: float  # spinous process length from the lamina junction, mm
    sp_drop: float  # caudal drop of the spinous tip, mm
    disc_post: float  # posterior height of the disc BELOW this level, mm
    facet: float  # angle of the facet joint BELOW this level (this level's IAP) to the sagittal plane, deg
    cancellous: float  # cancellous bone HU (healthy adult)
    lamina_t: float = 6.5  # lamina thickness, mm (Panjabi 1991/1992: ~6-8 mm)
    lamina_h: float = 20.0  # lamina height, mm
    sp_h: float = 18.0  # spinous process height, mm
    tp_h: float = 11.0  # transverse process height, mm


#: Per-level table.  T10-T12: Panjabi 1991 + Zindrick 1987; L1-L5: Panjabi 1992 + Zindrick 1987.
LEVEL_DIMS: dict[str, LevelDims] = {
    #            body_w body_d body_h ped_w ped_h ped_ang sag canal_w canal_d tp  sp  drop disc facet HU
    "T10": LevelDims(37.0, 29.0, 21.5, 6.3, 15.5, 5.0, 0.0, 17.0, 16.5, 14.0, 28.0, 14.0, 4.5, 80.0, 235.0,
                     lamina_h=18.0, sp_h=11.0, tp_h=10.0),
    "T11": LevelDims(39.0, 30.0, 22.5, 7.8, 17.0, 6.0, 0.0, 18.0, 17.0, 12.0, 28.0, 10.0, 5.0, 70.0, 230.0,
                     lamina_h=18.0, sp_h=13.0, tp_h=10.0),
    "T12": LevelDims(41.0, 31.0, 24.0, 7.9, 16.0, 8.0, 0.0, 20.0, 17.5, 8.0, 29.0, 7.0, 5.5, 35.0, 225.0,
                     lamina_h=19.0, sp_h=15.0, tp_h=9.0),
    "L1": LevelDims(42.0, 32.5, 25.5, 8.7, 15.4, 10.9, 0.0, 21.5, 18.5, 16.0, 30.0, 5.0, 6.0, 28.0, 220.0),
    "L2": LevelDims(44.0, 33.5, 26.5, 8.9, 15.0, 12.0, 0.0, 22.0, 18.0, 20.0, 31.0, 5.0, 6.5, 33.0, 215.0),
    "L3": LevelDims(46.0, 34.5, 27.0, 10.3, 14.9, 14.4, 0.0, 22.5, 17.5, 25.0, 31.0, 5.0, 7.0, 40.0, 210.0),
    "L4": LevelDims(48.0, 35.0, 27.0, 12.9, 14.8, 17.7, 0.0, 23.0, 17.0, 21.0, 30.0, 5.0, 7.5, 47.0, 205.0),
    "L5": LevelDims(50.0, 35.0, 26.0, 18.0, 14.0, 29.8, 0.0, 25.5, 17.0, 18.0, 26.0, 4.0, 6.5, 50.0, 200.0,
                     sp_h=15.0),
    # S1 segment of the sacrum: endplate ~50 x 35 mm; S1 pedicles are wide and short (~17-20 mm)
    # and screws converge ~25-30 deg (Zindrick 1987 lumbosacral data; Esses SI et al., Spine 1991).
    "S1": LevelDims(50.0, 36.0, 28.0, 17.0, 20.0, 27.0, 0.0, 28.0, 14.0, 0.0, 18.0, 2.0, 0.0, 50.0, 190.0,
                     lamina_h=16.0, sp_h=12.0),
}


def dims_for(level: str, lumbar_count: int = 5) -> LevelDims:
    """Dimensions of ``level``; with six lumbar vertebrae L5 is interpolated and L6 takes L5's row."""
    if lumbar_count == 6:
        if level == "L6":
            return LEVEL_DIMS["L5"]
        if level == "L5":
            a, b = LEVEL_DIMS["L4"], LEVEL_DIMS["L5"]
            return LevelDims(*[(getattr(a, f) + getattr(b, f)) / 2 for f in a.__dataclass_fields__])
    return LEVEL_DIMS[level]


def scaled(d: LevelDims, body: float, posterior: float, pedicle: float) -> LevelDims:
    """A copy with body/posterior-element/pedicle dimensions scaled (seed jitter, pedicle_scale)."""
    return replace(
        d,
        body_w=d.body_w * body, body_d=d.body_d * body, body_h=d.body_h * body,
        ped_w=d.ped_w * pedicle, ped_h=d.ped_h * pedicle,
        canal_w=d.canal_w * posterior, canal_d=d.canal_d * posterior,
        tp_len=d.tp_len * posterior, sp_len=d.sp_len * posterior,
    )
