"""Running one loaded model: batched forwards off the event loop, outputs per record.

``predict`` is synchronous and does one forward for the whole batch under
``torch.inference_mode``; ``predict_async`` runs it on a dedicated thread so heartbeats,
the web server and other agents keep running during a forward. A model whose largest batch
computes in under ``INLINE_FORWARD_MAX_MS`` on the CPU runs inline instead: handing it to a
thread costs more than it takes, because the thread then waits for the GIL held by the busy
event loop (measured: 27 ms per 256-row forward of the default model on a thread under load,
against 0.3 ms inline).

Inputs follow the model's metadata ``input``: rows of features become one float tensor; texts go
to the model's ``TextEmbedder`` (``app.models.embeddings``), whose results carry the vector. Optional
rewrites at load (``app.models.tuning``): dynamic int8 quantization and torch.compile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple, Protocol, cast

import torch

from app.errors import ModelLoadError
from app.models.embeddings import TextEmbedder
from app.models.metadata import ModelKey, ModelMetadata
from app.models.registry import Registry
from app.models.tuning import compile_module, quantize

log = logging.getLogger(__name__)

INLINE_FORWARD_MAX_MS = 2.0
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
    """float16, on cuda only."""
    execution: str = "auto"
    """``inline``, ``thread`` or ``auto`` (decided at warm-up)."""
    quantization: str = "none"
    torch_compile: bool = False


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
        self.dtype = torch.float16 if options.half and device.type == "cuda" else torch.float32
        where = f"model {self.key}"
        quantization = options.quantization
        if quantization != "none" and (device.type != "cpu" or self.dtype != torch.float32):
            raise ModelLoadError(f"{where}: MODEL_QUANTIZE={quantization} runs on the CPU in float32 only")
        self._module = quantize(module, quantization, where).to(device=device, dtype=self.dtype)
        if options.torch_compile:
            self._module = compile_module(self._module, where)
        # Text models tokenize their inputs; every other model takes a float tensor.
        self._embedder = self._module if isinstance(self._module, TextEmbedder) else None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{metadata.name}")
        self._positive = metadata.labels.index(metadata.positive_label) if metadata.positive_label else None
        self.warm = False
        self.execution = options.execution
        self.inline = options.execution == "inline"

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
        """One forward per batch-size bucket, so the first real batches pay no one-off costs.

        Also decides, for ``execution="auto"``, whether forwards run inline or on the model thread.
        """
        for size in warmup_sizes(max_batch_size):
            try:
                started = time.perf_counter()
                outputs = self.predict(self._warm_up_inputs(size))
                largest_ms = (time.perf_counter() - started) * 1000
            except Exception as exc:  # noqa: BLE001 - a model that cannot run is a load error
                raise ModelLoadError(f"model {self.key} failed warm-up: {exc!r}") from None
            if len(outputs) != size:
                raise ModelLoadError(f"model {self.key} returned {len(outputs)} outputs for {size} inputs")
        if self.execution == "auto":
            self.inline = self.device.type == "cpu" and largest_ms < INLINE_FORWARD_MAX_MS
        log.info(
            "model %s warm: %.2f ms per batch of %d, forwards run %s",
            self.key,
            largest_ms,
            max_batch_size,
            "inline" if self.inline else "on the model thread",
        )
        self.warm = True

    def _warm_up_inputs(self, size: int) -> Sequence[ModelInput]:
        if self._embedder is None:
            return [[0.0] * self.metadata.input_size] * size
        # Texts of a few lengths, so the warm-up covers padded lengths like real batches'.
        return [" ".join(["warm"] * (1 + 7 * (index % 8))) for index in range(size)]

    def predict(self, rows: Sequence[ModelInput]) -> list[ModelOutput]:
        with torch.inference_mode():
            if self._embedder is not None:
                return self._embed(self._embedder, rows)
            batch = torch.tensor(rows, dtype=self.dtype, device=self.device)
            raw = self._module(batch)
            if self.metadata.kind == "classifier":
                return self._classify(raw)
            if self.metadata.output == "embedding":
                return self._vectors(raw.float().reshape(len(rows), -1).cpu())
            return [ModelOutput(prediction=float(value)) for value in raw.reshape(len(rows)).float().cpu().tolist()]

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def _embed(self, embedder: TextEmbedder, texts: Sequence[ModelInput]) -> list[ModelOutput]:
        if not all(isinstance(text, str) for text in texts):
            raise TypeError(f"model {self.key} takes texts")
        return self._vectors(embedder.embed(cast(Sequence[str], texts)).float().cpu())

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

    @property
    def key(self) -> ModelKey: ...

    def warm_up(self, max_batch_size: int) -> None: ...

    def predict(self, rows: Sequence[ModelInput]) -> list[ModelOutput]: ...

    async def predict_async(self, rows: Sequence[ModelInput]) -> list[ModelOutput]: ...

    def close(self) -> None: ...
