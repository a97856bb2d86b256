"""The HTTP edge: the problems a request can have, the upload read from a multipart body, the gate.

- `Problem`: everything we refuse is answered `{"error": "<what to fix>"}` with a fixed status (and
  `Retry-After` on 429/503), never a 5xx or a traceback.
- `read_upload`: the multipart body is parsed by python-multipart, through Starlette's
  `MultiPartParser` (what `request.form()` runs), with limits on files, fields, field size and the whole
  body. Two things RFC 2046/7578 allow that python-multipart 0.0.34 does not handle are done in the
  body stream before it: a preamble before the first boundary is skipped (python-multipart PR #260,
  not released), and a body that ends before its closing boundary (the parser silently drops the
  unfinished part) is reported as cut off.
- `Gate`: an ASGI middleware on the inference routes that checks the bearer token and the
  per-process concurrency cap before any body is read.
- `JsonErrors` and `json_problems`: the frameworks' own error answers (Starlette's plain-text 404 and 405,
  FastAPI's {"detail": ...}) said as the documented {"error": ...} too.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import AsyncIterator

from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from .batching import TICKET

MULTIPART_HINT = "e.g. curl -F image=@photo.jpg"
_PREAMBLE_MAX = 65536  # bytes searched for the first boundary


class Problem(Exception):
    """A request answered with `status` and {"error": message}; `retry_after` (seconds) on 429/503."""

    def __init__(self, status: int, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.message, self.retry_after = status, message, retry_after

    def response(self) -> JSONResponse:
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}
        if self.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        if self.status in (413, 429, 503):
            headers["Connection"] = "close"  # the body may not have been read: do not reuse the connection
        return JSONResponse({"error": self.message}, status_code=self.status, headers=headers)


def problem_doc(description: str, retry_after: str = "") -> dict:
    """An OpenAPI response object for a Problem: the {"error"} body, and Retry-After where it is sent."""
    out = {
        "description": description,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string", "description": "what to fix"}},
                }
            }
        },
    }
    if retry_after:
        out["headers"] = {"Retry-After": {"description": retry_after, "schema": {"type": "integer", "minimum": 1}}}
    return out


# Every refusal the inference routes send, as OpenAPI responses (the service puts them in /docs.json; schemathesis
# checks them)
ERROR_RESPONSES = {
    400: problem_doc(
        "malformed multipart body, no `image` field, an unknown field, an option that is not true/false, an empty, "
        "truncated or corrupt image"
    ),
    401: problem_doc("SEG_API_TOKEN is set and the bearer token is missing or wrong (header WWW-Authenticate: Bearer)"),
    413: problem_doc("body over SEG_MAX_BYTES, image over SEG_MAX_PIXELS, or more tiles than SEG_MAX_TILES"),
    415: problem_doc("not multipart/form-data, or the file is not an image (PNG, JPEG, WebP, BMP, TIFF, GIF)"),
    429: problem_doc("more than SEG_MAX_CONCURRENCY requests in flight on this worker", "seconds to wait: 1"),
    503: problem_doc(
        "the model work already queued on this worker is over SEG_MAX_LATENCY_MS",
        "seconds the queue is over its budget",
    ),
}


@dataclass
class Upload:
    """What a request sent: the image file's bytes and name, and the options (form fields or query)."""

    data: bytes
    filename: str = ""
    options: dict[str, bool] = field(default_factory=dict)


class _Parser(MultiPartParser):
    spool_max_size = 2**62  # the body is capped before parsing: keep the file in memory, never on disk


class _Body:
    """The request body as the parser sees it: capped at `limit` bytes (413), its preamble skipped, and
    whether the closing boundary went by (a body without it was cut off)."""

    def __init__(self, stream: AsyncIterator[bytes], boundary: bytes, limit: int):
        self.stream, self.limit = stream, limit
        self.delimiter = b"--" + boundary
        self.close = b"\r\n--" + boundary + b"--"
        self.size, self.closed, self._tail = 0, False, b""

    async def chunks(self) -> AsyncIterator[bytes]:
        head = b""
        started = False
        async for chunk in self.stream:
            self.size += len(chunk)
            if self.size > self.limit:
                raise Problem(413, f"request body is over the {self.limit}-byte limit: send a smaller image")
            if not started:
                head += chunk
                start = self._first_boundary(head)
                if start is None and len(head) < _PREAMBLE_MAX:
                    continue
                started, chunk, head = True, head[start or 0 :], b""
            self._watch(chunk)
            yield chunk
        if not started and head:
            self._watch(head)
            yield head

    def _first_boundary(self, head: bytes) -> int | None:
        """Offset of the first boundary delimiter line (a preamble before it is skipped), or None yet."""
        if head.startswith(self.delimiter[: len(head)]):
            return 0 if len(head) >= len(self.delimiter) else None
        at = head.find(b"\r\n" + self.delimiter)
        return at + 2 if at >= 0 else None

    def _watch(self, chunk: bytes) -> None:
        window = self._tail + chunk
        self.closed = self.closed or self.close in window
        self._tail = window[-(len(self.close) - 1) :]


