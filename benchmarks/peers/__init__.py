"""The systems the worker is measured against, each the same pipeline in its own idiom.

Every peer reads PredictionEvent JSON from --input, runs the same model through the same
``ModelRunner`` and writes the same PredictionResult JSON (``app.records.results``) to --output, so
the only difference is the streaming machinery around the model.
"""
