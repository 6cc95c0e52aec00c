"""Consumes a topic as a member of a consumer group, with the broker doing the group work.

    python group_member.py orders --group audit

One GroupService.Consume stream: the broker joins the group, assigns partitions (it splits
them when you start a second member) and streams their records from the group's committed
offsets. After printing a partition's records the member says `processed` with the last
offset, and the broker commits the offset after it. Prints one JSON line per record; leaves
the group after --count records, or on Ctrl-C.
"""

import argparse
import queue
import signal
import sys

from runnel_api import channel as runnel_channel, consume_pb2, groups_pb2, groups_pb2_grpc, record_json, run


def main():
    parser = argparse.ArgumentParser(description="Consume a Runnel topic in a consumer group.")
    parser.add_argument("topic", nargs="?", default="orders")
    parser.add_argument("--group", default="audit")
    parser.add_argument("--count", type=int, default=0, help="leave after this many records")
    args = parser.parse_args()

    # What the member says, in order: the stream sends each request as it is put; None ends it.
    requests = queue.SimpleQueue()
    join = groups_pb2.JoinGroup(group=args.group, topics=[args.topic], client_id="group_member.py")
    start = groups_pb2.GroupConsumeStart(join=join, format=consume_pb2.RECORD_FORMAT_RECORDS)
    requests.put(groups_pb2.GroupConsumeRequest(start=start))
    leaving = False

    def leave(*_):
        """Asks to leave; the broker stores the commits, then ends the stream."""
        nonlocal leaving
        if leaving:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        leaving = True
        requests.put(groups_pb2.GroupConsumeRequest(leave=groups_pb2.LeaveGroup()))

    signal.signal(signal.SIGINT, leave)
    with runnel_channel() as channel:
        responses = groups_pb2_grpc.GroupServiceStub(channel).Consume(iter(requests.get, None))
        seen = 0
        for response in responses:  # until the broker ends the stream: OK after `leave`
            if response.HasField("joined"):
                print(f"joined {args.group} as {response.joined.member_id}", file=sys.stderr)
            if response.HasField("assignment"):
                print(f"assigned: {owned(response.assignment)}", file=sys.stderr)
            batch = response.records
            if not batch.records or leaving:
                continue
            for record in batch.records:
                print(record_json(batch.topic, batch.partition, record), flush=True)
            last = batch.records[-1].offset
            done = groups_pb2.Processed(topic=batch.topic, partition=batch.partition, offset=last)
            requests.put(groups_pb2.GroupConsumeRequest(processed=done))
            seen += len(batch.records)
            if 0 < args.count <= seen:
                leave()
        requests.put(None)


def owned(assignment):
    """The assigned partitions as `topic/partition` words."""
    words = [f"{tp.topic}/{p}" for tp in assignment.assigned for p in tp.partitions]
    return " ".join(words) or "(none)"


if __name__ == "__main__":
    run(main)
