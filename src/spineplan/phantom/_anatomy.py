"""The phantom's anatomy as implicit shapes: vertebrae, discs, canal, ribs, sacrum and ilium.

Every vertebra lives in its own frame (origin at the centre of its body's mid-sagittal depth
and mid-height; x patient-left, y posterior, z superior, the LPS convention of
:mod:`spineplan.anatomy.model`). The frames are chained from the sacrum upwards: each disc
pivots on its posterior rim, so lordosis opens the discs anteriorly (wedge-shaped discs, as in
life) and barely moves the posterior elements.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from spineplan.phantom import _morphometry as M
from spineplan.phantom._shapes import Ellipsoid, Frame, Shape, Tube, ellipse_sd, rot_x, rot_y, rot_z

SIDES = {"left": 1.0, "right": -1.0}  # patient left is +x in LPS

#: Gap of the facet joint space (~2 mm on CT).
FACET_GAP_MM = 2.0
FACET_THIN_R = 3.0  # half-thickness of an articular process across the joint, mm
FACET_BROAD_R = 6.0  # half-width of an articular process along the joint, mm
#: Pedicle flare (width, height factors) from the isthmus to its posterior (lamina) and
#: anterior (body) ends: pedicles widen into body and lamina, barely in height.
PEDICLE_FLARE_POST = (1.40, 1.08)
PEDICLE_FLARE_ANT = (1.30, 1.08)
PEDICLE_ANT_LEN_MM = 11.0
#: The iliac wing is drawn as a ruled surface of flat tubes, this many per crest segment.
ILIUM_LINES_PER_SEGMENT = 8
#: Rib cross-section (~12 x 7 mm) and the rib-head to body joint gap.
RIB_R_UP, RIB_R_SIDE, RIB_JOINT_GAP = 6.0, 3.5, 1.5


class Body(Shape):
    """Vertebral body: elliptic cross-section with a concave (kidney) posterior wall, concave
    endplates and optional compression fracture, in the vertebra frame ``frame``."""

    def __init__(self, frame: Frame, width, depth, height, concavity=M.ENDPLATE_CONCAVITY_MM,
                 fracture_type="none", loss_mm=0.0, fused_bottom=False):
        self.frame = frame
        self.a = width / 2.0
        self.D = depth
        self.H = height
        self.e = 0.12 * depth  # the ellipse reaches past the mid-sagittal posterior wall
        self.b = depth / 2.0 + self.e
        self.cy = self.e
        self.kappa = 2.0 * self.e / (0.6 * self.a) ** 2  # posterior wall concavity (kidney shape)
        self.conc = concavity
        self.fracture_type = fracture_type
        self.loss = loss_mm
        self.fused_bottom = fused_bottom
        corners = np.array([[sx * self.a, y, sz * height / 2] for sx in (-1, 1)
                            for y in (-depth / 2, depth / 2 + 2 * self.e) for sz in (-1, 1)])
        w = frame.to_world(corners)
        self.lo, self.hi = w.min(0) - 1.0, w.max(0) + 1.0

    # local helpers -------------------------------------------------------------
    def rho2(self, x, y):
        return (x / self.a) ** 2 + ((y - self.cy) / self.b) ** 2

    def d_xy(self, x, y):
        d_ell = ellipse_sd(x, y - self.cy, self.a, self.b)
        d_cut = (y - (self.D / 2 + self.kappa * x * x)) / np.sqrt(1.0 + (2 * self.kappa * x) ** 2)
        return np.maximum(d_ell, d_cut)

    def _dents(self, x, y, nominal=False):
        r2 = self.rho2(x, y)
        bowl = np.clip(1.0 - r2, 0.0, 1.0)
        conc = self.conc * bowl * bowl
        top, bot = conc, (0.0 * conc if self.fused_bottom else conc)
        if nominal or self.fracture_type == "none" or self.loss == 0.0:
            return top, bot
        if self.fracture_type == "wedge":  # anterior height lost, posterior wall intact
            top = top + self.loss * np.clip((self.D / 2 - y) / self.D, 0.0, 1.0)
        elif self.fracture_type == "biconcave":  # middle lost, both endplates cave in, rims intact
            r2 = (x / self.a) ** 2 + (y / (self.D / 2)) ** 2
            cave = np.clip(1.0 - r2 / 0.55, 0.0, 1.0)
            top = top + 0.5 * self.loss * cave
            bot = bot + 0.5 * self.loss * cave
        elif self.fracture_type == "crush":  # whole body lost height
            top = top + 0.5 * self.loss
            bot = bot + 0.5 * self.loss
        return top, bot

    def top(self, x, y, nominal=False):
        return self.H / 2 - self._dents(x, y, nominal)[0]

    def bottom(self, x, y, nominal=False):
        return -self.H / 2 + self._dents(x, y, nominal)[1]

    def sdf_local(self, x, y, z):
        dt, db = self._dents(x, y)
        return np.maximum(self.d_xy(x, y), np.maximum(z - (self.H / 2 - dt), (-self.H / 2 + db) - z))

    def sdf(self, X, Y, Z):
        return self.sdf_local(*self.frame.to_local_xyz(X, Y, Z))

    # heights (exact: the vertical line at (0, y) meets the body between bottom and top) --------
    def heights(self, nominal=False) -> tuple[float, float, float]:
        """(anterior, middle, posterior) mid-sagittal heights, 3 mm inside the edges."""
        ys = (-self.D / 2 + 3.0, 0.0, self.D / 2 - 3.0)
        return tuple(float(self.top(0.0, y, nominal) - self.bottom(0.0, y, nominal)) for y in ys)  # type: ignore[return-value]


class Disc(Shape):
    """Intervertebral disc filling the space between two endplates (wedge-shaped when tilted)."""

    BULGE_MM = 1.0

    def __init__(self, lower: Body, upper: Body):
        self.lower, self.upper = lower, upper
        lo = np.minimum(lower.lo, upper.lo)
        hi = np.maximum(lower.hi, upper.hi)
        # restrict to the region between the two bodies' centres
        zc = sorted([lower.frame.origin[2], upper.frame.origin[2]])
        lo[2], hi[2] = max(lo[2], zc[0]), min(hi[2], zc[1])
        self.lo, self.hi = lo - 1.5, hi + 1.5

    def sdf(self, X, Y, Z):
        xl, yl, zl = self.lower.frame.to_local_xyz(X, Y, Z)
        xu, yu, zu = self.upper.frame.to_local_xyz(X, Y, Z)
        d = self.lower.d_xy(xl, yl) - self.BULGE_MM
        d = np.maximum(d, self.lower.top(xl, yl) - zl)
        return np.maximum(d, zu - self.upper.bottom(xu, yu))

    def nucleus(self, X, Y, Z):
        xl, yl, _ = self.lower.frame.to_local_xyz(X, Y, Z)
        return self.lower.rho2(xl, yl) < 0.35


class Union(Shape):
    """Union (min) of shapes, for the ground truth's point evaluations."""

    def __init__(self, parts):
        self.parts = list(parts)
        self.lo = np.min([p.lo for p in self.parts], axis=0)
        self.hi = np.max([p.hi for p in self.parts], axis=0)

    def sdf(self, X, Y, Z):
        out = None
        for p in self.parts:
            d = p.sdf(X, Y, Z)
            out = d if out is None else np.minimum(out, d)
        return out


