"""Writing the config log: one record per change, partitioned by tenant (so one tenant's changes
stay in order) and keyed by object (so compaction keeps each object's latest state)."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas.config import ConfigRecord
from streams.kafka import partition_for
from streams.topics import CONFIG


def record_key(rec: ConfigRecord) -> bytes:
    return f"{rec.kind}:{rec.data.get('id', rec.id)}".encode()


async def publish(producer: AIOKafkaProducer, records: list[ConfigRecord]) -> None:
    partitions = producer.client.cluster.partitions_for_topic(CONFIG)
    if not partitions:
        await producer.client.force_metadata_update()
        partitions = producer.client.cluster.partitions_for_topic(CONFIG)
    n = len(partitions or ()) or 1
    futures = [
        await producer.send(
            CONFIG,
            rec.model_dump_json().encode(),
            key=record_key(rec),
            partition=partition_for(rec.tenant_id, n),
        )
        for rec in records
    ]
    for fut in futures:
        await fut


async def config_log_size(bootstrap: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(CONFIG) or set()
        tps = [TopicPartition(CONFIG, p) for p in parts]
        ends = await consumer.end_offsets(tps) if tps else {}
        return sum(ends.values())
    finally:
        await consumer.stop()
