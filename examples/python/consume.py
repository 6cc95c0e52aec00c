"""Reads every partition of a topic from the start, all on ONE Subscribe stream.

    python consume.py orders --count 10

The broker decodes the records (RECORD_FORMAT_RECORDS) and pushes new ones as they arrive;
every response names its topic and partition. Prints one JSON line per record and stops after
--count records (without it, runs until Ctrl-C).
"""

import argparse

from runnel_api import (
    admin_pb2,
    admin_pb2_grpc,
    channel as runnel_channel,
    consume_pb2,
    consume_pb2_grpc,
    record_json,
    run,
)


def main():
    parser = argparse.ArgumentParser(description="Stream the records of a Runnel topic.")
    parser.add_argument("topic", nargs="?", default="orders")
    parser.add_argument("--count", type=int, default=0, help="stop after this many records")
    args = parser.parse_args()

    with runnel_channel() as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        topic = admin.DescribeTopic(admin_pb2.DescribeTopicRequest(topic=args.topic)).topic
        earliest = consume_pb2.StartPosition(boundary=consume_pb2.OFFSET_BOUNDARY_EARLIEST)
        request = consume_pb2.SubscribeRequest(
            partitions=[
                consume_pb2.SubscribePartition(topic=args.topic, partition=p, start=earliest)
                for p in range(topic.partition_count)
            ],
            format=consume_pb2.RECORD_FORMAT_RECORDS,
        )
        responses = consume_pb2_grpc.ConsumeServiceStub(channel).Subscribe(request)
        seen = 0
        for response in responses:
            for record in response.records:
                print(record_json(response.topic, response.partition, record), flush=True)
                seen += 1
                if seen == args.count:
                    responses.cancel()
                    return


if __name__ == "__main__":
    run(main)
