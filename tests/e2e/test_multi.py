"""test_multi - several feed instances on one database behind `feed send -e A,B`.

Run under tests/lib/with-postgres.sh and with-mariadb.sh: the two instances
share one real database, as in a deployment with several feed instances in
front of one database server. The tests are the same on both; only the
queries that look into the server's sessions differ (open_transactions(),
lock_waiters()). One instance is killed (SIGKILL) or hung (SIGSTOP) in
the middle of a pipelined stream; feed send must move what it had in flight
there to the other one and finish with every record TRUE, each ticket once.
"""
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import feedtest  # noqa: E402
from feedtest import FEED, FeedTestCase, backend, free_port, wait_until  # noqa: E402

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
TOTAL = 200_000
PER = 1             # records per request: many requests, so that the fault lands mid-stream
WINDOW = 64         # requests in flight


def proc_state(pid):
    """R, S, T (stopped), Z, ... from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().split(")")[-1].split()[0]


def scrape(f, name):
    """The value of one sample of feed's /metrics, e.g. 'feed_requests_total{result="true"}'."""
    with urllib.request.urlopen(f.http + "/metrics", timeout=10) as r:
        body = r.read().decode()
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics:\n{body}")


class Relay:
    """A TCP relay between one feed instance and the database server that can hold back,
    in the middle of one large message, the rest of what feed sends on a connection. The
    server then has part of the message and waits for the rest, as from a feed process
    that hung while sending it: the connection stays up and nothing more arrives.
    framing: "postgresql" (untyped startup packets, then a type byte and a length that
    counts itself) or "mysql" (a 3-byte length and a sequence number). No TLS."""
    BIG = 64 * 1024         # a message this large is one that could be held

    def __init__(self, server_port, framing):
        self.server_port, self.framing = server_port, framing
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        self.cv = threading.Condition()
        self.armed = False      # hold the next large message
        self.held = None        # then: the relay's port toward the server on that connection
        self.verdict = None     # the test's word on it: "release" or "keep"
        self.closed = False
        self.socks = []
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self):
        with self.cv:
            self.closed = True
            self.cv.notify_all()
        for s in [self.lsock] + self.socks:
            s.close()

    def hold_next(self, timeout):
        """Holds the next large message half sent; returns the relay's port toward the
        server of that connection (client_port / processlist HOST there), or None if
        none came within timeout. decide() then says what becomes of it."""
        with self.cv:
            self.armed = True
            if not self.cv.wait_for(lambda: self.held is not None, timeout):
                self.armed = False
            return self.held

    def decide(self, verdict):
        """"release": the rest of the message goes on; "keep": it never does."""
        with self.cv:
            self.verdict = verdict
            self.cv.notify_all()
            self.cv.wait_for(lambda: self.held is None or self.closed)

    def _accept(self):
        while True:
            try:
                c, _ = self.lsock.accept()
                s = socket.create_connection(("127.0.0.1", self.server_port))
            except OSError:
                return
            self.socks += [c, s]
            threading.Thread(target=self._back, args=(s, c), daemon=True).start()
            threading.Thread(target=self._forth, args=(c, s), daemon=True).start()

    def _back(self, s, c):          # the server's side: relayed as it comes
        try:
            while b := s.recv(65536):
                c.sendall(b)
        except OSError:
            pass
        c.close()

    @staticmethod
    def _read(c, n):
        buf = b""
        while len(buf) < n:
            b = c.recv(n - len(buf))
            if not b:
                raise EOFError
            buf += b
        return buf

    def _forth(self, c, s):         # feed's side: message by message
        try:
            if self.framing == "postgresql":
                while True:         # SSLRequest, GSSENCRequest, then the startup packet
                    hdr = self._read(c, 8)
                    n, code = struct.unpack("!II", hdr)
                    s.sendall(hdr + self._read(c, n - 8))
                    if code not in (80877103, 80877104):
                        break
            while True:
                if self.framing == "postgresql":
                    hdr = self._read(c, 5)
                    n = struct.unpack("!I", hdr[1:])[0] - 4
                else:
                    hdr = self._read(c, 4)
                    n = int.from_bytes(hdr[:3], "little")
                body = self._read(c, n)
                if n >= self.BIG and self._take_arm():
                    s.sendall(hdr + body[:n // 2])
                    if self._held(s.getsockname()[1]) != "release":
                        return      # kept: the rest never goes, the connection stays
                    s.sendall(body[n // 2:])
                else:
                    s.sendall(hdr + body)
        except (OSError, EOFError):
            pass
        s.close()

    def _take_arm(self):
        with self.cv:
            armed, self.armed = self.armed, False
            return armed

    def _held(self, port):
        """Says port is held, waits for the verdict; "keep" waits for close()."""
        with self.cv:
            self.held, self.verdict = port, None
            self.cv.notify_all()
            self.cv.wait_for(lambda: self.verdict or self.closed)
            verdict, self.held = self.verdict, None
            self.cv.notify_all()
            if verdict == "keep":
                self.cv.wait_for(lambda: self.closed)
            return verdict


class MultiTest(FeedTestCase):
    def setUp(self):
        super().setUp()
        self.stopped = []

    def tearDown(self):
        for pid in self.stopped:        # never leave a stopped instance behind
            try:
                os.kill(pid, signal.SIGCONT)
            except OSError:
                pass
        super().tearDown()

    def two(self):
        """Two instances A and B on the one database, each with /metrics."""
        fs = []
        for _ in range(2):               # both made (each resets the tables) before either starts
            port = free_port()
            f = self.feed(conf={"metrics": {"listen": f"127.0.0.1:{port}"}})
            f.http = f"http://127.0.0.1:{port}"
            fs.append(f)
        for f in fs:
            f.start_ok()
        return fs

    def trades(self, f, first, total=TOTAL):
        path = os.path.join(f.dir, "trades.csv")
        with open(path, "w") as fh:
            fh.writelines(f"{t},{t % 97 + 1},0.5\n" for t in range(first, first + total))
        os.chmod(path, 0o644)
        return path

    def count(self, f):
        return int(f.sql("SELECT count(*) FROM fee;")[0][0])

    def send_until(self, a, b, path, act, fraction=3, retries=5, total=TOTAL, per=PER, timeout_ms=1000):
        """Runs `feed send -e A,B`; calls act() once the database holds 1/fraction of the stream."""
        cmd = [FEED, "send", "-q", "-e", f"{a.endpoint},{b.endpoint}", "-w", str(WINDOW),
               "-n", str(per), "-t", str(timeout_ms), "-r", str(retries), path]
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        try:
            wait_until(lambda: p.poll() is not None or self.count(a) >= total // fraction, 300,
                       step=0.02, what="the fault's point in the stream")
            at = self.count(a)
            if p.poll() is not None:
                self.fail(f"feed send ended before the fault: {p.communicate()}")
            self.assertLess(at, total, "the stream finished before the fault")
            act()
            out, err = p.communicate(timeout=300)
        finally:
            if p.poll() is None:
                p.kill()
                p.communicate()
        return p.returncode, err, at

    def assert_all_once(self, f, first, total=TOTAL):
        rows = f.sql("SELECT count(*), count(DISTINCT ticket), min(ticket), max(ticket) FROM fee;")
        self.assertEqual([int(x) for x in rows[0]], [total, total, first, first + total - 1])

    def assert_summary(self, rc, err, moved, total=TOTAL):
        """Exit 0, every record TRUE; moved: some were re-sent to the other instance (certain
        for a hung A, which gets requests until it is found silent; a killed A may have
        answered all it had just before it died)."""
        self.assertEqual(rc, 0, err)
        m = re.search(r"sent (\d+) records in \d+ requests: TRUE (\d+), FALSE 0, .*"
                      r"re-sent \d+ \((\d+) to another instance\)", err)
        self.assertIsNotNone(m, err)
        self.assertEqual(int(m.group(1)), total, err)
        self.assertEqual(int(m.group(2)), total, err)
        if moved:
            self.assertGreater(int(m.group(3)), 0, err)

    def test_kill9_one_of_two(self):
        a, b = self.two()
        first = 50_000_001
        path = self.trades(a, first)
        a_true = []

        def kill_a():
            a_true.append(scrape(a, 'feed_requests_total{result="true"}'))
            a.kill9()

        rc, err, at = self.send_until(a, b, path, kill_a)
        print(f"A killed at {at} of {TOTAL} records in the database; feed send said:\n{err}")
        self.assert_summary(rc, err, moved=False)
        self.assertIn("connection lost", err)
        self.assert_all_once(b, first)
        # both instances did work: A answered TRUE before it died, B after
        self.assertGreater(a_true[0], 0)
        self.assertGreater(scrape(b, 'feed_requests_total{result="true"}'), 0)

    def test_killed_instance_back_gets_work_again(self):
        # A dies, is started again (same port) while the stream goes on: libzmq
        # reconnects, feed send tries it with one request, then spreads over both again
        a, b = self.two()
        first = 55_000_001
        path = self.trades(a, first)

        def kill_and_restart_a():
            a.kill9()
            a.start_ok()

        rc, err, at = self.send_until(a, b, path, kill_and_restart_a, fraction=4)
        print(f"A killed at {at} of {TOTAL} records in the database and restarted; feed send said:\n{err}")
        self.assert_summary(rc, err, moved=False)
        self.assert_all_once(b, first)
        # the new A (its counters start at 0) answered a share of the rest, not just a probe
        self.assertGreater(scrape(a, 'feed_requests_total{result="true"}'), 1000, err)
        self.assertNotIn("dead at the end", err)

    def db_port(self):
        return int(re.search(r":(\d+)/", os.environ["FEED_TEST_URL"]).group(1))

    def open_transactions(self, f, pid):
        """One bool per database session of feed process pid that is inside a transaction:
        True if it sits idle between two statements after inserting into fee (holding the
        row locks of what it inserted)."""
        r = subprocess.run(["ss", "-Htnp", "state", "established", "dst", f"127.0.0.1:{self.db_port()}"],
                           capture_output=True, text=True, timeout=10)
        ports = [int(m.group(1)) for line in r.stdout.splitlines() if f"pid={pid}," in line
                 for m in [re.match(r"\S+\s+\S+\s+127\.0\.0\.1:(\d+)", line)] if m]
        self.assertTrue(ports, f"no database connection of pid {pid} in:\n{r.stdout}")
        if backend() == "postgresql":
            rows = f.sql("SELECT state = 'idle in transaction' AND query LIKE 'INSERT INTO fee %'"
                         " FROM pg_stat_activity WHERE xact_start IS NOT NULL"
                         " AND client_port IN (" + ",".join(map(str, ports)) + ");")
        else:
            # MariaDB: a session of processlist (HOST ip:port) with an InnoDB transaction
            # (innodb_trx: a copy at most 0.1 s old, see stop()).
            # Idle: COMMAND Sleep. Inserted: rows modified, no explicit row locks (an
            # INSERT's locks are implicit; the settler's UPDATE takes explicit ones).
            rows = f.sql("SELECT p.COMMAND = 'Sleep' AND t.trx_rows_modified > 0 AND t.trx_rows_locked = 0"
                         " FROM information_schema.innodb_trx t JOIN information_schema.processlist p"
                         " ON p.ID = t.trx_mysql_thread_id WHERE p.HOST IN ("
                         + ",".join(f"'127.0.0.1:{port}'" for port in ports) + ");")
        return [row[0] in ("t", "1") for row in rows]

    def lock_waiters(self, f):
        """How many of feed's database sessions wait on a row lock."""
        if backend() == "postgresql":
            q = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND application_name = 'feed';"
        else:
            q = ("SELECT count(*) FROM information_schema.innodb_trx t JOIN information_schema.processlist p"
                 " ON p.ID = t.trx_mysql_thread_id WHERE t.trx_state = 'LOCK WAIT' AND p.USER = 'feed';")
        return int(f.sql(q)[0][0])

    def stop(self, f, storing):
        """SIGSTOPs f, again and again until it is stopped in the middle of storing records
        (a writer's transaction open: storing=True) or with no transaction open at all
        (storing=False). Returns its pid."""
        pid = f.pid()
        self.stopped.append(pid)
        for _ in range(500):
            os.kill(pid, signal.SIGSTOP)
            wait_until(lambda: proc_state(pid) == "T", 10, step=0.001, what="SIGSTOP to take")
            tx = self.open_transactions(f, pid)
            # storing: between two statements of a writer's transaction (idle in
            # transaction), where it holds the row locks of what it inserted
            if storing and any(tx):
                return pid
            if not storing and not tx:
                return pid
            os.kill(pid, signal.SIGCONT)
            # running a while: the next look is fresh (MariaDB refreshes innodb_trx only
            # when it was not read for 0.1 s, else shows its earlier copy)
            time.sleep(0.15)
        self.fail(f"never stopped {'while' if storing else 'without'} storing in 500 tries")

    def test_sigstop_one_of_two(self):
        # A hung, not dead: its connection stays up, it answers nothing. Stopped where it
        # has no database transaction open (the next test: stopped in the middle of one).
        a, b = self.two()
        first = 60_000_001
        path = self.trades(a, first)
        a_true = []

        def stop_a():
            a_true.append(scrape(a, 'feed_requests_total{result="true"}'))
            self.stop(a, storing=False)

        t0 = time.monotonic()
        rc, err, at = self.send_until(a, b, path, stop_a)
        elapsed = time.monotonic() - t0
        print(f"A stopped at {at} of {TOTAL} records in the database; {elapsed:.1f} s; feed send said:\n{err}")
        self.assert_summary(rc, err, moved=True)
        self.assertIn("no reply within the timeout", err)
        self.assert_all_once(b, first)
        self.assertGreater(a_true[0], 0)
        self.assertGreater(scrape(b, 'feed_requests_total{result="true"}'), 0)
        # A wakes up and answers what it held: identical re-sends, still each ticket once
        os.kill(self.stopped.pop(), signal.SIGCONT)
        wait_until(lambda: a.req("1,1,1").startswith("TRUE"), 30, what="A to answer again")
        rows = b.sql(f"SELECT count(*), count(DISTINCT ticket) FROM fee WHERE ticket >= {first};")
        self.assertEqual([int(x) for x in rows[0]], [TOTAL, TOTAL])

    def test_sigstop_while_storing_server_ends_it(self):
        # A hung in the middle of a writer's transaction holds the tickets it was storing:
        # B, given them again, waits on A's row locks (it cannot know whether A will
        # commit). feed sets idle_in_transaction_session_timeout (PostgreSQL) or
        # idle_transaction_timeout (MariaDB), 30 s, on its sessions, so the server ends A's
        # transaction, its locks go, B stores the tickets and the stream completes with A
        # still stopped. (Without it the stream never completes while A is stopped: seen
        # with the old session settings on both.)
        a, b = self.two()
        first = 65_000_001
        path = self.trades(a, first)
        stopped_at = []

        def stop_a():
            self.stop(a, storing=True)
            stopped_at.append(time.monotonic())
            wait_until(lambda: self.lock_waiters(b) > 0, 30, step=0.2, what="B to wait on A's locks")

        # (a PostgreSQL batch of one record goes as BEGIN, INSERT and COMMIT in one
        # round trip, leaving nothing to stop inside; with 64 requests in flight most
        # batches are larger, and their transaction stays open between round trips)
        rc, err, at = self.send_until(a, b, path, stop_a, retries=90)
        took = time.monotonic() - stopped_at[0]
        print(f"A stopped while storing at {at} of {TOTAL} records; the stream completed {took:.1f} s later"
              f" with A still stopped; feed send said:\n{err}")
        self.assertEqual(proc_state(self.stopped[0]), "T")
        self.assert_summary(rc, err, moved=True)
        self.assert_all_once(b, first)

    def writing_transaction(self, f, port):
        """Whether the database session on the relay's port port is in a transaction that
        wrote (holding the row locks of what it inserted)."""
        if backend() == "postgresql":
            rows = f.sql(f"SELECT backend_xid IS NOT NULL FROM pg_stat_activity WHERE client_port = {port};")
        else:
            time.sleep(0.15)        # innodb_trx: a fresh copy (see stop())
            rows = f.sql("SELECT t.trx_rows_modified > 0 FROM information_schema.innodb_trx t"
                         " JOIN information_schema.processlist p ON p.ID = t.trx_mysql_thread_id"
                         f" WHERE p.HOST = '127.0.0.1:{port}';")
        return any(row[0] in ("t", "1") for row in rows)

    def test_hung_in_the_middle_of_a_statement(self):
        # A, with requests of 1,000 records (batches of thousands of rows), reaches the
        # database through a relay that holds back the rest of one of its large messages
        # (a statement's or its data's) half sent, again and again. Where A's transaction
        # has written by then, A is SIGSTOPped there, the message never completed: the
        # server must still end that session, so that B, given A's tickets again, is not
        # held by A's row locks for as long as A hangs. Elsewhere the message goes on.
        # (A COPY held there, after its first rows went in, kept its locks for good:
        # idle_in_transaction_session_timeout counts only between statements, and a
        # cancel is not acted on while the server reads a COPY's data.)
        b_port = free_port()
        b = self.feed(conf={"metrics": {"listen": f"127.0.0.1:{b_port}"}})
        b.http = f"http://127.0.0.1:{b_port}"
        relay = Relay(self.db_port(), "postgresql" if backend() == "postgresql" else "mysql")
        self.addCleanup(relay.close)
        url = os.environ["FEED_TEST_URL"].replace(f":{self.db_port()}/", f":{relay.port}/")
        database = {"url": url}
        if os.environ.get("FEED_TEST_PASSWORD_FILE"):
            database["password_file"] = os.environ["FEED_TEST_PASSWORD_FILE"]
        a = self.feed(conf={"database": database})
        b.start_ok()
        a.start_ok()
        first, total, per = 70_000_001, 2_000_000, 1000
        path = self.trades(a, first, total)
        holds, kept = [], []

        def hold_a():
            while len(holds) < 40 and not kept:
                port = relay.hold_next(10)
                if port is None:
                    break
                wrote = self.writing_transaction(b, port)
                holds.append(wrote)
                if wrote:
                    self.stopped.append(a.pid())
                    os.kill(a.pid(), signal.SIGSTOP)
                    relay.decide("keep")
                    kept.append(time.monotonic())
                else:
                    relay.decide("release")

        # B first: its row count is the one send_until watches (A's database URL is the relay's)
        # (a timeout long enough for A's answers to wait out a look at a held message)
        rc, err, at = self.send_until(b, a, path, hold_a, fraction=20, retries=30, total=total, per=per,
                                      timeout_ms=3000)
        print(f"{len(holds)} large messages held half sent, {sum(holds)} inside a transaction that wrote"
              + (f"; A stopped there, the stream completed {time.monotonic() - kept[0]:.1f} s later" if kept else "")
              + f"; feed send said:\n{err}")
        self.assertTrue(holds, "no large message was held")
        self.assert_summary(rc, err, moved=bool(kept), total=total)
        self.assert_all_once(b, first, total)

    def test_one_endpoint_down_from_the_start(self):
        # B listens nowhere: the whole stream goes to A, nothing is lost on the way
        port = free_port()
        a = self.feed(conf={"metrics": {"listen": f"127.0.0.1:{port}"}})
        a.start_ok()
        nowhere = f"tcp://127.0.0.1:{free_port()}"
        first = 70_000_001
        data = "".join(f"{t},5,1\n" for t in range(first, first + 5000))
        r = subprocess.run([FEED, "send", "-q", "-e", f"{nowhere},{a.endpoint}", "-t", "1000", "-"],
                           input=data, capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stderr, r"sent 5000 records in \d+ requests: TRUE 5000, FALSE 0")
        rows = a.sql("SELECT count(*), count(DISTINCT ticket) FROM fee;")
        self.assertEqual([int(x) for x in rows[0]], [5000, 5000])

    def test_endpoint_list_from_the_configuration(self):
        # [send] endpoint = A, B: no -e needed; the window is spread over both
        a, b = self.two()
        a.sections["send"] = {"endpoint": f"{a.endpoint}, {b.endpoint}"}
        a.write_conf()
        first = 80_000_001
        data = "".join(f"{t},5,1\n" for t in range(first, first + 20000))
        r = subprocess.run([FEED, "-c", a.conf, "send", "-q", "-"], input=data,
                           capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stderr, r"sent 20000 records in \d+ requests: TRUE 20000, FALSE 0")
        for f in (a, b):
            m = re.search(re.escape(f.endpoint) + r": \d+ requests sent, (\d+) records answered", r.stderr)
            self.assertIsNotNone(m, r.stderr)
            self.assertGreater(int(m.group(1)), 0, r.stderr)
        self.assertEqual(int(b.sql("SELECT count(DISTINCT ticket) FROM fee;")[0][0]), 20000)

    def test_protocol_md_req_sample_moves_on(self):
        # the "lazy pirate" REQ sample of docs/protocol.md, as printed there, against A and B
        with open(os.path.join(REPO, "docs", "protocol.md")) as fh:
            doc = fh.read()
        sec = doc[doc.index("### Several feed instances"):]
        code = sec[sec.index("```python\n") + 10:]
        code = code[:code.index("```")]
        code = code.replace('print(send(b"1001,42,1.25\\n"))', "")
        a, b = self.two()
        ns = {}
        exec(compile(code, "protocol.md", "exec"), ns)
        ns["ENDPOINTS"] = [a.endpoint, b.endpoint]
        ns["TIMEOUT_MS"] = 1000
        first, n = 90_000_001, 600
        replies = []
        for t in range(first, first + n):
            if t == first + n // 3:
                a.kill9()
            replies.append(ns["send"](f"{t},7,2\n".encode()))
        ns["sock"].close()
        self.assertEqual(replies, ["TRUE"] * n)
        self.assertEqual(ns["at"], 1, "the sample did not move on to B")
        rows = b.sql("SELECT count(*), count(DISTINCT ticket) FROM fee;")
        self.assertEqual([int(x) for x in rows[0]], [n, n])

    def test_all_down_gives_up(self):
        eps = ",".join(f"tcp://127.0.0.1:{free_port()}" for _ in range(2))
        # as with one endpoint: said within seconds, not after the whole retry cycle (30 s)
        r = subprocess.run([FEED, "send", "-q", "-e", eps, "-"],
                           input="1,2,3\n", capture_output=True, text=True, timeout=15)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("nothing answers at", r.stderr)


if __name__ == "__main__":
    unittest.main()
