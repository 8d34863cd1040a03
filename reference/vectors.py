"""Three-vector helpers written with the C program's exact operation order.

Vectors are plain 3-tuples of floats.  The order of every multiplication and
addition follows the C source so that set-up values agree to the last bit.
"""

from __future__ import annotations

import math


def dot(x, y):
    return x[0] * y[0] + x[1] * y[1] + x[2] * y[2]


def cross(x, y):
    return (x[1] * y[2] - x[2] * y[1],
            x[2] * y[0] - x[0] * y[2],
            x[0] * y[1] - x[1] * y[0])


def norm(v):
    return math.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2])


def scale(v, s):
    return (s * v[0], s * v[1], s * v[2])


def unitize(v):
    """Return (unit vector, original length); a zero vector stays zero."""
    # Python floats: a NaN vector (a -c_parity source file holding nan) gives NaN without NumPy's warning
    mag = float(norm(v))
    if mag != 0.0:
        return (float(v[0]) / mag, float(v[1]) / mag, float(v[2]) / mag), mag
    return (0.0, 0.0, 0.0), mag


def rescale(v, new_length):
    """``v`` with its length forced to ``new_length``."""
    old = norm(v)
    if old <= 0.0:
        old = 1.0
    return (new_length / old * v[0], new_length / old * v[1], new_length / old * v[2])


def rotate_xyz(v, phix, phiy, phiz):
    """Rotate about the x, then y, then z lab axes (right-handed, radians)."""
    x, y, z = v
    if phix != 0:
        c, s = math.cos(phix), math.sin(phix)
        x, y, z = x, y * c + z * -s, y * s + z * c
    if phiy != 0:
        c, s = math.cos(phiy), math.sin(phiy)
        x, y, z = x * c + y * 0 + z * s, y, x * -s + y * 0 + z * c
    if phiz != 0:
        c, s = math.cos(phiz), math.sin(phiz)
        x, y, z = x * c + y * -s, x * s + y * c, z
    return (x, y, z)


def rotate_axis(v, axis, phi):
    """Rotate ``v`` by ``phi`` radians about the unit vector ``axis`` (Rodrigues)."""
    s, c = math.sin(phi), math.cos(phi)
    d = (axis[0] * v[0] + axis[1] * v[1] + axis[2] * v[2]) * (1.0 - c)
    return (axis[0] * d + v[0] * c + (-axis[2] * v[1] + axis[1] * v[2]) * s,
            axis[1] * d + v[1] * c + (+axis[2] * v[0] - axis[0] * v[2]) * s,
            axis[2] * d + v[2] * c + (-axis[1] * v[0] + axis[0] * v[1]) * s)


def rotate_umat(v, u):
    """Multiply ``v`` by the row-major 3x3 matrix ``u`` (9 numbers)."""
    return (u[0] * v[0] + u[1] * v[1] + u[2] * v[2],
            u[3] * v[0] + u[4] * v[1] + u[5] * v[2],
            u[6] * v[0] + u[7] * v[1] + u[8] * v[2])
