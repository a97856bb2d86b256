"""The asyncio batcher (same-shape batches whenever the model is free) and admission by work."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from serving.batching import Admission, Batcher


class FakeModel:
    """Records every batch's shape; each call takes `seconds`; `gate` can hold the first call."""

    def __init__(self, seconds=0.0):
        self.batches, self.seconds = [], seconds
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, batch):
        self.gate.wait(5)
        self.batches.append(batch.shape)
        time.sleep(self.seconds)
        return [int(x[0, 0, 0]) for x in batch]  # each input's first pixel: tells which input it was


def img(v, h=8, w=8):
    return np.full((h, w, 3), v, np.uint8)


def test_a_lone_input_runs_at_once_and_queued_inputs_fill_batches_in_order():
    model = FakeModel()

    async def go():
        b = Batcher(model, max_batch_size=4, unit_pixels=64, seed_seconds_per_unit=0.01)
        model.gate.clear()  # hold the first call: the others queue behind it
        first = asyncio.ensure_future(b.submit([img(0)]))
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(b.submit([img(v)])) for v in range(1, 10)]
        await asyncio.sleep(0.05)
        model.gate.set()
        return await first, [await r for r in rest]

    first, rest = asyncio.run(go())
    assert first == [0] and rest == [[v] for v in range(1, 10)]  # every caller gets its own output back
    assert [s[0] for s in model.batches] == [1, 4, 4, 1]  # nobody waited for a window; then full batches, FIFO


def test_only_equal_shapes_share_a_batch():
    model = FakeModel()

    async def go():
        b = Batcher(model, max_batch_size=8, unit_pixels=64, seed_seconds_per_unit=0.01)
        model.gate.clear()
        blocker = asyncio.ensure_future(b.submit([img(99)]))
        await asyncio.sleep(0.05)
        mixed = [asyncio.ensure_future(b.submit([img(v, 8 if v % 2 else 16, 8)])) for v in range(6)]
        await asyncio.sleep(0.05)
        model.gate.set()
        await blocker
        return [await m for m in mixed]

    assert asyncio.run(go()) == [[v] for v in range(6)]
    assert sorted(model.batches[1:]) == [(3, 8, 8, 3), (3, 16, 8, 3)]


def test_cancelled_inputs_are_dropped_and_errors_fail_only_their_batch():
    calls = []

    def run(batch):
        calls.append(len(batch))
        if batch[0, 0, 0, 0] == 7:
            raise RuntimeError("boom")
        return list(batch[:, 0, 0, 0])

    async def go():
        b = Batcher(run, max_batch_size=8, unit_pixels=64, seed_seconds_per_unit=0.01)
        gone = asyncio.ensure_future(b.submit([img(1)] * 3))
        gone.cancel()
        with pytest.raises(RuntimeError, match="boom"):
            await b.submit([img(7)])
        return await b.submit([img(5), img(6)]), b.queued_units

    out, queued = asyncio.run(go())
    assert out == [5, 6] and queued == 0
    assert 3 not in calls  # the cancelled request's inputs never reached the model


def test_units_scale_with_pixels_and_seconds_per_unit_follows_real_batches():
    model = FakeModel(seconds=0.02)

    async def go():
        b = Batcher(model, max_batch_size=4, unit_pixels=64, seed_seconds_per_unit=1.0)
        assert b.units((8, 8, 3)) == 1.0 and b.units((16, 16, 3)) == 4.0 and b.units((4, 4, 3)) == 1.0
        for _ in range(40):
            await b.submit([img(1)] * 4)
        return b.seconds_per_unit

    assert 0.004 < asyncio.run(go()) < 0.05  # moved from the 1.0 s seed towards ~5 ms per input


def test_admission_counts_work_ahead_and_its_own_against_the_budget():
    b = Batcher(FakeModel(), max_batch_size=8, unit_pixels=64, seed_seconds_per_unit=0.010)
    a = Admission(budget_s=1.0, max_batch_size=8)
    a.watch(b)
    a.limit_s = 1.0  # past its slow start
    assert (
        a.share(1.0, 1) == 1.0 and a.share(1.0, 100) == 16.0 and a.share(2.0, 3) == 6.0
    )  # tiles: two batches queued at most
    for _ in range(84):  # 84 images of 10 ms each: with a tiled request's 16 units, 1.0 s: still within the budget
        assert a.try_admit(1.0) is None
    assert a.try_admit(16.0) is None
    retry = a.try_admit(1.0)  # 1.0 s ahead and 10 ms of its own: over the budget
    assert retry == 1 and a.reserved == 100  # refused with Retry-After, nothing reserved
    a.release(16.0)
    assert a.try_admit(1.0) is None
    b.seconds_per_unit = 0.1  # a slower model: 85 units ahead = 8.5 s, 7.6 s over the budget with its own
    assert a.try_admit(1.0) == 8
    assert a.over_budget() == 8 and a.reserved == 85  # what the gate asks before reading a body: nothing reserved
    a.in_flight = 5
    assert a.batch_share_cap() == 3  # a batch draws from half the requests in flight, rounded up