@dataclass
class PedicleSpec:
    side: str
    center: np.ndarray  # world
    axis: np.ndarray  # world unit, posterior -> anterior
    e_side: np.ndarray  # world unit, horizontal in the vertebra's transverse plane
    e_up: np.ndarray
    width: float
    height: float
    transverse_angle: float
    sagittal_angle: float
    post_end_local: np.ndarray  # local point where the pedicle meets the lamina
    measurable: bool = True


@dataclass
class VertebraModel:
    name: str
    code: int
    frame: Frame
    dims: M.LevelDims
    body: Body
    parts: list = field(default_factory=list)  # (name, Shape)
    pedicles: dict = field(default_factory=dict)
    z_p: float = 0.0  # local height of the pedicle axes
    y_i: float = 0.0  # local AP position of the isthmus centres
    lamina_mid: np.ndarray | None = None  # local point where the laminae meet
    cancellous_hu: float = 200.0
    fracture: dict = field(default_factory=lambda: {"grade": 0, "type": "none"})
    is_sacrum: bool = False
    rib_bearing: bool = False
    spinous_tip: np.ndarray | None = None  # world, most posterior point

    def union(self) -> Union:
        return Union([s for _, s in self.parts])


# ------------------------------------------------------------------------------- the chain
def scoliosis_end_vertebrae(names: list[str]) -> tuple[str, str]:
    """End vertebrae of the modelled lumbar curve: T12 and the last lumbar but one."""
    lumbar = [n for n in names if n.startswith("L")]
    top = "T12" if "T12" in names else names[0]
    return top, (lumbar[-2] if len(lumbar) >= 2 else names[-2])


