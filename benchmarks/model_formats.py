"""Model formats and knobs, measured: rows/s of ``ModelRunner.predict`` per format and knob.

The default model (breast-cancer MLP) at batch 256, re-saved from its torch.export artifact into
every format the registry loads, plus dynamic int8 quantization and torch.compile; the text model
(all-MiniLM-L6-v2) with tokenize+forward per batch (what the runner does), ``encode()`` per batch,
int8 and compile, at two batch sizes. Precision changes report fidelity beside speed: for the
classifier the largest probability difference, for embeddings the cosine similarity to the fp32
vector (min and mean). Cases are measured in interleaved rounds, so load from other processes on
a shared machine spreads over all of them; the best round (as timeit reports its minimum time)
estimates the speed without that load, the median shows how much it varied. Then, with ``--worker``,
texts/s end to end through a worker on the local broker.

    python -m benchmarks.model_formats [--rounds 5] [--worker] [--write benchmarks/MODEL_FORMATS.md]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from app.models.registry import ModelRegistry
from app.models.runner import ModelInput, ModelRunner, RunOptions
from app.settings import REPO_ROOT
from benchmarks.workload import texts

FEATURES_BATCH = 256
TEXT_BATCHES = (32, 256)
MIN_MEASURE_S = 1.0
WORKER_SETTINGS = (
    {"MAX_BATCH_SIZE": "32"},
    {"MAX_BATCH_SIZE": "256"},
    {"MAX_BATCH_SIZE": "256", "MODEL_QUANTIZE": "dynamic-int8"},
)


class DefaultMLP(nn.Module):
    """The default model's architecture as an eager module, for the state_dict format (buffers filled by the load)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, inputs: int = 30, hidden: int = 32, classes: int = 2) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(inputs))
        self.register_buffer("std", torch.ones(inputs))
        self.layers = nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.layers((features - self.mean) / self.std)
        return logits


@dataclass
class Case:
    model: str
    name: str
    batch: int
    step: Callable[[], Any]
    outputs: Callable[[], torch.Tensor]
    """The case's outputs on the fidelity inputs (probabilities or vectors), compared to the baseline's."""
    baseline: bool = False
    rates: list[float] = field(default_factory=list)
    fidelity: str = ""


def save_formats(root: Path) -> list[str]:
    """The default model re-saved as every format the registry loads; returns the registry names."""
    source = REPO_ROOT / "models" / "breast-cancer" / "1"
    metadata = json.loads((source / "metadata.json").read_text())
    eager = DefaultMLP()
    eager.load_state_dict(torch.export.load(source / "model.pt2").module().state_dict())
    eager.eval()
    example = torch.zeros(8, metadata["input_size"])
    batch = torch.export.Dim("batch", min=1, max=1 << 16)

    def write(fmt: str, artifact: str, save: Callable[[Path], object], **extra: Any) -> str:
        name = f"bc-{fmt.replace('.', '-')}"
        folder = root / name / "1"
        folder.mkdir(parents=True)
        save(folder / artifact)
        document = {**metadata, "name": name, "format": fmt, "artifact": artifact, **extra}
        (folder / "metadata.json").write_text(json.dumps(document))
        return name

    def save_torchscript(path: Path) -> None:
        torch.jit.save(torch.jit.trace(eager, example), str(path))  # type: ignore[no-untyped-call]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript and the ONNX exporter warn about deprecations
        return [
            write("torch.export", "model.pt2", lambda path: shutil.copy(source / "model.pt2", path)),
            write("torchscript", "model.pt", save_torchscript),
            write(
                "state_dict",
                "weights.pt",
                lambda path: torch.save(eager.state_dict(), path),
                module="benchmarks.model_formats:DefaultMLP",
                module_kwargs={"inputs": metadata["input_size"]},
            ),
            write(
                "onnx",
                "model.onnx",
                lambda path: torch.onnx.export(
                    eager, (example,), str(path), dynamic_shapes=({0: batch},), dynamo=True, verbose=False
                ),
            ),
        ]


def runner_case(
    model: str, name: str, runner: ModelRunner, inputs: Sequence[ModelInput], probe: Sequence[ModelInput]
) -> Case:
    runner.warm_up(len(inputs))

    def outputs() -> torch.Tensor:
        predicted = runner.predict(probe)
        if predicted[0].embedding is not None:
            return torch.tensor([output.embedding for output in predicted])
        return torch.tensor([list((output.probabilities or {}).values()) for output in predicted])

    return Case(model, name, len(inputs), lambda: runner.predict(inputs), outputs)