def test_admission_prices_the_work_around_the_model_per_pixel_and_route():
    """Decoding, resizing, upsampling and encoding cost per pixel of the upload: measured per route on real requests
    (moving average from a warm-up seed) and reserved with the request, so the queue it leaves counts too."""
    b = Batcher(FakeModel(), max_batch_size=8, unit_pixels=64, seed_seconds_per_unit=0.001)
    a = Admission(budget_s=1.0, max_batch_size=8, seconds_per_pixel=1e-7)
    a.watch(b)
    a.limit_s = 1.0  # past its slow start
    assert a.own_seconds("/segment", 1_000_000) == pytest.approx(0.1)  # the seed until the route has measured
    for _ in range(60):
        a.observe("/overlay", 1_000_000, 0.3)  # the overlay decodes the whole photo and draws on it
    assert a.own_seconds("/overlay", 1_000_000) == pytest.approx(0.3, rel=0.01)
    assert a.own_seconds("/segment", 1_000_000) == pytest.approx(0.1)  # another route keeps its own price
    own = a.own_seconds("/overlay", 1_000_000)
    assert a.try_admit(1.0, own) is None and a.try_admit(1.0, own) is None and a.try_admit(1.0, own) is None
    assert a.ahead_s() == pytest.approx(3 * 0.001 + 3 * own)
    assert a.try_admit(1.0, own) == 1  # 0.9 s ahead + 0.3 s of its own > 1 s: refused, nothing reserved
    a.release(1.0, own)
    assert a.try_admit(1.0, own) is None and a.reserved_s == pytest.approx(3 * own)


def test_admission_follows_what_the_admitted_requests_measured():
    """Unpriced work (a client on the same cores, parsing, sending) shows as answers slower than their prices said:
    the prices' scale follows the ratio; the limit steers the answers' 99th percentile to TARGET_SHARE of the budget,
    and an answer over the budget cuts it at once, once per cohort."""
    from serving import batching

    b = Batcher(FakeModel(), max_batch_size=8, unit_pixels=64, seed_seconds_per_unit=0.010)
    a = Admission(budget_s=1.0, max_batch_size=8)
    a.watch(b)
    a.limit_s = 1.0
    for _ in range(20):
        a.measured(0.2, 0.4)  # took twice what the prices said
    assert a.scale == pytest.approx(2.0, rel=0.02)
    admitted = 0
    while a.try_admit(1.0) is None:
        admitted += 1
    assert admitted == 50  # 10 ms a unit, scaled to 20 ms: the 51st does not fit 1 s
    assert a.ahead_s() == pytest.approx(1.0, rel=0.02)
    a.measured(0.0, 10.0)
    assert a.scale <= batching.SCALE_RANGE[1]  # bounded, whatever one request measured
    for _ in range(50):
        a.measured(0.5, 0.1)
    assert a.scale == batching.SCALE_RANGE[0]
    a.release(50.0)

    c = Admission(budget_s=1.0, max_batch_size=8)
    c.watch(b)
    assert c.limit_s == pytest.approx(batching.START_SHARE)  # a new worker starts slow
    t0 = time.perf_counter()
    c.answered(t0, 1.2)  # over the budget: cut at once
    assert c.limit_s == pytest.approx(batching.START_SHARE * batching.CUT)
    c.answered(t0, 1.3)  # the same cohort (entered before the cut): no second cut
    assert c.limit_s == pytest.approx(batching.START_SHARE * batching.CUT)
    c.answered(time.perf_counter() + 1, 1.2)  # entered after the cut: cut again
    assert c.limit_s == pytest.approx(batching.START_SHARE * batching.CUT**2)
    for _ in range(300):
        c.answered(time.perf_counter(), 0.2)  # the tail well inside the target: the limit grows, never past the budget
    assert c.limit_s == 1.0
    for _ in range(100):
        c.answered(time.perf_counter(), 0.95)  # late against the target though in the budget: the limit falls
    want = (batching.TARGET_SHARE / 0.95) ** (batching.GAIN * 100)
    assert c.limit_s == pytest.approx(want, rel=0.05) and c.limit_s < 0.7
    for _ in range(300):
        c.answered(time.perf_counter() + 1, 5.0)
    assert c.limit_s == pytest.approx(batching.FLOOR)  # never below the floor: something is always admitted
    for _ in range(int(batching.FLOOR / 0.010)):
        assert c.try_admit(1.0) is None
    assert c.try_admit(1.0) == 1  # the queue at the lowered limit refuses, with Retry-After


