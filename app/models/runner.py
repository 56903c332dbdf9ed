"""Running one loaded model: batched forwards off the event loop, outputs per record.

``predict`` is synchronous and does one forward for the whole batch under
``torch.inference_mode``; ``predict_async`` runs it on a dedicated thread so heartbeats,
the web server and other agents keep running during a forward, or inline when the warm-up found
the largest batch fast enough (``app.models.tuning`` says how each choice is made per device). A
text model's ``predict_async`` tokenizes on a second thread, so the next batch is tokenized while
the current one runs (``batches_in_flight``: the batcher hands it the next batch meanwhile). On
cuda, inputs are copied to the device from pinned memory without blocking.

Each call reports its stages' seconds to ``on_stages`` when set: ``tokenize`` (text models) or
``inputs`` (the input tensor), ``forward`` (until the device is done) and ``outputs`` (results
back on the host as Python values).

Inputs follow the model's metadata ``input``: rows of features become one float tensor; texts go
to the model's ``TextEmbedder`` (``app.models.embeddings``), whose results carry the vector. Optional
rewrites at load (``app.models.tuning``): dynamic int8 quantization and torch.compile.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple, Protocol, cast

import torch

from app.errors import ModelLoadError
from app.models.embeddings import TextEmbedder, Tokens
from app.models.metadata import ModelKey, ModelMetadata
from app.models.registry import Registry
from app.models.tuning import (
    INLINE_FORWARD_MAX_MS,
    compile_module,
    fastest,
    forward_batch_candidates,
    quantize,
    run_inline,
)

log = logging.getLogger(__name__)

PROBABILITY_TOLERANCE = 1e-2
"""How far a row of declared probabilities may sum from 1 (float16 models round)."""

ModelInput = list[float] | str
"""One event's input: its features, or its text for a text model (metadata ``input``)."""


class ModelOutput(NamedTuple):  # a tuple: built per record, and a frozen dataclass takes three times as long
    prediction: float
    """Regressors: the output. Classifiers: P(positive_label), or P(label) without one."""
    label: str | None = None
    probabilities: dict[str, float] | None = None
    embedding: list[float] | None = None
    """Embedding models: the vector (``prediction`` is then its L2 norm)."""


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"MODEL_DEVICE={requested} but no CUDA device is available: use auto or cpu")
    return torch.device(requested)


def warmup_sizes(max_batch_size: int) -> list[int]:
    """Powers of two up to and including ``max_batch_size``: the buckets a warm-up covers."""
    sizes = [1]
    while sizes[-1] * 2 < max_batch_size:
        sizes.append(sizes[-1] * 2)
    if max_batch_size > 1:
        sizes.append(max_batch_size)
    return sizes


@dataclass(frozen=True)
class RunOptions:
    """How a model runs (MODEL_HALF_PRECISION, MODEL_EXECUTION, MODEL_QUANTIZE, MODEL_COMPILE)."""

    half: bool = False
    """float16 allowed, on cuda only: the warm-up keeps it when faster (always, with torch_compile)."""
    execution: str = "auto"
    """``inline``, ``thread`` or ``auto`` (decided at warm-up)."""
    quantization: str = "none"
    torch_compile: bool = False
    forward_batch_size: int = 0
    """Texts per forward of a text model; 0: chosen at warm-up (``tuning.forward_batch_candidates``)."""


StageListener = Callable[[Mapping[str, float]], None]


class OffLoopPredictor:
    """Runs ``predict`` on the event loop (``inline``, when warm-up found a batch fast enough) or on
    the predictor's own thread, so a slow forward never blocks the loop."""

    inline: bool
    _executor: ThreadPoolExecutor

    def predict(self, rows: Sequence[ModelInput]) -> list[ModelOutput]:
        raise NotImplementedError

    async def predict_async(self, rows: Sequence[ModelInput]) -> list[ModelOutput]:
        if self.inline:
            return self.predict(rows)
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.predict, rows)


