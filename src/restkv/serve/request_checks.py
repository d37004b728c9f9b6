"""What a request to ``restkv serve`` must hold before it is queued, and the press it may name."""

from __future__ import annotations

from ..checks import is_int

#: the extra request field that names a per-request press
REQUEST_FIELD = "restkv"


def press_from_request(spec) -> object:
    """A press from a request's ``restkv`` field: ``{"method": NAME, "budget": N, ...parameters}``."""
    from ..press import get_press

    if not isinstance(spec, dict) or not isinstance(spec.get("method"), str):
        raise ValueError(f'the {REQUEST_FIELD} field must be an object with a "method", got {spec!r}')
    params = dict(spec)
    return get_press(params.pop("method"), **params)


def check_request(body, kind: str) -> None:
    """One sentence (a ValueError) for a request body the server cannot answer as asked: not an
    object, a chat without a non-empty ``messages`` list, a completion without a ``prompt``, or
    a token limit below 1 (which used to cost a whole prefill for an empty answer)."""
    if not isinstance(body, dict):
        raise ValueError("the request body must be a JSON object")
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise ValueError("messages must be a non-empty list of message objects")
    elif not isinstance(body.get("prompt"), (str, list)) or not body["prompt"]:
        raise ValueError("prompt must be a non-empty string or list")
    for field in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = body.get(field)
        if value is not None and (not is_int(value) or value < 1):
            raise ValueError(f"{field} must be a positive integer, got {value!r}")
