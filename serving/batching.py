"""Adaptive batching and admission by work, on asyncio, inside one worker process.

`Batcher`: every model input (an image, or one tile of a tiled request) waits in one FIFO queue. When
the model is free, the oldest input and the queued inputs of the same shape behind it, up to
`max_batch_size`, go to ONNX Runtime as one batch, in a thread of its own so the event loop keeps
parsing, decoding and encoding. Inputs wait only while the model is busy: a lone request runs at once,
and under load batches fill by themselves. This is Triton's dynamic batcher with
`max_queue_delay_microseconds: 0` and batches of equal shapes only. One more rule keeps the model busy:
a batch takes inputs from at most half of the requests in flight (`share_cap`), so one batch runs while
the requests of the next are decoded and those of the last encoded. Without it, 8 requests in flight
on a worker all joined one batch, and the model idled while they were encoded and the next 8 decoded.

`Admission`: the unit is work, not requests. The model's: one input at the model's own size is one unit (a larger
input of an any-size graph counts by its pixels), priced by the seconds per unit measured on the real batches. The
request's own, around the model (decoding, resizing, upsampling the scores, encoding the answer): priced per pixel of
the upload, by the seconds per pixel measured on the real requests of each route. A request is admitted when the work
queued ahead of it and its own fit the latency budget together (or nothing is ahead of it: waiting would not make it
faster), so an admitted request is answered within the budget as far as the prices hold; nothing sheds it once
admitted: it always finishes. A tiled request keeps at most two batches of its tiles in the
queue at a time, so small requests arriving meanwhile wait for those, not for the whole image.

Two more things cost a request time before it is priced: reading its body, and the requests past the gate whose
bodies are being read. The gate prices both before reading a body: the work queued, the requests pending
admission and this one, each pending one at its route's typical price (a moving average of the admitted ones'),
must fit; else 503 at once, which costs no body read (under a storm of 128 clients that ignore Retry-After, 93 % of
the refusals came after reading a 512 px upload before this). And `try_admit` counts the time the request already
spent since the gate (its body read, its header checked) against the budget with its price.

The prices miss what they do not see: a load that takes the cores (another worker, the client on the same host),
the refusals' own handling, the HTTP send. Two feedbacks correct them. `scale`: each admitted request's time from
admission to answer against the time its prices predicted (a moving average of the ratio, so the first answers of a
burst reprice the requests behind them). `limit_s`, the work admitted against (at most the budget): steered so that
the 99th percentile of what the last WINDOW admitted requests measured, from the gate to their last byte, sits at
TARGET_SHARE of the budget (each answer moves it by (target / p99) ** GAIN: down while the tail is late, up while
it is early), and an answer over the budget cuts it by CUT at once (once per cohort: only a request that entered
after the last cut cuts again). After IDLE_S without requests the limit starts again from START_SHARE of the budget
(TCP's slow start): the prices of a quiet worker are no guide to a burst, and the first requests of a burst, all
admitted before any of them answers, must not overrun the budget. The margin under the budget is for what no one
on the server sees: the time a request waits in the kernel for a worker to accept its connection (uvloop accepts
one connection per loop iteration) and the client's own.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np


@dataclass
class _Item:
    array: np.ndarray
    units: float
    future: asyncio.Future
    owner: object  # one per submit call: a request, or one chunk of a tiled request's tiles


class Batcher:
    """Batches of same-shape inputs through `run` ((n, H, W, 3) uint8 -> n outputs), one call at a time.

    `on_batch(size, seconds)` is called after each call (metrics). `seconds_per_unit` is a moving
    average over real batches, seeded by `seed_seconds_per_unit` (a warm-up measurement)."""

    def __init__(
        self,
        run: Callable[[np.ndarray], Sequence[Any]],
        *,
        max_batch_size: int,
        unit_pixels: int,
        seed_seconds_per_unit: float,
        on_batch: Callable[[int, float], None] | None = None,
        share_cap: Callable[[], int] | None = None,
    ):
        self._run, self.max_batch_size, self.unit_pixels = run, max_batch_size, unit_pixels
        self._share_cap = share_cap  # how many submits (requests or tile chunks) one batch may draw from
        self.seconds_per_unit = seed_seconds_per_unit
        self._on_batch = on_batch
        self._queue: deque[_Item] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxruntime")
        self.queued_units = 0.0  # units waiting or running

    def units(self, shape: tuple[int, ...]) -> float:
        """Work units of one input of `shape` (H, W, ...): its pixels over the model's own input pixels."""
        return max(1.0, shape[0] * shape[1] / self.unit_pixels)

    async def submit(self, arrays: Sequence[np.ndarray]) -> list[Any]:
        """Queue (H, W, 3) uint8 inputs; returns their outputs, in order, once their batches have run."""
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")
        loop = asyncio.get_running_loop()
        owner = object()
        items = [_Item(a, self.units(a.shape), loop.create_future(), owner) for a in arrays]
        for it in items:
            self._queue.append(it)
            self.queued_units += it.units
        self._wake.set()
        try:
            return list(await asyncio.gather(*(it.future for it in items)))
        except asyncio.CancelledError:  # the caller went away: its queued inputs are dropped, not run
            for it in items:
                it.future.cancel()
            raise

    def _next_batch(self) -> list[_Item]:
        """The oldest input and the queued inputs of its shape behind it, up to max_batch_size, from at
        most `share_cap()` submits."""
        while self._queue and self._queue[0].future.done():  # cancelled before it ran
            self.queued_units -= self._queue.popleft().units
        if not self._queue:
            return []
        shape = self._queue[0].array.shape
        cap = max(1, self._share_cap()) if self._share_cap else self.max_batch_size
        batch, rest, owners = [], deque(), set()
        while self._queue and len(batch) < self.max_batch_size:
            it = self._queue.popleft()
            if it.future.done():
                self.queued_units -= it.units
            elif it.array.shape == shape and (it.owner in owners or len(owners) < cap):
                batch.append(it)
                owners.add(it.owner)
            else:
                rest.append(it)
        rest.extend(self._queue)
        self._queue = rest
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while batch := self._next_batch():
                units = sum(it.units for it in batch)
                t = time.perf_counter()
                try:
                    outputs = await loop.run_in_executor(
                        self._executor, self._run, np.stack([it.array for it in batch])
                    )
                except Exception as exc:  # an ONNX Runtime failure fails this batch's requests, not the loop
                    for it in batch:
                        if not it.future.done():
                            it.future.set_exception(exc)
                    continue
                finally:
                    self.queued_units -= units
                took = time.perf_counter() - t
                self.seconds_per_unit = 0.9 * self.seconds_per_unit + 0.1 * took / units
                if self._on_batch is not None:
                    self._on_batch(len(batch), took)
                for it, out in zip(batch, outputs):
                    if not it.future.done():
                        it.future.set_result(out)


