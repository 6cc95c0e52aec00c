"""Produces records idempotently, then sends the very same request again.

    python idempotent.py orders

A retry after a lost answer looks exactly like this: the broker recognises the producer id,
epoch and sequence, stores the records only once, and answers the retry with duplicate = true
and the original offsets. Prints one JSON line per attempt.
"""

import argparse
import json

import grpc

from runnel_api import (
    admin_pb2,
    admin_pb2_grpc,
    channel as runnel_channel,
    common_pb2,
    produce_pb2,
    produce_pb2_grpc,
    run,
)


def main():
    parser = argparse.ArgumentParser(description="Produce idempotently and retry.")
    parser.add_argument("topic", nargs="?", default="orders")
    parser.add_argument("--partition", type=int, default=0)
    args = parser.parse_args()

    with runnel_channel() as channel:
        try:
            admin_pb2_grpc.AdminServiceStub(channel).CreateTopic(
                admin_pb2.CreateTopicRequest(topic=args.topic, partition_count=3)
            )
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
        producer = produce_pb2_grpc.ProduceServiceStub(channel)
        ids = producer.InitProducer(produce_pb2.InitProducerRequest())

        records = [
            common_pb2.Record(key=b"payment-1", value=f"step {i}".encode()) for i in range(3)
        ]
        # A new producer's first records to this partition: sequence 0, 1 and 2.
        sequence = produce_pb2.ProducerSequence(
            producer_id=ids.producer_id, producer_epoch=ids.producer_epoch, base_sequence=0
        )
        request = produce_pb2.ProduceRequest(
            topic=args.topic,
            acks=produce_pb2.ACKS_DURABLE,
            partitions=[
                produce_pb2.ProducePartition(
                    partition=args.partition, records=records, producer=sequence
                )
            ],
        )
        for attempt in ("first", "retry"):
            result = producer.Produce(request).results[0]
            if result.HasField("error"):
                raise SystemExit(f"{attempt}: {result.error.message}")
            batch = result.batches[0]
            print(
                json.dumps(
                    {
                        "attempt": attempt,
                        "partition": result.partition,
                        "base_offset": batch.base_offset,
                        "records": len(records),
                        "duplicate": batch.duplicate,
                    }
                )
            )


if __name__ == "__main__":
    run(main)
