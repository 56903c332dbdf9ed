"""The model contract in metadata.json: the schema, what a model outputs (logits, probabilities,
score, embedding), which ONNX output is read, and features sent by name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from jsonschema import Draft202012Validator

from app.errors import InvalidRecord, ModelLoadError
from app.models.metadata import INPUTS, KINDS, OUTPUTS, SUPPORTED_FORMATS, ModelMetadata
from app.models.registry import ModelRegistry
from app.models.runner import ModelRunner
from app.pipeline.admission import check_input
from app.records.events import PredictionEvent
from tests.conftest import ROOT, load_byom_example, load_schema

CPU = torch.device("cpu")


class Fixed(torch.nn.Module):
    """Returns the same rows for any batch of that many rows."""

    def __init__(self, rows: list[list[float]]) -> None:
        super().__init__()
        self.rows = torch.tensor(rows)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.rows[: batch.shape[0]]


def runner(rows: list[list[float]], **fields: Any) -> ModelRunner:
    metadata = ModelMetadata(
        **{"name": "m", "version": "1", "format": "torch.export", "artifact": "", "kind": "classifier", "input_size": 2}
        | {"labels": ("no", "yes"), "positive_label": "yes"}
        | fields
    )
    return ModelRunner(metadata, Fixed(rows), CPU)


def test_declared_probabilities_are_taken_as_they_are_not_softmaxed_again() -> None:
    rows = [[0.2, 0.8], [0.9, 0.1]]
    outputs = runner(rows, output="probabilities").predict([[0.0, 0.0]] * 2)
    assert [o.prediction for o in outputs] == pytest.approx([0.8, 0.1])
    assert [o.label for o in outputs] == ["yes", "no"]
    assert outputs[0].probabilities == pytest.approx({"no": 0.2, "yes": 0.8})
    # the same numbers read as logits are softmaxed: P(yes) of [0.2, 0.8] is 0.646, not 0.8
    logits = runner(rows).predict([[0.0, 0.0]])
    assert logits[0].prediction == pytest.approx(torch.softmax(torch.tensor([0.2, 0.8]), 0)[1].item())


def test_a_score_is_the_positive_labels_probability() -> None:
    outputs = runner([[0.7], [0.2]], output="score").predict([[0.0, 0.0]] * 2)
    assert [(o.label, o.prediction) for o in outputs] == [("yes", pytest.approx(0.7)), ("no", pytest.approx(0.2))]
    assert outputs[1].probabilities == pytest.approx({"no": 0.8, "yes": 0.2})


def test_logits_declared_as_probabilities_fail_the_batch() -> None:
    with pytest.raises(ValueError, match="declares output 'probabilities'"):
        runner([[2.0, -1.0]], output="probabilities").predict([[0.0, 0.0]])


def test_a_features_model_can_output_an_embedding() -> None:
    model = runner([[3.0, 4.0]], kind="embedding", labels=(), positive_label=None, output="embedding")
    (output,) = model.predict([[0.0, 0.0]])
    assert (output.embedding, output.prediction) == ([3.0, 4.0], 5.0)


def metadata_errors(document: dict[str, Any]) -> str:
    with pytest.raises(ModelLoadError) as caught:
        ModelMetadata.from_dict(document, Path("m/1/metadata.json"))
    assert "\n" not in str(caught.value)
    return str(caught.value)


BASE: dict[str, Any] = {
    "name": "m",
    "version": "1",
    "format": "onnx",
    "artifact": "model.onnx",
    "kind": "classifier",
    "input_size": 2,
    "labels": ["no", "yes"],
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"output": "odds"}, "at metadata.output: 'odds' is not one of"),
        ({"kind": "regressor", "output": "probabilities"}, "at metadata.output: 'score' was expected"),
        ({"output": "score"}, "'positive_label' is a required property"),
        ({"format": "torch.export", "output_name": "probabilities"}, "output_name applies to ONNX models only"),
        ({"labels": ["only"]}, "at metadata.labels"),
        ({"input_size": 0}, "at metadata.input_size"),
        ({"feature_names": ["a", "b", "c"]}, "3 feature_names for input_size 2"),
    ],
)
def test_bad_metadata_is_one_line_naming_the_file_and_field(change: dict[str, Any], message: str) -> None:
    error = metadata_errors({**BASE, **change})
    assert error.startswith("m/1/metadata.json: ") and message in error


def test_outputs_default_by_kind_and_are_shown() -> None:
    classifier = ModelMetadata.from_dict(BASE, Path("x"))
    regressor = ModelMetadata.from_dict({**BASE, "kind": "regressor", "labels": []}, Path("x"))
    assert (classifier.output, regressor.output) == ("logits", "score")
    assert classifier.to_dict()["output"] == "logits"


def test_the_metadata_schema_is_valid_and_every_shipped_model_matches_it() -> None:
    schema = load_schema("model_metadata")
    documents = [json.loads(path.read_text()) for path in sorted((ROOT / "models").glob("*/*/metadata.json"))]
    assert len(documents) >= 4
    for document in documents:
        schema.validate(document)
    assert isinstance(schema, Draft202012Validator)
    properties = schema.schema["properties"]
    assert set(properties["format"]["enum"]) == set(SUPPORTED_FORMATS)
    assert (properties["kind"]["enum"], properties["input"]["enum"]) == (list(KINDS), list(INPUTS))
    assert properties["output"]["enum"] == list(OUTPUTS)


def test_onnx_output_name_picks_the_probabilities_not_the_label(tmp_path: Path) -> None:
    example = load_byom_example()
    model = example.train()
    example.export(model, tmp_path)
    loaded = ModelRunner.load(ModelRegistry(tmp_path), "iris", "latest", CPU)
    rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
    outputs = loaded.predict(rows)
    expected = model.predict_proba(rows)
    served = [p for o in outputs for p in (o.probabilities or {}).values()]
    assert served == pytest.approx(expected.ravel().tolist(), abs=1e-5)
    assert [o.label for o in outputs] == ["setosa", "virginica", "versicolor"]
    metadata_path = tmp_path / "iris" / "1" / "metadata.json"
    metadata_path.write_text(json.dumps({**json.loads(metadata_path.read_text()), "output_name": "proba"}))
    with pytest.raises(ModelLoadError, match=r"iris/1: ONNX model has no output 'proba' .*'label', 'probabilities'"):
        ModelRunner.load(ModelRegistry(tmp_path), "iris", "latest", CPU)


def named_event(features: dict[str, float]) -> PredictionEvent:
    return PredictionEvent("e", "u", [], 0, 0.0, None, named_features=features)


def test_named_features_are_put_in_the_models_order() -> None:
    model = runner([[0.0, 1.0]], feature_names=("height", "weight"))
    event = check_input(named_event({"weight": 70.5, "height": 180}), model)
    assert (event.features, event.named_features) == ([180, 70.5], None)
    assert model.predict([event.features])[0].label == "yes"


@pytest.mark.parametrize(
    ("features", "fields", "reason"),
    [
        ({"height": 1.0}, {"feature_names": ("height", "weight")}, "needs 1 more: 'weight'"),
        ({"height": 1.0, "weight": 2.0, "age": 3}, {"feature_names": ("height", "weight")}, "takes no 'age'"),
        ({"height": 1.0, "weight": 2.0}, {}, "has no feature_names: send 'features' as an array"),
    ],
)
def test_named_features_that_do_not_fit_are_dead_lettered(
    features: dict[str, float], fields: dict[str, Any], reason: str
) -> None:
    with pytest.raises(InvalidRecord) as caught:
        check_input(named_event(features), runner([[0.0, 1.0]], **fields))
    assert caught.value.error_class == "wrong_feature_names" and reason in str(caught.value)
