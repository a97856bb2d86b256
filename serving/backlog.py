"""The wait a request spends before any worker sees it: in the kernel's accept queue, as a new connection.

A client whose last request was refused comes back on a new connection (a refusal closes it: its body was not read),
and uvloop (libuv since 1.45) accepts one connection per loop iteration: under a storm of clients that ignore
Retry-After, 60-95 connections waited in the listening socket's queue and a request on a new connection waited
~0.5 s before the gate saw it, time no timer on the server measured. Little's law gives it back: the queue's length
(the listening socket's rx_queue in /proc/net/tcp, read at most every SAMPLE_S) over the rate new connections reach
the gate (each worker counts its own; the queue is the workers' together, so its rate times the workers). The gate
dates a new connection's request back by that wait, so the admission and its latency feedback
count it (serving.batching). Where /proc/net/tcp is missing (not Linux) the wait is 0.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from pathlib import Path

SAMPLE_S = 0.1  # how often the accept queue's length is read
RATE_WINDOW_S = 2.0  # new connections counted over this long for their rate
MAX_WAIT_S = 10.0
_SEEN = 8192  # client addresses remembered (a new one is a new connection)


def accept_queue(port: int, tables=("/proc/net/tcp", "/proc/net/tcp6")) -> int | None:
    """Connections waiting to be accepted on the listening socket of `port` (Linux), or None when unknown."""
    for table in tables:
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 4 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                return int(f[4].split(":")[1], 16)
    return None


class Backlog:
    """Per worker: which requests come on new connections, and how long such a request waited to be accepted."""

    def __init__(self, workers: int = 1, read=accept_queue):
        self._read, self._seen, self._workers = read, OrderedDict(), max(1, workers)
        self._arrivals: deque[float] = deque()
        self._sampled, self._queue = 0.0, 0

    def new_connection(self, client, now: float) -> bool:
        """True the first time the gate sees this (host, port): a connection it has not served before."""
        if client is None or client in self._seen:
            return False
        self._seen[client] = now
        if len(self._seen) > _SEEN:
            self._seen.popitem(last=False)
        self._arrivals.append(now)
        return True

    def wait(self, port: int | None, now: float) -> float:
        """Seconds a new connection waits in the accept queue now: its length over the rate they arrive."""
        while self._arrivals and now - self._arrivals[0] > RATE_WINDOW_S:
            self._arrivals.popleft()
        if port is None:
            return 0.0
        if now - self._sampled > SAMPLE_S:
            self._sampled, self._queue = now, self._read(port) or 0
        rate = len(self._arrivals) / RATE_WINDOW_S * self._workers  # the others' accepts drain the queue too
        return min(MAX_WAIT_S, self._queue / rate) if rate and self._queue else 0.0

    def entered(self, scope: dict, now: float) -> float:
        """When the request of `scope` may be taken to have arrived: now, or for a new connection now less its wait
        in the accept queue."""
        if not self.new_connection(scope.get("client") and tuple(scope["client"]), now):
            return now
        server = scope.get("server")
        return now - self.wait(server[1] if server else None, now)
