"""The HTTP API (Starlette on uvicorn).

    GET    /health                   {"status": "ok", "queued": N, "watermark": true|false}; never needs the token
    GET    /v1/models                the runs: name, kind, conditioning, classes, default sampler/steps
    POST   /v1/generate              generate and wait: JSON (base64 PNGs) or one image/png
    POST   /v1/jobs                  the same body, answered at once with a job id (202)
    GET    /v1/jobs/{id}             status, step/total, latest preview, and the images when done
    GET    /v1/jobs/{id}/events      the same as server-sent events until the job finishes
    DELETE /v1/jobs/{id}             cancel (also POST /v1/jobs/{id}/cancel)
    GET    /                         the web page

Errors are JSON ``{"error": message}`` with a 4xx status for the client's mistakes (400 bad
field, 401 token, 404 unknown model or job, 413 too large, 429 queue full) and 500 when a
generation fails; the server itself keeps running.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
from importlib import resources

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from undiffuse import samplers

from .batching import Batcher
from .jobs import Job, JobStore
from .limits import Limits, RequestError, parse_generate
from .models import ModelRegistry

log = logging.getLogger("undiffuse.serve")


MEDIA_TYPES = {"png": "image/png", "wav": "audio/wav", "gif": "image/gif"}

def _error(status: int, message: str, **extra) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _images_json(job: Job) -> list[dict]:
    return [{k: (_b64(v) if k in ("png", "wav", "gif") else v) for k, v in img.items()} for img in job.images]


def job_json(job: Job, *, images: bool = True) -> dict:
    out = job.summary()
    if job.preview is not None:
        out["preview"] = _b64(job.preview)
    if job.status == "done" and images:
        out["images"] = _images_json(job)
    return out


class Server:
    """Everything the routes share: runs, limits, the batcher, the jobs, the token."""

    def __init__(self, models: str, *, token: str | None = None, limits: Limits | None = None,
                 content_filter=None, window: float = 0.02, max_batch: int = 64, watermark: bool = True,
                 device: str = "cpu"):
        self.limits = limits or Limits()
        self.registry = ModelRegistry(models, device=device)
        self.batcher = Batcher(self.registry, window=window, max_batch=max_batch, max_queue=self.limits.max_queue,
                               content_filter=content_filter, watermark=watermark)
        self.jobs = JobStore()
        self.token = token

    def preload(self) -> None:
        for name in self.registry.names():
            try:
                self.registry.get(name)
            except RequestError as e:
                log.warning("run %s is not served: %s", name, e.message)

    def authorised(self, request: Request) -> bool:
        if not self.token:
            return True
        got = request.headers.get("authorization", "")
        return got.startswith("Bearer ") and hmac.compare_digest(got[7:].encode(), self.token.encode())

    async def body(self, request: Request):
        cap = self.limits.max_body
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            raise RequestError(413, f"the request body is {declared} bytes; the limit is {cap}")
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > cap:
                raise RequestError(413, f"the request body is over the limit of {cap} bytes")
        if not data:
            raise RequestError(400, "the request body is empty; send a JSON object such as {\"model\": \"NAME\"}")
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise RequestError(400, f"the request body is not valid JSON: {e}") from None
        except RecursionError:
            raise RequestError(400, "the request body is not valid JSON: nested too deeply") from None

    async def submit(self, request: Request, *, previews: bool) -> Job:
        body = await self.body(request)
        req = parse_generate(body, self.registry, self.limits)
        job = Job(req, previews=previews)
        self.batcher.submit(job)
        self.jobs.add(job)
        return job

    def job(self, request: Request) -> Job:
        job = self.jobs.get(request.path_params["job_id"])
        if job is None:
            raise RequestError(404, f"no job {request.path_params['job_id']!r} (unknown or forgotten)")
        return job


def _guarded(server: Server, handler, *, open_: bool = False):
    """Token check and error handling around a route: a RequestError becomes its 4xx JSON,
    anything else a logged 500 JSON."""
    async def route(request: Request):
        if not open_ and not server.authorised(request):
            return _error(401, "missing or wrong bearer token (send 'Authorization: Bearer TOKEN')")
        try:
            return await handler(server, request)
        except RequestError as e:
            return _error(e.status, e.message)
        except Exception as e:
            log.exception("request %s %s failed", request.method, request.url.path)
            return _error(500, f"internal error: {type(e).__name__}: {e}")
    return route


async def health(server: Server, request: Request):
    return JSONResponse({"status": "ok", "queued": server.batcher.queued(), "batches": server.batcher.batches,
                         "watermark": server.batcher.watermark})


async def list_models(server: Server, request: Request):
    out = []
    for name in server.registry.names():
        try:
            out.append(server.registry.describe(name))
        except RequestError as e:
            out.append({"name": name, "error": e.message})

    return JSONResponse({"models": out, "samplers": samplers.names()})


async def _wait(job: Job) -> None:
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def _finished(_job):
        loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

    job.on_finish(_finished)
    try:
        await done
    except asyncio.CancelledError:  # the client went away: stop its work too
        job.cancel()
        raise


async def generate(server: Server, request: Request):
    job = await server.submit(request, previews=False)
    await _wait(job)
    if job.status == "failed":
        return _error(job.error_status, job.error)
    if job.status == "cancelled":
        return _error(409, f"job {job.id} was cancelled")
    req = job.request
    if req.format in ("png", "wav", "gif"):
        if not job.images:
            return _error(422, "the content filter refused the output", refused=job.refused)
        if req.count == 1:
            return Response(job.images[0][req.format], media_type=MEDIA_TYPES[req.format],
                            headers={"X-Undiffuse-Seed": str(job.images[0]["seed"])})
    return JSONResponse({"model": req.model, "parameters": req.params(), "images": _images_json(job),
                         "refused": job.refused})


async def create_job(server: Server, request: Request):
    job = await server.submit(request, previews=True)
    return JSONResponse({"id": job.id, "status": job.status, "url": f"/v1/jobs/{job.id}",
                         "events": f"/v1/jobs/{job.id}/events"}, status_code=202)


async def get_job(server: Server, request: Request):
    return JSONResponse(job_json(server.job(request)))


async def cancel_job(server: Server, request: Request):
    job = server.job(request)
    stopped = job.cancel()
    return JSONResponse({"id": job.id, "cancelled": stopped, "status": job.status})


async def job_events(server: Server, request: Request):
    job = server.job(request)

    async def stream():
        seen = -1
        while True:
            if job.version != seen:
                seen = job.version
                finished = job.finished  # read once: the job may finish while this event is written
                event = job.status if finished else "progress"
                yield f"event: {event}\ndata: {json.dumps(job_json(job))}\n\n"
                if finished:
                    return
            if await request.is_disconnected():
                return
            await asyncio.sleep(0.05)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})


async def page(server: Server, request: Request):
    html = resources.files("undiffuse.serve").joinpath("web/index.html").read_text(encoding="utf-8")
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


async def _http_error(request: Request, exc):
    """Unknown paths and wrong methods answer in JSON like every other error."""
    status = getattr(exc, "status_code", 404)
    what = "no such endpoint" if status == 404 else f"method {request.method} is not allowed here"
    return _error(status, f"{what}: {request.method} {request.url.path} (see GET / and /v1/models)")


def create_app(models: str, **options) -> Starlette:
    """The ASGI app serving the runs in ``models``; ``options`` go to :class:`Server`."""
    server = Server(models, **options)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await asyncio.to_thread(server.preload)  # off the event loop; runs added later load on first use
        server.batcher.start()
        try:
            yield
        finally:
            server.batcher.stop()

    def r(path, handler, methods, **kw):
        return Route(path, _guarded(server, handler, **kw), methods=methods)

    app = Starlette(routes=[
        r("/", page, ["GET"], open_=True),
        r("/health", health, ["GET"], open_=True),
        r("/v1/models", list_models, ["GET"]),
        r("/v1/generate", generate, ["POST"]),
        r("/v1/jobs", create_job, ["POST"]),
        r("/v1/jobs/{job_id}", get_job, ["GET"]),
        r("/v1/jobs/{job_id}", cancel_job, ["DELETE"]),
        r("/v1/jobs/{job_id}/cancel", cancel_job, ["POST"]),
        r("/v1/jobs/{job_id}/events", job_events, ["GET"]),
    ], lifespan=lifespan, exception_handlers={404: _http_error, 405: _http_error})
    app.state.server = server
    return app
