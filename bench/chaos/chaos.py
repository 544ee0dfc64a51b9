#!/usr/bin/env python3
"""postgate chaos suite (issue #13, item 7): faults under continuous load,
with per-message accounting.

Runs the real postgate binary on 127.0.0.1 with a store (SQLite file or a
PostgreSQL database) and an upstream sink in this process. Load threads
submit messages with unique Message-IDs over SMTP AUTH and record every one
answered 250; the sink counts every arrival by Message-ID. For each
scenario it prints accepted / delivered / lost / duplicated and the time to
recover:

  accepted    messages answered 250
  delivered   accepted messages that arrived at the sink (at least once)
  lost        accepted messages that never arrived (the drain waits for them)
  duplicated  extra arrivals of accepted messages (arrivals - delivered)
  dup_bound   for sigkill, the most a crash may repeat: kills x the upstream's
              max_connections (one message per connection per kill)
  recover_s   fault end -> both a new 250 and a new arrival at the sink
  drain_s     fault end -> every accepted message arrived

Usually run through bench/chaos/run.sh, which also provides a PostgreSQL
it may stop and restart. Only 127.0.0.1 is used.
"""

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

USER, PASSWORD, DOMAIN = "chaos", "chaos-password-1", "chaos.test"
MSGID = re.compile(rb"(?im)^Message-ID:\s*<([^>]+)>")
# The sink upstream's max_connections (postgate's default): a SIGKILL may
# repeat at most one message per connection.
CONNECTIONS = 8


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# --- the upstream sink --------------------------------------------------------


