"""Works through a topic as a member of a share group: a queue, one record at a time.

    python share_worker.py jobs --group workers --reject poison

ShareService.ShareFetch acquires records under a lock and carries the acknowledgements of the
previous round: each record is accepted, or rejected when its value contains --reject (the
group's dead-letter topic then gets a copy). Start several workers with the same --group: the
broker hands each record to one of them. Prints one JSON line per record with its delivery
count; stops after --count records, or on Ctrl-C, and then leaves the group so that records
it still holds go back at once.
"""

import argparse
import json
import sys
import uuid

from runnel_api import channel as runnel_channel, consume_pb2, record_json, run, share_pb2, share_pb2_grpc


def main():
    parser = argparse.ArgumentParser(description="Consume a Runnel topic as a share group member.")
    parser.add_argument("topic", nargs="?", default="jobs")
    parser.add_argument("--group", default="workers")
    parser.add_argument("--reject", default=None, help="reject records whose value contains this")
    parser.add_argument("--count", type=int, default=0, help="stop after this many records")
    args = parser.parse_args()

    member = uuid.uuid4().hex
    acks, seen = [], 0
    with runnel_channel() as channel:
        share = share_pb2_grpc.ShareServiceStub(channel)
        try:
            while args.count == 0 or seen < args.count:
                request = share_pb2.ShareFetchRequest(
                    group_id=args.group,
                    member_id=member,
                    topics=[args.topic],
                    acknowledgements=acks,
                    max_records=100,
                    max_wait_ms=1000,
                    format=consume_pb2.RECORD_FORMAT_RECORDS,
                )
                response = share.ShareFetch(request)
                for result in response.acknowledgements:
                    if result.HasField("error"):
                        print(f"acknowledgement refused: {result.error.message}", file=sys.stderr)
                acks = []
                for part in response.partitions:
                    for record, count in zip(part.records, part.delivery_counts):
                        acks.append(decide(args, part, record))
                        line = json.loads(record_json(part.topic, part.partition, record))
                        print(json.dumps({**line, "delivery_count": count}), flush=True)
                        seen += 1
        finally:
            if acks:
                share.ShareAcknowledge(
                    share_pb2.ShareAcknowledgeRequest(
                        group_id=args.group, member_id=member, acknowledgements=acks
                    )
                )
            share.LeaveShareGroup(share_pb2.LeaveShareGroupRequest(group_id=args.group, member_id=member))


def decide(args, part, record):
    """Accepts the record, or rejects it when its value holds the --reject text."""
    reject = args.reject is not None and args.reject.encode() in record.value
    return share_pb2.Acknowledgement(
        topic=part.topic,
        partition=part.partition,
        first_offset=record.offset,
        last_offset=record.offset,
        type=share_pb2.ACK_TYPE_REJECT if reject else share_pb2.ACK_TYPE_ACCEPT,
        error=f"value contains {args.reject!r}" if reject else "",
    )


if __name__ == "__main__":
    run(main)
