"""LitServe peer: `LitAPI` with its own batching (max_batch_size 8), 2 workers, as its docs show.

python -m benchmarks.peers.litserve_server --model DIR --variant int8 --port 8001
"""

from __future__ import annotations

import argparse

import litserve as ls
from fastapi import Response

from benchmarks.peers import work
from contract import DEFAULT_BATCH_SIZE


class SegmentationAPI(ls.LitAPI):
    def __init__(self, model: str, variant: str, **kw):
        super().__init__(**kw)
        self.model, self.variant = model, variant

    def setup(self, device):
        self.rt = work.load(self.model, self.variant)

    def decode_request(self, request):
        return work.prepare(self.rt, request["image"].file.read())

    def batch(self, inputs):
        return inputs  # the jobs; predict stacks their model inputs

    def predict(self, jobs):
        return list(zip(jobs, work.run(self.rt, [job.single_input for job in jobs])))

    def unbatch(self, output):
        return output

    def encode_response(self, output):
        job, out = output
        return Response(content=work.finish(self.rt, job, out), media_type="image/png")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--variant", default="int8")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args()
    api = SegmentationAPI(
        a.model, a.variant, max_batch_size=DEFAULT_BATCH_SIZE, batch_timeout=0.01, api_path="/segment"
    )
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=a.workers, timeout=60, healthcheck_path="/readyz")
    server.run(host="127.0.0.1", port=a.port, generate_client_file=False)


if __name__ == "__main__":
    main()
