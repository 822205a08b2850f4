"""R2R expert: a small/large model pair served as one OpenAI-compatible model.

The pair runs in its own server subprocess (``python -m experts.r2r.server``) like any local
expert, so the proxy path — litellm call, fallbacks, streaming, ledger — is unchanged. The
server reports both models' token counts, the LLM's share and the cost of the mix in ``usage``.

The router is ``r2r.router`` when set, else the pair's router trained into the data folder
(``<data_dir>/artifacts/r2r/<slm>+<llm>``, written by ``expertmux train r2r``); when there is
none, the expert does not start and the error names the folder and the command that fills it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from core.errors import BackendError, ConfigError
from core.model_files import GEMMA3, SMOLLM2, resolve_gguf
from experts.backends.process import ProcessBackend
from experts.r2r.prompts import FORMATS, default_format

API_KEY_ENV = "EXPERTMUX_R2R_API_KEY"  # remote mode: handed to the server process, never on its command line


class R2RBackend(ProcessBackend):
    ready_path = "/v1/models"

    def __init__(self, config, *, data_dir, api_key: str | None = None) -> None:
        super().__init__(config, data_dir=data_dir)
        self._remote_key = api_key

    @property
    def configured_port(self) -> int:
        return self.config.r2r.port

    @property
    def startup_timeout_s(self) -> float:
        return self.config.r2r.startup_timeout_s

    @property
    def model_id(self) -> str:
        return self.config.name

    @property
    def models(self) -> tuple[str, str]:
        opts = self.config.r2r
        return opts.slm or SMOLLM2, opts.llm or GEMMA3

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self._remote_key:
            env[API_KEY_ENV] = self._remote_key
        return env

    def command(self, port: int) -> list[str]:
        from experts.r2r.artifact import RouterArtifactError, load_artifact, pair_router_dir, train_command

        opts = self.config.r2r
        slm, llm = self.models
        router = Path(opts.router) if opts.router else pair_router_dir(self.data_dir, slm, llm)
        formats = (opts.slm_format or default_format(slm), opts.llm_format or default_format(llm))
        try:
            for fmt in formats:
                if fmt not in FORMATS:
                    raise ConfigError(f"unknown r2r prompt format {fmt!r}; known: {', '.join(FORMATS)}")
            if not opts.router and not router.exists():
                raise RouterArtifactError(
                    f"no R2R router trained for {slm} + {llm}: {router} does not exist (r2r.router is not set, so the "
                    f"router trained into the data folder is used). Train it on this machine (about 27 min of labelling on 2 cores; "
                    f"any routing-matrix folder serves as --prompts): {train_command(slm, llm, out=router)} "
                    f"— or set r2r.router to a router artifact folder")
            load_artifact(router)  # a missing or corrupted router fails here, with its own message
            if opts.mode == "local":  # resolve (and assemble) packaged weights once, in the proxy
                slm_arg = str(resolve_gguf(slm, data_dir=self.data_dir))
                llm_arg = str(resolve_gguf(llm, data_dir=self.data_dir))
            else:
                slm_arg, llm_arg = slm, llm
        except ConfigError as exc:
            raise BackendError(f"expert {self.config.name!r}: {exc.message}") from exc
        cmd = [
            sys.executable, "-m", "experts.r2r.server",
            "--slm", slm_arg, "--llm", llm_arg,
            "--slm-format", formats[0],
            "--llm-format", formats[1],
            "--router", str(router),
            "--model-alias", self.config.name,
            "--host", "127.0.0.1", "--port", str(port),
            "--n-threads", str(opts.n_threads), "--n-ctx", str(opts.n_ctx),
            "--data-dir", str(self.data_dir),
            "--default-max-tokens", str(opts.default_max_tokens),
            "--slm-input-price", str(opts.slm_input_usd_per_mtok or 0.0),
            "--slm-output-price", str(opts.slm_output_usd_per_mtok or 0.0),
            "--llm-input-price", str(opts.llm_input_usd_per_mtok or 0.0),
            "--llm-output-price", str(opts.llm_output_usd_per_mtok or 0.0),
        ]
        if opts.threshold is not None:
            cmd += ["--threshold", str(opts.threshold)]
        if opts.mode == "remote":
            cmd += ["--mode", "remote", "--slm-endpoint", opts.slm_endpoint, "--llm-endpoint", opts.llm_endpoint,
                    "--remote-chunk", str(opts.remote_chunk)]
        return cmd + list(opts.extra_args)
