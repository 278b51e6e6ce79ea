"""Errors as named values. Each protocol maps them to its status codes in exactly one place
(`tandem/wire/openai.py`, `tandem/wire/ollama.py`, `tandem/wire/protobuf.py`)."""

from __future__ import annotations


class TandemError(Exception):
    """Base of every error Tandem reports to a caller. `message` is safe to show the caller."""

    kind = "internal_error"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class BadRequest(TandemError):
    """The request is malformed or names something invalid (HTTP 400, INVALID_ARGUMENT)."""

    kind = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class PayloadTooLarge(TandemError):
    """The body is larger than the configured limit (HTTP 413, INVALID_ARGUMENT)."""

    kind = "payload_too_large"


class UnsupportedEncoding(TandemError):
    """The body's Content-Encoding is not one this listener inflates (HTTP 415)."""

    kind = "unsupported_encoding"


class ContextTooLong(BadRequest):
    """Prompt plus requested output exceed the model's context (HTTP 400, INVALID_ARGUMENT)."""

    kind = "context_length_exceeded"

    def __init__(self, *, limit: int, prompt_tokens: int, max_tokens: int) -> None:
        super().__init__(
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{max_tokens} output tokens and your prompt contains at least {prompt_tokens} input "
            f"tokens, for a total of at least {prompt_tokens + max_tokens} tokens.",
            param="messages",
        )
        self.limit = limit
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens

    @classmethod
    def from_engine(cls, message: str) -> ContextTooLong:
        """An engine's over-context refusal, its own words passed on (it knows its limit and
        the exact count; the numbers are not parsed out of its message)."""
        err = cls.__new__(cls)
        BadRequest.__init__(err, message, param="messages")
        err.limit = err.prompt_tokens = err.max_tokens = 0
        return err


class Unauthenticated(TandemError):
    """No or an unknown API key (HTTP 401, UNAUTHENTICATED)."""

    kind = "authentication_error"


class PermissionDenied(TandemError):
    """The key is valid but may not use this model (HTTP 403, PERMISSION_DENIED)."""

    kind = "permission_denied"


class ModelNotFound(TandemError):
    """No pool or local model serves this name (HTTP 404, NOT_FOUND)."""

    kind = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model `{model}` does not exist.")
        self.model = model


class NotFound(TandemError):
    """The caller named an object (a batch, a file) that does not exist for it (HTTP 404)."""

    kind = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class RateLimited(TandemError):
    """A tenant limit or the in-flight bound was hit (HTTP 429, RESOURCE_EXHAUSTED)."""

    kind = "rate_limit_exceeded"


class LimitExceeded(RateLimited):
    """A tenant's own limit was hit; `limit` names it (rpm, tpm or streams) and is reported as
    the OpenAI error's `param`."""

    def __init__(self, message: str, *, limit: str, retry_after: float | None = None) -> None:
        super().__init__(message, retry_after=retry_after)
        self.limit = limit
        self.param = limit


class UpstreamUnavailable(TandemError):
    """No engine could take the request (HTTP 503, UNAVAILABLE)."""

    kind = "upstream_unavailable"


class UpstreamTimeout(TandemError):
    """The engine did not answer in time (HTTP 504, DEADLINE_EXCEEDED)."""

    kind = "upstream_timeout"


class UpstreamFailed(TandemError):
    """The engine failed after the answer had started; the stream cannot be retried."""

    kind = "upstream_error"


class ConfigError(Exception):
    """A configuration file or override is invalid; the message names the key."""