def test_the_gate_prices_those_pending_admission_and_a_request_pays_for_its_wait():
    """Before a body is read the gate counts the requests already past it at their route's typical price, so a storm
    is refused before its bodies are read; at admission the time spent since the gate counts against the budget;
    after a quiet spell the limit starts low again."""
    from serving import batching

    b = Batcher(FakeModel(), max_batch_size=8, unit_pixels=64, seed_seconds_per_unit=0.010)
    a = Admission(budget_s=1.0, max_batch_size=8)
    a.watch(b)
    a.limit_s = 1.0
    a.typical["/segment"] = 0.19  # what an admitted /segment request is priced at
    now = time.perf_counter()
    tickets = []
    for _ in range(5):  # 5 pending x 0.19 s = 0.95 s: the sixth would not fit
        assert a.gate("/segment", now) is None
        tickets.append(batching.TICKET.get())
    assert a.pending == 5 and a.gate("/segment", now) == 1  # refused at the gate, Retry-After, not pending
    assert a.gate("/stats", now) is None  # a route not priced yet is let in: its price is unknown
    a.settle(batching.TICKET.get())
    a.settle(tickets[0])
    a.settle(tickets[0])  # settled once only
    assert a.pending == 4
    batching.TICKET.set(batching.Ticket(time.perf_counter() - 0.99, "/segment"))  # its body took 0.99 s to arrive
    a.reserved = 1.0  # 10 ms queued ahead
    assert a.try_admit(1.0) == 1 and a.pending == 3  # 0.99 s spent + 20 ms: over the budget; pending no more
    batching.TICKET.set(batching.Ticket(time.perf_counter(), "/segment"))
    assert a.try_admit(1.0) is None and a.typical["/segment"] == pytest.approx(0.8 * 0.19 + 0.2 * 0.01)
    a.limit_s, a.in_flight, a.last_gate = 1.0, 0, time.perf_counter() - batching.IDLE_S - 1
    assert a.gate("/segment", time.perf_counter()) in (None, 1)  # after a quiet spell...
    assert a.limit_s == pytest.approx(batching.START_SHARE)  # ...the limit starts low again
    a.limit_s = 1.0
    assert a.gate("/segment", time.perf_counter() - 2.0) >= 1  # it waited 2 s to be accepted: no room left


def test_a_batch_draws_from_at_most_share_cap_requests_so_the_next_batch_is_ready():
    model = FakeModel()
    cap = {"n": 2}

    async def go():
        b = Batcher(model, max_batch_size=8, unit_pixels=64, seed_seconds_per_unit=0.01, share_cap=lambda: cap["n"])
        model.gate.clear()
        blocker = asyncio.ensure_future(b.submit([img(99)]))
        await asyncio.sleep(0.05)
        singles = [asyncio.ensure_future(b.submit([img(v)])) for v in range(5)]
        tiled = asyncio.ensure_future(b.submit([img(50 + v) for v in range(6)]))  # one request, six inputs
        await asyncio.sleep(0.05)
        model.gate.set()
        await blocker
        return [await s for s in singles], await tiled

    singles, tiled = asyncio.run(go())
    assert singles == [[v] for v in range(5)] and tiled == [50 + v for v in range(6)]
    # 2 requests per batch (not all 5 singles in one batch of 8); the tiled request's six fill one batch
    assert [s[0] for s in model.batches] == [1, 2, 2, 7]


def test_a_request_on_a_new_connection_is_dated_back_by_its_wait_to_be_accepted(tmp_path):
    """serving.backlog: the listening socket's accept queue (its rx_queue in /proc/net/tcp) over the rate new
    connections reach the gate is how long a new one waited; a connection seen before waited for nothing."""
    from serving.backlog import RATE_WINDOW_S, Backlog, accept_queue

    table = tmp_path / "tcp"
    table.write_text(
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 0100007F:0BB8 00000000:0000 0A 00000000:0000005A 00:00000000 00000000     0        0 1\n"  # :3000, 90
        "   1: 0100007F:0BB8 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 2\n"
    )
    assert accept_queue(3000, (str(table),)) == 90 and accept_queue(3001, (str(table),)) is None
    assert accept_queue(3000, (str(tmp_path / "none"),)) is None
    b, now = Backlog(read=lambda port: 90 if port == 3000 else None), 100.0
    for i in range(180):  # 180 new connections over the rate window: 90 a second
        assert b.new_connection(("127.0.0.1", 40000 + i), now - RATE_WINDOW_S + i * RATE_WINDOW_S / 180)
    scope = {"client": ["127.0.0.1", 50000], "server": ["127.0.0.1", 3000]}
    assert b.entered(scope, now) == pytest.approx(now - 90 / 90, rel=0.02)  # 90 waiting, 90 a second: ~1 s
    assert b.entered(scope, now + 0.01) == now + 0.01  # the same connection again: kept alive, no wait
    assert Backlog(read=lambda port: None).entered({"client": ("h", 1), "server": ("h", 2)}, now) == now
    two = Backlog(workers=2, read=lambda port: 90)  # two workers drain the one queue: half the wait
    for i in range(180):
        two.new_connection(("127.0.0.1", 40000 + i), now - RATE_WINDOW_S + i * RATE_WINDOW_S / 180)
    assert two.entered(scope, now) == pytest.approx(now - 0.5, rel=0.02)
