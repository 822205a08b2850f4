"""llama.cpp expert: one ``experts.llamacpp_server`` subprocess per expert on a loopback port
(``llama_cpp.server`` evaluating on one thread; with ``share_prefill`` it also hands over its
prefill states)."""

from __future__ import annotations

import sys

from core.model_files import resolve_gguf
from experts.backends.process import ProcessBackend


class LlamaCppBackend(ProcessBackend):
    ready_path = "/v1/models"

    @property
    def configured_port(self) -> int:
        return self.config.llamacpp.port

    @property
    def startup_timeout_s(self) -> float:
        return self.config.llamacpp.startup_timeout_s

    @property
    def shares_prefill(self) -> bool:
        return self.config.llamacpp.share_prefill

    @property
    def model_id(self) -> str:
        return self.config.name  # served under the expert's name (--model_alias)

    def command(self, port: int) -> list[str]:
        opts = self.config.llamacpp
        model = resolve_gguf(self.config.model, data_dir=self.data_dir, model_path=opts.model_path)
        cmd = [
            sys.executable, "-m", "experts.llamacpp_server",
            "--model", str(model),
            "--model_alias", self.config.name,
            "--host", "127.0.0.1",
            "--port", str(port),
            "--n_threads", str(opts.n_threads),  # llama.cpp defaults to 1 thread here
            "--n_ctx", str(opts.n_ctx),
            # llama_cpp.server ends a running stream early (a bare [DONE]) whenever another request
            # waits for the model; concurrent clients must queue instead
            "--interrupt_requests", "False",
        ]
        if opts.chat_format:
            cmd += ["--chat_format", opts.chat_format]
        if opts.share_prefill:
            cmd += ["--share_prefill"]
        return cmd + list(opts.extra_args)
