#!/usr/bin/env python3
"""Runnel beside Iggy and NATS JetStream: the same workloads, interleaved, on one machine.

Run through scripts/bench-peers.sh, which builds Runnel and finds the peers; this file is
the driver. Each system runs as a server on loopback with a fresh data directory under
BENCH_DIR and is loaded by its own benchmark client: runnel-bench, iggy-bench, and
scripts/peers/jetstream-bench.go. Every round runs each workload once per system, the
systems in a different order each round. A run's figures:

- messages/s and MB/s as the benchmark client reports them (its own timed part);
- CPU per message of the server and of the client, each from its own process counters
  (the server's /proc/PID/stat before and after; the client's rusage at exit), so the
  clients' reporting differences do not matter, and of the whole machine (/proc/stat),
  which also counts the kernel's writeback threads;
- for each produce workload, `dd` of the same bytes into a file on the same disk without
  fsync in the same round: the raw buffered write speed, the yardstick of the produce target.

Results: one JSON object per run in BENCH_DIR/results.jsonl; a table of medians (min-max)
and ratios on stdout.
"""

import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROUNDS = int(os.environ.get("ROUNDS", "3"))
MESSAGES = int(os.environ.get("MESSAGES", "2000000"))
DURABLE_MESSAGES = int(os.environ.get("DURABLE_MESSAGES", "2000"))
BATCH = int(os.environ.get("BATCH", "1000"))
SETTLE_LOST = float(os.environ.get("SETTLE_LOST", "5"))
SETTLE_MAX = float(os.environ.get("SETTLE_MAX", "30"))
# Workloads that run back to back on one system: a consume reads what the produce before it
# wrote, while it is still in the page cache.
GROUPS = [["produce1", "consume1"], ["produce4", "consume4"], ["produce1-100"], ["produce4-100"],
          ["durable1"], ["durable16"]]
ALL = [name for group in GROUPS for name in group]
ONLY = os.environ.get("ONLY", " ".join(ALL)).split()
BENCH_DIR = Path(os.environ.get("BENCH_DIR", "target/bench-peers")).resolve()
RUNNEL_BIN = Path(os.environ["RUNNEL_BIN"]).resolve()
IGGY_BIN = Path(os.environ["IGGY_BIN"]).resolve() if os.environ.get("IGGY_BIN") else None
IGGY_CONFIG = os.environ.get("IGGY_CONFIG")
NATS_SERVER = os.environ.get("NATS_SERVER") or None
JETSTREAM_BENCH = str(Path(os.environ["JETSTREAM_BENCH"]).resolve()) if os.environ.get("JETSTREAM_BENCH") else None
RUNNEL_PORT = int(os.environ.get("RUNNEL_PORT", "37271"))
RUNNEL_DURABILITY = os.environ.get("RUNNEL_DURABILITY", "never")
IGGY_PORT = int(os.environ.get("IGGY_PORT", "37281"))  # and the next one: its HTTP API
NATS_PORT = int(os.environ.get("NATS_PORT", "37291"))
TICK = os.sysconf("SC_CLK_TCK")


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def machine_busy_s():
    """CPU seconds the whole machine spent busy (every process and kernel thread): the
    writeback a server leaves to the kernel's flusher threads shows here and nowhere else."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / TICK


def process_cpu_s(pid):
    """User + system CPU seconds of a running process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def run_client(argv):
    """Runs a benchmark client to its end; returns (stdout, stderr, its CPU seconds)."""
    before = os.times()
    proc = subprocess.run(argv, capture_output=True, text=True)
    after = os.times()
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(argv[0]).name} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    cpu = (after.children_user + after.children_system) - (before.children_user + before.children_system)
    return proc.stdout, proc.stderr, cpu


def wait_port(port, what, proc):
    for _ in range(300):
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited at start; see its log under {BENCH_DIR}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port}")


class Server:
    """A server process with its data directory and log."""

    def __init__(self, name, argv, port, env=None, cwd=None):
        self.name = name
        self.dir = BENCH_DIR / name
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        argv = [a.replace("{dir}", str(self.dir)) for a in argv]
        env = {k: v.replace("{dir}", str(self.dir)) for k, v in (env or {}).items()}
        self.log = open(self.dir.parent / f"{name}.log", "w")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **env}, cwd=cwd or self.dir)
        wait_port(port, name, self.proc)

    def wait_log(self, line, timeout_s=120):
        """Waits until the server's log holds `line` (a readiness message)."""
        path = self.dir.parent / f"{self.name}.log"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start; see {path}")
            if line in path.read_text(errors="replace"):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not log {line!r} within {timeout_s} s; see {path}")

    def cpu_s(self):
        return process_cpu_s(self.proc.pid)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def workload(name):
    """(kind, producers or consumers, message size) of a workload name."""
    m = re.fullmatch(r"(produce|consume|durable)(\d+)(?:-(\d+))?", name)
    return m.group(1), int(m.group(2)), int(m.group(3) or 1000)


