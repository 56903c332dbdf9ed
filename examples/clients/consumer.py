"""Read the worker's predictions with confluent-kafka (Ctrl-C stops)."""

import json
import os

from confluent_kafka import Consumer

consumer = Consumer(
    {
        "bootstrap.servers": os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092"),
        "group.id": os.environ.get("GROUP_ID", "my-service"),
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",  # needed only with PROCESSING_GUARANTEE=exactly_once; harmless else
    }
)
consumer.subscribe([os.environ.get("OUTPUT_TOPIC", "predictions")])
try:
    while True:
        message = consumer.poll(1.0)
        if message is None:
            continue
        if message.error():
            raise SystemExit(f"consumer error: {message.error()}")
        result = json.loads(message.value())
        version = f"{result['model_name']}@{result['model_version']}"
        print(result["event_id"], result["label"], f"{result['prediction']:.4f}", version, flush=True)
except KeyboardInterrupt:
    pass
finally:
    consumer.close()  # commits the offsets read
