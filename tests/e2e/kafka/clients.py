"""Kafka clients for the Kafka listener's end-to-end test (tests/e2e/kafka.rs), on
confluent-kafka (librdkafka). Each command prints JSON lines on stdout.

  clients.py produce BROKER TOPIC COUNT PREFIX
      Idempotent producer (acks=all): COUNT records with keys PREFIX-0 .. PREFIX-(COUNT-1).
      Prints {"delivered": n, "errors": [...]}.

  clients.py create-topic BROKER TOPIC PARTITIONS
      Creates a topic with the admin client. Prints {"error": null} or the error.

  clients.py list-topics BROKER
      Lists topics with the admin client. Prints {"topics": [...]}, or {"error": "..."} with
      the client's error reports ("errors": [...]).

  clients.py member BROKER GROUP TOPIC PROTOCOL
      A consumer group member (PROTOCOL: classic or consumer) that commits what it read after
      every poll. Prints {"event": "assigned", "partitions": [...]} whenever its partitions
      change and {"event": "record", "partition": p, "offset": o, "key": k} for each record.
      A line "stop" on stdin (or its end) closes it, leaving the group; it then prints
      {"event": "closed"}.

The environment variable KAFKA_CLIENT_CONFIG (a JSON object) adds client settings to every
command: security.protocol, sasl.* and ssl.* for an authenticated listener.
"""

import json
import os
import sys
import threading

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

EXTRA = json.loads(os.environ.get("KAFKA_CLIENT_CONFIG", "{}"))


def configured(config):
    config.update(EXTRA)
    return config


def emit(**fields):
    print(json.dumps(fields), flush=True)


def produce(broker, topic, count, prefix):
    producer = Producer(
        configured(
            {
                "bootstrap.servers": broker,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
            }
        )
    )
    errors = []
    delivered = 0

    def report(err, _msg):
        nonlocal delivered
        if err is not None:
            errors.append(str(err))
        else:
            delivered += 1

    for i in range(int(count)):
        key = f"{prefix}-{i}"
        producer.produce(topic, key=key, value=f"value of {key}", on_delivery=report)
        producer.poll(0)
    left = producer.flush(60)
    if left:
        errors.append(f"{left} records not delivered within 60 s")
    emit(delivered=delivered, errors=errors)


def member(broker, group, topic, protocol):
    config = {
        "bootstrap.servers": broker,
        "group.id": group,
        "group.protocol": protocol,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    }
    if protocol == "classic":
        config.update({"session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
    consumer = Consumer(configured(config))
    owned = set()

    def changed():
        emit(event="assigned", partitions=sorted(owned))

    def on_assign(_c, partitions):
        owned.update(p.partition for p in partitions)
        changed()

    def on_revoke(_c, partitions):
        owned.difference_update(p.partition for p in partitions)
        changed()

    consumer.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_revoke)
    stop = threading.Event()

    def watch_stdin():
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    while not stop.is_set():
        messages = consumer.consume(num_messages=100, timeout=0.2)
        read = False
        for m in messages:
            if m.error():
                emit(event="error", error=str(m.error()))
                continue
            read = True
            emit(
                event="record",
                partition=m.partition(),
                offset=m.offset(),
                key=m.key().decode(),
            )
        if read:
            try:
                consumer.commit(asynchronous=False)
            except KafkaException as e:
                # A commit refused during a rebalance: the records are read again by the
                # partition's next owner, as Kafka's at-least-once delivery has it.
                emit(event="commit_failed", error=str(e))
    consumer.close()
    emit(event="closed")


def create_topic(broker, topic, partitions):
    admin = AdminClient(configured({"bootstrap.servers": broker}))
    done = admin.create_topics([NewTopic(topic, int(partitions))], request_timeout=30)
    try:
        done[topic].result(timeout=60)
        emit(error=None)
    except Exception as e:  # noqa: BLE001 (the error is the output)
        emit(error=str(e))


def list_topics(broker):
    errors = []
    admin = AdminClient(
        configured({"bootstrap.servers": broker, "error_cb": lambda e: errors.append(str(e))})
    )
    try:
        metadata = admin.list_topics(timeout=15)
        emit(topics=sorted(metadata.topics))
    except KafkaException as e:
        admin.poll(1)  # serves error_cb with what the client saw
        emit(error=str(e), errors=errors)


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    commands = {
        "produce": produce,
        "member": member,
        "create-topic": create_topic,
        "list-topics": list_topics,
    }
    commands[command](*args)
