"""Serving trained runs over HTTP: ``undiffuse serve --models DIR``.

``app`` holds the routes, ``batching`` merges concurrent compatible requests into one
network batch, ``jobs`` tracks long requests, ``limits`` checks requests against the caps,
``models`` finds and loads the runs. See ``app`` for the endpoints.
"""
from __future__ import annotations

import ipaddress

from undiffuse.io.content_filter import load_filter

from .limits import Limits, RequestError

TOKEN_ENV = "UNDIFFUSE_TOKEN"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_app(models: str, **options):
    from .app import create_app as _create

    return _create(models, **options)


def run_server(models: str, *, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
               log_level: str = "info", **options) -> None:
    """Serve until interrupted. Binding to a non-loopback address needs a token."""
    import uvicorn

    if not is_loopback(host) and not token:
        raise ValueError(f"binding to {host} (not loopback) needs a bearer token: --token or ${TOKEN_ENV}")
    app = create_app(models, token=token, **options)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)


__all__ = ["Limits", "RequestError", "TOKEN_ENV", "create_app", "is_loopback", "load_filter", "run_server"]
