"""Kafka streaming inference worker: Faust agents, micro-batched PyTorch models, versioned predictions."""

__version__ = "0.1.0"