async def read_upload(request: Request, options: tuple[str, ...], *, max_bytes: int) -> Upload:
    """Parse the multipart body of `request`: exactly one file in the field `image`, and optional boolean
    `options` as form fields or query parameters. Raises Problem (400, 413, 415) saying what to fix."""
    ctype = request.headers.get("content-type", "")
    boundary = _boundary(ctype)
    limit = max_bytes + 65536  # the file plus its part headers and the option fields
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise Problem(413, f"request body is {int(length)} bytes, over the {limit}-byte limit: send a smaller image")
    body = _Body(request.stream(), boundary, limit)
    parser = _Parser(Headers(raw=[(b"content-type", ctype.encode("latin-1"))]), body.chunks(), max_files=4,
                     max_fields=len(options) + 4, max_part_size=1024)  # fmt: skip
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise Problem(
            400,
            f"malformed multipart body ({exc.message.splitlines()[0]}): send the image with a multipart client, "
            f"{MULTIPART_HINT}",
        ) from None
    except ClientDisconnect:
        raise Problem(400, "the upload was cut off (the client disconnected): send the whole body") from None
    try:
        if not body.closed:
            raise Problem(
                400,
                f"malformed multipart body (cut off before its closing boundary, after {body.size} bytes): "
                f"send the complete body, {MULTIPART_HINT}",
            )
        image = _one_image(form, options)
        return Upload(await image.read(), image.filename or "", _options(request, form, options))
    finally:
        await form.close()


def _boundary(ctype: str) -> bytes:
    """The multipart boundary of a Content-Type, or a 415 saying how to send the image."""
    if not ctype.lower().startswith("multipart/form-data"):
        raise Problem(
            415,
            f"send the image as multipart/form-data in the field `image` (got Content-Type {ctype or 'none'!r}), "
            f"{MULTIPART_HINT}",
        )
    from python_multipart.multipart import parse_options_header

    boundary = parse_options_header(ctype)[1].get(b"boundary", b"")
    if not boundary:
        raise Problem(
            415,
            "the multipart/form-data Content-Type has no boundary parameter: let your HTTP client build the body, "
            f"{MULTIPART_HINT}",
        )
    return boundary


def _one_image(form, options: tuple[str, ...]) -> UploadFile:
    """The one file of the field `image`; a 400 for unknown fields, no image, several, or text in its place."""
    unknown = sorted(set(form.keys()) - {"image", *options})
    if unknown:
        raise Problem(
            400,
            f"unknown form field(s) {', '.join(map(repr, unknown))}: send the image file in the multipart field "
            "`image`" + (f" (optional fields: {', '.join(options)})" if options else ""),
        )
    files = form.getlist("image")
    if not files:
        raise Problem(
            400, f"no form field `image`: send the image file in the multipart field `image`, {MULTIPART_HINT}"
        )
    if len(files) > 1:
        raise Problem(
            400,
            f"{len(files)} files in the field `image`: send one image per request "
            "(a folder: python -m serving predict INPUT_DIR OUTPUT_DIR)",
        )
    if not isinstance(files[0], UploadFile):
        raise Problem(400, "the field `image` holds text, not a file: send the file itself, " + MULTIPART_HINT)
    return files[0]


def _options(request: Request, form, options: tuple[str, ...]) -> dict[str, bool]:
    """The boolean options, from the query or the form: JSON booleans, as the API document declares them (BentoML's
    client sends them so); a 400 for anything else."""
    opts = {}
    for name in options:
        raw = request.query_params.get(name, form.get(name, "false"))
        value = raw.strip().strip('"')
        if value not in ("true", "false"):
            raise Problem(400, f"{name}={raw!r} is not a boolean: use {name}=true or {name}=false")
        opts[name] = value == "true"
    return opts


