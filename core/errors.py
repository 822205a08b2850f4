"""The one exception tree of expertmux.

Every error a user can meet is an ``ExpertmuxError`` carrying its HTTP status, OpenAI error
``type`` and ``code``. ``api/errors.py`` is the only place that turns them into responses.

``message`` is what the client reads; ``detail`` is for the operator only (the log and the ledger
row): an upstream's address, its own error text, the transport exception. A client must never
learn where an expert runs or what its server said about itself.
"""

from __future__ import annotations


class ExpertmuxError(Exception):
    """Base class. ``status`` and ``error_type`` follow the OpenAI error object."""

    status: int = 500
    error_type: str = "server_error"
    code: str | None = None
    request_id: str | None = None  # set when the error belongs to a recorded request

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.detail = detail  # operator-only: never in a response body
        if code is not None:
            self.code = code

    @property
    def operator_message(self) -> str:
        """What the log and the ledger keep: the client's message and the detail behind it."""
        return f"{self.message} ({self.detail})" if self.detail else self.message


# --- client mistakes (4xx) -------------------------------------------------------------------
class InvalidRequestError(ExpertmuxError):
    status = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class PromptTooLongError(InvalidRequestError):
    code = "context_length_exceeded"


class RequestTooLargeError(InvalidRequestError):
    status = 413
    code = "request_too_large"


class AuthenticationError(ExpertmuxError):
    status = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDeniedError(ExpertmuxError):
    status = 403
    error_type = "permission_error"
    code = "permission_denied"


class RateLimitError(ExpertmuxError):
    status = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"


class BudgetExceededError(RateLimitError):
    code = "budget_exceeded"


class NotFoundError(ExpertmuxError):
    status = 404
    error_type = "invalid_request_error"
    code = "not_found"


class ConflictError(ExpertmuxError):
    status = 409
    error_type = "invalid_request_error"
    code = "conflict"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"


class NoCandidateError(ExpertmuxError):
    """The routing constraints leave no expert to choose from."""

    status = 400
    error_type = "invalid_request_error"
    code = "no_candidate_expert"


# --- upstream / service failures (5xx) ---------------------------------------------------------
class ExpertError(ExpertmuxError):
    """An expert failed to answer (connection refused, timeout, 5xx)."""

    status = 502
    error_type = "upstream_error"
    code = "expert_unavailable"

    def __init__(self, message: str, *, expert: str | None = None, **kw) -> None:
        super().__init__(message, **kw)
        self.expert = expert


class ExpertTimeoutError(ExpertError):
    status = 504
    code = "expert_timeout"


class ExpertRateLimitedError(ExpertError):
    status = 429
    error_type = "rate_limit_error"
    code = "expert_rate_limited"


class ShuttingDownError(ExpertmuxError):
    """The server stopped before this request finished (graceful shutdown ran out of time)."""

    status = 503
    error_type = "server_error"
    code = "shutting_down"


class LedgerUnavailableError(ExpertmuxError):
    """The ledger database cannot take a write the caller must not lose silently (e.g. feedback)."""

    status = 503
    error_type = "server_error"
    code = "ledger_unavailable"


class ConfigError(ExpertmuxError):
    """Bad configuration file or settings; raised at start-up, never per request."""

    code = "config_error"


class PolicyError(ExpertmuxError):
    code = "policy_error"


class BackendError(ExpertmuxError):
    """A local backend (llama.cpp, vLLM) failed to start or stop."""

    code = "backend_error"
