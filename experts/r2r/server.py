"""An OpenAI-compatible server exposing an R2R pair as one model (what the ``r2r`` backend runs).

    python -m experts.r2r.server --slm smollm2-135m-instruct --llm gemma3-270m \\
        --router var/artifacts/r2r/smollm2-135m-instruct+gemma3-270m --port 8091 --model-alias r2r:smollm2+gemma3

``--router`` is a router trained on this machine by ``expertmux train r2r`` (which writes into
the data folder, ``var/`` by default); a folder of versions serves its newest.

Routes: ``GET /v1/models``, ``GET /health``, ``POST /v1/chat/completions`` (streaming or not).
Decoding is greedy (temperature and top_p are accepted and ignored). Usage carries the R2R
fields (``slm_tokens``, ``llm_tokens``, ``llm_share``, ``cost_usd`` …); a stream carries them as
``usage_details`` on the chunk with the ``finish_reason``, which the expertmux proxy records
and strips before its client sees the stream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from core import llama_thread
from core.errors import ExpertmuxError, InvalidRequestError
from experts.r2r.service import R2RService
from experts.r2r.usage import split


def _error(status: int, message: str, error_type: str = "invalid_request_error", code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": error_type, "code": code, "param": None}}, status_code=status)


def _parse(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
        raise InvalidRequestError("'messages' must be a non-empty list")
    if not all(isinstance(m, dict) for m in body["messages"]):
        raise InvalidRequestError("every message must be an object with 'role' and 'content'")
    if body.get("n") not in (None, 1):
        raise InvalidRequestError("only n=1 is supported")
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else [] if stop is None else None
    if stops is None or not all(isinstance(s, str) for s in stops):
        raise InvalidRequestError("'stop' must be a string or a list of strings")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise InvalidRequestError("max_tokens must be a positive integer")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise InvalidRequestError("'stream_options' must be an object")
    return {"messages": body["messages"], "max_tokens": max_tokens, "stop": stops, "stream": bool(body.get("stream")),
            "include_usage": bool(options.get("include_usage"))}


def create_app(service: R2RService, model_id: str) -> Starlette:
    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": model_id, "object": "model", "owned_by": "expertmux"}]})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def chat(request: Request):
        try:
            req = _parse(json.loads(await request.body() or b"null"))
        except (ValueError, InvalidRequestError) as exc:
            return _error(400, exc.message if isinstance(exc, ExpertmuxError) else f"invalid JSON body: {exc}")
        base = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": model_id}
        if req["stream"]:
            try:
                service.check(req["messages"])
            except ExpertmuxError as exc:
                return _error(exc.status, exc.message, exc.error_type, exc.code)
            return StreamingResponse(_stream(service, req, base), media_type="text/event-stream")
        try:
            out = await asyncio.to_thread(service.run, req["messages"], max_tokens=req["max_tokens"], stop=req["stop"])
        except ExpertmuxError as exc:
            return _error(exc.status, exc.message, exc.error_type, exc.code)
        return JSONResponse({**base, "object": "chat.completion", "usage": out.usage, "choices": [
            {"index": 0, "finish_reason": out.finish_reason, "message": {"role": "assistant", "content": out.text}}]})

    return Starlette(routes=[Route("/v1/models", models), Route("/health", health),
                             Route("/v1/chat/completions", chat, methods=["POST"])])


async def _stream(service: R2RService, req: dict[str, Any], base: dict[str, Any]):
    """Run the generation in a thread; relay its pieces as SSE chunks."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    stop_flag = threading.Event()

    def on_piece(text: str) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, ("piece", text))

    def work() -> None:
        try:
            out = service.run(req["messages"], max_tokens=req["max_tokens"], stop=req["stop"], on_piece=on_piece,
                              cancelled=stop_flag.is_set)
            loop.call_soon_threadsafe(queue.put_nowait, ("done", out))
        except Exception as exc:  # surfaced to the client as an error event
            loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))

    def chunk(delta: dict, finish: str | None = None, **extra) -> str:
        return "data: " + json.dumps({**base, "object": "chat.completion.chunk",
                                      "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}) + "\n\n"

    worker = threading.Thread(target=work, name="r2r-generation", daemon=True)
    worker.start()
    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            kind, value = await queue.get()
            if kind == "piece":
                yield chunk({"content": value})
            elif kind == "error":
                exc = value
                message = exc.message if isinstance(exc, ExpertmuxError) else f"{type(exc).__name__}: {exc}"
                yield "data: " + json.dumps({"error": {"message": message, "type": "server_error", "code": None,
                                                       "param": None}}) + "\n\n"
                break
            else:
                standard, extras = split(value.usage)
                yield chunk({}, value.finish_reason, usage_details=extras)
                if req["include_usage"]:
                    yield "data: " + json.dumps({**base, "object": "chat.completion.chunk", "choices": [],
                                                 "usage": standard}) + "\n\n"
                break
        yield "data: [DONE]\n\n"
    finally:
        stop_flag.set()  # the client went away (or we are done): stop generating


def build_service(args: argparse.Namespace) -> tuple[R2RService, str]:
    """Router first (a broken artifact fails in milliseconds), then the models."""
    from experts.r2r.routers import LearnedRouter
    from experts.r2r.usage import Prices

    router = LearnedRouter.load(args.router, threshold=args.threshold)
    prices = Prices(slm_input=args.slm_input_price, slm_output=args.slm_output_price, llm_input=args.llm_input_price,
                    llm_output=args.llm_output_price)
    if args.mode == "remote":
        from experts.r2r.remote import RemotePair

        engine = RemotePair(slm_url=args.slm_endpoint, slm_model=args.slm_model or args.slm, llm_url=args.llm_endpoint,
                            llm_model=args.llm_model or args.llm, slm_format=args.slm_format, llm_format=args.llm_format,
                            api_key=args.api_key, chunk=args.remote_chunk)
    else:
        from experts.r2r.pair import load_local_engine

        engine = load_local_engine(args.slm, args.llm, data_dir=Path(args.data_dir), n_threads=args.n_threads,
                                   n_ctx=args.n_ctx, hidden=router.needs_hidden, slm_format=args.slm_format,
                                   llm_format=args.llm_format)
    return R2RService(engine, router, prices, default_max_tokens=args.default_max_tokens), args.model_alias


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experts.r2r.server", description=__doc__.split("\n\n")[0])
    p.add_argument("--slm", required=True, help="small model: packaged name or GGUF path (remote: served model name)")
    p.add_argument("--llm", required=True, help="large model: packaged name or GGUF path (remote: served model name)")
    p.add_argument("--router", required=True, help="router artifact folder")
    p.add_argument("--threshold", type=float, default=None, help="hand over when the router's score ≥ this (default: the artifact's)")
    p.add_argument("--model-alias", default="r2r", help="model id served under /v1/models")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8091)
    p.add_argument("--n-threads", type=int, default=2)
    p.add_argument("--n-ctx", type=int, default=2048)
    p.add_argument("--slm-format", default=None, help="prompt format of the SLM (smollm2, chatml, gemma, plain)")
    p.add_argument("--llm-format", default=None, help="prompt format of the LLM")
    p.add_argument("--data-dir", default="var", help="where packaged weights are assembled")
    p.add_argument("--default-max-tokens", type=int, default=256)
    for model in ("slm", "llm"):
        for kind in ("input", "output"):
            p.add_argument(f"--{model}-{kind}-price", type=float, default=0.0, help="USD per million tokens")
    p.add_argument("--mode", choices=("local", "remote"), default="local")
    p.add_argument("--slm-endpoint", default=None, help="remote mode: base URL (…/v1) of the SLM's server")
    p.add_argument("--llm-endpoint", default=None, help="remote mode: base URL (…/v1) of the LLM's server")
    p.add_argument("--slm-model", default=None)
    p.add_argument("--llm-model", default=None)
    p.add_argument("--api-key", default=os.environ.get("EXPERTMUX_R2R_API_KEY"),
                   help="remote mode: bearer token for both servers (default: $EXPERTMUX_R2R_API_KEY)")
    p.add_argument("--remote-chunk", type=int, default=8, help="remote mode: SLM tokens requested per call")
    args = p.parse_args(argv)
    if args.mode == "remote" and not (args.slm_endpoint and args.llm_endpoint):
        p.error("remote mode needs --slm-endpoint and --llm-endpoint")
    from experts.r2r.prompts import FORMATS, default_format

    args.slm_format = args.slm_format or default_format(args.slm)
    args.llm_format = args.llm_format or default_format(args.llm)
    for fmt in (args.slm_format, args.llm_format):
        if fmt not in FORMATS:
            p.error(f"unknown prompt format {fmt!r}; known: {', '.join(FORMATS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    args = parse_args(argv)
    llama_thread.spin_briefly()  # before llama.cpp loads: other local experts share the cores
    llama_thread.pin_evaluations()  # requests arrive on several threads; the two models evaluate on one
    try:
        service, model_id = build_service(args)
    except ExpertmuxError as exc:
        print(f"r2r server: {exc.message}", file=sys.stderr, flush=True)
        return 2
    app = create_app(service, model_id)
    print(f"r2r server: {model_id} ({service.router.describe()}) on http://{args.host}:{args.port}/v1", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
