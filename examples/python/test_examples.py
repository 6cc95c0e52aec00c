"""Runs the five examples against a broker and checks what they did.

    RUNNEL_BROKER=127.0.0.1:7171 python test_examples.py

Every check uses topics and groups of its own, so the broker may hold other data. Prints one
line per check and a summary; exits 0 when every check passed, else 1.
"""

import json
import os
import subprocess
import sys
import traceback
import uuid
from pathlib import Path

import grpc

from runnel_api import (
    admin_pb2,
    admin_pb2_grpc,
    channel,
    consume_pb2,
    consume_pb2_grpc,
    groups_pb2,
    groups_pb2_grpc,
    share_pb2,
    share_pb2_grpc,
)

HERE = Path(__file__).resolve().parent
BROKER = os.environ.get("RUNNEL_BROKER") or sys.exit("set RUNNEL_BROKER to the broker's host:port")
TIMEOUT_S = 60
CHANNEL = channel()
ADMIN = admin_pb2_grpc.AdminServiceStub(CHANNEL)
CONSUME = consume_pb2_grpc.ConsumeServiceStub(CHANNEL)
GROUPS = groups_pb2_grpc.GroupServiceStub(CHANNEL)
SHARE = share_pb2_grpc.ShareServiceStub(CHANNEL)


def example(name, *args):
    """Runs examples/python/<name>.py with `args`; returns the JSON lines of its stdout."""
    command = [sys.executable, str(HERE / f"{name}.py"), *args]
    env = {**os.environ, "RUNNEL_BROKER": BROKER}
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=TIMEOUT_S, env=env, check=False
    )
    assert done.returncode == 0, f"{name}.py {args} exited with {done.returncode}:\n{done.stderr}"
    return [json.loads(line) for line in done.stdout.splitlines()]


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def log_ends(topic):
    """Each partition's log end offset."""
    request = admin_pb2.DescribeTopicRequest(topic=topic)
    described = ADMIN.DescribeTopic(request, timeout=TIMEOUT_S).topic
    return {p.partition: p.log_end_offset for p in described.partitions}


def committed(group, topic):
    """The group's committed offset of each partition of `topic` (None where it has none)."""
    request = groups_pb2.FetchOffsetsRequest(
        group=group, partitions=[groups_pb2.TopicPartitions(topic=topic)]
    )
    offsets = GROUPS.FetchOffsets(request, timeout=TIMEOUT_S).offsets
    return {o.partition: o.offset if o.HasField("offset") else None for o in offsets}


def murmur2_partition(key, partitions):
    """Kafka's default partitioner, as docs/protocol.md specifies it."""
    m, mask = 0x5BD1E995, 0xFFFFFFFF
    h = (0x9747B28C ^ len(key)) & mask
    whole = len(key) // 4 * 4
    for i in range(0, whole, 4):
        k = int.from_bytes(key[i : i + 4], "little") * m & mask
        k = (k ^ k >> 24) * m & mask
        h = (h * m & mask) ^ k
    tail = key[whole:]
    if len(tail) == 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h = (h ^ tail[0]) * m & mask
    h = (h ^ h >> 13) * m & mask
    h ^= h >> 15
    return (h & 0x7FFFFFFF) % partitions


def as_consumed(topic, produced):
    """What a consumer prints for records that produce.py reported as `produced`."""
    return {
        (p["partition"], p["offset"]): {
            "topic": topic,
            "partition": p["partition"],
            "offset": p["offset"],
            "key": p["key"],
            "value": p["value"],
            "headers": [["source", "produce.py"]],
        }
        for p in produced
    }


def by_position(records):
    positions = {(r["partition"], r["offset"]): r for r in records}
    assert len(positions) == len(records), f"a record was printed twice: {records}"
    return positions


def test_produce_then_consume():
    topic = unique("py-orders")
    produced = example("produce", topic, "--count", "30")
    assert [p["key"] for p in produced] == [f"order-{i}" for i in range(30)], produced
    for p in produced:
        assert p["partition"] == murmur2_partition(p["key"].encode(), 3), p
    for partition in range(3):
        offsets = [p["offset"] for p in produced if p["partition"] == partition]
        assert offsets == list(range(len(offsets))), (partition, offsets)

    consumed = example("consume", topic, "--count", "30")
    assert by_position(consumed) == as_consumed(topic, produced)
    for partition in range(3):
        offsets = [r["offset"] for r in consumed if r["partition"] == partition]
        assert offsets == sorted(offsets), (partition, offsets)