class Runnel:
    name = "runnel"

    def __init__(self):
        self.bench = str(RUNNEL_BIN / "runnel-bench")
        # Topics' durability policy: by default "never", the setting that, like the peers'
        # defaults, leaves writeback to the kernel; the durable workloads fsync anyway
        # (ACKS_DURABLE).
        self.server = Server("runnel", [str(RUNNEL_BIN / "runneld"), "--data-dir", "{dir}/data",
                                        "--listen", f"127.0.0.1:{RUNNEL_PORT}",
                                        "--set", "metrics.enabled=false",
                                        "--set", f"topic_defaults.durability={RUNNEL_DURABILITY}"],
                             RUNNEL_PORT)
        # The port answers while partitions open; the broker serves once it logs this.
        self.server.wait_log("runneld started")

    def _bench(self, *args):
        out, _, cpu = run_client([self.bench, "--broker", f"127.0.0.1:{RUNNEL_PORT}", "--output",
                                  "json", *args, "--quiet"])
        r = json.loads(out)
        return r["records"], r["records_per_sec"], cpu

    def produce(self, n, size, tag, send="all"):
        return self._bench("produce", "--topic", f"p{n}-{size}-{tag}", "--partitions", str(n),
                           "--producers", str(n), "--records", str(MESSAGES), "--record-size",
                           str(size), "--batch-size", str(BATCH), "--send", send)

    def consume(self, n, size, tag):
        # Reads what produce() of the same tag wrote (the bench only tops up what is missing).
        return self._bench("consume", "--topic", f"p{n}-{size}-{tag}", "--partitions", str(n),
                        "--consumers", str(n), "--records", str(MESSAGES), "--record-size",
                        str(size), "--batch-size", str(BATCH))

    def durable(self, n, size, tag):
        return self._bench("produce", "--topic", f"d{n}-{tag}", "--partitions", str(n),
                           "--producers", str(n), "--records", str(DURABLE_MESSAGES * n),
                           "--record-size", str(size), "--acks", "durable", "--batch-size", "1",
                           "--max-in-flight", "1", "--linger", "0", "--buffer", "4KiB", "--cleanup")

    def cleanup(self, n, size, tag):
        subprocess.run([str(RUNNEL_BIN / "runnel"), "--broker", f"127.0.0.1:{RUNNEL_PORT}", "topic",
                        "delete", f"p{n}-{size}-{tag}"], capture_output=True)
        # The broker removes a deleted topic's files in the background.
        deleted = self.server.dir / "data" / "deleted"
        for _ in range(600):
            if not deleted.exists() or not any(deleted.iterdir()):
                return
            time.sleep(0.1)


