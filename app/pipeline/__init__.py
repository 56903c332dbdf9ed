"""The inference pipeline: records admitted, micro-batched into model calls, turned into outputs,
delivered, and acked only after delivery. Free of faust: driven and tested directly.

One module per stage: ``admission`` (decode, route, validate, cache lookup), ``batcher`` (batch and
predict), ``outputs`` (results, dead letters, shadow results); ``inference`` runs them in order and
delivers and acks; ``stage_metrics`` measures at the boundaries between them.
"""
