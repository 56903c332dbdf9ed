"""Bring your own model: train a scikit-learn classifier, export it to ONNX, write its metadata.json.

    python examples/byom/train_iris.py --out my-models      # writes my-models/iris/1/
    MODEL_DIR=my-models MODEL_NAMES=iris inference-worker worker

Needs scikit-learn and skl2onnx (pip install scikit-learn skl2onnx) to export, and the onnx extra
(pip install 'kafka-inference-worker[onnx]') to serve. The data set ships with scikit-learn.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from skl2onnx import to_onnx
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

FEATURE_NAMES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def train() -> Pipeline:
    features, labels = load_iris(return_X_y=True)
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(features, labels)


def export(model: Pipeline, out: Path, version: str = "1") -> Path:
    folder = out / "iris" / version
    folder.mkdir(parents=True, exist_ok=True)
    # zipmap=False: probabilities as a tensor (one column per class), not a list of {class: p} maps.
    sample = np.zeros((1, len(FEATURE_NAMES)), dtype=np.float32)
    onnx_model = to_onnx(model, sample, options={"zipmap": False})
    (folder / "model.onnx").write_bytes(onnx_model.SerializeToString())
    metadata: dict[str, Any] = {
        "name": "iris",
        "version": version,
        "format": "onnx",
        "artifact": "model.onnx",
        "kind": "classifier",
        "input_size": len(FEATURE_NAMES),
        "feature_names": FEATURE_NAMES,
        "labels": [str(name) for name in load_iris().target_names],  # in the order of the model's classes_
        "output": "probabilities",  # already probabilities: the worker must not softmax them again
        "output_name": "probabilities",  # skl2onnx's first output is the label
        "description": "StandardScaler + LogisticRegression on scikit-learn's iris data set",
    }
    (folder / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the model registry (MODEL_DIR) to write into")
    folder = export(train(), parser.parse_args().out)
    print(f"wrote {folder}: serve it with MODEL_DIR={folder.parent.parent} MODEL_NAMES=iris inference-worker worker")


if __name__ == "__main__":
    main()
