"""Expert models: the registry built from config, local backends (llama.cpp, vLLM), remote
endpoints, and the litellm client every expert call goes through."""
