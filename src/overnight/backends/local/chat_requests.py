"""Requests and answers of `smollm2-135m-instruct` (overnight.backends.local.chat), without the model.

Parses the bodies of /v1/chat/completions, /v1/completions and /v1/responses into `Job`s, refusing
with OpenAI's 400 shape what is malformed (`Refusal`), and shapes the generations into OpenAI's
answers (chat_answers). Parameters the model cannot honour (logprobs, tools, logit_bias, ...) are
ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from overnight.backends.local.base import Refusal, as_entries, is_int

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
RESPONSES = "/v1/responses"
MAX_N = 128  # OpenAI's limit on `n`
MAX_STOP = 4  # OpenAI's limit on stop sequences
MAX_PROMPTS = 2048  # prompts in one /v1/completions request

Message = dict[str, str]  # {"role", "content"}, as the chat template takes them
Prompt = str | list[int]


@dataclass(frozen=True, slots=True)
class Sampling:
    max_tokens: int | None = None  # None: until the end of the turn or of the context
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    json_schema: dict[str, Any] | None = None  # response_format: {} for any JSON object


@dataclass(frozen=True, slots=True)
class Job:
    """What to generate: `n` choices for each prompt (chat messages or text/token prompt)."""

    kind: Literal["chat", "text"]
    sampling: Sampling
    conversations: list[list[Message]] = field(default_factory=list)
    prompts: list[Prompt] = field(default_factory=list)
    n: int = 1

    @property
    def inputs(self) -> int:
        return len(self.conversations) if self.kind == "chat" else len(self.prompts)


@dataclass(frozen=True, slots=True)
class Generation:
    text: str
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int


# -- checks ----------------------------------------------------------------------------------------


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(request: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = request.get(key)
    if value is None:
        return default
    if not _is_number(value) or not low <= value <= high:
        raise Refusal(f"'{key}' must be a number from {low:g} to {high:g}, got {value!r}.", key)
    return float(value)


def _integer(
    request: dict[str, Any], key: str, *, low: int | None = 1, high: int | None = None
) -> int | None:
    value = request.get(key)
    if value is None:
        return None
    if not is_int(value) or (low is not None and value < low) or (high is not None and value > high):
        limits = "".join(
            [
                f" of at least {low}" if low is not None else "",
                f" and at most {high}" if high is not None else "",
            ]
        )
        raise Refusal(f"'{key}' must be an integer{limits}, got {value!r}.", key)
    result: int = value
    return result


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Refusal("'stop' must be a string, an array of strings or null.", "stop")
    if len(value) > MAX_STOP:
        raise Refusal(f"'stop' holds {len(value)} sequences; at most {MAX_STOP} are allowed.", "stop")
    return tuple(v for v in value if v)


def _json_schema(value: Any, param: str) -> dict[str, Any] | None:
    """The JSON schema a response_format (chat) or text.format (responses) asks for, if any."""
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise Refusal(f"'{param}' must be an object with a 'type'.", param)
    kind = value["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return {}
    if kind == "json_schema":
        holder = value.get("json_schema", value)  # chat nests it; responses' text.format does not
        schema = holder.get("schema") if isinstance(holder, dict) else None
        if not isinstance(schema, dict):
            raise Refusal(f"'{param}' of type 'json_schema' needs a 'schema' object.", param)
        return schema
    raise Refusal(f"'{param}.type' must be 'text', 'json_object' or 'json_schema', got {kind!r}.", param)


def _sampling(
    request: dict[str, Any], max_keys: tuple[str, ...], json_schema: dict[str, Any] | None
) -> Sampling:
    max_tokens = None
    for key in max_keys:  # the first one set wins: max_completion_tokens over the deprecated max_tokens
        max_tokens = _integer(request, key)
        if max_tokens is not None:
            break
    return Sampling(
        max_tokens=max_tokens,
        temperature=_number(request, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(request, "top_p", 1.0, 0.0, 1.0),
        stop=_stop(request.get("stop")),
        seed=_integer(request, "seed", low=None),
        presence_penalty=_number(request, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=_number(request, "frequency_penalty", 0.0, -2.0, 2.0),
        json_schema=json_schema,
    )


# -- messages ---------------------------------------------------------------------------------------

_TEXT_PARTS = frozenset({"text", "input_text", "output_text"})
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}


def _content(value: Any, where: str) -> str:
    """A message's text: a string, or the text parts of a content array joined (null is empty)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise Refusal(f"'{where}.content' must be a string or an array of content parts.", where)
    texts: list[str] = []
    for index, part in enumerate(value):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _TEXT_PARTS and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        else:
            raise Refusal(
                f"'{where}.content[{index}]' is not a text part: this model reads text only.",
                where,
                "unsupported_content",
            )
    return "\n".join(texts)


