"""Pure, batched tensor geometry: rotations, camera and crop maps, mesh normals, SH shading.

Every function takes and returns tensors batched over leading dimensions (``(B, ...)``), never modifies its inputs,
creates constants on the input's device and dtype, and works in float32 and float64.

Project-wide conventions:

* **Model frame**: the morphable model, millimetres; +x to the subject's left (image right for a frontal face),
  +y up, +z towards the viewer (out of the face). Right-handed.
* **View frame**: the model frame after the head rotation ``R`` (same axes: +y up, +z towards the camera). SH
  lighting and normals used for shading are expressed in this frame.
* **Camera frame** (OpenCV): x right, y down, z away from the camera;
  ``X_cam = F @ (R @ X) + t`` with ``F = diag(1, -1, -1)`` and ``t`` in mm.
* **Image**: 0-based pixel centres: pixel (i, j) (column i, row j) has its centre at (x=i, y=j) and covers
  [i - 0.5, i + 0.5]. Boxes ``[x0, y0, x1, y1]`` are continuous edge coordinates in the same system, so a whole
  W x H image is the box ``[-0.5, -0.5, W - 0.5, H - 0.5]``. This matches ``cv2.warpAffine``.
* **Camera model**: weak perspective (scaled orthographic): ``uv = s * X_cam[..., :2] + c`` with ``s`` in pixels per
  mm and ``c`` the principal point in pixels.
* **Angles** are radians. Euler angles are ``(yaw, pitch, roll)`` in the AFLW2000-3D convention
  (``R = Rx(pitch) @ Ry(yaw) @ Rz(roll)``, see :func:`euler_to_matrix`): yaw > 0 turns the face towards image left,
  pitch > 0 looks up, roll > 0 rotates clockwise as displayed.
"""

from __future__ import annotations

from facerecon.geometry.camera import (
    box_area,
    box_from_points,
    box_iou,
    camera_to_view,
    crop_affine,
    crop_to_image,
    image_to_crop,
    model_to_camera,
    scale_box,
    view_boxes,
    weak_perspective_project,
)
from facerecon.geometry.mesh import face_normals, gather_vertices, vertex_face_incidence, vertex_normals
from facerecon.geometry.rotation import (
    axis_angle_to_matrix,
    euler_to_matrix,
    matrix_to_axis_angle,
    matrix_to_euler,
    matrix_to_rotation_6d,
    mean_rotation,
    mirror_rotation,
    procrustes_rotation,
    rotation_6d_to_matrix,
)
from facerecon.geometry.sh import SH_CONSTANTS, SH_MIRROR_X_SIGNS, sh_basis, sh_quarter_turn, sh_shading, shade

__all__ = [
    "SH_CONSTANTS",
    "SH_MIRROR_X_SIGNS",
    "axis_angle_to_matrix",
    "box_area",
    "box_from_points",
    "box_iou",
    "camera_to_view",
    "crop_affine",
    "crop_to_image",
    "euler_to_matrix",
    "face_normals",
    "gather_vertices",
    "image_to_crop",
    "matrix_to_axis_angle",
    "matrix_to_euler",
    "matrix_to_rotation_6d",
    "mean_rotation",
    "mirror_rotation",
    "procrustes_rotation",
    "model_to_camera",
    "rotation_6d_to_matrix",
    "scale_box",
    "sh_basis",
    "sh_quarter_turn",
    "sh_shading",
    "shade",
    "vertex_face_incidence",
    "vertex_normals",
    "view_boxes",
    "weak_perspective_project",
]
