"""The web app (aiohttp): the page, the folder's images, and a JSON API over AnnotationService.

    GET  /                                   the page (static/index.html)
    GET  /static/{file}                      its scripts and style (only files of samrt/app/annotate/static)
    GET  /images/{name}                      an image of the folder, by its listed name; anything else: 403
    GET  /api/config                         drawing style (samrt.visualize.STYLE), shortcuts, folders
    GET  /api/images                         images with object counts, skipped files with reasons, stats
    GET  /api/stats                          seconds per mask, masks per image, ...
    GET  /api/health                         {"model_server": "ready" or "unreachable"}
    POST /api/export/coco-rle                writes <out>/instances.json (COCO RLE)
    POST /api/export/{fmt}                   coco (polygons), yolo, label-studio: <out>/<fmt>/ (samrt.app.exports)
    POST /api/sessions                       a new annotator session -> {"session": id}
    POST /api/sessions/{sid}/open            {"index": i}
    POST /api/sessions/{sid}/prompt          {"point": [x, y, label]} or {"box": [x0, y0, x1, y1]}
    POST /api/sessions/{sid}/candidates      the three candidates of the prompts shown (also: ask again)
    POST /api/sessions/{sid}/select          {"candidate": k}
    POST /api/sessions/{sid}/undo | redo | clear | accept | prefill
    DELETE /api/sessions/{sid}/objects/{id}
    POST /api/sessions/{sid}/proposals/{pid}/accept | reject

Errors are JSON {"error": message}: 400 bad input, 403 a path or a Host it does not serve, 404
unknown session, 502 an error from the model server, 503 the model server unreachable
(accepted work is already on disk). A prompt the model server did not answer also carries
"state": the session with that prompt and no mask (stale: accept refuses it).

Requests must name the address the app listens on in their Host header (`host_allowed`): a web
page of another site whose name was made to resolve to 127.0.0.1 (DNS rebinding) is refused.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from typing import Optional

from aiohttp import web

from samrt.client import AsyncSamClient, ServerError, ServerUnavailableError
from samrt.errors import InputError
from samrt.visualize import STYLE

from ..exports import FORMATS
from ..web import json_object
from .folder import ImageFolder
from .service import AnnotationService, PromptNotAnswered, UnknownSession, chosen_prefill_options
from .store import AnnotationStore

__all__ = ["create_app", "SERVICE", "MODEL_URL", "SHORTCUTS", "host_allowed"]

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
SERVICE = web.AppKey("service", AnnotationService)
MODEL_URL = web.AppKey("model_url", str)  # the samrt server's gRPC/HTTP endpoint; settable until the app starts
BOUND_HOST = web.AppKey("bound_host", str)  # the address the page listens on (the Host check)
SHORTCUTS = [
    ["click", "foreground point"], ["right click / shift+click", "background point"], ["drag", "box"],
    ["c", "the three candidates (a lone click has them)"], ["1 / 2 / 3", "pick a candidate mask"],
    ["Enter", "accept the mask as an object"], ["Esc", "clear the prompts"],
    ["z / Ctrl+Z", "undo"], ["y / Ctrl+Y / Ctrl+Shift+Z", "redo"], ["n / →", "next image"], ["p / ←", "previous image"],
    ["f", "prefill: automatic masks as proposals"], ["k / x", "keep / reject the highlighted proposal"],
]


LOOPBACK = {"127.0.0.1", "localhost", "::1"}
WILDCARD = {"0.0.0.0", "::", ""}


def _host_name(header: str) -> str:
    """The name in a Host header, without the port ("[::1]:8080" -> "::1")."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def host_allowed(header: Optional[str], bound: str) -> bool:
    """Whether a request's Host header names the app bound to `bound`: a loopback address answers
    to 127.0.0.1, localhost and ::1; a wildcard (0.0.0.0, ::) to IP addresses, localhost and this
    machine's names; any other address or name to itself. Another name (DNS rebinding) is refused."""
    if not header:
        return False
    name, bound = _host_name(header), bound.strip("[]").lower()
    if bound in LOOPBACK:
        return name in LOOPBACK
    if bound in WILDCARD:
        return name in LOOPBACK or _is_ip(name) or name in {socket.gethostname().lower(), socket.getfqdn().lower()}
    return name == bound


