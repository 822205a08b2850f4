"""HTTP layer: the FastAPI app factory (composition root), OpenAI-compatible and operations routes."""