class ModelRunner(OffLoopPredictor):
    def __init__(
        self, metadata: ModelMetadata, module: torch.nn.Module, device: torch.device, options: RunOptions = RunOptions()
    ) -> None:
        self.metadata = metadata
        self.device = device
        half = options.half and device.type == "cuda"
        # float16 allowed: measured against float32 at warm-up, unless torch.compile makes that costly.
        self._measure_half = half and not options.torch_compile
        self.dtype = torch.float16 if half and options.torch_compile else torch.float32
        where = f"model {self.key}"
        quantization = options.quantization
        if quantization != "none" and (device.type != "cpu" or options.half):
            raise ModelLoadError(f"{where}: MODEL_QUANTIZE={quantization} runs on the CPU in float32 only")
        self._module = quantize(module, quantization, where).to(device=device, dtype=self.dtype)
        if options.torch_compile:
            self._module = compile_module(self._module, where)
        # Text models tokenize their inputs (on their own thread); every other model takes a float tensor.
        self._embedder = self._module if isinstance(self._module, TextEmbedder) else None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{metadata.name}")
        self._tokenizer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"tokenize-{metadata.name}")
        self._positive = metadata.labels.index(metadata.positive_label) if metadata.positive_label else None
        self._pinned = device.type == "cuda"
        self._forward_batch_size = options.forward_batch_size
        self.warm = False
        self.execution = options.execution
        self.inline = options.execution == "inline"
        self.batches_in_flight = 1
        """Batches the batcher may hand over before the first is done: 2 lets a text model tokenize ahead."""
        self.on_stages: StageListener | None = None

    @property
    def key(self) -> ModelKey:
        return self.metadata.key

    @classmethod
    def load(
        cls, registry: Registry, name: str, version: str, device: torch.device, options: RunOptions = RunOptions()
    ) -> ModelRunner:
        return cls.from_metadata(registry, registry.metadata(name, version), device, options)

    @classmethod
    def from_metadata(
        cls, registry: Registry, metadata: ModelMetadata, device: torch.device, options: RunOptions = RunOptions()
    ) -> ModelRunner:
        """Load the artifact ``metadata`` describes (already read from the registry)."""
        module = registry.load_module(metadata)
        runner = cls(metadata, module, device, options)
        log.info("loaded model %s (%s) on %s", runner.key, metadata.format, device)
        return runner

    def warm_up(self, max_batch_size: int) -> None:
        """One forward per batch-size bucket, so the first real batches pay no one-off costs; then the
        per-device choices (``app.models.tuning``) by timing the largest batch, logged in one line."""
        try:
            for size in warmup_sizes(max_batch_size):
                started = time.perf_counter()
                outputs = self.predict(self._warm_up_inputs(size))
                largest_ms = (time.perf_counter() - started) * 1000
                if len(outputs) != size:
                    raise ModelLoadError(f"model {self.key} returned {len(outputs)} outputs for {size} inputs")
            if self.device.type == "cuda":  # cheap there: measure the choices, then time them settled
                largest = self._warm_up_inputs(max_batch_size)
                self._choose(largest, max_batch_size)
                largest_ms = self._time_ms(largest)
            else:
                if self._embedder is not None:
                    self._embedder.forward_batch_size = forward_batch_candidates(
                        self.device, self._forward_batch_size, self._embedder.forward_batch_size, max_batch_size
                    )[0]
                if self.execution == "auto" and largest_ms < 5 * INLINE_FORWARD_MAX_MS:  # near the line: settle it
                    largest_ms = self._time_ms(self._warm_up_inputs(max_batch_size))
        except ModelLoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - a model that cannot run is a load error
            raise ModelLoadError(f"model {self.key} failed warm-up: {exc!r}") from None
        self.inline = run_inline(self.execution, largest_ms)
        self.batches_in_flight = 2 if self._embedder is not None and not self.inline else 1
        log.info("model %s warm: %.2f ms per batch of %d; %s", self.key, largest_ms, max_batch_size, self.describe())
        self.warm = True

    def _choose(self, largest: Sequence[ModelInput], max_batch_size: int) -> None:
        embedder = self._embedder
        if embedder is not None:
            candidates = forward_batch_candidates(
                self.device, self._forward_batch_size, embedder.forward_batch_size, max_batch_size
            )
            timings = {}
            for candidate in candidates:
                embedder.forward_batch_size = candidate
                timings[candidate] = self._time_ms(largest) if len(candidates) > 1 else 0.0
            embedder.forward_batch_size = fastest(timings)
        if self._measure_half:
            single = self._module
            half = copy.deepcopy(single).to(dtype=torch.float16)
            timings_by_dtype = {torch.float32: self._time_ms(largest)}
            self._use(half, torch.float16)
            timings_by_dtype[torch.float16] = self._time_ms(largest)
            if fastest(timings_by_dtype) == torch.float32:
                self._use(single, torch.float32)
            else:
                del single

    def _use(self, module: torch.nn.Module, dtype: torch.dtype) -> None:
        self._module, self.dtype = module, dtype
        if self._embedder is not None:
            assert isinstance(module, TextEmbedder)
            self._embedder = module

    def _time_ms(self, inputs: Sequence[ModelInput], repeats: int = 3) -> float:
        """Median milliseconds of ``predict`` (outputs back on the host, so the device is done)."""
        timings = []
        for _ in range(repeats):
            started = time.perf_counter()
            self.predict(inputs)
            timings.append((time.perf_counter() - started) * 1000)
        return statistics.median(timings)

    def describe(self) -> str:
        """The per-device choices, for the start-up log and benchmarks."""
        parts = [str(self.device), str(self.dtype).removeprefix("torch.")]
        if self._embedder is not None:
            parts.append(f"{self._embedder.forward_batch_size} texts per forward")
        parts.append("forwards inline" if self.inline else "forwards on the model thread")
        if self.batches_in_flight > 1:
            parts.append("tokenizing the next batch during a forward")
        if self._pinned:
            parts.append("pinned non-blocking input copies")
        return ", ".join(parts)

    def _warm_up_inputs(self, size: int) -> Sequence[ModelInput]:
        if self._embedder is None:
            return [[0.0] * self.metadata.input_size] * size
        # Texts of a few lengths, so the warm-up covers padded lengths like real batches'.
        return [" ".join(["warm"] * (1 + 7 * (index % 8))) for index in range(size)]

    def predict(self, rows: Sequence[ModelInput]) -> list[ModelOutput]:
        stages: dict[str, float] = {}
        return self._finish(self._prepare(rows, stages), len(rows), stages)

    async def predict_async(self, rows: Sequence[ModelInput]) -> list[ModelOutput]:
        if self.inline:
            return self.predict(rows)
        loop = asyncio.get_running_loop()
        stages: dict[str, float] = {}
        if self._embedder is not None:  # tokenized on its own thread, while the batch before is in its forward
            tokens = await loop.run_in_executor(self._tokenizer, self._prepare, rows, stages)
            return await loop.run_in_executor(self._executor, self._finish, tokens, len(rows), stages)
        return await loop.run_in_executor(self._executor, self.predict, rows)

    def _prepare(self, rows: Sequence[ModelInput], stages: dict[str, float]) -> Tokens | torch.Tensor:
        """Tokens of a text model's texts, or the rows as one float tensor (pinned on cuda), on the host."""
        started = time.perf_counter()
        if self._embedder is not None:
            if not all(isinstance(text, str) for text in rows):
                raise TypeError(f"model {self.key} takes texts")
            tokens = self._embedder.tokenize(cast(Sequence[str], rows))
            stages["tokenize"] = time.perf_counter() - started
            return tokens
        batch = torch.tensor(rows, dtype=torch.float32)
        if self._pinned:
            batch = batch.pin_memory()
        stages["inputs"] = time.perf_counter() - started
        return batch

    def _finish(self, prepared: Tokens | torch.Tensor, size: int, stages: dict[str, float]) -> list[ModelOutput]:
        with torch.inference_mode():
            started = time.perf_counter()
            if isinstance(prepared, Tokens):
                assert self._embedder is not None
                raw = self._embedder.forward_tokens(prepared)
            else:
                raw = self._module(prepared.to(self.device, dtype=self.dtype, non_blocking=self._pinned))
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            forwarded = time.perf_counter()
            stages["forward"] = forwarded - started
            outputs = self._outputs(raw, size)
            stages["outputs"] = time.perf_counter() - forwarded
        if self.on_stages is not None:
            self.on_stages(stages)
        return outputs

    def _outputs(self, raw: torch.Tensor, size: int) -> list[ModelOutput]:
        if self._embedder is not None:
            return self._vectors(raw.float().cpu())
        if self.metadata.kind == "classifier":
            return self._classify(raw)
        if self.metadata.output == "embedding":
            return self._vectors(raw.float().reshape(size, -1).cpu())
        return [ModelOutput(prediction=float(value)) for value in raw.reshape(size).float().cpu().tolist()]

    def close(self) -> None:
        self._tokenizer.shutdown(wait=True)
        self._executor.shutdown(wait=True)

    @staticmethod
    def _vectors(vectors: torch.Tensor) -> list[ModelOutput]:
        norms = torch.linalg.vector_norm(vectors, dim=1).tolist()
        return [ModelOutput(norm, embedding=vector) for norm, vector in zip(norms, vectors.tolist(), strict=True)]

    def _classify(self, raw: torch.Tensor) -> list[ModelOutput]:
        """Probabilities per label from what the model returns (metadata ``output``), then the winner."""
        labels = self.metadata.labels
        output = self.metadata.output
        if output == "score":  # P(positive_label) of a two-label classifier, one number per input
            if raw.numel() != raw.shape[0]:
                raise ValueError(f"classifier output shape {tuple(raw.shape)} is not one score per input")
            positive = raw.float().reshape(-1, 1)
            probabilities = torch.cat((1 - positive, positive) if self._positive == 1 else (positive, 1 - positive), 1)
        elif raw.ndim != 2 or raw.shape[1] != len(labels):
            raise ValueError(f"classifier output shape {tuple(raw.shape)} does not match {len(labels)} labels")
        elif output == "probabilities":
            probabilities = raw.float()
        else:  # logits
            probabilities = torch.softmax(raw.float(), dim=1)
        if output != "logits":
            sums = probabilities.sum(dim=1)
            if not bool(((sums - 1).abs() < PROBABILITY_TOLERANCE).all() and (probabilities >= 0).all()):
                raise ValueError(
                    f"model {self.key} declares output {output!r} but returned values outside [0, 1] or rows not "
                    "summing to 1 (logits? then declare output 'logits')"
                )
        winners = probabilities.argmax(dim=1).cpu().tolist()
        table = probabilities.cpu().tolist()
        outputs = []
        for winner, row in zip(winners, table, strict=True):
            score = row[self._positive] if self._positive is not None else row[winner]
            outputs.append(ModelOutput(score, labels[winner], dict(zip(labels, row, strict=True))))
        return outputs


class Runner(Protocol):
    """What the pipeline needs of a model: a ``ModelRunner`` or an ensemble of them."""

    metadata: ModelMetadata
    device: torch.device
    warm: bool
    batches_in_flight: int
    on_stages: StageListener | None

    @property
    def key(self) -> ModelKey: ...

    def warm_up(self, max_batch_size: int) -> None: ...

    def predict(self, rows: Sequence[ModelInput]) -> list[ModelOutput]: ...

    async def predict_async(self, rows: Sequence[ModelInput]) -> list[ModelOutput]: ...

    def close(self) -> None: ...