class Sink:
    """A small SMTP server (PIPELINING) counting arrivals by Message-ID.

    mode: "ok"; "down" (not listening, open sessions closed); "hung" (accepts
    TCP, never answers); "throttle" (every other MAIL gets an SES-style
    454 throttling reply)."""

    def __init__(self):
        self.port = free_port()
        self.mode = "ok"
        self.arrivals = {}
        self.first_arrival_after = None
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.server = None
        self.writers = set()
        self.tx = 0
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.call(self._listen())

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    async def _listen(self):
        self.server = await asyncio.start_server(
            self._session, "127.0.0.1", self.port, reuse_address=True
        )

    async def _stop_listening(self):
        self.server.close()
        for w in list(self.writers):
            w.close()

    def set_mode(self, mode):
        old, self.mode = self.mode, mode
        if mode == "down":
            self.call(self._stop_listening())
        elif old == "down":
            self.call(self._listen())
        if old == "hung" and mode != "hung":
            # Hung sessions end now (the client sees a closed connection).
            self.call(self._close_all())

    async def _close_all(self):
        for w in list(self.writers):
            w.close()

    async def _session(self, reader, writer):
        self.writers.add(writer)
        try:
            if self.mode == "hung":
                while self.mode == "hung":
                    await asyncio.sleep(0.1)
                return
            writer.write(b"220 sink ESMTP\r\n")
            while True:
                line = await reader.readline()
                if not line:
                    return
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    writer.write(b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
                elif verb == b"MAIL":
                    self.tx += 1
                    if self.mode == "throttle" and self.tx % 2 == 0:
                        writer.write(
                            b"454 4.7.0 Throttling failure: Maximum sending rate exceeded\r\n"
                        )
                    else:
                        writer.write(b"250 2.1.0 ok\r\n")
                elif verb == b"RCPT":
                    writer.write(b"250 2.1.5 ok\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 go ahead\r\n")
                    await writer.drain()
                    data = bytearray()
                    while True:
                        chunk = await reader.readline()
                        if not chunk:
                            return
                        if chunk == b".\r\n":
                            break
                        data += chunk
                    m = MSGID.search(bytes(data))
                    mid = m.group(1).decode() if m else "?"
                    with self.lock:
                        self.arrivals[mid] = self.arrivals.get(mid, 0) + 1
                        if self.first_arrival_after is None:
                            self.first_arrival_after = time.monotonic()
                    writer.write(b"250 2.0.0 queued\r\n")
                elif verb == b"RSET" or verb == b"NOOP":
                    writer.write(b"250 2.0.0 ok\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    await writer.drain()
                    return
                else:
                    writer.write(b"502 5.5.2 unknown\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self.writers.discard(writer)
            writer.close()

    def mark(self):
        """Start looking for the first arrival from now on."""
        with self.lock:
            self.first_arrival_after = None

    def counts(self):
        with self.lock:
            return dict(self.arrivals), self.first_arrival_after


# --- load -------------------------------------------------------------------


class Load:
    """`threads` SMTP clients submitting without pause (a small sleep
    between messages keeps a shared machine usable); every 250 is recorded
    by Message-ID."""

    def __init__(self, port, threads, pause):
        self.port, self.pause = port, pause
        self.accepted = {}
        self.refused = 0
        self.last_error = None
        self.first_accept_after = None
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True)
            for i in range(threads)
        ]
        for t in self.threads:
            t.start()

    def mark(self):
        with self.lock:
            self.first_accept_after = None

    def _run(self, i):
        n = 0
        smtp = None
        while not self.stop.is_set():
            try:
                if smtp is None:
                    smtp = smtplib.SMTP("127.0.0.1", self.port, timeout=20)
                    smtp.ehlo("load.test")
                    smtp.login(USER, PASSWORD)
                n += 1
                mid = f"{i}.{n}.{uuid.uuid4().hex[:8]}@{DOMAIN}"
                msg = (
                    f"From: <load@{DOMAIN}>\r\nTo: <sink@example.net>\r\n"
                    f"Subject: chaos {mid}\r\nMessage-ID: <{mid}>\r\n\r\n"
                    + ("x" * 70 + "\r\n") * 14
                )
                smtp.sendmail(f"load@{DOMAIN}", ["sink@example.net"], msg)
                with self.lock:
                    self.accepted[mid] = time.monotonic()
                    if self.first_accept_after is None:
                        self.first_accept_after = time.monotonic()
                time.sleep(self.pause)
            except (smtplib.SMTPException, OSError) as e:
                with self.lock:
                    self.refused += 1
                    self.last_error = repr(e)
                try:
                    if smtp is not None:
                        smtp.close()
                except Exception:
                    pass
                smtp = None
                time.sleep(0.2)
        if smtp is not None:
            try:
                smtp.quit()
            except Exception:
                pass

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(30)


# --- postgate ---------------------------------------------------------------


class Node:
    def __init__(self, binary, workdir, store_url, sink_port):
        self.binary, self.workdir = binary, workdir
        self.smtp_port, self.http_port = free_port(), free_port()
        self.config = os.path.join(workdir, "postgate.toml")
        self.log = open(os.path.join(workdir, "postgate.log"), "ab")
        self.proc = None
        with open(self.config, "w") as f:
            f.write(
                f"""
[server]
hostname = "chaos.test"
shutdown_grace = "5s"

[store]
url = "{store_url}"

[[smtp.listener]]
address = "127.0.0.1:{self.smtp_port}"
mode = "plain"

[auth.hash]
memory_kib = 1024
iterations = 1
parallelism = 1

[http]
address = "127.0.0.1:{self.http_port}"

[limits]
messages_per_minute = 1000000
messages_per_hour = 10000000
messages_per_day = 100000000
recipients_per_day = 100000000
ip_connections_per_minute = 100000

[log]
filter = "warn"

[queue]
lease = "10s"
retry_initial = "1s"
retry_max = "5s"
retry_jitter = 0.0
poll_interval = "100ms"
circuit_cooldown = "2s"

[[upstream]]
name = "sink"
host = "127.0.0.1"
port = {sink_port}
tls = "none"
connect_timeout = "2s"
command_timeout = "3s"
data_timeout = "5s"
max_connections = {CONNECTIONS}
"""
            )

    def cli(self, *args, stdin=None):
        return subprocess.run(
            [self.binary, "-c", self.config, *args],
            input=stdin,
            capture_output=True,
            text=True,
            check=True,
        )

    def prepare(self):
        self.cli("migrate")
        self.cli("user", "add", USER, "--password-stdin", stdin=PASSWORD + "\n")
        self.cli("sender", "allow", USER, "@" + DOMAIN)

    def start(self):
        self.proc = subprocess.Popen(
            [self.binary, "-c", self.config, "serve"],
            stdout=self.log,
            stderr=self.log,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.smtp_port), 0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("postgate did not start: see " + self.log.name)

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


# --- stores and faults ------------------------------------------------------


class Postgres:
    """The PostgreSQL of run.sh: `pg_ctl` (a command prefix) may stop and
    start it; each scenario gets a database of its own."""

    def __init__(self, url, pg_ctl, psql):
        self.url, self.pg_ctl, self.psql = url, pg_ctl, psql

    def new_database(self):
        name = "chaos_" + uuid.uuid4().hex[:12]
        subprocess.run(
            self.psql + ["-d", self.url, "-qc", f"CREATE DATABASE {name}"], check=True
        )
        return self.url.rsplit("/", 1)[0] + "/" + name

    def ctl(self, *args):
        subprocess.run(self.pg_ctl + list(args), check=True, capture_output=True)


def fill_disk(path):
    """Writes `path` until the filesystem is full."""
    with open(path, "wb") as f:
        block = b"\0" * (1 << 20)
        try:
            while True:
                f.write(block)
                f.flush()
        except OSError:
            pass
        try:
            os.fsync(f.fileno())
        except OSError:
            pass


# --- one scenario -----------------------------------------------------------


def run_scenario(args, backend, scenario, pg):
    work = tempfile.mkdtemp(prefix=f"chaos-{backend}-{scenario}-")
    mount = None
    try:
        if backend == "sqlite":
            dbdir = os.path.join(work, "db")
            os.mkdir(dbdir)
            if scenario == "disk_full":
                subprocess.run(
                    ["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", dbdir], check=True
                )
                mount = dbdir
            url = f"sqlite://{dbdir}/postgate.db"
        else:
            url = pg.new_database()
        sink = Sink()
        node = Node(args.bin, work, url, sink.port)
        node.prepare()
        node.start()
        load = Load(node.smtp_port, args.threads, args.pause)
        time.sleep(args.warmup)
        fault_start = time.monotonic()
        hold = args.hold
        if scenario == "sigkill":
            for k in range(args.kills):
                if k:
                    time.sleep(hold / 2)
                node.kill()
                node.start()
        elif scenario == "pg_restart":
            pg.ctl("restart", "-m", "fast")
        elif scenario == "pg_stop":
            pg.ctl("stop", "-m", "fast")
            time.sleep(hold)
            pg.ctl("start")
        elif scenario == "disk_full":
            fill = os.path.join(mount, "fill")
            fill_disk(fill)
            time.sleep(hold)
            os.remove(fill)
        elif scenario in ("upstream_down", "upstream_hung", "upstream_throttle"):
            sink.set_mode(scenario.split("_")[1])
            time.sleep(hold)
            sink.set_mode("ok")
        else:
            raise SystemExit(f"unknown scenario {scenario}")
        fault_end = time.monotonic()
        load.mark()
        sink.mark()
        time.sleep(args.after)
        load.finish()
        # Drain: wait until every accepted message arrived (or give up).
        deadline = time.monotonic() + args.drain
        drained_at = None
        while time.monotonic() < deadline:
            arrivals, _ = sink.counts()
            if all(m in arrivals for m in load.accepted):
                drained_at = time.monotonic()
                break
            time.sleep(0.2)
        time.sleep(args.settle)  # late duplicates still count
        node.stop()
        if load.last_error:
            print(f"# {backend} {scenario}: last refusal: {load.last_error}", file=sys.stderr)
        arrivals, first_arrival = sink.counts()
        accepted = load.accepted
        delivered = sum(1 for m in accepted if m in arrivals)
        dup = sum(arrivals[m] - 1 for m in accepted if arrivals.get(m, 0) > 1)
        first_accept = load.first_accept_after
        if first_accept is None or first_arrival is None:
            recover = None
        else:
            recover = max(first_accept, first_arrival) - fault_end
        return {
            "backend": backend,
            "scenario": scenario,
            "fault_s": round(fault_end - fault_start, 1),
            "accepted": len(accepted),
            "refused": load.refused,
            "delivered": delivered,
            "lost": len(accepted) - delivered,
            "duplicated": dup,
            "dup_bound": args.kills * CONNECTIONS if scenario == "sigkill" else None,
            "recover_s": None if recover is None else round(max(recover, 0.0), 1),
            "drain_s": None if drained_at is None else round(drained_at - fault_end, 1),
        }
    finally:
        if mount:
            subprocess.run(["umount", "-l", mount])
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"# kept {work}", file=sys.stderr)