def _tilt_tables(names: list[str], lordosis: float, scoliosis: float, rotation: float):
    """Sagittal tilt alpha, coronal tilt beta and axial rotation psi (deg) per level name."""
    lumbar = [n for n in names if n.startswith("L")]
    alpha: dict[str, float] = {}
    # lordosis: shares per disc from L1 down to S1, resampled for 4-6 lumbar discs
    n_discs = len(lumbar)
    share = np.interp(np.linspace(0, 1, n_discs), np.linspace(0, 1, len(M.LORDOSIS_SHARE)), M.LORDOSIS_SHARE)
    share = share / share.sum()
    acc = 0.0
    for i, n in enumerate(lumbar):
        alpha[n] = acc
        acc += share[i] * lordosis
    alpha["S1"] = acc
    thor = [n for n in names if n.startswith("T")]
    for j, n in enumerate(reversed(thor)):
        alpha[n] = -(j + 1) * M.THORACOLUMBAR_KYPHOSIS_PER_DISC_DEG
    # scoliosis: single curve with end vertebrae T12 (or the first level) and the last lumbar but one
    order = [n for n in names]
    top_name, bot_name = scoliosis_end_vertebrae(order)
    top, bot = order.index(top_name), order.index(bot_name)
    beta: dict[str, float] = {}
    psi: dict[str, float] = {}
    for i, n in enumerate(order):
        if i <= top:
            u = 0.0
        elif i >= bot:
            u = 1.0
        else:
            u = (i - top) / (bot - top)
        b = -(scoliosis / 2.0) * np.cos(np.pi * u)
        if i > bot:  # compensation back to a level sacrum
            b = b * (len(order) - 1 - i) / max(len(order) - 1 - bot, 1)
        beta[n] = float(b)
        psi[n] = float(rotation * np.sin(np.pi * u)) if top < i < bot else 0.0
    return alpha, beta, psi


# ------------------------------------------------------------------------------- builders
def local_layout(d: M.LevelDims) -> dict:
    """Local landmarks of a vertebra that depend on its dimensions only (mm, vertebra frame)."""
    z_p = d.body_h / 2 - d.ped_h / 2 - 1.5  # pedicles attach to the upper part of the body
    y_i = d.body_d / 2 + 0.35 * d.canal_d  # isthmus ~1/3 of the canal depth behind the body
    out = {"z_p": z_p, "y_i": y_i, "z_lam": z_p - 4.0,
           "lamina_mid": np.array([0.0, d.body_d / 2 + d.canal_d + d.lamina_t / 2, z_p - 4.0])}
    th, ph = np.radians(d.ped_ang), np.radians(d.ped_sag)
    for side, s in SIDES.items():
        u = np.array([-s * np.sin(th) * np.cos(ph), -np.cos(th) * np.cos(ph), np.sin(ph)])  # post -> ant
        C = np.array([s * (d.canal_w / 2 + d.ped_w / (2 * np.cos(th))), y_i, z_p])
        L_post = (0.65 * d.canal_d + 2.0) / np.cos(th)
        out[side] = {"u": u, "C": C, "L_post": L_post, "A": C - u * L_post}
    return out


def posterior_clearance_points(d: M.LevelDims) -> tuple[np.ndarray, np.ndarray]:
    """Local points on the top of the pedicle ends/laminae and on the bottom of the laminae,
    used to keep neighbouring posterior elements apart when the spine bends."""
    lay = local_layout(d)
    top, bottom = [], []
    for side in SIDES:
        A = lay[side]["A"]
        top.append([A[0], A[1], lay["z_p"] + d.ped_h / 2 * PEDICLE_FLARE_POST[1]])
        for t in (0.0, 0.15, 0.3, 0.6):
            e = A + t * (lay["lamina_mid"] - A)
            top.append([e[0], e[1], lay["z_lam"] + d.lamina_h / 2])
            bottom.append([e[0], e[1], lay["z_lam"] - d.lamina_h / 2])
        bottom.append([A[0], A[1], lay["z_p"] - d.ped_h / 2 * PEDICLE_FLARE_POST[1]])
    return np.array(top), np.array(bottom)


