"""How a loaded model runs on its device: choices made at warm-up, and optional rewrites.

Per device, chosen by measuring the warm-up's largest batch (``ModelRunner.warm_up``), unless a
setting fixes them:

- inline or on the model thread (MODEL_EXECUTION=auto): inline when the largest batch takes under
  ``INLINE_FORWARD_MAX_MS`` on any device. Handing a short forward to a thread costs more than it
  takes: the thread waits for the GIL held by the busy event loop (measured: 27 ms per 256-row
  forward of the default model on the CPU, 12.5 ms for a 1.9 ms forward on an H200);
- texts per forward of a text model (MODEL_FORWARD_BATCH_SIZE=0): on the CPU the model metadata's
  ``forward_batch_size`` (small length-sorted chunks win there, benchmarks/MODEL_FORMATS.md); on
  cuda the fastest of it and the powers of two up to the whole batch (one 256-text forward was ~2x
  the texts/s of eight 32-text ones on an H200);
- float16 or float32 on cuda when MODEL_HALF_PRECISION allows float16: the faster.

Optional rewrites, off by default (MODEL_QUANTIZE, MODEL_COMPILE): whether they pay depends on the
model and the machine; benchmarks/MODEL_FORMATS.md has the measurements.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

import torch
from torch import fx, nn

from app.errors import ModelLoadError
from app.models.embeddings import TextEmbedder
from app.models.formats import OnnxModule

QUANTIZE_MODES = ("none", "dynamic-int8")
INLINE_FORWARD_MAX_MS = 2.0
K = TypeVar("K")


def run_inline(execution: str, largest_batch_ms: float) -> bool:
    """MODEL_EXECUTION: ``inline``, ``thread``, or ``auto``: inline when the largest batch is short."""
    if execution == "auto":
        return largest_batch_ms < INLINE_FORWARD_MAX_MS
    return execution == "inline"


def forward_batch_candidates(
    device: torch.device, configured: int, metadata_value: int, max_batch_size: int
) -> list[int]:
    """Texts per forward to measure at warm-up: ``configured`` (MODEL_FORWARD_BATCH_SIZE) when set; on
    the CPU the model metadata's value; on cuda that and the powers of two above it up to the whole batch."""
    if configured:
        return [configured]
    if device.type != "cuda":
        return [metadata_value]
    candidates = [min(metadata_value, max_batch_size)]
    while candidates[-1] < max_batch_size:
        candidates.append(min(candidates[-1] * 2, max_batch_size))
    return candidates


def fastest(timings_ms: Mapping[K, float]) -> K:
    """The choice with the least time (the first of equals: candidates come in order of preference)."""
    if not timings_ms:
        raise ValueError("nothing was measured")
    return min(timings_ms, key=timings_ms.__getitem__)


def quantize(module: nn.Module, mode: str, where: str) -> nn.Module:
    """Linear layers to int8 weights, activations quantized per batch at run time (CPU only)."""
    if mode == "none":
        return module
    if mode != "dynamic-int8":
        raise ModelLoadError(f"{where}: quantization {mode!r} is not one of {QUANTIZE_MODES}")
    if isinstance(module, torch.jit.ScriptModule | OnnxModule):
        raise ModelLoadError(f"{where}: MODEL_QUANTIZE applies to torch modules, not TorchScript or ONNX")
    # Deprecated in torch in favour of torchao (not a dependency here); present up to at least 2.15.
    quantize_dynamic = getattr(torch.ao.quantization, "quantize_dynamic", None)
    if quantize_dynamic is None:
        raise ModelLoadError(f"{where}: torch {torch.__version__} has no quantize_dynamic; unset MODEL_QUANTIZE")
    if isinstance(module, fx.GraphModule):
        module = _linear_calls_to_modules(module)
    # Per-channel weight scales: all-MiniLM-L6-v2's cosine to fp32 went from mean 0.943 (min 0.901)
    # with one scale per tensor to 0.974 (min 0.948), at the same speed.
    per_channel = torch.ao.quantization.per_channel_dynamic_qconfig
    quantized: nn.Module = quantize_dynamic(module, {nn.Linear: per_channel}, dtype=torch.qint8)
    if not any(isinstance(child, torch.ao.nn.quantized.dynamic.Linear) for child in quantized.modules()):
        raise ModelLoadError(f"{where}: no Linear layers to quantize (MODEL_QUANTIZE=dynamic-int8)")
    return quantized


def _linear_calls_to_modules(graph_module: fx.GraphModule) -> fx.GraphModule:
    """Rewrite ``aten.linear(x, weight, bias)`` calls on constant weights into ``nn.Linear`` submodules.

    A torch.export program's module calls aten.linear directly, so quantize_dynamic finds no
    nn.Linear to swap; after this rewrite it does.
    """
    graph = graph_module.graph
    for index, node in enumerate(list(graph.nodes)):
        if node.op != "call_function" or node.target is not torch.ops.aten.linear.default:
            continue
        x, weight_node, *rest = node.args
        bias_node = rest[0] if rest else None
        if weight_node.op != "get_attr" or (bias_node is not None and bias_node.op != "get_attr"):
            continue
        weight = _attribute(graph_module, weight_node.target)
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias_node is not None)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if bias_node is not None:
                linear.bias.copy_(_attribute(graph_module, bias_node.target))
        name = f"linear_{index}"
        graph_module.add_submodule(name, linear)
        with graph.inserting_before(node):
            replacement = graph.call_module(name, (x,))
        node.replace_all_uses_with(replacement)
        graph.erase_node(node)
        for attribute in (weight_node, bias_node):
            if attribute is not None and not attribute.users:
                graph.erase_node(attribute)
    graph_module.recompile()
    return graph_module


def _attribute(module: nn.Module, dotted: str) -> torch.Tensor:
    value: object = module
    for part in dotted.split("."):
        value = getattr(value, part)
    assert isinstance(value, torch.Tensor), dotted
    return value


def compile_module(module: nn.Module, where: str) -> nn.Module:
    """torch.compile in place, with dynamic shapes: batch sizes (and text lengths) vary per batch."""
    if isinstance(module, torch.jit.ScriptModule | OnnxModule):
        raise ModelLoadError(f"{where}: MODEL_COMPILE applies to torch modules, not TorchScript or ONNX")
    target = module.model if isinstance(module, TextEmbedder) else module
    target.compile(dynamic=True)
    return module