def feature_cases(root: Path, device: torch.device) -> list[Case]:
    names = save_formats(root)
    registry = ModelRegistry(root)
    metadata = registry.metadata("bc-torch-export")
    stats = metadata.extra["sample_stats"]
    generator = torch.Generator().manual_seed(5)
    centres = torch.tensor([stats[label]["mean"] for label in stats])
    spreads = torch.tensor([stats[label]["std"] for label in stats])
    picks = torch.randint(0, len(stats), (FEATURES_BATCH,), generator=generator)
    noise = torch.randn(FEATURES_BATCH, metadata.input_size, generator=generator)
    rows = (centres[picks] + noise * spreads[picks]).tolist()

    def load(name: str, **options: Any) -> ModelRunner:
        return ModelRunner.load(registry, name, "1", device, RunOptions(**options))

    cases = [runner_case("breast-cancer", "torch.export (baseline)", load(names[0]), rows, rows)]
    cases[0].baseline = True
    for name in names[1:]:
        cases.append(runner_case("breast-cancer", registry.metadata(name).format, load(name), rows, rows))
    if device.type == "cpu":
        quantized = load(names[0], quantization="dynamic-int8")
        cases.append(runner_case("breast-cancer", "torch.export + dynamic-int8", quantized, rows, rows))
    else:
        cases.append(runner_case("breast-cancer", "torch.export + half", load(names[0], half=True), rows, rows))
    started = time.perf_counter()
    compiled = runner_case("breast-cancer", "torch.export + compile", load(names[0], torch_compile=True), rows, rows)
    compiled.name += f" (compile+warm-up {time.perf_counter() - started:.0f} s)"
    cases.append(compiled)
    return cases


def text_cases(device: torch.device, batches: Sequence[int]) -> list[Case]:
    """The per-event baseline (one ``encode([text])`` per text), sentence-transformers' ``encode`` per
    micro-batch, and the runner: one forward per micro-batch, length-sorted chunks, int8, compile."""
    registry = ModelRegistry(REPO_ROOT / "models")
    probe = texts(256, seed=99)

    def load(**options: Any) -> ModelRunner:
        return ModelRunner.load(registry, "minilm", "1", device, RunOptions(**options))

    plain, one_forward = load(), load()
    embedder, whole = plain._embedder, one_forward._embedder
    assert embedder is not None and whole is not None
    chunk = embedder.forward_batch_size
    whole.forward_batch_size = 1 << 20  # the whole micro-batch in one forward, padded to its longest text

    def encode(batch: list[str], batch_size: int = 0) -> torch.Tensor:
        with torch.inference_mode():
            vectors = embedder.model.encode(batch, batch_size=batch_size or len(batch), convert_to_tensor=True)
            return cast(torch.Tensor, vectors).float().cpu()

    def probe_encode() -> torch.Tensor:
        return encode(probe)

    singles = texts(64, seed=1)
    per_event = Case(
        "minilm",
        "per event: one encode([text]) per text (baseline)",
        1,
        lambda: [encode([text]) for text in singles],
        lambda: torch.cat([encode([text]) for text in probe]),
        baseline=True,
    )
    per_event.batch = len(singles)  # rows per step; shown as batch 1 below
    variants: list[tuple[str, ModelRunner]] = [
        (f"runner: one tokenizer call, length-sorted forwards of {chunk}", plain)
    ]
    if device.type == "cpu":
        variants.append((f"runner + dynamic-int8 (forwards of {chunk})", load(quantization="dynamic-int8")))
    else:
        variants.append((f"runner + half (forwards of {chunk})", load(half=True)))
    started = time.perf_counter()
    compiled = load(torch_compile=True)
    compiled.warm_up(max(batches))
    variants.append(
        (f"runner + compile (forwards of {chunk}; compile+warm-up {time.perf_counter() - started:.0f} s)", compiled)
    )
    cases = [per_event]
    for batch in batches:
        inputs = texts(batch, seed=batch)
        cases.append(Case("minilm", "encode(micro-batch), one forward", batch, partial(encode, inputs), probe_encode))
        if batch > chunk:
            cases.append(runner_case("minilm", "runner: one forward per micro-batch", one_forward, inputs, probe))
        cases += [runner_case("minilm", name, runner, inputs, probe) for name, runner in variants]
    return cases