def check_token(config, authorization: str) -> None:
    """The one token check: raises the 401 Problem when SEG_API_TOKEN is set and `authorization` does not carry it."""
    if not config.token_ok(authorization):
        raise Problem(401, "missing or wrong bearer token: send `Authorization: Bearer <SEG_API_TOKEN>`")


def busy(admission, retry_after: int) -> Problem:
    """The refusal when the model work queued on this worker is over its latency budget."""
    return Problem(
        503,
        f"server is busy: {admission.ahead_s():.1f} s of model work queued, over the "
        f"{admission.budget_s * 1000:.0f} ms budget (SEG_MAX_LATENCY_MS); retry after the Retry-After delay",
        retry_after=retry_after,
    )


class Gate:
    """ASGI middleware for the inference routes: the bearer token (401), the per-process concurrency
    cap (429 + Retry-After) and a queue already over the latency budget (503 + Retry-After), checked
    before any body is read. `service()` gives the running service (its config and admission)."""

    def __init__(self, app, routes: tuple[str, ...], service, pattern: str | None = None):
        import re

        self.app, self.routes, self.service = app, routes, service
        self.pattern = re.compile(pattern) if pattern else None  # more gated paths (the protocol's infer routes)

    async def __call__(self, scope, receive, send):
        gated = scope["type"] == "http" and (
            scope["path"] in self.routes or (self.pattern is not None and self.pattern.match(scope["path"]))
        )
        if not gated:
            return await self.app(scope, receive, send)
        svc = self.service()
        if svc is None:  # not started yet: BentoML answers (its readiness is not ours to fake)
            return await self.app(scope, receive, send)
        try:
            check_token(svc.config, Headers(scope=scope).get("authorization", ""))
        except Problem as problem:
            return await problem.response()(scope, receive, send)
        problem, now = None, time.perf_counter()
        entered = svc.backlog.entered(scope, now)  # on a new connection: dated back by its wait to be accepted
        if svc.admission.in_flight >= svc.config.max_concurrency:
            problem = Problem(
                429,
                f"too many requests in flight on this worker (SEG_MAX_CONCURRENCY={svc.config.max_concurrency}): "
                "retry after the Retry-After delay",
                retry_after=1,
            )
        elif (retry := svc.admission.gate(scope["path"], entered)) is not None:
            problem = busy(svc.admission, retry)  # its wait, the queue, those pending and this one: over the budget
        if problem is not None:
            svc.metrics.refused.labels(status=str(problem.status)).inc()
            return await problem.response()(scope, receive, send)
        svc.admission.in_flight += 1
        status = []

        async def sending(message):
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            svc.admission.in_flight -= 1
            svc.admission.settle(TICKET.get())  # refused for its body or header before its admission: pending no more
        if status and status[0] == 200:  # admitted and answered: its latency steers the admission limit
            svc.admission.answered(entered, time.perf_counter() - entered)


class JsonErrors:
    """ASGI middleware: Starlette's own plain-text answers for a path no route has (404) or a method a route does not
    take (405) become the documented {"error": ...} JSON, its Allow header kept."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        held = {}

        async def sending(message):
            if message["type"] == "http.response.start":
                plain = Headers(raw=message["headers"]).get("content-type", "").startswith("text/plain")
                if message["status"] in (404, 405) and plain:
                    held["start"] = message  # answered below, once the plain body has gone by
                    return
            elif "start" in held:
                if not message.get("more_body"):
                    await _json_error(held["start"], scope, send)
                return
            await send(message)

        await self.app(scope, receive, sending)


async def _json_error(start: dict, scope: dict, send) -> None:
    status, allow = start["status"], Headers(raw=start["headers"]).get("allow", "")
    path = scope.get("path", "")
    message = (f"no route {scope['method']} {path!r}: the routes are listed at /docs.json" if status == 404 else
               f"{scope['method']} is not allowed on {path!r}: use {allow or 'a method /docs.json lists'}")  # fmt: skip
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status,
                "headers": headers + ([(b"allow", allow.encode())] if allow else [])})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


def json_problems(app) -> None:
    """FastAPI's own error answers on `app` as {"error": ...}: its HTTPExceptions (404, 405) and a path or header
    value outside its declared pattern (422, the first problem named)."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(HTTPException)
    async def _http(request, exc: HTTPException):
        response = Problem(exc.status_code, f"{exc.detail}: {request.method} {request.url.path!r}").response()
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        first = (exc.errors() or [{}])[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return Problem(422, f"{where}: {first.get('msg', 'invalid')}; see /docs.json for what it takes").response()
