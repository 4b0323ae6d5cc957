"""The web server of `samrt label-studio` (aiohttp), speaking Label Studio's ML backend protocol as
its official `label_studio_ml` server defines it:

    GET  /health, GET /          {"status": "UP", "model_class": ...}
    POST /setup                  {"project", "schema", "extra_params", ...} -> {"model_version"}
    POST /predict                {"tasks", "label_config", "project", "params": {"context"}} -> {"results"}
    POST /webhook                accepted and ignored (samrt does not train): {"status": "Unknown event"}
    GET  /metrics                {}

Basic auth, as `label_studio_ml`: when `BASIC_AUTH_USER` and `BASIC_AUTH_PASS` are set (or given),
every request must carry them (Label Studio's model settings have the fields). Errors are JSON
`{"error": message}`: 400 a request samrt cannot read, 401 no or wrong credentials, 502 an image
that cannot be fetched or an error of the model server, 503 the model server unreachable.
"""

from __future__ import annotations

import base64
import hmac
import logging
import os
from typing import Optional, Tuple

from aiohttp import web

from samrt.client import AsyncSamClient, ServerError, ServerUnavailableError
from samrt.errors import InputError

from ..web import json_object
from .backend import LabelStudioBackend
from .images import ImageFetchError, ImageSource

__all__ = ["create_app", "run_label_studio", "BACKEND"]

log = logging.getLogger("samrt.label_studio")
BACKEND = web.AppKey("backend", LabelStudioBackend)
_AUTH = web.AppKey("basic_auth", object)


def _basic_auth(user: Optional[str], password: Optional[str]) -> Optional[Tuple[str, str]]:
    user = user or os.environ.get("BASIC_AUTH_USER")
    password = password or os.environ.get("BASIC_AUTH_PASS")
    return (user, password) if user and password else None


@web.middleware
async def _auth_and_errors(request: web.Request, handler):
    expected = request.app[_AUTH]
    if expected is not None:
        given = request.headers.get("Authorization", "")
        ok = False
        if given.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(given[6:]).decode().partition(":")
                ok = hmac.compare_digest(user, expected[0]) & hmac.compare_digest(password, expected[1])
            except (ValueError, UnicodeDecodeError):
                ok = False
        if not ok:
            return web.json_response({"error": "Unauthorized"}, status=401,
                                     headers={"WWW-Authenticate": 'Basic realm="Login required"'})
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except InputError as e:  # logged too: Label Studio shows the user only "400 Client Error"
        log.warning("%s %s: 400 %s", request.method, request.path, e)
        return web.json_response({"error": str(e)}, status=400)
    except ImageFetchError as e:
        log.warning("%s %s: 502 %s", request.method, request.path, e)
        return web.json_response({"error": str(e)}, status=502)
    except ServerUnavailableError as e:
        return web.json_response({"error": f"model server unreachable: {e}"}, status=503)
    except ServerError as e:
        return web.json_response({"error": f"model server: {e}"}, status=502)


async def _body(request: web.Request) -> dict:
    return await json_object(request)


routes = web.RouteTableDef()


@routes.get("/")
@routes.get("/health")
async def health(request: web.Request):
    return web.json_response({"status": "UP", "model_class": "SamrtBackend"})


@routes.post("/setup")
async def setup(request: web.Request):
    return web.json_response(await request.app[BACKEND].setup(await _body(request)))


@routes.post("/predict")
async def predict(request: web.Request):
    return web.json_response(await request.app[BACKEND].predict(await _body(request)))


@routes.post("/webhook")
async def webhook(request: web.Request):
    await _body(request)
    return web.json_response({"status": "Unknown event"})  # samrt serves SAM; it does not train on annotations


@routes.get("/metrics")
async def metrics(request: web.Request):
    return web.json_response({})


def create_app(url: str, protocol: str = "grpc", preannotate: bool = False, preannotate_timeout: float = 60.0,
               amg_options: Optional[dict] = None, basic_auth_user: Optional[str] = None,
               basic_auth_pass: Optional[str] = None, ls_url: Optional[str] = None, api_key: Optional[str] = None,
               timeout: float = 60.0) -> web.Application:
    """The aiohttp application: Label Studio's ML backend on the samrt server at `url` (see
    `LabelStudioBackend` for the options). `ls_url`, `api_key`: default LABEL_STUDIO_URL and
    LABEL_STUDIO_API_KEY."""
    app = web.Application(middlewares=[_auth_and_errors], client_max_size=64 * 1024 * 1024)
    app[_AUTH] = _basic_auth(basic_auth_user, basic_auth_pass)
    app.add_routes(routes)
    images = ImageSource(ls_url, api_key)  # checked now: a bad LABEL_STUDIO_URL fails at start

    async def start(app_: web.Application):
        client = AsyncSamClient(url, protocol, timeout=timeout)
        app_[BACKEND] = LabelStudioBackend(client, images, preannotate, preannotate_timeout, amg_options)

    async def stop(app_: web.Application):
        await app_[BACKEND].close()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return app


def run_label_studio(url: str, host: str = "127.0.0.1", port: int = 9090, **options) -> None:
    """`samrt label-studio`: serve until Ctrl-C or SIGTERM."""
    app = create_app(url, **options)
    log.setLevel(logging.INFO)  # refused requests are logged: Label Studio shows its user only "400 Client Error"
    print(f"samrt label-studio: Label Studio's ML backend at http://{host}:{port} (model server {url}); "
          f"connect it in the project's Settings > Model", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: anyone who reaches it can run the model%s", host,
                    "" if app[_AUTH] else " (set BASIC_AUTH_USER and BASIC_AUTH_PASS)")
    web.run_app(app, host=host, port=port, print=None)