@web.middleware
async def _host_check(request: web.Request, handler):
    bound = request.app.get(BOUND_HOST, "127.0.0.1")
    if not host_allowed(request.headers.get("Host"), bound):
        raise web.HTTPForbidden(text=f"Host {request.headers.get('Host')!r}: not this app's address; expected the "
                                     f"address it listens on ({bound})")
    return await handler(request)


@web.middleware
async def _errors(request: web.Request, handler):
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except PromptNotAnswered as e:
        status = 503 if isinstance(e.cause, ServerUnavailableError) else 502
        what = "model server unreachable" if status == 503 else "model server"
        return web.json_response({"error": f"{what}: {e.cause}", "state": e.state}, status=status)
    except InputError as e:
        return web.json_response({"error": str(e)}, status=400)
    except UnknownSession as e:  # the page starts a new session by itself
        return web.json_response({"error": str(e.args[0]), "session_unknown": True}, status=404)
    except KeyError as e:
        return web.json_response({"error": str(e.args[0]) if e.args else "not found"}, status=404)
    except ServerUnavailableError as e:
        return web.json_response({"error": f"model server unreachable: {e}"}, status=503)
    except ServerError as e:
        return web.json_response({"error": f"model server: {e}"}, status=502)


async def _json(request: web.Request) -> dict:
    return await json_object(request, empty_ok=True)


def _number(body: dict, key: str, kind=int):
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise InputError(f"{key}: got {value!r}, expected {'an integer' if kind is int else 'a number'}")
    return kind(value)


def _numbers(body: dict, key: str, n: int) -> list:
    values = body.get(key)
    if not isinstance(values, list) or len(values) != n or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise InputError(f"{key}: got {values!r}, expected a list of {n} numbers")
    return [float(v) for v in values]


# -- routes -------------------------------------------------------------------------------------------
routes = web.RouteTableDef()


@routes.get("/")
async def index(request: web.Request):
    return web.FileResponse(os.path.join(STATIC_DIR, "index.html"))


@routes.get("/favicon.ico")
async def favicon(request: web.Request):
    return web.Response(status=204)


@routes.get("/static/{name}")
async def static(request: web.Request):
    name = request.match_info["name"]
    if name not in os.listdir(STATIC_DIR):
        raise web.HTTPForbidden(text=f"{name!r}: not a file of the page")
    return web.FileResponse(os.path.join(STATIC_DIR, name))


@routes.get("/images/{name}")
async def image(request: web.Request):
    svc = request.app[SERVICE]
    name = request.match_info["name"]
    entry = svc.folder.by_name(name)
    if entry is None:
        raise web.HTTPForbidden(text=f"{name!r}: not an image of the annotated folder")
    return web.FileResponse(svc.folder.file_path(entry), headers={"Cache-Control": "no-cache"})


@routes.get("/api/config")
async def config(request: web.Request):
    svc = request.app[SERVICE]
    return web.json_response({"style": STYLE, "shortcuts": SHORTCUTS, "images_folder": svc.folder.path,
                              "out": svc.store.out_dir, "prefetch": svc.prefetch,
                              "prefill_options": svc.chosen_prefill})


@routes.get("/api/health")
async def health(request: web.Request):
    """Whether the model server answers (the page asks while it shows an error, to reconnect)."""
    ready = await request.app[SERVICE].client.is_ready()
    return web.json_response({"model_server": "ready" if ready else "unreachable"})


@routes.get("/api/images")
async def images(request: web.Request):
    return web.json_response(request.app[SERVICE].images())


@routes.get("/api/stats")
async def stats(request: web.Request):
    return web.json_response(request.app[SERVICE].store.stats())


@routes.post("/api/export/{fmt}")
async def export(request: web.Request):
    fmt, store = request.match_info["fmt"], request.app[SERVICE].store
    if fmt not in ("coco-rle",) + FORMATS:
        raise InputError(f"export format: got {fmt!r}, expected coco-rle or one of {', '.join(FORMATS)}")
    write = store.export_coco if fmt == "coco-rle" else (lambda: store.export(fmt))
    return web.json_response(await asyncio.get_running_loop().run_in_executor(None, write))


@routes.post("/api/sessions")
async def new_session(request: web.Request):
    return web.json_response({"session": request.app[SERVICE].new_session().id})


