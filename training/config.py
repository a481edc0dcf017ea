"""Training options (separate from the model's :class:`facerecon.FaceReconConfig`), loaded from YAML + flags."""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from facerecon.config import FaceReconConfig

#: Above this |estimated yaw| the 300-W jaw (visible outline) no longer matches the 3D contour well
#: (``TrainConfig.jaw_turned_min_yaw``'s default; :func:`training.data.reweight_turned_jaw`).
JAW_YAW_THRESHOLD_DEG = 30.0
#: Default weight of those jaw points (``TrainConfig.jaw_turned_weight``).
JAW_TURNED_WEIGHT = 0.5
#: How the 2D landmark loss is normalised (``LossWeights.landmark_norm``; :func:`training.losses.landmark_loss`).
LANDMARK_NORMS = ("crop", "face")


@dataclass
class LossWeights:
    """Weights of the terms of L_total = L_recon + alpha L_perceptual + beta L_reg + landmark + photometric."""

    recon: float = 0.005  # per mm: 1 mm is about 0.4% of the default crop
    pose: float = 0.0  # chordal rotation distance, on samples with 3D ground truth (synthetic)
    depth: float = 0.0  # scale-free relative landmark depth vs pseudo-label depth (real faces with pseudo-labels)
    pseudo_pose: float = 0.0  # chordal rotation distance vs the mean face's rigid fit to the pseudo-label 3D points
    yaw: float = 0.0  # smooth-L1 yaw error (radians) vs labelled yaw (real faces with a yaw label: AFLW)
    landmark: float = 1.0
    photometric: float = 0.0
    perceptual: float = 0.0  # alpha
    regularization: float = 1.0  # beta
    identity_prior: float = 1e-3
    expression_prior: float = 1e-3
    albedo_prior: float = 1e-3
    lighting_prior: float = 1e-3
    perceptual_network: str = "timm/resnet18"
    eye_weight: float = 2.0
    mouth_weight: float = 1.5
    #: ``"crop"`` (error / crop side, pooled over the batch's points) or ``"face"`` (per-face error / sqrt(w * h) of
    #: its targets' box, averaged over faces: the NME's shape); see :func:`training.losses.landmark_loss`.
    landmark_norm: str = "crop"

    def __post_init__(self) -> None:
        if self.landmark_norm not in LANDMARK_NORMS:
            raise ValueError(f"loss.landmark_norm must be one of {LANDMARK_NORMS}, got {self.landmark_norm!r}")