def _pedicle(v: VertebraModel, side: str) -> tuple[Tube, PedicleSpec]:
    d = v.dims
    lay = local_layout(d)[side]
    u, C, L_post = lay["u"], lay["C"], lay["L_post"]
    L_ant = PEDICLE_ANT_LEN_MM
    A, B = C - u * L_post, C + u * L_ant
    Aw, Bw = v.frame.to_world(A), v.frame.to_world(B)
    tube = Tube(Aw, Bw, ref=v.frame.R[:, 2], r_side=d.ped_w / 2, r_up=d.ped_h / 2,
                t_min=L_post / (L_post + L_ant), flare_a=PEDICLE_FLARE_POST, flare_b=PEDICLE_FLARE_ANT,
                round_ends=False)
    spec = PedicleSpec(side=side, center=v.frame.to_world(C), axis=tube.u, e_side=tube.e_side, e_up=tube.e_up,
                       width=d.ped_w, height=d.ped_h, transverse_angle=float(d.ped_ang),
                       sagittal_angle=float(d.ped_sag), post_end_local=A)
    return tube, spec


def build_vertebra(name: str, code: int, frame: Frame, dims: M.LevelDims, *, cancellous_hu: float,
                   fracture=None, concavity=M.ENDPLATE_CONCAVITY_MM) -> VertebraModel:
    """Body, pedicles, laminae, spinous and transverse processes and superior articular
    processes of one vertebra (the inferior articular processes are added by :func:`add_facets`)."""
    d = dims
    ftype, loss = ("none", 0.0) if fracture is None else (fracture[0], fracture[1])
    is_sacrum = name == "S1"
    body = Body(frame, d.body_w, d.body_d, d.body_h, concavity=concavity, fracture_type=ftype, loss_mm=loss,
                fused_bottom=is_sacrum)
    v = VertebraModel(name=name, code=code, frame=frame, dims=d, body=body, cancellous_hu=cancellous_hu,
                      is_sacrum=is_sacrum)
    v.parts.append(("body", body))
    lay = local_layout(d)
    v.z_p, v.y_i = lay["z_p"], lay["y_i"]
    z_lam = lay["z_lam"]
    M_loc = lay["lamina_mid"]
    v.lamina_mid = M_loc
    up = frame.R[:, 2]
    for side in SIDES:
        s = SIDES[side]
        tube, spec = _pedicle(v, side)
        if is_sacrum:
            spec.measurable = False  # the S1 pedicle merges with the ala: no free isthmus
        v.parts.append((f"pedicle_{side}", tube))
        v.pedicles[side] = spec
        A = spec.post_end_local
        # lamina: from the pedicle's posterior end to the midline
        v.parts.append((f"lamina_{side}", Tube(frame.to_world(A + [0, 0, z_lam - v.z_p]), frame.to_world(M_loc),
                                               ref=up, r_side=d.lamina_t / 2, r_up=d.lamina_h / 2)))
        # transverse process: from the pedicle-lamina junction laterally, slightly posterior
        if d.tp_len > 0:
            R0 = A + np.array([s * 1.0, -3.5, 0.0])
            ang = np.radians(10.0)
            T = R0 + np.array([s * d.tp_len * np.cos(ang), d.tp_len * np.sin(ang), -1.0])
            v.parts.append((f"transverse_{side}", Tube(frame.to_world(R0), frame.to_world(T), ref=up,
                                                       r_side=3.0, r_up=d.tp_h / 2)))
    # spinous process
    T = M_loc + np.array([0.0, d.sp_len, -d.sp_drop])
    sp = Tube(frame.to_world(M_loc), frame.to_world(T), ref=up, r_side=3.5, r_up=d.sp_h / 2)
    v.parts.append(("spinous", sp))
    v.spinous_tip = frame.to_world(T + (T - M_loc) / np.linalg.norm(T - M_loc) * 3.5)
    if is_sacrum:
        _add_sacrum(v)
    return v


#: Clearance kept between an articular process and the neighbouring lamina (ligamentum flavum).
FACET_CLEARANCE_MM = 2.0


def _lamina_z(v: VertebraModel) -> float:
    """Local height of the lamina's centre line."""
    return float(local_layout(v.dims)["z_lam"])


