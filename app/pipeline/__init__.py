"""The inference pipeline: records admitted, micro-batched into model calls, turned into outputs,
delivered, and acked only after delivery. Free of faust: driven and tested directly."""
