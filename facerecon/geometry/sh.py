"""Second-order (9-term) spherical-harmonics Lambertian shading (Ramamoorthi & Hanrahan 2001).

The basis is the 9 real SH functions ``Y_lm`` (bands l = 0, 1, 2) multiplied by the Lambertian convolution factors
``A_0 = pi``, ``A_1 = 2 pi / 3``, ``A_2 = pi / 4`` and divided by ``A_0 * Y_00 = sqrt(pi) / 2``, so that the constant
term is exactly 1::

    [1, k1 y, k1 z, k1 x, k2 xy, k2 yz, k3 (3 z^2 - 1), k2 xz, k4 (x^2 - y^2)]
    k1 = 2 / sqrt(3), k2 = sqrt(15) / 4, k3 = sqrt(5) / 8, k4 = sqrt(15) / 8

Shading ``sum_k basis_k(n) * coeffs_k`` equals the R&H irradiance ``E(n)`` for radiance coefficients
``L_lm = coeffs / (sqrt(pi) / 2)``. Real SH without the Condon-Shortley phase (all constants positive). Normals and
the light are in the view frame (+x subject's left, +y up, +z towards the camera).
"""

from __future__ import annotations

import math

import torch

__all__ = ["SH_CONSTANTS", "SH_MIRROR_X_SIGNS", "sh_basis", "sh_quarter_turn", "sh_shading", "shade"]

_K1 = 2.0 / math.sqrt(3.0)
_K2 = math.sqrt(15.0) / 4.0
_K3 = math.sqrt(5.0) / 8.0
_K4 = math.sqrt(15.0) / 8.0

#: Constants multiplying [1, y, z, x, xy, yz, 3z^2 - 1, xz, x^2 - y^2] in :func:`sh_basis` (plain floats).
SH_CONSTANTS: tuple[float, ...] = (1.0, _K1, _K1, _K1, _K2, _K2, _K3, _K2, _K4)


#: Sign of each basis function under the mirror x -> -x (the terms odd in x: x, xy, xz): the SH coefficients of
#: the mirror-image lighting are ``coeffs * SH_MIRROR_X_SIGNS`` per basis index.
SH_MIRROR_X_SIGNS: tuple[float, ...] = (1.0, 1.0, 1.0, -1.0, -1.0, 1.0, 1.0, -1.0, 1.0)

#: Under the quarter turn ``Q n = (-y, x, z)`` basis function ``i`` becomes ``sign * basis[index]``:
#: ``sh_basis(Q n)[i] == _QUARTER_SIGNS[i] * sh_basis(n)[_QUARTER_INDEX[i]]``.
_QUARTER_INDEX = (0, 3, 2, 1, 4, 7, 6, 5, 8)
_QUARTER_SIGNS = (1.0, 1.0, 1.0, -1.0, -1.0, 1.0, 1.0, -1.0, -1.0)


def sh_quarter_turn(turns: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """SH coefficient maps of the lighting turned with the scene about the view axis by quarter turns.

    Args:
        turns: (B,) integer quarter turns ``k`` (any integers; taken modulo 4).
        dtype: dtype of the result.

    Returns:
        (B, 9, 9) matrices ``P`` with ``sh_basis(Q^k n) @ (P @ c) == sh_basis(n) @ c`` for every unit normal ``n``
        and coefficients ``c``: ``P @ c`` lights the turned scene as ``c`` lit the original one.

    Convention: view frame (+y up, +z towards the camera); ``Q n = (-y, x, z)`` turns counter-clockwise as displayed.
    """
    one = torch.zeros(9, 9, dtype=torch.float64)
    one[range(9), _QUARTER_INDEX] = torch.tensor(_QUARTER_SIGNS, dtype=torch.float64)
    powers = torch.stack([torch.linalg.matrix_power(one, k) for k in range(4)]).to(device=turns.device, dtype=dtype)
    return powers[turns.long().remainder(4)]


def sh_basis(normals: torch.Tensor) -> torch.Tensor:
    """Lambertian-convolved, normalised real SH basis at unit normals.

    Args:
        normals: (..., 3) unit normals (x, y, z); not re-normalised.

    Returns:
        (..., 9) ``[1, k1 y, k1 z, k1 x, k2 xy, k2 yz, k3 (3z^2 - 1), k2 xz, k4 (x^2 - y^2)]`` with
        ``k1 = 2/sqrt(3)``, ``k2 = sqrt(15)/4``, ``k3 = sqrt(5)/8``, ``k4 = sqrt(15)/8`` (``Y_lm * A_l / (A_0 Y_00)``).

    Convention: view frame (+y up, +z towards the camera); basis[..., 0] == 1 exactly.
    """
    x, y, z = normals.unbind(-1)
    return torch.stack(
        [
            torch.ones_like(x),
            _K1 * y,
            _K1 * z,
            _K1 * x,
            _K2 * (x * y),
            _K2 * (y * z),
            _K3 * (3.0 * z * z - 1.0),
            _K2 * (x * z),
            _K4 * (x * x - y * y),
        ],
        dim=-1,
    )


def sh_shading(normals: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Per-vertex RGB irradiance from 9-band SH lighting.

    Args:
        normals: (B, N, 3) unit normals.
        coeffs: (B, 9, 3) SH coefficients per band (in :func:`sh_basis` order) and colour channel.

    Returns:
        (B, N, 3) shading ``sum_k sh_basis(n)_k * coeffs[:, k, c]``; coefficients ``[1, 0, ..., 0]`` give exactly 1.

    Convention: view frame; RGB channel order follows ``coeffs``' last axis.
    """
    return sh_basis(normals) @ coeffs


def shade(albedo: torch.Tensor, normals: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Lambertian shading of albedo under SH lighting.

    Args:
        albedo: (B, N, 3) RGB albedo.
        normals: (B, N, 3) unit normals.
        coeffs: (B, 9, 3) SH coefficients (see :func:`sh_shading`).

    Returns:
        (B, N, 3) ``albedo * sh_shading(normals, coeffs)``.

    Convention: view frame; colours in the albedo's units (no clamping, no gamma).
    """
    return albedo * sh_shading(normals, coeffs)
