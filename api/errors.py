"""The one place where errors become HTTP responses, always in the OpenAI error format.

Only an error's ``message`` reaches the client, never its ``detail``. As a last line of defence
any configured expert address still found in a message is hidden here too: an error raised by
code that forgot the rule must not tell a client where the experts run.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.responses import json_response
from core.errors import ExpertmuxError

log = logging.getLogger("expertmux.api")


def error_body(message: str, *, error_type: str, code: str | None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def _hide_addresses(request: Request, message: str) -> str:
    """``message`` without the base URL, credentials or host:port of any configured expert."""
    service = getattr(request.app.state, "service", None)
    if service is None:
        return message
    for expert in service.experts:
        base = expert.backend.api_base
        if not base:
            continue
        netloc = base.split("://", 1)[-1].split("/", 1)[0]
        for secret in sorted({base, netloc, netloc.rsplit("@", 1)[-1]}, key=len, reverse=True):
            if secret and secret in message:
                message = message.replace(secret, "<hidden>")
    return message


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ExpertmuxError)
    async def _expertmux(request: Request, exc: ExpertmuxError):
        headers = {"x-expertmux-request-id": exc.request_id} if exc.request_id else None
        message = _hide_addresses(request, exc.message)
        return json_response(error_body(message, error_type=exc.error_type, code=exc.code, param=exc.param),
                             status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"] if p != "body")
        return json_response(error_body(f"invalid value for '{loc}': {first['msg']}", error_type="invalid_request_error",
                                         code="invalid_request", param=loc or None), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return json_response(error_body(message, error_type="invalid_request_error", code=str(exc.status_code)),
                              status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return json_response(error_body("internal error; see the server log", error_type="server_error", code="internal_error"),
                              status_code=500)
