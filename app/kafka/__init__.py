"""Everything that talks to Kafka: faust's transport for batched input (``transport``, the one
place that touches faust's and aiokafka's private APIs), the output producer and its delivery
confirmation, exactly-once transactions, the commit policy, topic creation and client security."""
