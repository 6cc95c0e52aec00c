"""Creates a topic if it is missing, then produces keyed records to it.

    python produce.py orders --count 10

Each record's key is its partition key: the broker hashes it (Kafka's murmur2), so all records
of one key go to one partition, in order. Prints one JSON line per record: where it went.
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
    parser = argparse.ArgumentParser(description="Produce keyed records to a Runnel topic.")
    parser.add_argument("topic", nargs="?", default="orders")
    parser.add_argument("--count", type=int, default=10, help="how many records")
    parser.add_argument("--partitions", type=int, default=3, help="if the topic is created")
    args = parser.parse_args()

    with runnel_channel() as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        try:
            admin.CreateTopic(
                admin_pb2.CreateTopicRequest(topic=args.topic, partition_count=args.partitions)
            )
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise

        records = [
            common_pb2.Record(
                key=f"order-{i}".encode(),
                value=json.dumps({"order": i, "total_cents": 100 * i}).encode(),
                headers=[common_pb2.RecordHeader(key="source", value=b"produce.py")],
            )
            for i in range(args.count)
        ]
        # One entry per record, each with its key as partition_key; entries that land on the
        # same partition are appended in request order.
        request = produce_pb2.ProduceRequest(
            topic=args.topic,
            acks=produce_pb2.ACKS_DURABLE,
            partitions=[
                produce_pb2.ProducePartition(partition_key=r.key, records=[r]) for r in records
            ],
        )
        response = produce_pb2_grpc.ProduceServiceStub(channel).Produce(request)

    for record, result in zip(records, response.results):
        if result.HasField("error"):
            raise SystemExit(f"{record.key.decode()}: {result.error.message}")
        where = {"partition": result.partition, "offset": result.batches[0].base_offset}
        print(json.dumps({"key": record.key.decode(), "value": record.value.decode(), **where}))


if __name__ == "__main__":
    run(main)
