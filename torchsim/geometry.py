"""Detector placement in torch: convention, pivot, rotations and two-theta.

The detector starts as the convention's unit axes ``fdet``, ``sdet``,
``odet`` (the *frame*, from the shared front end: conventions, custom
vectors and their normalization are set-up, not physics) and is placed by
four physical quantities:

* ``distance`` (m) from the sample to the beam spot along the beam,
* ``beam_center`` (m, two numbers) in the convention's own terms,
* ``rotations`` (rad, three numbers) about the lab x, y, z axes,
* ``twotheta`` (rad) about the two-theta axis.

The arithmetic is specs/geometry.md's, step for step and in its order, so
that the result equals :func:`reference.scene.build_scene`'s to float64
rounding.  Every function keeps the dtype and device of its tensor inputs
and is differentiable in them; vectors are trailing ``(..., 3)`` in the lab
frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from torchsim.kernel import dot3, rotate_axis

# C replaces a zero distance ratio (beam in the detector plane) by the smallest double
DBL_MIN = 2.2250738585072014e-308


def rotate_xyz(v, angles):
    """Rotate ``v`` (..., 3) about x, then y, then z by ``angles`` (3,) radians (right-handed)."""
    x, y, z = v.unbind(-1)
    cx, cy, cz = torch.cos(angles).unbind(-1)
    sx, sy, sz = torch.sin(angles).unbind(-1)
    y, z = y * cx - z * sx, y * sx + z * cx
    x, z = x * cy + z * sy, -x * sy + z * cy
    x, y = x * cz - y * sz, x * sz + y * cz
    return torch.stack((x, y, z), -1)


@dataclass
class Frame:
    """The detector before it is placed (unit vectors, lab frame) and its convention."""

    fdet: torch.Tensor             # (3,) fast axis
    sdet: torch.Tensor             # (3,) slow axis
    odet: torch.Tensor             # (3,) normal, away from the sample
    beam: torch.Tensor             # (3,) direction of travel of the beam
    twotheta_axis: torch.Tensor    # (3,)
    convention: str                # mosflm, denzo, adxv, xds, dials or custom
    pivot: str                     # "beam" or "sample"
    pixel_size: float              # m
    detsize_s: float               # m, the detector's extent along sdet
    pix0: torch.Tensor | None = None   # (3,) m: spec mode's -pix0_vector, which fixes the origin


@dataclass
class Placement:
    """Where the detector is: what the pixel kernel needs."""

    pix0: torch.Tensor             # (3,) m, the outer corner of the first pixel
    fdet: torch.Tensor             # (3,) unit
    sdet: torch.Tensor
    odet: torch.Tensor
    distance: torch.Tensor         # m, sample to the beam spot along the beam
    close_distance: torch.Tensor   # m, sample to the detector plane along its normal


def pivot_point(frame: Frame, beam_center):
    """(F, S) in metres along fdet and sdet from the first pixel's corner.

    For the beam pivot it is the beam spot (Fbeam, Sbeam), for the sample
    pivot the point of closest approach (Fclose, Sclose).  ``beam_center``
    (2,) is what the convention calls the beam centre (specs/geometry.md):
    MOSFLM's and DENZO's (Xbeam, Ybeam) swap the axes (MOSFLM adds half a
    pixel), ADXV counts Ybeam from the other edge; XDS and DIALS, which pivot
    about the sample, and CUSTOM take the point itself.
    """
    X, Y = beam_center.unbind(-1)
    if frame.convention == "mosflm":
        half = 0.5 * frame.pixel_size
        return Y + half, X + half
    if frame.convention == "denzo":
        return Y, X
    if frame.convention == "adxv":
        return X, frame.detsize_s - Y
    return X, Y


def detector_axes(frame: Frame, rotations, twotheta):
    """fdet, sdet, odet after the x, y, z rotations and then the two-theta swing."""
    def place(v):
        return rotate_axis(rotate_xyz(v, rotations), frame.twotheta_axis, twotheta)
    return place(frame.fdet), place(frame.sdet), place(frame.odet)


def distance_ratio(frame: Frame, rotations):
    """beam . odet after the rotations (two-theta not included, as in C); never exactly 0."""
    ratio = dot3(frame.beam, rotate_xyz(frame.odet, rotations))
    return torch.where(ratio == 0, torch.full_like(ratio, DBL_MIN), ratio)


def place_detector(frame: Frame, distance, beam_center, rotations, twotheta) -> Placement:
    """The placed detector for the given physical quantities (see the module docstring).

    The pivot point stays where ``beam_center`` puts it: with the beam pivot
    the beam spot lies ``distance`` along the beam; with the sample pivot the
    near point lies ``|ratio * distance|`` along the unrotated normal and
    turns with the detector.  Spec mode's ``-pix0_vector`` (``frame.pix0``)
    replaces the pivot's origin; distance and beam centre then do not enter.
    """
    fdet, sdet, odet = detector_axes(frame, rotations, twotheta)
    ratio = distance_ratio(frame, rotations)
    if frame.pix0 is not None:
        pix0 = frame.pix0
    else:
        close = torch.abs(ratio * distance)
        F, S = pivot_point(frame, beam_center)
        if frame.pivot == "sample":
            near = -F * frame.fdet - S * frame.sdet + close * frame.odet
            pix0 = rotate_axis(rotate_xyz(near, rotations), frame.twotheta_axis, twotheta)
        else:
            pix0 = -F * fdet - S * sdet + (close / ratio) * frame.beam
    close_distance = dot3(pix0, odet)
    return Placement(pix0, fdet, sdet, odet, close_distance / ratio, close_distance)