def _session_route(path: str):
    """A POST under /api/sessions/{sid}/..., run under that session's lock."""
    def wrap(fn):
        async def handler(request: web.Request):
            svc = request.app[SERVICE]
            sid = request.match_info["sid"]
            async with svc.lock(sid):
                return web.json_response(await fn(svc, svc.session(sid), request))
        routes.post(f"/api/sessions/{{sid}}/{path}")(handler)
        return fn
    return wrap


@_session_route("open")
async def open_image(svc, s, request):
    return await svc.open(s, _number(await _json(request), "index"))


@_session_route("prompt")
async def prompt(svc, s, request):
    body = await _json(request)
    if ("point" in body) == ("box" in body):
        raise InputError(f"prompt: got keys {sorted(body)}, expected exactly one of 'point' or 'box'")
    if "point" in body:
        x, y, label = _numbers(body, "point", 3)
        return await svc.prompt(s, point=(x, y, int(label)))
    return await svc.prompt(s, box=tuple(_numbers(body, "box", 4)))


@_session_route("candidates")
async def candidates(svc, s, request):
    return await svc.candidates(s)


@_session_route("select")
async def select(svc, s, request):
    s.select(_number(await _json(request), "candidate"))
    return svc.state(s)


@_session_route("undo")
async def undo(svc, s, request):
    s.undo()
    return svc.state(s)


@_session_route("redo")
async def redo(svc, s, request):
    s.redo()
    return svc.state(s)


@_session_route("clear")
async def clear(svc, s, request):
    s.clear()   # the object's clock and clicks go on: an abandoned attempt counts
    return svc.state(s)


@_session_route("accept")
async def accept(svc, s, request):
    return svc.accept(s)


@_session_route("prefill")
async def prefill(svc, s, request):
    return await svc.prefill(s)


@_session_route("proposals/{pid}/accept")
async def accept_proposal(svc, s, request):
    return svc.accept_proposal(s, int(request.match_info["pid"]))


@_session_route("proposals/{pid}/reject")
async def reject_proposal(svc, s, request):
    return svc.reject_proposal(s, int(request.match_info["pid"]))


@routes.delete("/api/sessions/{sid}/objects/{oid}")
async def delete_object(request: web.Request):
    svc = request.app[SERVICE]
    sid = request.match_info["sid"]
    try:
        oid = int(request.match_info["oid"])
    except ValueError:
        raise InputError(f"object id: got {request.match_info['oid']!r}, expected an integer") from None
    async with svc.lock(sid):
        return web.json_response(svc.delete(svc.session(sid), oid))


# -- the application ------------------------------------------------------------------------------------
# The app's client retries a lost connection 3 times, 0.25 + 0.5 + 1 s apart: together with the
# SDK's short gRPC reconnect backoff, a model server that came back answers the next click.
CLIENT_RETRIES, CLIENT_BACKOFF = 3, 0.25


def create_app(images_folder: str, out_dir: str, url: Optional[str], protocol: str = "grpc", prefetch: int = 2,
               prefill_options: Optional[dict] = None, timeout: float = 300.0,
               host: str = "127.0.0.1") -> web.Application:
    """The aiohttp application annotating `images_folder` into `out_dir` with the samrt server at `url`.

    The folder is scanned and the output folder checked here (InputError / SamrtError before
    anything is served); the client to the model server is made when the app starts, from
    `app[MODEL_URL]` (`url`, or set later: `samrt annotate` checks the folders before it starts
    a model server). `host`: the address it will listen on (requests must name it, `host_allowed`).
    `prefill_options`: automatic-mask options chosen by the user (None values: the served model's)."""
    folder = ImageFolder(images_folder)
    if not folder.images:
        raise InputError(f"{images_folder}: no images to annotate "
                         f"({len(folder.skipped)} files skipped: {[k.name for k in folder.skipped][:5]})")
    store = AnnotationStore(out_dir, folder)
    app = web.Application(middlewares=[_host_check, _errors])
    app.add_routes(routes)
    app[BOUND_HOST] = host
    if url:
        app[MODEL_URL] = url
    chosen_prefill_options(prefill_options)  # a bad option fails here, before serving
    service_options = (prefetch, prefill_options)

    async def start(app_: web.Application):
        client = AsyncSamClient(app_[MODEL_URL], protocol, timeout=timeout, retries=CLIENT_RETRIES,
                                backoff=CLIENT_BACKOFF)
        app_[SERVICE] = AnnotationService(folder, store, client, *service_options)
        await app_[SERVICE].warm_up()

    async def stop(app_: web.Application):
        await app_[SERVICE].close()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return app
