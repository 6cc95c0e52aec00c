"""Runnel's gRPC stubs for Python, generated from the .proto files on first use.

The first import compiles proto/runnel/v1/*.proto with grpcio-tools into _generated/ next to
this file (git-ignored), and compiles again whenever the .proto files or grpcio-tools change.
Then:

    from runnel_api import produce_pb2, produce_pb2_grpc

Copied out of the Runnel repository, set RUNNEL_PROTO_DIR to Runnel's proto/ directory.
"""

import hashlib
import importlib.metadata
import os
import pathlib
import shutil
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
PROTO_DIR = pathlib.Path(os.environ.get("RUNNEL_PROTO_DIR", HERE.parent.parent / "proto"))
OUT_DIR = HERE / "_generated"


def broker_address():
    """The broker's host:port: $RUNNEL_BROKER, else Runnel's default 127.0.0.1:7171."""
    return os.environ.get("RUNNEL_BROKER", "127.0.0.1:7171")


def channel():
    """A channel to broker_address() that sends credentials with every call when the
    environment names some: $RUNNEL_TOKEN (a bearer token), or $RUNNEL_USER with
    $RUNNEL_PASSWORD, for a broker with authentication on (docs/security.md). Use a TLS
    channel (grpc.secure_channel) for a broker on a network."""
    import base64
    import collections

    import grpc

    plain = grpc.insecure_channel(broker_address())
    token, user = os.environ.get("RUNNEL_TOKEN"), os.environ.get("RUNNEL_USER")
    if token:
        value = f"Bearer {token}"
    elif user:
        pair = f"{user}:{os.environ.get('RUNNEL_PASSWORD', '')}".encode()
        value = f"Basic {base64.b64encode(pair).decode()}"
    else:
        return plain

    fields = ["method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"]

    class Details(collections.namedtuple("Details", fields), grpc.ClientCallDetails):
        pass

    class Credentials(
        grpc.UnaryUnaryClientInterceptor,
        grpc.UnaryStreamClientInterceptor,
        grpc.StreamUnaryClientInterceptor,
        grpc.StreamStreamClientInterceptor,
    ):
        """Adds the `authorization` metadata to every call."""

        def _with(self, d):
            metadata = [*(d.metadata or []), ("authorization", value)]
            return Details(
                d.method, d.timeout, metadata, d.credentials, d.wait_for_ready, d.compression
            )

        def intercept_unary_unary(self, continuation, details, request):
            return continuation(self._with(details), request)

        def intercept_unary_stream(self, continuation, details, request):
            return continuation(self._with(details), request)

        def intercept_stream_unary(self, continuation, details, requests):
            return continuation(self._with(details), requests)

        def intercept_stream_stream(self, continuation, details, requests):
            return continuation(self._with(details), requests)

    return grpc.intercept_channel(plain, Credentials())


def record_json(topic, partition, record):
    """One record as a line of JSON; keys, values and header values as text (null if unset)."""
    import json

    def text(message, field):
        return getattr(message, field).decode(errors="replace") if message.HasField(field) else None

    headers = [[h.key, text(h, "value")] for h in record.headers]
    return json.dumps(
        {
            "topic": topic,
            "partition": partition,
            "offset": record.offset,
            "key": text(record, "key"),
            "value": text(record, "value"),
            "headers": headers,
        }
    )


def run(main):
    """Runs `main`, turning a failed RPC into one line on stderr and exit code 1."""
    import grpc

    try:
        main()
    except grpc.RpcError as e:
        sys.exit(f"error: {e.code().name}: {e.details()}")
    except KeyboardInterrupt:
        sys.exit(130)


def _generate():
    protos = sorted((PROTO_DIR / "runnel" / "v1").glob("*.proto"))
    if not protos:
        sys.exit(f"no .proto files in {PROTO_DIR}/runnel/v1; set RUNNEL_PROTO_DIR to proto/")
    digest = hashlib.sha256(importlib.metadata.version("grpcio-tools").encode())
    for proto in protos:
        digest.update(proto.name.encode() + b"\0" + proto.read_bytes())
    stamp = digest.hexdigest()
    if (OUT_DIR / "STAMP").is_file() and (OUT_DIR / "STAMP").read_text() == stamp:
        return

    from grpc_tools import protoc

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="_generated-", dir=HERE))
    args = ["protoc", f"-I{PROTO_DIR}", f"--python_out={tmp}", f"--grpc_python_out={tmp}"]
    if protoc.main(args + [str(p) for p in protos]) != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        sys.exit(f"generating the stubs from {PROTO_DIR} failed (protoc's message is above)")
    (tmp / "STAMP").write_text(stamp)
    shutil.rmtree(OUT_DIR, ignore_errors=True)
    try:
        tmp.rename(OUT_DIR)
    except OSError:  # another process generated them at the same moment
        shutil.rmtree(tmp, ignore_errors=True)


_generate()
sys.path.insert(0, str(OUT_DIR))

# Importable only now that they are generated.
from runnel.v1 import (  # noqa: E402
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    consume_pb2,
    consume_pb2_grpc,
    groups_pb2,
    groups_pb2_grpc,
    produce_pb2,
    produce_pb2_grpc,
    share_pb2,
    share_pb2_grpc,
)

__all__ = [
    "admin_pb2",
    "admin_pb2_grpc",
    "broker_address",
    "channel",
    "common_pb2",
    "consume_pb2",
    "consume_pb2_grpc",
    "groups_pb2",
    "groups_pb2_grpc",
    "produce_pb2",
    "produce_pb2_grpc",
    "record_json",
    "run",
    "share_pb2",
    "share_pb2_grpc",
]