@dataclass
class TrainConfig:
    """All options of ``training/train.py``.

    Attributes:
        model: FaceReconConfig fields (a dict, validated by FaceReconConfig).
        init_from: a saved model folder / repo id to fine-tune from; ``model`` entries then override its config
            (e.g. ``landmarks``) and the weights must still fit.
        sources: real data sources to train on.
        jaw_turned_weight: loss weight of the 300-W jaw points of turned faces (they follow the visible outline,
            not the 3D contour of synthetic faces and AFLW2000-3D); also applied to the validation split.
        jaw_turned_side: ``"both"`` reweights the whole jaw of a turned face, ``"far"`` only the side turned away
            from the camera (on the near side the outline is the jaw contour; :func:`training.data.far_jaw_points`).
        jaw_turned_min_yaw: a 300-W face counts as turned above this |yaw_estimate| (degrees).
        source_landmarks: per-source landmark definitions ``{source: name or JSON path}`` that the 2D landmark loss
            and the validation NME compare that source's annotations with (annotation conventions differ between
            datasets; :func:`training.losses.source_landmarks_2d`); other sources use the model's ``landmarks``.
        profiled: a ``training.profile_faces`` output folder (``"default"``: ``<facerecon cache>/profiled/300w``)
            whose turned views of 300-W training faces join the training split (None: none); every one must come
            from a face of this run's training split.
        synthetic_pitch_std: pitch spread of the synthetic faces (degrees).
        synthetic_min_yaw: smallest |yaw| of the synthetic faces (degrees); 0 keeps the default mix (half
            near-frontal, half uniform up to 90), > 0 renders turned faces only (|yaw| uniform in [min, 90]).
        synthetic_fraction: share of synthetic faces in each batch (0 until the renderer provides them).
        pseudo_sources: real sources whose missing targets are filled with MediaPipe pseudo-labels
            (``training/pseudo_label.py``; :func:`training.data.add_pseudo_labels`), training split only.
        pseudo_dir: folder of the ``<source>_mediapipe.npz`` pseudo-label files (None: ``<facerecon cache>/pseudo``).
        pseudo_map: MediaPipe -> iBUG correspondence JSON fitted by ``training.pseudo_map`` (None: the fixed
            correspondence stored in the pseudo-label files).
        pseudo_weight: loss weight of the pseudo-labelled points.
        pseudo_max_nme: a face's pseudo-labels are used only when they agree with its manual points to this NME.
        pseudo_jaw_max_yaw: pseudo-label jaw points only on faces with |yaw| up to this (None: every face).
        pseudo_jaw_depth: use the pseudo-labels' depth of the jaw points.
        batch_size: global batch per optimisation step (split over processes and accumulation steps).
        grad_accum: gradient-accumulation steps.
        lr, weight_decay, warmup_steps, max_steps, epochs: optimisation (Adam, lr 1e-3 in the paper).
        schedule: "cosine" (warm-up + cosine annealing) or "cyclic" (cosine with warm restarts every cycle_steps).
        mixed_precision: "no", "fp16" or "bf16" (accelerate).
        grad_clip: max gradient norm (0 disables).
        val_every: validate every this many steps (0: once per epoch).
        patience: early stopping after this many validations without improvement (0 disables).
        save_every: checkpoint (accelerate save_state) every this many steps.
        output_dir: run folder (checkpoints/, best/ = best validation NME, final/ = end of the schedule, logs/).
        push_to_hub: repo id to publish to at the end (None: don't).
        publish: which weights ``push_to_hub`` publishes: "best" (validation NME) or "final". The own
            300-W / AFLW validation split does not track AFLW2000-3D well, so the final weights can be better.
        threads: CPU threads per process (0: all cores divided among the processes; `accelerate launch` would
            otherwise leave OMP_NUM_THREADS=1).
        augment: augment the training crops (:class:`training.augment.Augmenter`).
        augmentation: :class:`training.augment.AugmentConfig` fields that override its defaults, e.g.
            ``{large_rotation_p: 0.15, large_rotation_deg: 180}``.
        seed, workers, log_every, val_limit: misc.
    """

    model: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None
    sources: list[str] = field(default_factory=lambda: ["300w", "aflw"])
    synthetic_fraction: float = 0.0
    pseudo_sources: list[str] = field(default_factory=list)
    pseudo_dir: str | None = None
    pseudo_map: str | None = None
    pseudo_weight: float = 0.5
    pseudo_max_nme: float = 0.08
    pseudo_jaw_max_yaw: float | None = None
    pseudo_jaw_depth: bool = True
    jaw_turned_weight: float = JAW_TURNED_WEIGHT
    jaw_turned_side: str = "both"
    jaw_turned_min_yaw: float = JAW_YAW_THRESHOLD_DEG
    source_landmarks: dict[str, str] = field(default_factory=dict)
    profiled: str | None = None
    synthetic_pitch_std: float = 12.0
    synthetic_min_yaw: float = 0.0
    batch_size: int = 64
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"
    cycle_steps: int = 1000
    warmup_steps: int = 100
    max_steps: int = 2000
    epochs: int = 1000
    mixed_precision: str = "no"
    grad_clip: float = 5.0
    val_every: int = 200
    val_limit: int = 0
    patience: int = 8
    save_every: int = 200
    log_every: int = 10
    output_dir: str = "runs/default"
    seed: int = 0
    workers: int = 0
    threads: int = 0
    augment: bool = True
    augmentation: dict[str, Any] = field(default_factory=dict)
    loss: LossWeights = field(default_factory=LossWeights)
    push_to_hub: str | None = None
    publish: str = "best"

    def __post_init__(self) -> None:
        if isinstance(self.loss, dict):
            self.loss = LossWeights(**self.loss)
        _coerce_numbers(self)
        _coerce_numbers(self.loss)
        FaceReconConfig(**self.model)  # validate early
        if self.schedule not in ("cosine", "cyclic"):
            raise ValueError(f"schedule must be 'cosine' or 'cyclic', got {self.schedule!r}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        if self.batch_size < 1 or self.grad_accum < 1 or self.max_steps < 1:
            raise ValueError("batch_size, grad_accum and max_steps must be >= 1")
        if self.publish not in ("best", "final"):
            raise ValueError(f"publish must be 'best' or 'final', got {self.publish!r}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")
        if self.jaw_turned_weight < 0:
            raise ValueError(f"jaw_turned_weight must be >= 0, got {self.jaw_turned_weight}")
        if self.jaw_turned_side not in ("both", "far"):
            raise ValueError(f"jaw_turned_side must be 'both' or 'far', got {self.jaw_turned_side!r}")
        if not 0 <= self.jaw_turned_min_yaw <= 90:
            raise ValueError(f"jaw_turned_min_yaw must be in [0, 90] degrees, got {self.jaw_turned_min_yaw}")
        if not 0 <= self.synthetic_min_yaw <= 90:
            raise ValueError(f"synthetic_min_yaw must be in [0, 90] degrees, got {self.synthetic_min_yaw}")
        if not 0.0 <= self.synthetic_fraction <= 1.0:
            raise ValueError(f"synthetic_fraction must be in [0, 1], got {self.synthetic_fraction}")
        unknown = set(self.sources) - {"300w", "aflw", "utkface"}
        if unknown:
            raise ValueError(f"unknown data sources {sorted(unknown)}; use 300w, aflw, utkface")
        if not set(self.source_landmarks) <= set(self.sources) - {"utkface"}:
            raise ValueError(f"source_landmarks keys {sorted(self.source_landmarks)} must be annotated sources among "
                             f"{self.sources} (utkface has no landmarks)")
        if self.profiled is not None and "300w" not in self.sources:
            raise ValueError(f"profiled faces are turned 300-W training faces: add 300w to sources {self.sources}")
        if not set(self.pseudo_sources) <= set(self.sources):
            raise ValueError(f"pseudo_sources {self.pseudo_sources} must be among sources {self.sources}")
        if not 0.0 < self.pseudo_weight <= 1.0:
            raise ValueError(f"pseudo_weight must be in (0, 1], got {self.pseudo_weight}")
        if self.pseudo_max_nme <= 0:
            raise ValueError(f"pseudo_max_nme must be > 0, got {self.pseudo_max_nme}")
        if self.pseudo_jaw_max_yaw is not None and not 0 <= self.pseudo_jaw_max_yaw <= 180:
            raise ValueError(f"pseudo_jaw_max_yaw must be in [0, 180] degrees or null, got {self.pseudo_jaw_max_yaw}")

        self.augment_config()  # validate early

    def augment_config(self) -> Any:
        """The :class:`training.augment.AugmentConfig` of ``augmentation`` (validated by building an augmenter)."""
        from training.augment import AugmentConfig, Augmenter

        valid = {f.name for f in fields(AugmentConfig)}
        unknown = set(self.augmentation) - valid
        if unknown:
            raise ValueError(f"unknown augmentation options {sorted(unknown)}; valid: {sorted(valid)}")
        config = AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in self.augmentation.items()})
        Augmenter(8, config)
        return config

    def model_config(self) -> FaceReconConfig:
        """The model configuration."""
        return FaceReconConfig(**self.model)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for YAML / tracker hyper-parameters)."""
        return dataclasses.asdict(self)


def _coerce_numbers(obj: Any) -> None:
    """Turn numeric strings (e.g. YAML's '3e-4') into the int / float the dataclass field declares."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        kind = {"float": float, "int": int}.get(str(f.type))
        if kind is None or isinstance(value, bool):
            continue
        try:
            setattr(obj, f.name, kind(value))
        except (TypeError, ValueError) as err:
            raise ValueError(f"training config '{f.name}' must be a number, got {value!r}") from err


def _parse_value(text: str) -> Any:
    import yaml

    try:
        return json.loads(text)  # numbers such as 3e-4 (YAML 1.1 reads those as strings), lists, true/false
    except ValueError:
        return yaml.safe_load(text)


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """One YAML config with its ``base:`` chain resolved (the file's keys win; ``model`` / ``loss`` merge)."""
    import yaml

    path = path.resolve()
    if path in chain:
        raise ValueError(f"config base cycle: {' -> '.join(str(p) for p in (*chain, path))}")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"training config {path} must be a YAML mapping, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    merged = _read_yaml(path.parent / base, (*chain, path))
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config and apply ``key=value`` overrides (dotted keys reach into ``model.``, ``loss.`` etc.).

    A config may start from another one with ``base: other.yaml`` (a path relative to the file): its keys replace
    the base's, and mappings (``model``, ``loss``, ``augmentation``) are merged key by key.

    Args:
        path: YAML file or None for the defaults.
        overrides: e.g. ``["lr=3e-4", "model.input_size=160", "loss.landmark=2"]``.
    """
    data: dict[str, Any] = _read_yaml(Path(path)) if path is not None else {}
    known = {f.name for f in fields(TrainConfig)}
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override '{item}' must look like key=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = _parse_value(value)
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown training config keys: {sorted(unknown)}")
    return TrainConfig(**data)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by the training entry points."""
    parser.add_argument("--config", type=Path, default=None, help="YAML training config")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override config values, e.g. --set lr=3e-4 model.input_size=160")
