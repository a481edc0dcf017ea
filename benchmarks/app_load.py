"""Load test of the Gradio app: N requests from C concurrent gradio_client clients; prints p50 / p95 latency.

    python benchmarks/app_load.py [--requests 20] [--clients 4] [--model DIR] [--url URL]

Without ``--url`` the app is started in this process on a free local port with the given (or default) model.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--model", default=None, help="model folder or Hub repo id (default: bundled)")
    parser.add_argument("--url", default=None, help="an already running app")
    parser.add_argument("--concurrency", type=int, default=2, help="app concurrency limit (own app only)")
    args = parser.parse_args(argv)

    from gradio_client import Client, handle_file
    from PIL import Image
    from skimage import data

    demo = None
    url = args.url
    if url is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        import app as app_module
        from facerecon.demo import DemoRunner

        demo = app_module.build_demo(DemoRunner(args.model), concurrency_limit=args.concurrency)
        port = _free_port()
        demo.queue(max_size=64).launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                                       quiet=True, show_error=True)
        url = f"http://127.0.0.1:{port}/"
    photo = Path(tempfile.mkdtemp()) / "astronaut.jpg"
    Image.fromarray(data.astronaut()).save(photo, quality=92)
    Client(url, verbose=False).predict(handle_file(str(photo)), "albedo", False, False, api_name="/reconstruct")

    def one(_: int) -> tuple[float, bool]:
        client = Client(url, verbose=False)
        t0 = time.perf_counter()
        try:
            out = client.predict(handle_file(str(photo)), "albedo", False, False, api_name="/reconstruct")
            ok = Path(out[4]).is_file()
        except Exception as err:  # report, keep going
            print(f"request failed: {err}", file=sys.stderr)
            ok = False
        return time.perf_counter() - t0, ok

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.clients) as pool:
        results = list(pool.map(one, range(args.requests)))
    wall = time.perf_counter() - t0
    lat = np.array([r[0] for r in results]) * 1e3
    ok = sum(r[1] for r in results)
    print("| requests | clients | succeeded | p50 ms | p95 ms | throughput req/s |")
    print("|---|---|---|---|---|---|")
    print(f"| {args.requests} | {args.clients} | {ok}/{args.requests} | {statistics.median(lat):.0f} | "
          f"{np.percentile(lat, 95):.0f} | {args.requests / wall:.2f} |")
    if demo is not None:
        demo.close()
    return 0 if ok == args.requests else 1


if __name__ == "__main__":
    sys.exit(main())
