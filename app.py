"""facerecon web app (Gradio Blocks; also runs as a Hugging Face Space).

    python app.py [--host 127.0.0.1] [--port 7860] [--model DIR_OR_REPO]

Host and port also come from ``FACERECON_HOST`` / ``FACERECON_PORT`` (or Gradio's ``GRADIO_SERVER_NAME`` /
``GRADIO_SERVER_PORT``). Nothing runs at import time; the model loads once, on the first request.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

import gradio as gr

from facerecon.demo import TEXTURE_MODES, DemoRunner
from facerecon.errors import FaceReconError

logger = logging.getLogger("facerecon.app")

SHARED_EXAMPLES = Path(__file__).resolve().parent.parent / "shared" / "aflw2000-3d-dev"


def example_images(limit: int = 4) -> list[str]:
    """Example photos: scikit-image's public-domain astronaut, plus dev photos from ../shared when present."""
    examples: list[str] = []
    try:
        from skimage import data as skdata

        path = Path(skdata.__file__).resolve().parent / "astronaut.png"
        if path.is_file():
            examples.append(str(path))
    except ImportError:
        pass
    if SHARED_EXAMPLES.is_dir():
        examples += [str(p) for p in sorted(SHARED_EXAMPLES.glob("*.jpg"))[:limit]]
    return examples


def build_demo(runner: DemoRunner, concurrency_limit: int = 2) -> gr.Blocks:
    """Build the page around a :class:`DemoRunner` (no model is loaded here)."""

    def process(image: Any, texture: str, neutral: bool, all_faces: bool, progress: gr.Progress = gr.Progress()):  # noqa: B008
        if image is None:
            raise gr.Error("Upload a photo first.")
        progress(0.1, desc="Detecting and reconstructing faces")
        try:
            res = runner(image, texture=texture, neutral=neutral, all_faces=all_faces)
        except FaceReconError as err:
            raise gr.Error(str(err)) from err
        progress(1.0, desc="Done")
        return (res.annotated, res.mask, res.overlay, res.attention, str(res.glb), [str(f) for f in res.files],
                res.params, res.message)

    with gr.Blocks(title="facerecon: 3D face reconstruction", delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# facerecon\nOpen, CPU-friendly 3D face reconstruction from a single photo: 68 landmarks, "
                    "head pose, face mask and a downloadable 3D mesh. Built on ICT-FaceKit (MIT).")
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(label="Photo", type="filepath", sources=["upload", "webcam", "clipboard"])
                texture = gr.Radio(list(TEXTURE_MODES), value="albedo", label="Texture")
                neutral = gr.Checkbox(value=False, label="Neutral expression")
                all_faces = gr.Checkbox(value=False, label="All faces (else the largest)")
                run = gr.Button("Reconstruct", variant="primary")
                examples = example_images()
                if examples:
                    gr.Examples(examples=[[e] for e in examples], inputs=[image])
            with gr.Column(scale=2):
                message = gr.Markdown()
                with gr.Row():
                    annotated = gr.Image(label="Landmarks and pose", type="numpy", interactive=False)
                    overlay = gr.Image(label="Reconstruction over the photo", type="numpy", interactive=False)
                    mask = gr.Image(label="Face mask", type="numpy", interactive=False)
                viewer = gr.Model3D(label="3D mesh", clear_color=(0.95, 0.95, 0.95, 1.0), height=420)
                attention = gr.Gallery(label="Where the head looked (attention per token)", columns=5, height=260)
                files = gr.File(label="Downloads: GLB, OBJ (zip), PLY, parameters (JSON)", file_count="multiple")
                params = gr.JSON(label="Parameters", open=False)
        run.click(process, inputs=[image, texture, neutral, all_faces],
                  outputs=[annotated, mask, overlay, attention, viewer, files, params, message],
                  concurrency_limit=concurrency_limit, api_name="reconstruct")
    return demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (defaults from the environment)."""
    parser = argparse.ArgumentParser(description="facerecon web app")
    parser.add_argument("--host", default=os.environ.get("FACERECON_HOST")
                        or os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("FACERECON_PORT")
                                                         or os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--model", default=None, help="model folder or Hub repo id (default: bundled model)")
    parser.add_argument("--concurrency", type=int, default=2, help="requests processed at once")
    parser.add_argument("--share", action="store_true", help="create a public Gradio link")
    parser.add_argument("--backend", choices=("torch", "onnx"), default=os.environ.get("FACERECON_BACKEND", "torch"),
                        help="regressor back-end (onnx needs onnxruntime)")
    parser.add_argument("--flip-test", action=argparse.BooleanOptionalAction,
                        default=os.environ.get("FACERECON_FLIP_TEST", "1").lower() not in ("0", "false", "no"),
                        help="average with the mirrored crop's prediction (more accurate, ~2x regressor time)")
    parser.add_argument("--shift-test", action=argparse.BooleanOptionalAction,
                        default=os.environ.get("FACERECON_SHIFT_TEST", "1").lower() not in ("0", "false", "no"),
                        help="also average 4 crops shifted by 7%% of their side (more accurate, ~5x regressor time)")
    parser.add_argument("--orientation-test", action=argparse.BooleanOptionalAction,
                        default=os.environ.get("FACERECON_ORIENTATION_TEST", "1").lower() not in ("0", "false", "no"),
                        help="turn faces lying on their side or upside down upright before regressing them")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Start the app."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    runner = DemoRunner(args.model, backend=args.backend, flip_test=args.flip_test, shift_test=args.shift_test,
                        orientation_test=args.orientation_test)
    demo = build_demo(runner, concurrency_limit=args.concurrency)
    demo.queue(max_size=32).launch(server_name=args.host, server_port=args.port, share=args.share, show_error=True)


if __name__ == "__main__":
    main()
