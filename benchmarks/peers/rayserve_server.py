"""Ray Serve peer: a deployment with `@serve.batch` (max_batch_size 8), 2 replicas, as its docs show.

python -m benchmarks.peers.rayserve_server --model DIR --variant int8 --port 8002
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from benchmarks.peers import work
from contract import DEFAULT_BATCH_SIZE


@serve.deployment(ray_actor_options={"num_cpus": 1})
class Segmentation:
    def __init__(self, model: str, variant: str):
        self.rt = work.load(model, variant)

    @serve.batch(max_batch_size=DEFAULT_BATCH_SIZE, batch_wait_timeout_s=0.01)
    async def infer(self, images: list[np.ndarray]) -> list:
        return work.run(self.rt, images)

    async def __call__(self, request: Request) -> Response:
        if request.url.path.endswith("/readyz"):
            return PlainTextResponse("ok")
        form = await request.form()
        job = work.prepare(self.rt, await form["image"].read())
        out = await self.infer(job.single_input)
        return Response(work.finish(self.rt, job, out), media_type="image/png")


def main() -> None:
    import ray

    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--variant", default="int8")
    p.add_argument("--port", type=int, default=8002)
    p.add_argument("--replicas", type=int, default=2)
    a = p.parse_args()
    ray.init(include_dashboard=False, num_cpus=max(2, a.replicas), log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": a.port})
    serve.run(Segmentation.options(num_replicas=a.replicas).bind(a.model, a.variant), route_prefix="/", blocking=False)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