def measure(case: Case) -> float:
    rows, started = 0, time.perf_counter()
    while True:
        case.step()
        rows += case.batch
        elapsed = time.perf_counter() - started
        if elapsed >= MIN_MEASURE_S and rows >= 2 * case.batch:
            return rows / elapsed


def fidelity(case: Case, reference: torch.Tensor) -> str:
    outputs = case.outputs().float()
    if case.model == "minilm":
        cosine = torch.nn.functional.cosine_similarity(outputs, reference, dim=1)
        return f"cosine min {cosine.min().item():.4f}, mean {cosine.mean().item():.4f}"
    return f"max abs Δp {(outputs - reference).abs().max().item():.1e}"


def table(cases: list[Case]) -> str:
    lines = [
        "| model | format / knob | batch | rows/s, best | median | vs baseline (best) | fidelity vs baseline |",
        "|---|---|---|---|---|---|---|",
    ]
    baseline: dict[str, float] = {}
    for case in cases:
        best, median = max(case.rates), statistics.median(case.rates)
        if case.baseline:
            baseline[case.model] = best
        ratio = best / baseline[case.model]
        batch = 1 if case.model == "minilm" and case.baseline else case.batch
        lines.append(
            f"| {case.model} | {case.name} | {batch} | {best:,.0f} | {median:,.0f} | {ratio:.2f}x | {case.fidelity} |"
        )
    return "\n".join(lines)


def worker_texts_per_s(events: int, per_event: float) -> str:
    """Texts/s end to end: a backlog of text events through one worker (MODEL_NAMES=minilm)."""
    from benchmarks.bench import MODEL_SIZES, Bench

    async def run() -> str:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
        with tempfile.TemporaryDirectory() as workdir:
            bench = Bench(bootstrap, Path(workdir))
            bench.size = MODEL_SIZES["minilm"]  # text events, MODEL_NAMES=minilm
            backlog = bench.topic("texts")
            await bench.create(backlog)
            await bench.produce(backlog, events)
            lines = [
                "| worker (MODEL_NAMES=minilm, TORCH_THREADS=2) | texts/s | results | vs per-event here | vs ~123 |",
                "|---|---|---|---|---|",
            ]
            for settings in WORKER_SETTINGS:
                result = await bench.throughput(
                    "inference-worker",
                    backlog,
                    events,
                    MODEL_NAMES="minilm",
                    TORCH_THREADS="2",
                    STATS_ENABLED="false",
                    **settings,
                )
                lines.append(
                    f"| {', '.join(f'{k}={v}' for k, v in settings.items())} | {result.events_per_s:,.0f} |"
                    f" {result.unique}/{events} | {result.events_per_s / per_event:.1f}x |"
                    f" {result.events_per_s / 123:.1f}x |"
                )
            return "\n".join(lines)

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--worker", action="store_true", help="also measure texts/s through a worker (local broker)")
    parser.add_argument("--worker-events", type=int, default=3000)
    parser.add_argument("--write", type=Path, help="write the report (markdown) to this file")
    args = parser.parse_args()
    logging_quiet()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as root:
        cases = feature_cases(Path(root), device) + text_cases(device, TEXT_BATCHES)
        for case in cases:  # one uncounted round: first calls after loading are slower
            measure(case)
        for _ in range(args.rounds):
            for case in cases:
                case.rates.append(measure(case))
        references = {case.model: case.outputs().float() for case in cases if case.baseline}
        for case in cases:
            if not case.baseline:
                case.fidelity = fidelity(case, references[case.model])
    load = os.getloadavg()
    report = [
        f"`python -m benchmarks.model_formats{' --worker' if args.worker else ''}` on {device}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} torch threads, {platform.machine()} "
        f"({os.cpu_count()} cores), {args.rounds} interleaved rounds of >= {MIN_MEASURE_S:.0f} s each; "
        f"load average after: {load[0]:.1f}.",
        "",
        table(cases),
    ]
    if args.worker:
        per_event = next(max(c.rates) for c in cases if c.model == "minilm" and c.baseline)
        report += ["", worker_texts_per_s(args.worker_events, per_event)]
    text = "\n".join(report)
    print(text)
    if args.write:
        args.write.write_text(text + "\n")


def logging_quiet() -> None:
    warnings.filterwarnings("ignore")  # deprecation notices of TorchScript, torch.ao and the ONNX exporter
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


if __name__ == "__main__":
    main()
