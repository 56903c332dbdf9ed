"""The records that cross Kafka, as typed values mirroring ``schemas/``: input events, prediction
results, dead letters, and the observations statistics are built from."""
