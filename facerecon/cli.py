"""Command line: ``facerecon reconstruct IMG... -o OUTDIR [--format ...]`` and ``facerecon export-onnx -o FILE``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from facerecon.inference.export import EXPORT_FORMATS

logger = logging.getLogger("facerecon")


def _formats(value: str) -> list[str]:
    fmts = [f.strip().lower().lstrip(".") for f in value.split(",") if f.strip()]
    bad = [f for f in fmts if f not in EXPORT_FORMATS]
    if not fmts or bad:
        raise argparse.ArgumentTypeError(f"unknown format(s) {bad or value!r}; choose from {','.join(EXPORT_FORMATS)}")
    return fmts


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``facerecon`` command."""
    parser = argparse.ArgumentParser(prog="facerecon", description="3D face reconstruction from single photos.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("reconstruct", help="reconstruct the faces in photos and export meshes")
    rec.add_argument("images", nargs="+", type=Path, help="input photos")
    rec.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    rec.add_argument("--format", type=_formats, default=["glb"], help="comma-separated: glb,obj,ply,json")
    rec.add_argument("--model", default=None, help="model folder or Hub repo id (default: the bundled model)")
    rec.add_argument("--all-faces", action="store_true", help="export every face, not just the largest")
    rec.add_argument("--colors", choices=("shaded", "albedo", "none"), default="shaded", help="vertex colours")
    rec.add_argument("--neutral", action="store_true", help="export a neutral expression")
    rec.add_argument("--texture", action="store_true",
                     help="bake colours into a UV texture (GLB embedded; OBJ writes .mtl + .png)")
    rec.add_argument("--device", default="cpu", help="torch device")
    rec.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                     help="regressor back-end (onnx needs onnxruntime: pip install 'facerecon[onnx]')")
    rec.add_argument("--flip-test", action=argparse.BooleanOptionalAction, default=True,
                     help="average with the mirrored crop's prediction (more accurate, ~2x regressor time)")
    rec.add_argument("--shift-test", action=argparse.BooleanOptionalAction, default=True,
                     help="also average 4 crops shifted by 7%% of their side (more accurate, ~5x regressor time)")
    rec.add_argument("--orientation-test", action=argparse.BooleanOptionalAction, default=True,
                     help="turn faces lying on their side or upside down upright before regressing them")
    exp = sub.add_parser("export-onnx", help="export the regressor to ONNX (dynamic batch), checked against torch")
    exp.add_argument("-o", "--output", type=Path, required=True, help="output .onnx file")
    exp.add_argument("--model", default=None, help="model folder or Hub repo id (default: the bundled model)")
    exp.add_argument("--no-check", action="store_true", help="skip the onnxruntime parity check")
    return parser


def _export_onnx(args: argparse.Namespace) -> int:
    from facerecon.hub import load_model

    model = load_model(args.model, allow_untrained=True)
    path = model.export_onnx(args.output, check=not args.no_check)
    print(f"exported the regressor of {args.model or 'the bundled model'} to {path} "
          f"({path.stat().st_size / 1e6:.1f} MB){'' if args.no_check else ', parity with torch checked'}")
    return 0


def _reconstruct(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from facerecon.errors import FaceReconError
    from facerecon.hub import load_model

    model = load_model(args.model, device=args.device, allow_untrained=True)
    args.output.mkdir(parents=True, exist_ok=True)
    failed: list[tuple[Path, str]] = []
    bar = tqdm(args.images, unit="img", disable=len(args.images) < 2 or not sys.stderr.isatty())
    for path in bar:
        bar.set_postfix_str(path.name)
        try:
            faces = model.reconstruct(path, max_faces=None if args.all_faces else 1, backend=args.backend,
                                      flip_test=args.flip_test, shift_test=args.shift_test,
                                      orientation_test=args.orientation_test)
            for k, face in enumerate(faces):
                suffix = f"_face{k}" if args.all_faces else ""
                for fmt in args.format:
                    face.export(args.output / f"{path.stem}{suffix}.{fmt}", colors=args.colors, neutral=args.neutral,
                                texture=args.texture)
        except (FaceReconError, OSError, ValueError) as err:
            failed.append((path, str(err)))
            logger.error("%s: %s", path, err)
    done = len(args.images) - len(failed)
    print(f"reconstructed {done}/{len(args.images)} image(s) into {args.output}")
    if failed:
        print("failed:", file=sys.stderr)
        for path, why in failed:
            print(f"  {path}: {why}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``facerecon`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command == "reconstruct":
        return _reconstruct(args)
    if args.command == "export-onnx":
        return _export_onnx(args)
    raise AssertionError(args.command)  # argparse guarantees a known command


if __name__ == "__main__":
    sys.exit(main())
