"""Send events to the worker's input topic with confluent-kafka, keyed by user (per-user order is kept)."""

import json
import os
import time

from confluent_kafka import KafkaError, Message, Producer

producer = Producer(
    {
        "bootstrap.servers": os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092"),
        "enable.idempotence": True,  # retries never duplicate or reorder an event
    }
)
topic = os.environ.get("INPUT_TOPIC", "events")
features = [17.99, 10.38, 122.8, 1001.0, 0.1184, 0.2776, 0.3001, 0.1471, 0.2419, 0.07871,
            1.095, 0.9053, 8.589, 153.4, 0.006399, 0.04904, 0.05373, 0.01587, 0.03003, 0.006193,
            25.38, 17.33, 184.6, 2019.0, 0.1622, 0.6656, 0.7119, 0.2654, 0.4601, 0.1189]  # fmt: skip


def delivered(error: KafkaError | None, message: Message) -> None:
    if error is not None:
        raise SystemExit(f"not delivered: {error}")


for number in range(3):
    event = {
        "event_id": f"order-{number}",  # results carry it back; your id, or omitted
        "user_id": "user-7",
        "timestamp": int(time.time() * 1000),  # epoch ms, or an ISO-8601 string
        "features": features,  # the default model's 30 features, in metadata.json's feature_names order
    }
    producer.produce(topic, key=event["user_id"], value=json.dumps(event), on_delivery=delivered)
producer.flush(30)
print(f"sent 3 events to {topic}")
