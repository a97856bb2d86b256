"""The alternative people use today: a plain HTTP server that calls fastai's `learn.predict` per request.

    python -m benchmarks.naive_server --run RUN_DIR --port 3100

POST /segment with multipart field `image` -> palette PNG, like our service. Threaded, no batching,
no ONNX: the baseline the benchmark compares against, on the same machine and images.
"""

from __future__ import annotations

import argparse
import io
import threading
from email.parser import BytesParser
from email.policy import default
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image


def serve(run_dir: str, port: int) -> None:
    from training.run import load_run

    learn, meta, _ = load_run(run_dir)
    colours = [c for rgb in meta["colours"] for c in rgb]
    lock = threading.Lock()  # fastai's Learner is not thread-safe

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            self.send_response(200 if self.path == "/readyz" else 404)
            self.end_headers()

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            msg = BytesParser(policy=default).parsebytes(
                b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + body
            )
            data = next(
                (
                    p.get_payload(decode=True)
                    for p in msg.iter_parts()
                    if p.get_param("name", header="content-disposition") == "image"
                ),
                None,
            )
            if not data:
                self.send_response(400)
                self.end_headers()
                return
            img = Image.open(io.BytesIO(data)).convert("RGB")
            with lock:
                pred, _, _ = learn.predict(np.asarray(img))
            mask = np.asarray(pred, dtype=np.uint8)
            out = Image.fromarray(mask).resize(img.size, Image.NEAREST)
            out = out.convert("P")
            out.putpalette(colours + [0] * (768 - len(colours)))
            buf = io.BytesIO()
            out.save(buf, "PNG")
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(buf.tell()))
            self.end_headers()
            self.wfile.write(buf.getvalue())

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--run", required=True)
    p.add_argument("--port", type=int, default=3100)
    a = p.parse_args()
    serve(a.run, a.port)
