"""The Gradio app: launched on a free local port and driven with gradio_client."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import trimesh


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tiny_model, tmp_path_factory):
    import os

    import app as app_module
    from facerecon.demo import DemoRunner

    if os.environ.get("FACERECON_APP_TEST_MODEL") == "default":  # regenerate docs with the bundled model
        model_source = None
    else:
        model_source = str(tmp_path_factory.mktemp("model"))
        tiny_model.save_pretrained(model_source)
    runner = DemoRunner(model_source, workdir=tmp_path_factory.mktemp("work"))
    demo = app_module.build_demo(runner)
    port = _free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                        show_error=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.mark.timeout(300)
def test_app_face_photo_gives_every_output(app_url, astronaut, tmp_path):
    from gradio_client import Client, handle_file
    from PIL import Image

    photo = tmp_path / "astronaut.png"
    Image.fromarray(astronaut).save(photo)
    client = Client(app_url, verbose=False)
    annotated, mask, overlay, attention, glb, files, params, message = client.predict(
        handle_file(str(photo)), "albedo", False, False, api_name="/reconstruct")
    for img in (annotated, mask, overlay):
        assert Path(img).is_file()
    assert np.asarray(Image.open(annotated)).shape[:2] == (512, 512)
    assert len(attention) == 9  # one map per query token
    mesh = trimesh.load(glb, force="mesh", process=False)
    assert mesh.visual.kind == "texture" and mesh.faces.shape == (18460, 3)  # textured GLB
    names = sorted(Path(f).name for f in files)
    assert names == ["face.glb", "face.json", "face.ply", "face_obj.zip"]
    import zipfile

    zipped = zipfile.ZipFile(next(f for f in files if f.endswith(".zip"))).namelist()
    assert "face.obj" in zipped and "face.mtl" in zipped and any(n.endswith(".png") for n in zipped)
    assert len(params["faces"]) >= 1 and len(params["faces"][0]["landmarks_2d"]) == 68
    assert "Found" in message and "yaw" in message


@pytest.mark.timeout(120)
def test_app_non_image_gives_clear_error(app_url, tmp_path):
    from gradio_client import Client, handle_file

    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is not an image")
    client = Client(app_url, verbose=False)
    with pytest.raises(Exception, match="(?i)could not|decode|image"):
        client.predict(handle_file(str(bad)), "albedo", False, False, api_name="/reconstruct")


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]


@pytest.mark.timeout(300)
def test_browser_upload_renders_3d_viewer(app_url, astronaut, tmp_path):
    """Headless Chromium uploads a photo, waits for the 3D viewer to draw, and saves a screenshot.

    To (re)write the committed screenshot with the bundled model, run with
    ``FACERECON_APP_TEST_MODEL=default FACERECON_SCREENSHOT=docs/app_screenshot.png``
    (``pytest tests/test_app.py -k browser``).
    """
    import os
    import shutil

    from PIL import Image

    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (dev extra)")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} not installed (Debian package 'chromium'; .ci/run installs it)")
    photo = tmp_path / "astronaut.png"
    Image.fromarray(astronaut).save(photo)
    shot = tmp_path / "app.png"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1200})
        page.goto(app_url, wait_until="networkidle")
        page.locator("input[type=file]").first.set_input_files(str(photo))
        page.get_by_role("button", name="Reconstruct").click()
        canvas = page.locator("canvas").first
        canvas.wait_for(state="visible", timeout=120_000)
        page.wait_for_function("() => document.body.innerText.includes('Found')", timeout=120_000)
        page.wait_for_timeout(2000)  # let the viewer draw the mesh
        box = canvas.bounding_box()
        assert box is not None and box["width"] > 100 and box["height"] > 100
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[0] > 500 and img.std() > 10  # a real page, not a blank frame
    target = os.environ.get("FACERECON_SCREENSHOT")
    if target:
        shutil.copy(shot, target)