def facet_joint_local(lower: VertebraModel, side: str, facet_deg: float, upper: VertebraModel | None = None):
    """Facet joint above ``lower`` in lower's frame: centre J, normal n (SAP -> IAP) and the
    heights available to the SAP (top of its centre line) and the IAP (bottom of its centre line).

    The joint sits at the pedicle-lamina junction; its height is chosen between the top of the
    lower lamina/pedicle and the upper lamina's bottom edge, keeping ``FACET_CLEARANCE_MM``."""
    s = SIDES[side]
    A = lower.pedicles[side].post_end_local
    d = lower.dims
    below = max(_lamina_z(lower) + d.lamina_h / 2, lower.z_p + d.ped_h / 2 * PEDICLE_FLARE_POST[1])
    iap_min = below + FACET_CLEARANCE_MM + FACET_THIN_R
    sap_max = lower.z_p + 0.5 * d.ped_h + 12.0
    if upper is not None:
        Au = upper.pedicles[side].post_end_local
        Mu = upper.lamina_mid
        # the upper lamina's bottom edge over its lateral third (it may be tilted or rotated)
        edge = [Au + t * (Mu - Au) for t in (0.0, 0.15, 0.3)]
        low = [[e[0], e[1], _lamina_z(upper) - upper.dims.lamina_h / 2] for e in edge]
        low.append([Au[0], Au[1], upper.z_p - upper.dims.ped_h / 2 * PEDICLE_FLARE_POST[1]])  # pedicle end
        pts = upper.frame.to_world(low)
        zb = float(np.min(lower.frame.to_local_xyz(pts[:, 0], pts[:, 1], pts[:, 2])[2]))
        sap_max = min(sap_max, zb - FACET_CLEARANCE_MM - FACET_THIN_R)
    sap_max = max(sap_max, lower.z_p + 4.0)
    jz = 0.5 * (iap_min + sap_max)
    J = np.array([A[0] + s * 0.5, A[1] + 1.5, jz])
    b = np.radians(facet_deg)
    n = np.array([-s * np.cos(b), np.sin(b), 0.0])
    return J, n, sap_max, iap_min


def add_sap(v: VertebraModel, facet_deg: float, upper: VertebraModel | None = None) -> None:
    """Superior articular processes of ``v`` (lateral-posterior, rising from the pedicle end)."""
    for side in SIDES:
        J, n, sap_max, _ = facet_joint_local(v, side, facet_deg, upper)
        c = J - n * (FACET_GAP_MM / 2 + FACET_THIN_R)
        a, b = c.copy(), c.copy()
        a[2] = v.z_p
        b[2] = sap_max
        v.parts.append((f"sap_{side}", Tube(v.frame.to_world(a), v.frame.to_world(b), ref=v.frame.dir_to_world(n),
                                            r_side=FACET_BROAD_R, r_up=FACET_THIN_R)))


def add_iap(upper: VertebraModel, lower: VertebraModel, facet_deg: float) -> None:
    """Inferior articular processes of ``upper``, placed against ``lower``'s SAPs (joint gap
    ``FACET_GAP_MM``) and joined to ``upper``'s lamina."""
    for side in SIDES:
        s = SIDES[side]
        J, n, sap_max, iap_min = facet_joint_local(lower, side, facet_deg, upper)
        c = J + n * (FACET_GAP_MM / 2 + FACET_THIN_R)
        a, b = c.copy(), c.copy()
        a[2] = iap_min
        b[2] = max(iap_min + 3.0, sap_max + 2.0)
        nw = lower.frame.dir_to_world(n)
        upper.parts.append((f"iap_{side}", Tube(lower.frame.to_world(a), lower.frame.to_world(b), ref=nw,
                                                r_side=FACET_BROAD_R, r_up=FACET_THIN_R)))
        du = upper.dims
        Au = upper.pedicles[side].post_end_local
        K = np.array([Au[0] - s * 5.0, Au[1] + 2.0, _lamina_z(upper) - du.lamina_h / 2 + 4.0])
        upper.parts.append((f"iap_root_{side}", Tube(lower.frame.to_world(b), upper.frame.to_world(K),
                                                     ref=upper.frame.R[:, 0], r_side=4.5, r_up=3.5)))