def test_group_member_commits_and_resumes():
    topic, group = unique("py-payments"), unique("py-audit")
    produced = example("produce", topic, "--count", "30")
    consumed = example("group_member", topic, "--group", group, "--count", "30")
    assert by_position(consumed) == as_consumed(topic, produced)
    ends = log_ends(topic)
    assert committed(group, topic) == {p: end or None for p, end in ends.items()}, ends

    # A new member resumes from the commits: it gets the new records and nothing old.
    more = example("produce", topic, "--count", "5")
    resumed = example("group_member", topic, "--group", group, "--count", "5")
    assert by_position(resumed) == as_consumed(topic, more)
    assert all(r["offset"] >= ends[r["partition"]] for r in resumed), (ends, resumed)
    new_ends = log_ends(topic)
    assert committed(group, topic) == {p: end or None for p, end in new_ends.items()}, new_ends


def test_idempotent_retry_is_stored_once():
    topic = unique("py-ledger")
    first, retry = example("idempotent", topic)
    assert (first["attempt"], first["duplicate"]) == ("first", False), first
    assert (retry["attempt"], retry["duplicate"]) == ("retry", True), retry
    assert (retry["partition"], retry["base_offset"]) == (first["partition"], first["base_offset"])
    partition, base, count = first["partition"], first["base_offset"], first["records"]
    assert log_ends(topic)[partition] == base + count, "the retry was stored again"

    # Record i got base_offset + i; a read from inside the batch leaves out the earlier ones.
    request = consume_pb2.FetchRequest(
        partitions=[consume_pb2.FetchPartition(topic=topic, partition=partition, offset=base + 1)],
        format=consume_pb2.RECORD_FORMAT_RECORDS,
    )
    result = CONSUME.Fetch(request, timeout=TIMEOUT_S).results[0]
    assert not result.HasField("error"), result.error
    got = [(r.offset, r.key, r.value) for r in result.records]
    assert got == [(base + i, b"payment-1", f"step {i}".encode()) for i in range(1, count)], got

    # A second run is a new producer: stored after the first, its retry again a duplicate.
    first, retry = example("idempotent", topic, "--partition", str(partition))
    assert (first["base_offset"], first["duplicate"]) == (base + count, False), first
    assert (retry["base_offset"], retry["duplicate"]) == (base + count, True), retry
    assert log_ends(topic)[partition] == base + 2 * count


def test_share_workers_split_the_records_and_dead_letter_the_rejected():
    topic, group = unique("py-jobs"), unique("py-workers")
    dead = f"{topic}.dlq"
    ADMIN.CreateTopic(admin_pb2.CreateTopicRequest(topic=dead, partition_count=1), timeout=TIMEOUT_S)
    produced = example("produce", topic, "--count", "30")
    settings = share_pb2.ShareGroupSettings(
        dead_letter_topic=dead, start=share_pb2.SHARE_START_EARLIEST
    )
    SHARE.AlterShareGroup(
        share_pb2.AlterShareGroupRequest(group_id=group, settings=settings), timeout=TIMEOUT_S
    )
    # Two workers, one after the other: the second gets only what the first left.
    poison = '"order": 1'
    first = example("share_worker", topic, "--group", group, "--count", "10", "--reject", poison)
    left = 30 - len(first)
    rest = []
    if left > 0:
        rest = example("share_worker", topic, "--group", group, "--count", str(left), "--reject", poison)
    everything = first + rest
    assert by_position(everything) == {
        k: {**v, "delivery_count": 1} for k, v in as_consumed(topic, produced).items()
    }, everything
    rejected = [r for r in everything if poison in r["value"]]
    assert len(rejected) == 11, everything  # orders 1 and 10 to 19
    # The rejected ones reach the dead-letter topic, each once, with where it came from.
    request = consume_pb2.FetchRequest(
        partitions=[consume_pb2.FetchPartition(topic=dead, partition=0, offset=0)],
        format=consume_pb2.RECORD_FORMAT_RECORDS,
        max_wait_ms=1000,
        min_bytes=1,
    )
    letters = []
    for _ in range(50):
        letters = CONSUME.Fetch(request, timeout=TIMEOUT_S).results[0].records
        if len(letters) >= len(rejected):
            break
    origins = sorted(
        (int(h(r, "runnel.dlq.partition")), int(h(r, "runnel.dlq.offset"))) for r in letters
    )
    assert origins == sorted((r["partition"], r["offset"]) for r in rejected), (origins, rejected)


def h(record, name):
    """A record header's value as text."""
    return next(x.value.decode() for x in record.headers if x.key == name)


def main():
    try:
        grpc.channel_ready_future(CHANNEL).result(timeout=TIMEOUT_S)
    except grpc.FutureTimeoutError:
        sys.exit(f"no broker answers at {BROKER} (RUNNEL_BROKER)")
    checks = [
        test_produce_then_consume,
        test_group_member_commits_and_resumes,
        test_idempotent_retry_is_stored_once,
        test_share_workers_split_the_records_and_dead_letter_the_rejected,
    ]
    failed = 0
    for check in checks:
        try:
            check()
            print(f"ok   {check.__name__}", flush=True)
        except Exception:
            failed += 1
            print(f"FAIL {check.__name__}", flush=True)
            traceback.print_exc()
    print(f"{len(checks) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
