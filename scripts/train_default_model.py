"""Train the default model and write it into the model registry.

A small MLP classifier on scikit-learn's bundled Wisconsin breast-cancer data set (569 rows,
30 features, shipped inside the scikit-learn wheel, so nothing is downloaded). Standardisation
is baked into the network so the worker feeds raw features. The artifact is a torch.export
program (``model.pt2``) with a dynamic batch dimension, plus ``metadata.json``.

    python scripts/train_default_model.py [--out models] [--name breast-cancer] [--version 1] [--hidden 32] [--seed 7]

Version 1 is the default (hidden 32, seed 7); version 2 (``--version 2 --hidden 64 --seed 11``)
is a second candidate, for routing splits, shadows and the ensemble of both. ``--hidden`` takes
one width per hidden layer: the benchmark's ten-times-larger model, ``breast-cancer-wide``
(``--name breast-cancer-wide --hidden 128,128 --seed 11``: 30-128-128-2, 20,480 multiply-adds per
row against the default's 2,048), has the same features and outputs, so every system can run it.
"""

from __future__ import annotations

import argparse
import itertools
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from torch import nn

NAME = "breast-cancer"
SEED = 7
REFERENCE_BINS = 10


class Classifier(nn.Module):
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self, mean: torch.Tensor, std: torch.Tensor, hidden: tuple[int, ...] = (32,), classes: int = 2
    ) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        widths = [mean.numel(), *hidden]
        layers: list[nn.Module] = []
        for width_in, width_out in itertools.pairwise(widths):
            layers += [nn.Linear(width_in, width_out), nn.ReLU()]
        self.layers = nn.Sequential(*layers, nn.Linear(widths[-1], classes))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.layers((features - self.mean) / self.std)
        return logits


def train(x: np.ndarray, y: np.ndarray, hidden: tuple[int, ...]) -> Classifier:
    features = torch.tensor(x, dtype=torch.float32)
    targets = torch.tensor(y, dtype=torch.long)
    model = Classifier(features.mean(0), features.std(0).clamp_min(1e-6), hidden)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(300):
        optimiser.zero_grad()
        loss = nn.functional.cross_entropy(model(features), targets)
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
    return model.eval()


def probabilities(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return torch.softmax(model(torch.tensor(x, dtype=torch.float32)), dim=1).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "models")
    parser.add_argument("--name", default=NAME)
    parser.add_argument("--version", default="1")
    parser.add_argument("--hidden", default="32", help="hidden layer widths, comma-separated (e.g. 128,128)")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    data = load_breast_cancer()
    labels = [str(name) for name in data.target_names]  # ['malignant', 'benign']
    x_train, x_test, y_train, y_test = train_test_split(
        data.data, data.target, test_size=0.25, random_state=SEED, stratify=data.target
    )
    hidden = tuple(int(width) for width in args.hidden.split(","))
    model = train(x_train, y_train, hidden)
    accuracy = float((probabilities(model, x_test).argmax(1) == y_test).mean())

    architecture = "-".join(str(width) for width in (data.data.shape[1], *hidden, len(labels)))
    positive = labels.index("malignant")
    scores = probabilities(model, data.data)[:, positive]
    edges = np.linspace(0.0, 1.0, REFERENCE_BINS + 1)
    counts, _ = np.histogram(scores, bins=edges)

    target = args.out / args.name / args.version
    target.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    example = torch.tensor(x_train[:8], dtype=torch.float32)
    program = torch.export.export(model, (example,), dynamic_shapes={"features": {0: batch}})
    torch.export.save(program, target / "model.pt2")

    metadata = {
        "name": args.name,
        "version": args.version,
        "format": "torch.export",
        "artifact": "model.pt2",
        "kind": "classifier",
        "input_size": int(data.data.shape[1]),
        "feature_names": [str(name) for name in data.feature_names],
        "labels": labels,
        "positive_label": "malignant",
        "description": f"MLP ({architecture}) on the Wisconsin breast-cancer data set; prediction = P(malignant)",
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "training": {
            "dataset": "sklearn.datasets.load_breast_cancer",
            "rows_train": len(x_train),
            "rows_test": len(x_test),
            "test_accuracy": round(accuracy, 4),
            "seed": args.seed,
        },
        "reference_distribution": {
            "bin_edges": [round(float(edge), 6) for edge in edges],
            "fractions": [round(float(count) / len(scores), 6) for count in counts],
        },
        "sample_stats": {
            label: {
                "mean": [round(float(v), 6) for v in data.data[data.target == index].mean(0)],
                "std": [round(float(v), 6) for v in data.data[data.target == index].std(0)],
            }
            for index, label in enumerate(labels)
        },
    }
    (target / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    print(f"wrote {target} (test accuracy {accuracy:.3f})")


if __name__ == "__main__":
    main()