def _message(value: Any, where: str) -> Message:
    if not isinstance(value, dict):
        raise Refusal(f"'{where}' must be an object with a 'role' and a 'content'.", where)
    role = _ROLES.get(value.get("role"))  # type: ignore[arg-type]
    if role is None:
        raise Refusal(f"'{where}.role' must be one of {', '.join(_ROLES)}, got {value.get('role')!r}.", where)
    return {"role": role, "content": _content(value.get("content"), where)}


def _messages(value: Any, param: str) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise Refusal(f"'{param}' must be a non-empty array of messages.", param)
    return [_message(entry, f"{param}[{index}]") for index, entry in enumerate(value)]


# -- parsing ----------------------------------------------------------------------------------------


def parse_chat(request: dict[str, Any]) -> Job:
    if "messages" not in request:
        raise Refusal("Missing required parameter: 'messages'.", "messages", "missing_required_parameter")
    conversation = _messages(request["messages"], "messages")
    schema = _json_schema(request.get("response_format"), "response_format")
    sampling = _sampling(request, ("max_completion_tokens", "max_tokens"), schema)
    return Job("chat", sampling, conversations=[conversation], n=_integer(request, "n", high=MAX_N) or 1)


def _prompts(value: Any) -> list[Prompt]:
    entries: list[Prompt] = as_entries(
        value,
        "prompt",
        limit=MAX_PROMPTS,
        shape="'prompt' must be a string, an array of strings, an array of tokens"
        " or an array of token arrays.",
        noun="prompts",
    )
    for index, entry in enumerate(entries):
        tokens = isinstance(entry, list) and entry and all(is_int(v) and v >= 0 for v in entry)
        if not isinstance(entry, str) and not tokens:
            raise Refusal(f"'prompt[{index}]' must be a string or a non-empty array of token ids.", "prompt")
    return entries


def parse_completion(request: dict[str, Any]) -> Job:
    if "prompt" not in request:
        raise Refusal("Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter")
    prompts = _prompts(request["prompt"])
    sampling = _sampling(request, ("max_tokens",), None)
    if request.get("max_tokens") is None:  # OpenAI's default for /v1/completions
        sampling = replace(sampling, max_tokens=16)
    return Job("text", sampling, prompts=prompts, n=_integer(request, "n", high=MAX_N) or 1)


def _input_items(value: Any) -> list[Message]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise Refusal("'input' must be a string or a non-empty array of input items.", "input")
    messages: list[Message] = []
    for index, item in enumerate(value):
        kind = item.get("type", "message") if isinstance(item, dict) else None
        if kind != "message":
            raise Refusal(
                f"'input[{index}]' is of type {kind!r}; this model reads only messages.",
                "input",
                "unsupported_input",
            )
        messages.append(_message(item, f"input[{index}]"))
    return messages


def parse_responses(request: dict[str, Any]) -> Job:
    if "input" not in request:
        raise Refusal("Missing required parameter: 'input'.", "input", "missing_required_parameter")
    if request.get("previous_response_id") is not None:
        raise Refusal(
            "'previous_response_id' is not supported: local models keep no stored responses.",
            "previous_response_id",
            "unsupported_parameter",
        )
    messages = _input_items(request["input"])
    instructions = request.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise Refusal("'instructions' must be a string.", "instructions")
        messages.insert(0, {"role": "system", "content": instructions})
    text = request.get("text")
    format_ = text.get("format") if isinstance(text, dict) else None
    schema = _json_schema(format_, "text.format")
    return Job("chat", _sampling(request, ("max_output_tokens",), schema), conversations=[messages])


def parse(endpoint: str, request: dict[str, Any]) -> Job:
    if endpoint == CHAT:
        return parse_chat(request)
    if endpoint == COMPLETIONS:
        return parse_completion(request)
    return parse_responses(request)