QUEUED_BATCHES = 2  # a tiled request keeps at most this many batches of its tiles in the queue at a time


@dataclass
class Ticket:
    """A request past the gate: when it entered, its route, and whether it still waits for its admission (its body
    being read, its header checked)."""

    entered: float
    route: str
    pending: bool = True


TICKET: contextvars.ContextVar[Ticket | None] = contextvars.ContextVar("admission_ticket", default=None)

# the admission limit's feedback (module docstring)
TARGET_SHARE = 0.65  # the admitted answers' 99th percentile, timed at the server, aims at this share of the budget
GAIN, WINDOW, CUT, FLOOR, START_SHARE, IDLE_S = 0.02, 100, 0.8, 0.1, 0.3, 2.0
SCALE_RANGE = (0.5, 4.0)  # the prices' correction: measured over predicted time, a moving average within this range


class Admission:
    """Admission by work for one worker process, and the requests in flight on it: see the module docstring.

    `reserved` holds the model work of every admitted request still running, in units: 1 per image (more for a large
    input of an any-size graph), at most QUEUED_BATCHES batches for a tiled request; `reserved_s` their own work
    around the model, in seconds. `watch(batcher)` ties it to the batcher whose seconds per unit price the queue."""

    def __init__(self, budget_s: float, max_batch_size: int, seconds_per_pixel: float = 0.0):
        self.budget_s, self.max_batch_size = budget_s, max_batch_size
        self.reserved = 0.0
        self.reserved_s = 0.0
        self.seed_per_pixel = seconds_per_pixel  # a warm-up measurement, until a route has its own
        self.per_pixel: dict[str, float] = {}  # route -> moving average of seconds per upload pixel
        self.in_flight = 0  # requests between the gate and their answer
        self.batcher: Batcher | None = None
        self.limit_s = budget_s * START_SHARE  # the work admitted against, <= the budget: follows the latencies
        self.cut_at = 0.0  # perf_counter of the last cut of limit_s
        self.scale = 1.0  # measured over predicted time of the admitted requests (module docstring)
        self.recent: deque[float] = deque(maxlen=WINDOW)  # the last admitted requests' gate-to-answer seconds
        self.pending = 0  # requests past the gate, not yet admitted or refused (their bodies being read)
        self.typical: dict[str, float] = {}  # route -> moving average of an admitted request's priced seconds
        self.last_gate = time.perf_counter()

    def watch(self, batcher: Batcher) -> None:
        self.batcher = batcher

    def batch_share_cap(self) -> int:
        """How many requests one batch may draw from: half of those in flight (rounded up), so the next
        batch's requests are decoded while one runs and the last one's are encoded."""
        return -(-self.in_flight // 2)

    def share(self, units_per_input: float, inputs: int) -> float:
        """A request's share of the queue: its one input, or the batches of tiles it keeps queued at a time."""
        return units_per_input * min(inputs, QUEUED_BATCHES * self.max_batch_size)

    def own_seconds(self, route: str, pixels: int) -> float:
        """The price of a request's work around the model: its upload's pixels at the route's seconds per pixel."""
        return pixels * self.per_pixel.get(route, self.seed_per_pixel)

    def observe(self, route: str, pixels: int, seconds: float) -> None:
        """A finished request's measured work around the model: the route's price per pixel moves towards it."""
        old = self.per_pixel.get(route, self.seed_per_pixel)
        self.per_pixel[route] = 0.9 * old + 0.1 * seconds / max(pixels, 1)

    def ahead_s(self) -> float:
        """Seconds of work queued ahead of a request arriving now: the model's and the admitted requests' own."""
        return (self.reserved * self.batcher.seconds_per_unit + self.reserved_s) * self.scale

    def over_budget(self, own_s: float = 0.0) -> int | None:
        """Retry-After seconds when the work already queued, plus `own_s`, is over the budget, else None: the gate
        refuses requests before reading their body when the queue alone is over it."""
        ahead = self.ahead_s() + own_s
        return max(1, math.ceil(ahead - self.limit_s)) if ahead > self.limit_s else None

    def gate(self, route: str, entered: float) -> int | None:
        """Before a body is read: Retry-After seconds when the time the request already waited (since `entered`,
        perf_counter: its wait to be accepted, serving.backlog), the work queued, the requests pending admission and
        this one (each at its route's typical price) would not fit; else None, and the request is pending (TICKET holds
        it) until `try_admit` prices it. The first request after IDLE_S without any restarts the limit low."""
        now = time.perf_counter()
        if self.in_flight == 0 and now - self.last_gate > IDLE_S:
            self.limit_s = min(self.limit_s, START_SHARE * self.budget_s)
        self.last_gate = now
        typical = self.typical.get(route, 0.0) * self.scale
        idle = self.reserved == 0 and self.reserved_s == 0 and self.pending == 0
        retry = None if idle else self.over_budget(now - entered + (self.pending + 1) * typical)
        if retry is None:
            self.pending += 1
            TICKET.set(Ticket(entered, route))
        return retry

    def settle(self, ticket: Ticket | None) -> None:
        """`ticket`'s request is pending no more (admitted, refused, or answered before its admission)."""
        if ticket is not None and ticket.pending:
            ticket.pending = False
            self.pending = max(0, self.pending - 1)

    def try_admit(self, share: float, own_s: float = 0.0) -> int | None:
        """Reserve `share` units of model work and `own_s` seconds of the request's own work and return None, or
        return the Retry-After seconds when work is queued ahead and with this request's (and the time it already
        spent since the gate) it does not fit the budget (nothing reserved). With nothing ahead, a request is admitted
        whatever its size: waiting would not help."""
        ticket = TICKET.get()
        self.settle(ticket)
        waited = time.perf_counter() - ticket.entered if ticket is not None else 0.0
        price = share * self.batcher.seconds_per_unit + own_s
        idle = self.reserved == 0 and self.reserved_s == 0
        retry = None if idle else self.over_budget(price * self.scale + waited)
        if retry is None:
            self.reserved += share
            self.reserved_s += own_s
            if ticket is not None:
                self.typical[ticket.route] = 0.8 * self.typical.get(ticket.route, price) + 0.2 * price
        return retry

    def measured(self, predicted_s: float, seconds: float) -> None:
        """An admitted request took `seconds` from admission to answer where its prices said `predicted_s` (the work
        ahead of it and its own, unscaled): the prices' correction moves towards the ratio."""
        ratio = seconds / max(predicted_s, 0.02 * self.budget_s)
        lo, hi = SCALE_RANGE
        self.scale = min(hi, max(lo, 0.8 * self.scale + 0.2 * ratio))

    def answered(self, entered: float, seconds: float) -> None:
        """An admitted request answered `seconds` after it `entered` the gate (perf_counter): the limit follows the
        tail of the recent answers towards TARGET_SHARE of the budget, and an answer over the budget cuts it."""
        self.recent.append(seconds)
        if seconds > self.budget_s and entered > self.cut_at:  # the cohort admitted before a cut is not cut again
            self.limit_s *= CUT
            self.cut_at = time.perf_counter()
        if len(self.recent) >= 20:
            tail = float(np.percentile(self.recent, 99))
            self.limit_s *= (TARGET_SHARE * self.budget_s / max(tail, 1e-3)) ** GAIN
        self.limit_s = min(self.budget_s, max(FLOOR * self.budget_s, self.limit_s))

    def release(self, share: float, own_s: float = 0.0) -> None:
        self.reserved = max(0.0, self.reserved - share)
        self.reserved_s = max(0.0, self.reserved_s - own_s)