SCENARIOS = {
    "sqlite": ["sigkill", "disk_full", "upstream_down", "upstream_hung", "upstream_throttle"],
    "postgres": [
        "sigkill",
        "pg_restart",
        "pg_stop",
        "upstream_down",
        "upstream_hung",
        "upstream_throttle",
    ],
}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bin", required=True, help="the postgate binary")
    p.add_argument("--backend", action="append", choices=["sqlite", "postgres"])
    p.add_argument("--scenario", action="append", help="default: all of the backend")
    p.add_argument("--short", action="store_true", help="the quick version (tests/run.sh)")
    p.add_argument("--pg-url", default=os.environ.get("CHAOS_PG_URL"))
    p.add_argument("--pg-ctl", default=os.environ.get("CHAOS_PG_CTL"))
    p.add_argument("--psql", default=os.environ.get("CHAOS_PSQL", "psql"))
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--pause", type=float, default=0.01, help="seconds between a thread's messages")
    p.add_argument("--json", help="append results as JSON lines to this file")
    p.add_argument("--keep", action="store_true", help="keep work directories and logs")
    args = p.parse_args()
    if args.short:
        args.warmup, args.hold, args.after, args.kills, args.drain, args.settle = 3, 5, 3, 1, 60, 1
    else:
        args.warmup, args.hold, args.after, args.kills, args.drain, args.settle = 15, 60, 15, 3, 300, 3
    backends = args.backend or ["sqlite", "postgres"]
    pg = None
    if "postgres" in backends:
        if not (args.pg_url and args.pg_ctl):
            raise SystemExit("postgres needs --pg-url and --pg-ctl (bench/chaos/run.sh sets them)")
        pg = Postgres(args.pg_url, args.pg_ctl.split(), args.psql.split())
    can_mount = os.geteuid() == 0
    results = []
    cols = ["backend", "scenario", "fault_s", "accepted", "refused", "delivered", "lost", "duplicated", "dup_bound", "recover_s", "drain_s"]
    print("| " + " | ".join(cols) + " |", flush=True)
    print("|" + "---|" * len(cols), flush=True)
    for backend in backends:
        for scenario in args.scenario or SCENARIOS[backend]:
            if scenario not in SCENARIOS[backend]:
                continue
            if scenario == "disk_full" and not can_mount:
                print(f"# {backend} {scenario}: skipped (mounting a tmpfs needs root)", flush=True)
                continue
            hold = args.hold
            if scenario == "pg_stop":
                args.hold = 30 if not args.short else 5
            elif scenario == "disk_full":
                args.hold = 40 if not args.short else 5
            r = run_scenario(args, backend, scenario, pg)
            args.hold = hold
            results.append(r)
            print("| " + " | ".join("-" if r[c] is None else str(r[c]) for c in cols) + " |", flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(r) + "\n")
    bad = [r for r in results if r["lost"]]
    if bad:
        print(f"# LOST MESSAGES in {len(bad)} scenario(s)", flush=True)
    over = [r for r in results if r["dup_bound"] is not None and r["duplicated"] > r["dup_bound"]]
    if over:
        print(f"# DUPLICATES ABOVE THE BOUND in {len(over)} scenario(s)", flush=True)
    if bad or over:
        sys.exit(1)


if __name__ == "__main__":
    main()
