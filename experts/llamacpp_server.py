"""A local llama.cpp expert: ``llama_cpp.server`` (same flags, same OpenAI-compatible routes)
with every model evaluation on one thread, and with ``--share_prefill`` one more route.

    python -m experts.llamacpp_server --model model.gguf --model_alias local --port 8090 [--share_prefill]

One thread: ``llama_cpp.server`` calls the model from whichever worker thread is free, and
llama.cpp's OpenMP pools of two live calling threads compete for the cores (``core.llama_thread``:
a decode step 16 instead of 9 ms on 2 cores). Every ``decode`` runs on one thread here instead.

``--share_prefill`` (``llamacpp.share_prefill``) adds

    POST /v1/prefill  {"messages": [...], "blocks": [18]}
    → {"model", "blocks", "hidden", "tokens", "features": [...], "prefill_ms"}

It prefills the conversation exactly as a chat completion of those messages would (the GGUF's own
chat template), returns the pooled hidden states after the requested blocks
(``core.layer_states``: per block the mean over the last 63 tokens of the last user message's
text, then its last token's state; the last 63 positions of the whole prompt if the text cannot be
located), and leaves the prompt in the KV cache. A chat completion of the same messages that
comes next starts decoding at once: llama-cpp-python reuses a cached prompt. One request at a time
holds the model (the server's own lock), so a different prompt arriving in between evicts the
cached one; the answer is then prefilled as usual, just not shared.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from pydantic import BaseModel, Field

PREFILL_PATH = "/v1/prefill"


class PrefillRequest(BaseModel):
    messages: list[dict[str, Any]] = Field(min_length=1)
    blocks: list[int] = Field(min_length=1, max_length=16)


def add_prefill_route(app: Any, capture: Any) -> None:
    from fastapi import Depends
    from fastapi.responses import JSONResponse
    from llama_cpp.server.app import authenticate, get_llama_proxy
    from starlette.concurrency import run_in_threadpool

    from core import layer_states

    def run(llama: Any, body: PrefillRequest) -> dict[str, Any]:
        t0 = time.perf_counter()
        tokens, span = layer_states.chat_prompt(llama, body.messages)
        if len(tokens) > llama.n_ctx():
            raise ValueError(f"the prompt has {len(tokens)} tokens; this expert's context holds {llama.n_ctx()}")
        features = layer_states.read(llama, capture, tokens, body.blocks, span=span, keep=True)
        return {"blocks": body.blocks, "hidden": int(llama.n_embd()), "tokens": len(tokens),
                "features": features.tolist(), "prefill_ms": round((time.perf_counter() - t0) * 1e3, 3)}

    @app.post(PREFILL_PATH, dependencies=[Depends(authenticate)], include_in_schema=True, tags=["expertmux"])
    async def prefill(body: PrefillRequest, llama_proxy: Any = Depends(get_llama_proxy)) -> JSONResponse:
        llama = llama_proxy(None)
        try:
            out = await run_in_threadpool(run, llama, body)
        except (ValueError, TypeError, KeyError) as exc:  # bad blocks, messages the template cannot format
            return JSONResponse({"error": {"message": f"prefill: {exc}", "type": "invalid_request_error",
                                           "param": None, "code": None}}, status_code=400)
        return JSONResponse({"model": llama_proxy._current_model_alias, **out})


def main(argv: list[str] | None = None) -> None:
    from core import llama_thread

    llama_thread.spin_briefly()  # before llama.cpp loads: started by hand, too, it shares the cores
    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.cli import add_args_from_model, parse_model_from_args
    from llama_cpp.server.settings import ModelSettings, ServerSettings, Settings

    from core import layer_states

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args_from_model(parser, Settings)
    parser.add_argument("--share_prefill", action="store_true", help=f"add {PREFILL_PATH}: the prefill's hidden states")
    args = parser.parse_args(argv)
    share = args.__dict__.pop("share_prefill")
    server_settings = parse_model_from_args(ServerSettings, args)
    model_settings = [parse_model_from_args(ModelSettings, args)]
    llama_thread.pin_evaluations()
    if not share:
        app = create_app(server_settings=server_settings, model_settings=model_settings)
    else:
        capture = layer_states.LayerCapture()
        with layer_states.install(capture):  # the model loads inside create_app
            app = create_app(server_settings=server_settings, model_settings=model_settings)
        add_prefill_route(app, capture)
    uvicorn.run(app, host=server_settings.host, port=server_settings.port)


if __name__ == "__main__":
    main()
