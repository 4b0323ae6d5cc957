"""What samrt's two web apps (`samrt annotate`, `samrt label-studio`) share: reading a request body.

Imports aiohttp (the annotate and label-studio extras) only for its types."""

from __future__ import annotations

from aiohttp import web

from samrt.errors import InputError

__all__ = ["json_object"]


async def json_object(request: web.Request, empty_ok: bool = False) -> dict:
    """The request's body as a JSON object; {} for no body when `empty_ok`. InputError naming what
    was received otherwise (the apps answer it as 400)."""
    if empty_ok and not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise InputError("request body: expected JSON") from None
    if not isinstance(body, dict):
        raise InputError(f"request body: got {type(body).__name__}, expected a JSON object")
    return body
