"""OpenAI's error bodies, word for word where OpenAI's are known, so clients parse them as they would
the real ones."""

from __future__ import annotations

from typing import Any

from o1common.durations import format_duration

RATE_LIMIT_DOCS = "Visit https://platform.openai.com/account/rate-limits to learn more."
LIMIT_NAMES = {"requests": "requests per min (RPM)", "tokens": "tokens per min (TPM)"}


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def mask_key(key: str) -> str:
    """OpenAI's way of echoing a wrong key: enough to recognise it, not enough to use it."""
    if len(key) < 12:
        return "***"
    return f"{key[:3]}***{key[-4:]}"


def invalid_api_key(key: str) -> dict[str, Any]:
    return error_body(
        f"Incorrect API key provided: {mask_key(key)}. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        "invalid_api_key",
    )


def missing_api_key() -> dict[str, Any]:
    return error_body(
        "You didn't provide an API key. You need to provide your API key in an Authorization header "
        "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the api-key header for the "
        "Azure form. You can obtain an API key from https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        "invalid_api_key",
    )


def model_not_found(model: str) -> dict[str, Any]:
    return error_body(
        f"The model `{model}` does not exist or you do not have access to it.",
        "invalid_request_error",
        "model_not_found",
    )


def deployment_not_found(deployment: str) -> dict[str, Any]:
    return error_body(
        f"The API deployment for this resource does not exist: {deployment!r}. If you created the "
        "deployment within the last 5 minutes, please wait a moment and try again.",
        "invalid_request_error",
        "DeploymentNotFound",
    )


def invalid_json() -> dict[str, Any]:
    return error_body(
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
        "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not "
        "valid JSON.)",
        "invalid_request_error",
        None,
    )


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return error_body(message, "invalid_request_error", code, param)


def missing_parameter(param: str) -> dict[str, Any]:
    return invalid_request(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")


def context_length_exceeded(window: int, prompt: int, budget: int | None) -> dict[str, Any]:
    if budget is None:
        message = (
            f"This model's maximum context length is {window} tokens. However, your messages resulted "
            f"in {prompt} tokens. Please reduce the length of the messages."
        )
    else:
        message = (
            f"This model's maximum context length is {window} tokens. However, you requested "
            f"{prompt + budget} tokens ({prompt} in the messages, {budget} in the completion). "
            "Please reduce the length of the messages or completion."
        )
    return invalid_request(message, "messages", "context_length_exceeded")


def rate_limited(
    kind: str, model: str, org: str, limit: int, used: int, requested: int, retry_after_s: float
) -> dict[str, Any]:
    """429 for RPM/TPM (``kind`` requests/tokens) or concurrency."""
    wait = format_duration(retry_after_s)
    if kind == "concurrency":
        message = (
            f"Rate limit reached for {model} in organization {org} on concurrent requests: Limit {limit}, "
            f"Current {used}, Requested {requested}. Please try again in {wait}. {RATE_LIMIT_DOCS}"
        )
        return error_body(message, "requests", "rate_limit_exceeded")
    message = (
        f"Rate limit reached for {model} in organization {org} on {LIMIT_NAMES[kind]}: Limit {limit}, "
        f"Used {used}, Requested {requested}. Please try again in {wait}. {RATE_LIMIT_DOCS}"
    )
    return error_body(message, kind, "rate_limit_exceeded")


def source_rate_limited(limit: int, used: int, retry_after_s: float) -> dict[str, Any]:
    """429 for the per-address hourly limit that applies across keys."""
    return error_body(
        f"Rate limit reached for requests per hour (RPH) from your IP address: Limit {limit}, Used {used}, "
        f"Requested 1. Please try again in {format_duration(retry_after_s)}. {RATE_LIMIT_DOCS}",
        "requests",
        "rate_limit_exceeded",
    )


def request_too_large(model: str, org: str, limit: int, requested: int) -> dict[str, Any]:
    return error_body(
        f"Request too large for {model} in organization {org} on tokens per min (TPM): Limit {limit}, "
        f"Requested {requested}. The input or output tokens must be reduced in order to run "
        f"successfully. {RATE_LIMIT_DOCS}",
        "tokens",
        "rate_limit_exceeded",
    )


def insufficient_quota() -> dict[str, Any]:
    return error_body(
        "You exceeded your current quota, please check your plan and billing details. For more "
        "information on this error, read the docs: "
        "https://platform.openai.com/docs/guides/error-codes/api-errors.",
        "insufficient_quota",
        "insufficient_quota",
    )


def server_error(status: int) -> dict[str, Any]:
    if status == 503:
        return error_body("The engine is currently overloaded, please try again later.", "server_error", None)
    return error_body(
        "The server had an error while processing your request. Sorry about that!", "server_error", None
    )