def _add_sacrum(v: VertebraModel) -> None:
    """Sacrum below and beside S1: alae, lateral masses, S2-S3 bodies and the dorsal wall."""
    f, d = v.frame, v.dims
    up = f.R[:, 2]
    H = d.body_h
    # S2-S3: a tapering continuation of the S1 body (narrowest at its caudal end)
    v.parts.append(("sacrum_s2s3", Tube(f.to_world([0, 0, -H / 2 + 3]), f.to_world([0, 3.0, -H / 2 - 34.0]),
                                        ref=f.R[:, 0], r_side=0.3 * d.body_d, r_up=0.3 * d.body_w,
                                        t_min=1.0, flare_a=1.4)))
    for side, s in SIDES.items():
        # ala: lateral wing of S1, its upper surface below the S1 endplate
        v.parts.append((f"ala_{side}", Tube(f.to_world([s * 12.0, 4.0, -2.0]), f.to_world([s * 44.0, 8.0, -8.0]),
                                            ref=up, r_side=14.0, r_up=11.0)))
        # lateral mass (auricular part), down to S2-S3
        v.parts.append((f"lateral_mass_{side}", Tube(f.to_world([s * 40.0, 14.0, -8.0]),
                                                     f.to_world([s * 24.0, 22.0, -40.0]),
                                                     ref=f.R[:, 0], r_side=12.0, r_up=8.0)))
    # dorsal wall of the sacral canal with the median crest
    y0 = d.body_d / 2 + d.canal_d + 3.0
    v.parts.append(("sacrum_dorsal", Tube(f.to_world([0, y0, -12.0]), f.to_world([0, y0 + 1.0, -42.0]),
                                          ref=f.R[:, 1], r_side=18.0, r_up=3.5, t_min=1.0, flare_a=(1.4, 1.0))))


def build_ribs(v: VertebraModel) -> list[Shape]:
    """A floating rib articulating with the body of a lower thoracic vertebra, per side."""
    f, d, b = v.frame, v.dims, v.body
    out: list[Shape] = []
    y_head = 3.0
    x_edge = b.a * np.sqrt(max(1.0 - ((y_head - b.cy) / b.b) ** 2, 0.0))
    hx = x_edge + RIB_JOINT_GAP + RIB_R_UP
    for s in SIDES.values():
        pts = np.array([[hx, y_head, v.z_p + 2.0], [hx + 18, 22, v.z_p], [hx + 45, 32, v.z_p - 8],
                        [hx + 80, 15, v.z_p - 25], [hx + 100, -20, v.z_p - 45]]) * [s, 1, 1]
        w = f.to_world(pts)
        for p, q in zip(w[:-1], w[1:]):
            out.append(Tube(p, q, ref=f.R[:, 2], r_side=RIB_R_SIDE, r_up=RIB_R_UP))
    return out


def build_ilium(s1: VertebraModel) -> tuple[list[Shape], dict]:
    """Posterior iliac wings and crests lateral to L5-S1 (not labelled; bone in the CT).

    Drawn in a pelvic frame: S1's frame turned back by the nominal sacral slope, origin at the
    S1 superior endplate centre. The crest's highest point is at about the L4-L5 disc
    (intercristal / Tuffier line)."""
    f = s1.frame
    Rp = f.R @ rot_x(-M.NOMINAL_SACRAL_SLOPE_DEG)
    pf = Frame(f.to_world([0, 0, s1.dims.body_h / 2]), Rp)
    shapes: list[Shape] = []
    crest = {}
    for side, s in SIDES.items():
        c = np.array([[36, 64, -30], [44, 66, -6], [50, 64, 20], [66, 50, 38], [88, 30, 40], [110, 4, 32]], float)
        bl = np.array([[46, 40, -48], [54, 30, -42], [62, 16, -44], [78, 4, -46], [94, -8, -46], [104, -22, -44]],
                      float)
        c[:, 0] *= s
        bl[:, 0] *= s
        cw, bw = pf.to_world(c), pf.to_world(bl)
        crest[side] = cw
        # iliac tuberosity: the thick posterior ilium behind the sacroiliac joint
        shapes.append(Ellipsoid(pf.to_world([s * 52.0, 52.0, 4.0]), pf.R.T, [10.0, 14.0, 24.0]))
        for p, q in zip(cw[:-1], cw[1:]):
            shapes.append(Tube(p, q, ref=pf.R[:, 2], r_side=7.0, r_up=7.0))
        # wing: a ruled surface between crest and the lower line, as overlapping flat tubes
        for i in range(len(c) - 1):
            for t in np.linspace(0, 1, ILIUM_LINES_PER_SEGMENT, endpoint=False):
                p = cw[i] + t * (cw[i + 1] - cw[i])
                q = bw[i] + t * (bw[i + 1] - bw[i])
                tang = (cw[i + 1] - cw[i]) / np.linalg.norm(cw[i + 1] - cw[i])
                shapes.append(Tube(p, q, ref=tang, r_side=4.0, r_up=5.0))
    return shapes, {k: v.round(3).tolist() for k, v in crest.items()}


__all__ = ["Body", "Disc", "Union", "VertebraModel", "PedicleSpec", "local_layout", "posterior_clearance_points",
           "build_vertebra", "add_sap", "add_iap", "build_ribs", "build_ilium", "scoliosis_end_vertebrae"]
