"""ONNX export of the regressor and an onnxruntime backend for inference.

The exported graph is the regressor: face crops ``images (B, 3, S, S)`` in [0, 1] -> the face parameters, the 68
crop-pixel landmarks and the attention maps, with a dynamic batch axis. The dense mesh, normals and colours are then
decoded by :meth:`facerecon.FaceRecon.decode` in torch (a few matrix products), so results match the torch backend.

onnx / onnxruntime are optional: ``pip install "facerecon[onnx]"``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from facerecon.models.facerecon import FaceParameters, FaceRecon

logger = logging.getLogger(__name__)

__all__ = ["ONNX_OUTPUTS", "OnnxRegressor", "cached_onnx_path", "export_onnx", "model_fingerprint",
           "require_onnxruntime"]

#: Output names of the exported graph, in order.
ONNX_OUTPUTS = ("identity", "expression", "albedo", "lighting", "rotation", "translation", "scale", "landmarks_2d",
                "attention")
ONNX_OPSET = 18


def require_onnxruntime() -> Any:
    """Import onnxruntime or raise an ImportError that says how to install it."""
    try:
        import onnxruntime
    except ImportError as e:
        raise ImportError('the ONNX backend needs onnxruntime: pip install "facerecon[onnx]"') from e
    return onnxruntime


class _Regressor(nn.Module):
    """images -> the tensors of :data:`ONNX_OUTPUTS` (what gets exported)."""

    def __init__(self, model: FaceRecon) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(images, landmarks_only=True)
        p = out.params
        return (p.identity, p.expression, p.albedo, p.lighting, p.rotation, p.translation, p.scale, out.landmarks_2d,
                out.attention)


def export_onnx(model: FaceRecon, path: str | os.PathLike, opset: int = ONNX_OPSET, check: bool = True,
                atol: float = 1e-4) -> Path:
    """Export ``model``'s regressor to ONNX with a dynamic batch axis.

    Args:
        model: the model (exported in eval mode on its device; its training flag is restored afterwards).
        path: output ``.onnx`` file.
        opset: ONNX opset version.
        check: run the file with onnxruntime (when installed) on batches of 1 and 3 and compare with torch.
        atol: largest allowed difference of any output in that check, absolute for outputs up to 1 in magnitude and
            relative to the largest magnitude above that (translation in mm, landmarks in pixels).

    Returns:
        The written path.

    Raises:
        ImportError: onnx (needed by the exporter) is missing.
        RuntimeError: the onnxruntime outputs differ from torch by more than ``atol``.
    """
    try:
        import onnx  # noqa: F401  (the exporter needs it)
    except ImportError as e:
        raise ImportError('ONNX export needs onnx: pip install "facerecon[onnx]"') from e
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = model.config.input_size
    device = next(model.parameters()).device
    was_training = model.training
    wrapper = _Regressor(model).eval()
    example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    batch = torch.export.Dim("batch", min=1, max=1024)
    try:
        with torch.no_grad():
            program = torch.onnx.export(wrapper, (example,), input_names=["images"],
                                        output_names=list(ONNX_OUTPUTS), dynamic_shapes={"images": {0: batch}},
                                        opset_version=opset, dynamo=True, external_data=False, verbose=False)
        program.save(str(path), external_data=False)
        if check:
            _check_parity(wrapper, path, size, device, atol)
    finally:
        model.train(was_training)
    logger.info("exported the regressor to %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return path


def _check_parity(wrapper: nn.Module, path: Path, size: int, device: torch.device, atol: float) -> None:
    try:
        require_onnxruntime()
    except ImportError:
        logger.warning("onnxruntime not installed: skipped the parity check of %s", path)
        return
    runner = OnnxRegressor(path, threads=1)
    for b in (1, 3):
        x = torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(b))
        with torch.no_grad():
            ref = wrapper(x.to(device))
        for name, r, g in zip(ONNX_OUTPUTS, ref, runner.run(x), strict=True):
            err = float((r.float().cpu() - g).abs().max())
            # float32 keeps ~7 digits: outputs in mm or pixels (tens to hundreds) get the tolerance relative to
            # their magnitude, unit-scale outputs the plain absolute one.
            tol = atol * max(1.0, float(r.abs().max()))
            if err > tol:
                raise RuntimeError(f"ONNX output {name!r} differs from torch by {err:.2e} (> {tol:.2g}) at batch {b}: "
                                   f"the export of {path} is not faithful")


class OnnxRegressor:
    """Runs an exported regressor with onnxruntime and returns torch tensors.

    Args:
        path: the ``.onnx`` file written by :func:`export_onnx`.
        threads: intra-op threads (None: onnxruntime's default, one per core).
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        ort = require_onnxruntime()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model {self.path} not found")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        # Spinning onnxruntime workers fight PyTorch's OpenMP workers (which spin after every torch op) for the
        # same cores: 2 spinning threads each made a batch-1 forward 3x slower on 2 cores.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=["CPUExecutionProvider"])
        names = tuple(o.name for o in self.session.get_outputs())
        if names != ONNX_OUTPUTS:
            raise ValueError(f"{self.path} is not a FaceRecon regressor export: outputs {names}, expected "
                             f"{ONNX_OUTPUTS}")

    def run(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, S, S) float crops -> the tensors of :data:`ONNX_OUTPUTS`."""
        x = images.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
        return [torch.from_numpy(a) for a in self.session.run(None, {"images": x})]

    def __call__(self, images: torch.Tensor) -> tuple[FaceParameters, torch.Tensor]:
        """(B, 3, S, S) crops -> ``(FaceParameters, attention (B, T, h, w))`` on the images' device."""
        from facerecon.models.facerecon import FaceParameters

        out = [t.to(images.device) for t in self.run(images)]
        params = FaceParameters(identity=out[0], expression=out[1], albedo=out[2], lighting=out[3], rotation=out[4],
                                translation=out[5], scale=out[6])
        return params, out[8]


def model_fingerprint(model: FaceRecon) -> str:
    """Short hash of a model's config and weights (names the cached ONNX file)."""
    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    h.update(torch.__version__.encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def cached_onnx_path(model: FaceRecon, cache_dir: str | os.PathLike | None = None) -> Path:
    """The model's ONNX export in the cache (:func:`facerecon.morphable.ict.cache_dir`), exported if missing."""
    from facerecon.morphable.ict import cache_dir as default_cache_dir

    root = Path(cache_dir) if cache_dir else default_cache_dir()
    path = root / "onnx" / f"facerecon-{model_fingerprint(model)}.onnx"
    if not path.is_file():
        tmp = path.with_suffix(f".tmp{os.getpid()}.onnx")
        export_onnx(model, tmp)
        os.replace(tmp, path)
    return path