class Iggy:
    name = "iggy"

    def __init__(self):
        env = {"IGGY_SYSTEM_PATH": "{dir}/data", "IGGY_TCP_ADDRESS": f"127.0.0.1:{IGGY_PORT}",
               "IGGY_HTTP_ENABLED": "true", "IGGY_HTTP_ADDRESS": f"127.0.0.1:{IGGY_PORT + 1}",
               "IGGY_QUIC_ENABLED": "false",
               "IGGY_WEBSOCKET_ENABLED": "false", "IGGY_ROOT_USERNAME": "iggy",
               "IGGY_ROOT_PASSWORD": "iggy", "IGGY_SYSTEM_LOGGING_FILE_ENABLED": "false"}
        if IGGY_CONFIG:
            env["IGGY_CONFIG_PATH"] = IGGY_CONFIG
        self.server = Server("iggy", [str(IGGY_BIN / "iggy-server")], IGGY_PORT, env=env)

    def _bench(self, size, per_batch, batches, kind, n, *extra):
        argv = [str(IGGY_BIN / "iggy-bench"), "--message-size", str(size), "--messages-per-batch",
                str(per_batch), "--message-batches", str(batches), *extra, kind,
                "--streams", str(n), "--producers" if "producer" in kind else "--consumers", str(n),
                "tcp", "--server-address", f"127.0.0.1:{IGGY_PORT}"]
        out, err, cpu = run_client(argv)
        text = re.sub(r"\x1b\[[0-9;]*m", "", out + err)
        m = re.search(r"Total throughput: ([\d.]+) MB/s, (\d+) messages/s", text)
        if not m:
            raise RuntimeError(f"iggy-bench printed no throughput: {text[-1500:]}")
        return per_batch * batches * n, float(m.group(2)), cpu

    def produce(self, n, size, tag):
        return self._bench(size, BATCH, MESSAGES // BATCH // n, "pinned-producer", n)

    def consume(self, n, size, tag):
        return self._bench(size, BATCH, MESSAGES // BATCH // n, "pinned-consumer", n)

    def cleanup(self, n, size, tag):
        token = self._token()
        for i in range(1, n + 1):
            try:
                self._http("DELETE", f"/streams/bench-stream-{i}", token=token)
            except urllib.error.HTTPError:
                pass

    def _token(self):
        login = self._http("POST", "/users/login", {"username": "iggy", "password": "iggy"})
        return login["access_token"]["token"]

    def durable(self, n, size, tag):
        # iggy-bench's --enforce-fsync alone fsyncs only when a topic's journal reaches
        # messages_required_to_save (1024 by default), acknowledging the messages before it:
        # the topics are made here, through the HTTP API, with an fsync for every message.
        self.cleanup(n, size, tag)
        token = self._token()
        for i in range(1, n + 1):
            stream = f"bench-stream-{i}"
            self._http("POST", "/streams", {"name": stream}, token)
            self._http("POST", f"/streams/{stream}/topics", {
                "name": "topic-1", "partitions_count": 1, "compression_algorithm": "none",
                "message_expiry": 0, "max_topic_size": 0,
                "options": {"enforce_fsync": "true", "messages_required_to_save": "1"}}, token)
        return self._bench(size, 1, DURABLE_MESSAGES, "pinned-producer", n, "--reuse-streams")

    def _http(self, method, path, body=None, token=None):
        headers = {"content-type": "application/json"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        request = urllib.request.Request(f"http://127.0.0.1:{IGGY_PORT + 1}{path}", method=method,
                                         data=json.dumps(body).encode() if body else None,
                                         headers=headers)
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read()
        return json.loads(text) if text else None


class Nats:
    name = "nats"

    def __init__(self):
        self.server = Server("nats", [NATS_SERVER, "-js", "-sd", "{dir}/data", "-a", "127.0.0.1",
                                      "-p", str(NATS_PORT)], NATS_PORT)

    def _bench(self, *args):
        out, _, cpu = run_client([JETSTREAM_BENCH, "-url", f"nats://127.0.0.1:{NATS_PORT}", *args])
        r = json.loads(out)
        return r["messages"], r["messages_per_sec"], cpu

    def produce(self, n, size, tag):
        return self._bench("-mode", "produce", "-producers", str(n), "-messages", str(MESSAGES),
                           "-size", str(size), "-window", str(BATCH), "-stream", f"p{n}")

    def consume(self, n, size, tag):
        return self._bench("-mode", "consume", "-consumers", str(n), "-messages", str(MESSAGES),
                           "-batch", str(BATCH), "-stream", f"p{n}")

    def cleanup(self, n, size, tag):
        run_client([JETSTREAM_BENCH, "-url", f"nats://127.0.0.1:{NATS_PORT}", "-mode", "delete",
                    "-stream", f"p{n}"])


def buffered_write_mb_s(total_bytes):
    """dd of total_bytes into a new file on the data disk, without fsync: MB/s."""
    path = BENCH_DIR / "dd.bin"
    r = subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=1M",
                        f"count={max(1, total_bytes >> 20)}"], capture_output=True, text=True)
    path.unlink(missing_ok=True)
    m = re.search(r"(\d+) bytes .* copied, ([\d.]+) s", r.stderr)
    return int(m.group(1)) / float(m.group(2)) / 1e6


def settle():
    """Waits (up to SETTLE_MAX seconds) until two spinning threads lose less than SETTLE_LOST
    percent of their time: after a run has written and deleted gigabytes, this kind of VM
    loses CPU for seconds while the guest hands freed memory back to the host, and a run
    started then measures that instead of the system under test."""
    deadline = time.monotonic() + SETTLE_MAX
    while time.monotonic() < deadline:
        out = subprocess.run([str(RUNNEL_BIN / "runnel-bench"), "--output", "json", "cpu",
                              "--duration", "2s"], capture_output=True, text=True).stdout
        if json.loads(out)["details"]["lost_percent"] < SETTLE_LOST:
            return


def record(results, row):
    results.append(row)
    with open(BENCH_DIR / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def measure(system, name, rnd, results, **kw):
    """Runs one workload on one system and records it; False if it failed."""
    kind, n, size = workload(name)
    fn = getattr(system, kind, None)
    if fn is None:
        return True
    settle()
    server_before, machine_before = system.server.cpu_s(), machine_busy_s()
    try:
        messages, rate, client_cpu = fn(n, size, rnd, **kw)
    except RuntimeError as e:
        log(f"{system.name} {name} round {rnd}: {e}")
        return False
    server_cpu = system.server.cpu_s() - server_before
    machine_cpu = machine_busy_s() - machine_before
    label = system.name + ("-send" if kw.get("send") == "record" else "")
    row = {"system": label, "workload": name, "round": rnd, "messages": messages,
           "messages_per_sec": rate, "mb_per_sec": rate * size / 1e6,
           "server_us_per_msg": server_cpu * 1e6 / messages,
           "client_us_per_msg": client_cpu * 1e6 / messages,
           "machine_us_per_msg": machine_cpu * 1e6 / messages,
           "load": float(Path("/proc/loadavg").read_text().split()[0])}
    record(results, row)
    log(f"round {rnd} {name:13} {label:12} {rate:>12,.0f} msg/s  cpu/msg server "
        f"{row['server_us_per_msg']:.2f} client {row['client_us_per_msg']:.2f} machine "
        f"{row['machine_us_per_msg']:.2f} us")
    return True



def run_group(system, group, rnd, results):
    """Runs a group's workloads on one system, then deletes what they wrote, so that the
    next system starts with as much free memory as this one did."""
    kind, n, size = workload(group[0])
    for name in group:
        if not measure(system, name, rnd, results):
            break
    if kind == "produce":
        system.cleanup(n, size, rnd)
        if isinstance(system, Runnel) and size == 1000:
            # The same workload with one `send` per record, as applications call it.
            measure(system, group[0], rnd, results, send="record")
            system.cleanup(n, size, rnd)
    elif kind == "durable" and isinstance(system, Iggy):
        system.cleanup(n, size, rnd)


def main():
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    (BENCH_DIR / "results.jsonl").write_text("")
    systems = [Runnel()]
    if IGGY_BIN:
        systems.append(Iggy())
    if NATS_SERVER and JETSTREAM_BENCH:
        systems.append(Nats())
    log("systems: " + ", ".join(s.name for s in systems))
    results = []
    try:
        for rnd in range(1, ROUNDS + 1):
            for g, group in enumerate(GROUPS):
                group = [w for w in group if w in ONLY]
                if not group:
                    continue
                kind, n, size = workload(group[0])
                if kind == "produce":
                    mb = buffered_write_mb_s(MESSAGES * size)
                    record(results, {"system": "dd", "workload": group[0], "round": rnd,
                                     "mb_per_sec": mb, "messages_per_sec": mb * 1e6 / size})
                shift = (rnd + g) % len(systems)
                for system in systems[shift:] + systems[:shift]:
                    run_group(system, group, rnd, results)
    finally:
        for s in systems:
            s.server.stop()
    print_table(results, [s.name for s in systems])


def med(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return (statistics.median(vals), min(vals), max(vals)) if vals else None


def fmt(m, digits=0):
    if m is None:
        return "-"
    return f"{m[0]:,.{digits}f} ({m[1]:,.{digits}f}-{m[2]:,.{digits}f})"


def print_table(results, systems):
    names = [n for n in ALL if n in ONLY]
    labels = ["runnel", "runnel-send"] + systems[1:]
    print("| workload | " + " | ".join(f"{s} msg/s" for s in labels) + " | runnel / iggy | runnel / dd |")
    print("|---|" + "---:|" * (len(labels) + 2))
    for name in names:
        rows = lambda s: [r for r in results if r["workload"] == name and r["system"] == s]
        rates = {s: med(rows(s), "messages_per_sec") for s in labels}
        ratio = lambda a, b: f"{a[0] / b[0]:.2f}" if a and b else "-"
        dd = med(rows("dd"), "messages_per_sec")
        print(f"| {name} | " + " | ".join(fmt(rates[s]) for s in labels)
              + f" | {ratio(rates['runnel'], rates.get('iggy'))} | {ratio(rates['runnel'], dd)} |")
    print()
    print("| workload | " + " | ".join(f"{s} server / client / machine us/msg" for s in labels)
          + " | runnel / iggy, server + client | runnel / iggy, machine |")
    print("|---|" + "---:|" * (len(labels) + 2))
    for name in names:
        cells, totals, machine = [], {}, {}
        for s in labels:
            rows = [r for r in results if r["workload"] == name and r["system"] == s]
            sv, cl = med(rows, "server_us_per_msg"), med(rows, "client_us_per_msg")
            mc = med(rows, "machine_us_per_msg")
            cells.append(f"{sv[0]:.2f} / {cl[0]:.2f} / {mc[0]:.2f}" if sv and cl and mc else "-")
            if sv and cl and mc:
                totals[s], machine[s] = sv[0] + cl[0], mc[0]
        ratio = lambda d: f"{d['runnel'] / d['iggy']:.2f}" if "runnel" in d and "iggy" in d else "-"
        print(f"| {name} | " + " | ".join(cells) + f" | {ratio(totals)} | {ratio(machine)} |")


if __name__ == "__main__":
    main()
