"""A minimal, fast OpenAI-compatible responder: the upstream of the proxy-overhead benchmark.

It answers every chat completion with the same short text and a ``usage`` block, so the figures
measured through a proxy are the proxy's cost, not a model's. It speaks just enough HTTP/1.1
(keep-alive, Content-Length or chunked request bodies) on a bare asyncio protocol, with uvloop
when it is installed.

    python -m benchmarks.fake_upstream --port 9100

Routes: ``POST /v1/chat/completions`` (JSON, or SSE when ``"stream": true``), ``GET /v1/models``,
``GET /health``. The ``/v1`` prefix is optional.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import signal
import time

ANSWER_PIECES = ("Hello", " from", " the", " upstream.")
ANSWER = "".join(ANSWER_PIECES)
PROMPT_TOKENS = 12  # fixed: counting tokens would cost more than the rest of the request
COMPLETION_TOKENS = len(ANSWER_PIECES)
USAGE = {
    "prompt_tokens": PROMPT_TOKENS,
    "completion_tokens": COMPLETION_TOKENS,
    "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
}
DEFAULT_MODEL = "fake-model"
MAX_BODY = 8 * 1024 * 1024

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 413: "Payload Too Large"}
_ids = itertools.count(1)
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _head(status: int, content_type: str, length: int | None, keep_alive: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}", f"content-type: {content_type}"]
    lines.append(f"content-length: {length}" if length is not None else "transfer-encoding: chunked")
    if content_type.startswith("text/event-stream"):
        lines.append("cache-control: no-cache")
    lines.append("connection: keep-alive" if keep_alive else "connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _json_response(status: int, payload: object, keep_alive: bool) -> bytes:
    body = _dumps(payload).encode()
    return _head(status, "application/json", len(body), keep_alive) + body


def _error(status: int, message: str, keep_alive: bool) -> bytes:
    err = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
    return _json_response(status, err, keep_alive)


def completion(model: str) -> dict:
    return {
        "id": f"chatcmpl-fake-{next(_ids)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": ANSWER},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
    }


def stream_events(model: str) -> list[bytes]:
    """The SSE events of one streamed answer: role, content pieces, finish, usage, [DONE]."""
    base = {"id": f"chatcmpl-fake-{next(_ids)}", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": model, "system_fingerprint": None}

    def chunk(delta: dict, finish: str | None) -> bytes:
        payload = dict(base, choices=[{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}])
        return b"data: " + _dumps(payload).encode() + b"\n\n"

    events = [chunk({"role": "assistant", "content": ""}, None)]
    events += [chunk({"content": piece}, None) for piece in ANSWER_PIECES]
    events.append(chunk({}, "stop"))
    events.append(b"data: " + _dumps(dict(base, choices=[], usage=USAGE)).encode() + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


def _sse_response(model: str, keep_alive: bool) -> bytes:
    out = [_head(200, "text/event-stream; charset=utf-8", None, keep_alive)]
    for event in stream_events(model):
        out.append(b"%x\r\n%s\r\n" % (len(event), event))
    out.append(b"0\r\n\r\n")
    return b"".join(out)


def handle(method: str, path: str, body: bytes, keep_alive: bool) -> bytes:
    """The whole response (head and body) for one request."""
    path = path.split("?", 1)[0]
    if path.startswith("/v1/"):
        path = path[3:]
    if path == "/chat/completions":
        if method != "POST":
            return _error(405, "use POST", keep_alive)
        try:
            req = json.loads(body)
        except ValueError:
            return _error(400, "body is not JSON", keep_alive)
        if not isinstance(req, dict) or not isinstance(req.get("messages"), list):
            return _error(400, "'messages' must be a list", keep_alive)
        model = req.get("model") or DEFAULT_MODEL
        if req.get("stream"):
            return _sse_response(str(model), keep_alive)
        return _json_response(200, completion(str(model)), keep_alive)
    if path == "/models" and method == "GET":
        models = {"object": "list", "data": [{"id": DEFAULT_MODEL, "object": "model", "created": 0, "owned_by": "benchmark"}]}
        return _json_response(200, models, keep_alive)
    if path in ("/health", "/healthz") and method == "GET":
        return _json_response(200, {"status": "ok"}, keep_alive)
    return _error(404, f"no route {method} {path}", keep_alive)


class _Incomplete(Exception):
    pass


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _dechunk(buf: bytearray, start: int) -> tuple[bytes, int]:
    """Decode a chunked body beginning at ``start``; returns (body, end offset) or raises _Incomplete."""
    parts: list[bytes] = []
    pos = start
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            raise _Incomplete
        size = int(bytes(buf[pos:eol]).split(b";", 1)[0].strip() or b"0", 16)
        pos = eol + 2
        if size == 0:
            end = buf.find(b"\r\n\r\n", pos - 2)  # optional trailers end with an empty line
            if end < 0:
                raise _Incomplete
            return b"".join(parts), end + 4
        if len(buf) < pos + size + 2:
            raise _Incomplete
        parts.append(bytes(buf[pos:pos + size]))
        pos += size + 2


class HttpProtocol(asyncio.Protocol):
    __slots__ = ("transport", "buf")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        try:
            self._drain()
        except _BadRequest as exc:
            assert self.transport is not None
            self.transport.write(_error(exc.status, str(exc), False))
            self.transport.close()

    def _drain(self) -> None:
        buf = self.buf
        transport = self.transport
        assert transport is not None
        while buf:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 65536:
                    raise _BadRequest(400, "header section too large")
                return
            lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
            try:
                method, target, version = lines[0].split(" ", 2)
            except ValueError:
                raise _BadRequest(400, "bad request line") from None
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if "chunked" in headers.get("transfer-encoding", "").lower():
                try:
                    body, consumed = _dechunk(buf, end + 4)
                except _Incomplete:
                    return
            else:
                length = int(headers.get("content-length") or 0)
                if length > MAX_BODY:
                    raise _BadRequest(413, "body too large")
                consumed = end + 4 + length
                if len(buf) < consumed:
                    return
                body = bytes(buf[end + 4:consumed])
            del buf[:consumed]
            conn = headers.get("connection", "").lower()
            keep_alive = conn != "close" if version == "HTTP/1.1" else conn == "keep-alive"
            transport.write(handle(method, target, body, keep_alive))
            if not keep_alive:
                transport.close()
                return


async def serve(host: str, port: int, ready: asyncio.Event | None = None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(HttpProtocol, host, port, backlog=2048, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    if ready is not None:
        ready.set()
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--no-uvloop", action="store_true", help="use the standard asyncio event loop")
    args = parser.parse_args(argv)
    if not args.no_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    print(f"fake upstream on http://{args.host}:{args.port}/v1", flush=True)
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
