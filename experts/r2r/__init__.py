"""R2R token-level routing: a small model (SLM) writes, a light learned router hands the few
path-divergent tokens to a large model (LLM). The pair serves as one virtual expert.

Modules, one job each:

- ``lm``        the token-model interface the engine drives, and its llama.cpp implementation;
- ``track``     one model's view of the shared transcript: KV-cache bookkeeping and text-level
                handover with minimal re-tokenisation (a fast path when the tokenizers match);
- ``prompts``   per-model prompt templates (chat template or plain text for base models);
- ``features``  what the router reads from the SLM's proposal;
- ``routers``   the hand-over rules: learned MLP, SLM confidence, random, never;
- ``artifact``  the router artifact on disk (manifest + safetensors, hashes verified), and where a
                pair's router is trained to by default: ``<data_dir>/artifacts/r2r/<slm>+<llm>``;
- ``engine``    the token-by-token generation loop over two local models;
- ``remote``    the same loop over two OpenAI-compatible ``/v1/completions`` servers;
- ``answers``   final-answer extraction and the comparisons used for labels and benchmarks;
- ``labels``    the divergence-labelling pipeline; ``training`` fits the router;
- ``server``    an OpenAI-compatible server exposing the pair as one model.

Heavy imports (llama_cpp, torch) stay inside the modules that need them.
"""
