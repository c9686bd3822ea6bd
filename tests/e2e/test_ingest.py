"""test_ingest - end-to-end tests of ingest: sockets in, rows committed, fees settled.

Runs unchanged under tests/lib/with-sqlite.sh, with-postgres.sh and
with-mariadb.sh (FEED_TEST_BACKEND says which); only SQL dialect details
differ (see hexq(), DbLock). Every test talks to a real feed daemon over
127.0.0.1 and reads the real database. test_servers.py imports the helpers
below (Pipeline, DbLock, count, ...).
"""
import os
import re
import select
import signal
import struct
import subprocess
import sys
import time
import unittest

import zmq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import feedtest  # noqa: E402
from feedtest import FEED, FeedTestCase, backend, norm_dec, wait_until  # noqa: E402


# ==== Helpers (also used by test_servers.py) ====

def hexq(col, text=False):
    """SQL expression giving col's bytes as lower-case hex, in this backend's dialect."""
    b = backend()
    if b == "postgresql":
        return f"encode(convert_to({col}, 'UTF8'), 'hex')" if text else f"encode({col}, 'hex')"
    return f"lower(hex({col}))"


def count(f, where=""):
    return int(f.sql(f"SELECT count(*) FROM fee {where};")[0][0])


def sql_cmd(f):
    """The shell command Feed.sql() runs for f's database."""
    if os.environ.get("FEED_TEST_SQL") and f.url == os.environ.get("FEED_TEST_URL"):
        return os.environ["FEED_TEST_SQL"]
    return (f"sqlite3 -batch -bail -noheader -cmd '.timeout 5000' -separator '\t' "
            f"'{f.url[len('sqlite://'):]}'")


def rejects(f):
    """fee_reject as a list of (reason, endpoint, body bytes), in insertion order."""
    rows = f.sql(f"SELECT {hexq('reason', True)}, {hexq('endpoint', True)}, {hexq('body')} "
                 f"FROM fee_reject ORDER BY id;")
    out = []
    for r in rows:
        r = r + [""] * (3 - len(r))  # an empty body prints as an empty column
        out.append((bytes.fromhex(r[0]).decode(), bytes.fromhex(r[1]).decode(), bytes.fromhex(r[2])))
    return out


def records(first, n, login=7, volume="1.5"):
    return [f"{t},{login},{volume}\n".encode() for t in range(first, first + n)]


def chunk_bodies(first, total, per_request, login=7, volume="1.5"):
    """Bodies of per_request records each, tickets first..first+total-1."""
    out = []
    for a in range(first, first + total, per_request):
        b = min(a + per_request, first + total)
        out.append("".join(f"{t},{login},{volume}\n" for t in range(a, b)).encode())
    return out


def tickets_of(body):
    return [int(line.split(b",")[0]) for line in body.splitlines() if line.strip()]


def sanitized():
    """Is FEED built with AddressSanitizer or ThreadSanitizer (whose shadow
    memory and quarantine make RSS say nothing)?"""
    with open(FEED, "rb") as fh:
        data = fh.read()
        return b"__asan_init" in data or b"__tsan_init" in data


def vm(pid, key):
    """VmRSS / VmHWM of pid, in bytes."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"{key} not in /proc/{pid}/status")


class Pipeline:
    """A pipelining DEALER client: frames ["", id, body], replies matched by id.

    bodies[i] is sent with the 8-byte id i. At most `window` requests are in
    flight, and none past `limit`. replies[i] is the first reply to request
    i (None: unanswered);
    `bad` lists every reply that was not TRUE, re-sends included.
    """

    def __init__(self, feed, bodies, window=1000, ids=None):
        self.feed = feed
        self.sock = feed.dealer()
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.bodies = bodies
        self.ids = ids if ids is not None else range(len(bodies))
        self.window = window
        self.replies = [None] * len(bodies)
        self.bad = []
        self.next = 0
        self.pending = set()
        self.answered = 0
        self.resent = 0
        self.last_reply = time.monotonic()
        self.limit = len(bodies)    # requests it may send so far (another thread may raise it)

    def _send(self, i):
        self.sock.send_multipart([b"", struct.pack(">Q", i), self.bodies[i]])

    def fill(self):
        while self.next < min(len(self.bodies), self.limit) and len(self.pending) < self.window:
            self._send(self.next)
            self.pending.add(self.next)
            self.next += 1

    def pump(self, timeout_ms=200):
        """Fills the window, waits up to timeout_ms for replies; returns how many came."""
        self.fill()
        got = 0
        if not self.sock.poll(timeout_ms, zmq.POLLIN):
            return 0
        while True:
            try:
                fr = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            assert len(fr) == 3 and fr[0] == b"" and len(fr[1]) == 8, f"bad reply frames {fr!r}"
            i = struct.unpack(">Q", fr[1])[0]
            text = fr[2].decode(errors="replace")
            if text != "TRUE":
                self.bad.append((i, text))
            if self.replies[i] is None:
                self.replies[i] = text
                self.answered += 1
            self.pending.discard(i)
            got += 1
            self.last_reply = time.monotonic()
        self.fill()
        return got

    def done(self):
        return self.answered == len(self.bodies)

    def run(self, timeout=300, resend_after=None, until=None):
        """Pumps until every request is answered (or until() is true). Re-sends
        everything pending after resend_after s without any reply."""
        deadline = time.monotonic() + timeout
        while not self.done() and not (until and until()):
            if time.monotonic() > deadline:
                raise AssertionError(f"pipeline: {len(self.bodies) - self.answered} of "
                                     f"{len(self.bodies)} requests unanswered after {timeout}s")
            self.pump()
            if resend_after and self.pending and time.monotonic() - self.last_reply > resend_after:
                for i in sorted(self.pending):
                    if self.replies[i] is None:
                        self._send(i)
                        self.resent += 1
                self.last_reply = time.monotonic()
        return self

    def true_ids(self):
        return [i for i, r in enumerate(self.replies) if r == "TRUE"]

    def close(self):
        self.sock.close(0)


class DbLock:
    """Holds a write lock on fee from another session until release():
    the database then looks like a disk that does not keep up at all."""

    LOCK = {"sqlite": ("BEGIN IMMEDIATE;", "COMMIT;"),
            "postgresql": ("BEGIN; LOCK TABLE fee IN EXCLUSIVE MODE;", "COMMIT;"),
            "mysql": ("LOCK TABLES fee WRITE;", "UNLOCK TABLES;")}

    def __init__(self, f):
        lock, self.unlock = self.LOCK[backend()]
        self.p = subprocess.Popen("exec stdbuf -oL " + sql_cmd(f), shell=True, text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        self.p.stdin.write(f"{lock}\nSELECT 'locked';\n")
        self.p.stdin.flush()
        r, _, _ = select.select([self.p.stdout], [], [], 60)
        line = self.p.stdout.readline() if r else ""
        if line.strip() != "locked":
            self.p.kill()
            raise AssertionError(f"could not lock fee: {line!r} {self.p.stderr.read()}")

    def release(self):
        if self.p.poll() is None:
            self.p.stdin.write(f"{self.unlock}\n")
            self.p.stdin.close()
            self.p.wait(60)
        self.p.stdout.close()
        self.p.stderr.close()


class IngestCase(FeedTestCase):
    def started(self, **kw):
        f = self.feed(**kw)
        f.start_ok()
        return f

    def assert_settled(self, f, where="", timeout=60):
        wait_until(lambda: count(f, f"WHERE status <> 'Y' {'AND ' + where if where else ''}") == 0,
                   timeout, what="all rows settled")

    def row(self, f, ticket):
        rows = f.sql(f"SELECT login, volume, status, fee FROM fee WHERE ticket = {ticket};")
        self.assertEqual(len(rows), 1, f"ticket {ticket}: rows {rows}")
        login, vol, status, fee = rows[0]
        return int(login), norm_dec(vol), status, fee


# ==== Accepted records, fees, exact volumes ====

class TestAccept(IngestCase):
    def test_req_true_settled_fee_exact(self):
        f = self.started()
        # a login with its own rate; 78 checks half-up: 0.05 x 0.5 = 0.025 -> 0.03
        f.sql("INSERT INTO fee_rate (login, rate) VALUES (77, 2.5), (78, 0.5);")
        cases = [  # ticket, login, volume sent, volume stored, fee
            (1001, 42, "1.25", "1.25", "9.38"),                          # 9.375 half-up
            (1002, 42, "0.00000001", "0.00000001", "0.00"),
            (1003, 42, "12345678.12345678", "12345678.12345678", "92592585.93"),
            (1004, 77, "3.3", "3.3", "8.25"),                           # fee_rate 2.5
            (1005, 78, "0.05", "0.05", "0.03"),                         # fee_rate 0.5, half-up
            (1006, 42, "0001.50", "1.5", "11.25"),
            (1007, 42, "92233720368.54775807", "92233720368.54775807", "691752902764.11"),
            (1008, 42, "0", "0", "0.00"),
        ]
        for t, login, vol, _, _ in cases:
            self.assertEqual(f.req(f"{t},{login},{vol}"), "TRUE", f"ticket {t}")
        self.assert_settled(f)
        for t, login, _, stored, fee in cases:
            got = self.row(f, t)
            self.assertEqual(got[:3], (login, norm_dec(stored), "Y"), f"ticket {t}")
            self.assertEqual(norm_dec(got[3]), norm_dec(fee), f"fee of ticket {t}")
        self.assertEqual(count(f), len(cases))
        self.assertEqual(rejects(f), [])

    def test_multi_record_requests(self):
        f = self.started()
        bodies = [
            "2001,1,1\n2002,1,2\n2003,1,3\n",
            "2004,1,1\r\n2005,1,2\r\n2006,1,3",              # CRLF, no final newline
            "\n\n2007,1,1\n   \n\t\n2008,1,2\r\n\r\n2009 , 1 ,\t3 \n\n",  # blank lines, spaces
        ]
        for b in bodies:
            self.assertEqual(f.req(b), "TRUE", repr(b))
        self.assertEqual(count(f, "WHERE ticket BETWEEN 2001 AND 2009"), 9)
        self.assertEqual(self.row(f, 2009)[:2], (1, "3"))
        self.assertEqual(rejects(f), [])

    def test_pipelined_dealer_100k(self):
        f = self.started()
        n, first = 100000, 10_000_001
        p = Pipeline(f, records(first, n), window=1000)
        try:
            p.run(timeout=600)
        finally:
            p.close()
        self.assertEqual(p.bad, [])
        self.assertEqual(p.replies.count("TRUE"), n)
        rows = f.sql("SELECT count(*), count(DISTINCT ticket), min(ticket), max(ticket) FROM fee;")
        self.assertEqual([int(x) for x in rows[0]], [n, n, first, first + n - 1])

    def test_feed_send_100k(self):
        f = self.started()
        n, first = 100000, 20_000_001
        path = os.path.join(f.dir, "trades.csv")
        with open(path, "w") as fh:
            fh.writelines(f"{t},9,0.1\n" for t in range(first, first + n))
        r = subprocess.run([FEED, "send", "-e", f.endpoint, path], capture_output=True, text=True,
                           timeout=600, stdin=subprocess.DEVNULL)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stderr, rf"sent {n} records in \d+ requests: TRUE \d+, FALSE 0")
        rows = f.sql("SELECT count(*), count(DISTINCT ticket), min(ticket), max(ticket) FROM fee;")
        self.assertEqual([int(x) for x in rows[0]], [n, n, first, first + n - 1])
        # the same file again: every record an identical re-send
        r = subprocess.run([FEED, "send", "-e", f.endpoint, path], capture_output=True, text=True,
                           timeout=600, stdin=subprocess.DEVNULL)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(count(f), n)


# ==== Duplicates and conflicts ====

class TestDuplicates(IngestCase):
    def test_resend_and_conflicts(self):
        f = self.started()
        self.assertEqual(f.req("500,7,1.5"), "TRUE")
        self.assertEqual(f.req("500,7,1.5"), "TRUE")
        self.assertEqual(f.req("500,7,1.50000000\n"), "TRUE")   # same exact value
        self.assertEqual(count(f, "WHERE ticket = 500"), 1)

        r = f.req("500,8,1.5")
        self.assertEqual(r, "FALSE: conflict: ticket 500 already stored with login 7 volume 1.5")
        r2 = f.req("501,7,1\n500,7,2\n")
        self.assertEqual(r2, "FALSE: conflict: ticket 500 already stored with login 7 volume 1.5")
        self.assertEqual(self.row(f, 500)[:2], (7, "1.5"))
        self.assertEqual(count(f, "WHERE ticket = 501"), 0, "a rejected request stored a record")

        r3 = f.req("600,7,1\n600,7,2\n")
        self.assertTrue(r3.startswith("FALSE: conflict: ticket 600 appears earlier in this request"), r3)
        self.assertEqual(count(f, "WHERE ticket = 600"), 0)
        # an identical repeat inside one request is stored once
        self.assertEqual(f.req("601,7,1\n601,7,1.0\n"), "TRUE")
        self.assertEqual(count(f, "WHERE ticket = 601"), 1)

        got = [(reason, body) for reason, _, body in rejects(f)]
        self.assertEqual(got, [(r[7:], b"500,8,1.5"), (r2[7:], b"501,7,1\n500,7,2\n"),
                               (r3[7:], b"600,7,1\n600,7,2\n")])
        self.assert_settled(f)
        self.assertEqual(self.row(f, 500), (7, "1.5", "Y", self.row(f, 500)[3]))
        self.assertEqual(norm_dec(self.row(f, 500)[3]), "11.25")


# ==== Malformed requests ====

class TestMalformed(IngestCase):
    def test_every_malformed_case_rejected_and_kept(self):
        f = self.started(conf={"listen": {"max_message_bytes": "1024", "max_records": "5"}})
        good = b"".join(records(700, 2))
        oversized = b"".join(f"{t},1,1\n".encode() for t in range(10000, 10200))
        assert len(oversized) > 1024 and len(oversized) < 4 * 1024
        cases = [  # body, expected reply (regex, after "FALSE: ")
            (b"1,2\n", r"line 1: expected 3 fields \(ticket,login,volume\), got 2"),
            (b"\n\n3,,4\n", r"line 3: login: missing"),
            (b"1,2,3,4\n", r"line 1: expected 3 fields \(ticket,login,volume\), got 4"),
            (b"12a,2,3\n", r"line 1: ticket: not an integer in \"12a\""),
            (b"5,2,abc\n", r"line 1: volume: not a decimal number in \"abc\""),
            (b"0,2,3\n", r"line 1: ticket: must be positive in \"0\""),
            (b"9223372036854775808,2,3\n", r"line 1: ticket: out of range \(max 9223372036854775807\) in \"9223372036854775808\""),
            (b"6,2,1.123456789\n", r"line 1: volume: more than 8 fractional digits in \"1.123456789\""),
            (b"7,2,-1\n", r"line 1: volume: not a decimal number in \"-1\""),
            (b"", r"empty request"),
            (b"\n \n", r"empty request"),
            (oversized, rf"request too large \({len(oversized)} bytes, max 1024\)"),
            (b"".join(records(800, 6)), r"too many records \(max 5\)"),
            (b"8,2,1\x00\n", r"line 1: invalid byte 0x00 at column 6"),
            (b"9,2,1\n10,2,\xc3\xa9\xff\n", r"line 2: invalid byte 0x[cC]3 at column 6"),
            (good + b"702,2,x\n703,2,1\n", r"line 3: volume: not a decimal number in \"x\""),
        ]
        expect = []
        for body, pat in cases:
            r = f.req(body)
            self.assertRegex(r, "^FALSE: " + pat + "$", repr(body[:60]))
            expect.append((r[len("FALSE: "):], body))

        # malformed frames: one id frame too many; the last frame is kept as the body
        d = f.dealer()
        try:
            d.send_multipart([b"", b"id-1", b"x-frame", b"y-frame"])
            self.assertTrue(d.poll(20000), "no reply to a malformed message")
            fr = d.recv_multipart()
            self.assertEqual(fr[0], b"")
            self.assertRegex(fr[-1].decode(), r"^FALSE: malformed message: ")
            expect.append((fr[-1].decode()[len("FALSE: "):], None))
            # an empty request id
            d.send_multipart([b"", b"", b"1,1,1"])
            self.assertTrue(d.poll(20000), "no reply to a message with an empty id")
            fr = d.recv_multipart()
            self.assertRegex(fr[-1].decode(), r"^FALSE: malformed message: ")
            expect.append((fr[-1].decode()[len("FALSE: "):], None))
        finally:
            d.close(0)

        got = rejects(f)
        self.assertEqual(len(got), len(expect), got)
        for (reason, endpoint, body), (ereason, ebody) in zip(got, expect):
            self.assertEqual(reason, ereason)
            self.assertIn(f.endpoint, endpoint)
            if ebody is not None:
                self.assertEqual(body, ebody, f"fee_reject body of {reason!r} not verbatim")
        self.assertIn(got[-2][2], (b"y-frame", b"x-frame", b"id-1x-framey-frame"))
        # nothing of any rejected request is in fee (700, 701 and 702 came with a bad line)
        self.assertEqual(count(f), 0)

    def test_reject_the_database_refuses_is_kept_truncated(self):
        # A rejected body the database will not store whole (here a rule on
        # fee_reject; in life, say, MariaDB's max_allowed_packet) must not hold
        # every sender back: its first 64 KiB are kept and the reason says so.
        f = self.started(conf={"listen": {"max_message_bytes": "200000"}})
        if backend() == "sqlite":
            f.sql("CREATE TRIGGER small BEFORE INSERT ON fee_reject WHEN length(NEW.body) > 65536 "
                  "BEGIN SELECT RAISE(ABORT, 'body too big for this table'); END;")
        else:
            f.sql("ALTER TABLE fee_reject ADD CONSTRAINT small CHECK (length(body) <= 65536);")
        body = b"bad\n" * 25000          # 100,000 bytes, rejected at line 1
        reply = f.req(body, timeout=60)
        self.assertTrue(reply.startswith("FALSE: line 1: "), reply)
        self.assertIn("[stored truncated: 65536 of 100000 bytes]", reply)
        kept = rejects(f)
        self.assertEqual(len(kept), 1)
        self.assertEqual(kept[0][2], body[:65536])
        self.assertIn("stored truncated", kept[0][0])
        # and the pipeline goes on
        self.assertEqual(f.req("801,7,1.5"), "TRUE")
        self.assertEqual(count(f, "WHERE ticket = 801"), 1)


class TestRefused(IngestCase):
    def test_refused_record_frees_its_ticket_for_a_later_request(self):
        # One batch: a request the database refuses, then another request with
        # the same ticket (other values), then an unrelated one. The refusal
        # must not leave a stale "conflict" on the second: it is the only one
        # stored under that ticket.
        f = self.started()
        if backend() == "sqlite":
            f.sql("CREATE TRIGGER no666 BEFORE INSERT ON fee WHEN NEW.login = 666 "
                  "BEGIN SELECT RAISE(ABORT, 'login 666 refused'); END;")
        else:
            f.sql("ALTER TABLE fee ADD CONSTRAINT no666 CHECK (login <> 666);")
        bodies = [b"900,7,1\n", b"901,666,1\n", b"901,2,1\n", b"905,3,1\n"]
        lock = DbLock(f)
        p = Pipeline(f, bodies, window=1)
        try:
            p.fill()            # 900 alone: the writer takes it and waits for the lock
            time.sleep(1)
            p.window = 4
            p.fill()            # the other three queue behind it: the next batch
            time.sleep(1)
            lock.release()
            p.run(timeout=120)
        finally:
            lock.release()
            p.close()
        self.assertEqual(p.replies[0], "TRUE")
        self.assertTrue(p.replies[1].startswith("FALSE: database refused the request: "), p.replies[1])
        self.assertEqual(p.replies[2], "TRUE")
        self.assertEqual(p.replies[3], "TRUE")
        rows = f.sql("SELECT ticket, login FROM fee ORDER BY ticket;")
        self.assertEqual(rows, [["900", "7"], ["901", "2"], ["905", "3"]])
        self.assertEqual([r[2] for r in rejects(f)], [b"901,666,1\n"])


# ==== kill -9, flood, graceful stop ====

class TestCrash(IngestCase):
    def test_kill9_mid_stream_then_resend(self):
        f = self.started()
        # far more than feed commits in the moment between the 20th reply and
        # the kill (it does ~400,000 records/s here), so that the kill lands mid-stream
        first, total, per = 30_000_001, 200_000, 100
        bodies = chunk_bodies(first, total, per)
        p = Pipeline(f, bodies, window=len(bodies))   # everything in flight at once
        try:
            p.run(timeout=300, until=lambda: p.answered >= 20)
            pid = f.kill9()
            # replies already on their way: take them, they were sent after COMMIT
            while p.pump(300):
                pass
        finally:
            p.close()
        self.assertEqual(p.bad, [])
        acked = p.true_ids()
        self.assertGreater(len(bodies) - len(acked), 0, "stream finished before kill -9")
        self.assertFalse(os.path.exists(f"/proc/{pid}") and not feedtest._zombie(pid))

        # durability = full: every TRUE before the kill is in the table
        stored = {int(r[0]) for r in f.sql("SELECT ticket FROM fee;")}
        lost = [t for i in acked for t in tickets_of(bodies[i]) if t not in stored]
        self.assertEqual(lost, [], f"{len(lost)} tickets answered TRUE are not stored")

        f.start_ok()
        rest = [i for i in range(len(bodies)) if p.replies[i] != "TRUE"]
        q = Pipeline(f, [bodies[i] for i in rest], window=500)
        try:
            q.run(timeout=300)
        finally:
            q.close()
        self.assertEqual(q.bad, [])
        rows = f.sql("SELECT count(*), count(DISTINCT ticket), min(ticket), max(ticket) FROM fee;")
        self.assertEqual([int(x) for x in rows[0]], [total, total, first, first + total - 1])
        self.assert_settled(f, timeout=120)

    def test_flood_memory_bounded(self):
        # Memory bound of the daemon under a flood (for docs/operations.md):
        #   VmHWM <= VmHWM after warm-up
        #            + hwm x 4 x max_message_bytes     ZeroMQ receive pipe (one peer; a message
        #                                              may reach ZMQ_MAXMSGSIZE = 4 x max_message_bytes)
        #            + queue_bytes + 4 x max_message_bytes   bodies admitted (one over the mark)
        #            + 24 x (queue_records + max_records)    parsed records (24 bytes each)
        #            + hwm x 256                       replies held for a full peer
        #            + connections x page cache        SQLite only: (writers + 1 settler) x 32 MiB
        #                                              (PRAGMA cache_size = -32768, store_sqlite.c);
        #                                              it fills as the table grows, flood or not
        #            + 16 MiB                          slack: allocator, ZeroMQ, client libraries
        # Phase 1 floods while the database is locked (a disk that does not keep
        # up at all): nothing is committed, so the page cache term is left out and
        # a feed that kept reading would hold the whole flood. Phase 2 floods a
        # working database, the sender still reading no replies.
        # Under AddressSanitizer freed memory sits in quarantine, so RSS says
        # nothing there: the flood still runs and back-pressure and service
        # are still asserted; the byte bounds only on the plain build.
        rss_checked = not sanitized()
        hwm, mmb, qb, qr, mr = 20, 65536, 262144, 20000, 10000
        f = self.started(conf={"listen": {"hwm": str(hwm), "max_message_bytes": str(mmb),
                                          "queue_bytes": str(qb), "queue_records": str(qr),
                                          "max_records": str(mr)}})
        pid = f.pid()
        per = 3000          # ~ 40 KB a request
        nxt = [40_000_001]

        def body():
            a = nxt[0]
            nxt[0] += per
            return "".join(f"{t},5,0.5\n" for t in range(a, a + per)).encode()

        # warm-up: a few full requests through every stage, so that the baseline
        # holds the writers' batch buffers and the client library's buffers
        p = Pipeline(f, [body() for _ in range(20)], window=20)
        p.run(timeout=120)
        p.close()
        self.assertEqual(p.bad, [])
        base = vm(pid, "VmHWM")
        bound1 = base + hwm * 4 * mmb + qb + 4 * mmb + 24 * (qr + mr) + hwm * 256 + (16 << 20)
        writers = 1 if backend() == "sqlite" else 0     # [database] writers = 0: 1 for SQLite
        bound2 = bound1 + ((writers + 1) * (32 << 20) if backend() == "sqlite" else 0)

        d = f.dealer()
        d.setsockopt(zmq.SNDHWM, 100)
        stats = []

        def flood(seconds, make):
            sent = blocked = peak = 0
            end = time.monotonic() + seconds
            pending = make()
            while time.monotonic() < end:
                try:
                    d.send_multipart([b"", struct.pack(">Q", sent), pending], zmq.NOBLOCK)
                    sent += 1
                    pending = make()
                except zmq.Again:
                    blocked += 1
                    d.poll(50, zmq.POLLOUT)
                peak = max(peak, vm(pid, "VmRSS"))
            stats.append(f"{sent} requests ({sent * len(pending) >> 20} MiB), held back {blocked} times, "
                         f"peak VmRSS {peak >> 10} KiB")
            return blocked, peak

        try:
            lock = DbLock(f)
            try:
                same = [body() for _ in range(4)]    # identical re-sends: cheap to make, fast
                blocked1, peak1 = flood(5, lambda: same[len(stats) % 4])
            finally:
                lock.release()
            blocked2, peak2 = flood(5, body)
            hwm_now = vm(pid, "VmHWM")
        finally:
            d.close(0)
        print(f"flood: locked: {stats[0]}; unlocked: {stats[1]}; VmHWM {base >> 10} -> "
              f"{hwm_now >> 10} KiB; bounds {bound1 >> 10} / {bound2 >> 10} KiB", file=sys.stderr)
        self.assertGreater(blocked1, 0, "the flood never met back-pressure")
        if rss_checked:
            self.assertLessEqual(peak1, bound1, "VmRSS over the bound while the database stood still")
            self.assertLessEqual(peak2, bound2, "VmRSS over the bound during the flood")
            self.assertLessEqual(hwm_now, bound2, "VmHWM over the bound after the flood")
        # and feed still serves
        self.assertEqual(f.req("99,1,1", timeout=120), "TRUE")
        self.assertEqual(count(f, "WHERE ticket = 99"), 1)

    def test_graceful_stop_answers_in_flight(self):
        f = self.started()
        bodies = chunk_bodies(50_000_001, 20000, 50)
        lock = DbLock(f)
        p = Pipeline(f, bodies, window=len(bodies))
        try:
            p.fill()
            # let feed read what it can while the database stands still (not an
            # assertion: the count of requests in flight is read from the log)
            p.pump(1000)
            pid = f.pid()
            os.kill(pid, signal.SIGTERM)
            m = wait_until(lambda: re.search(r"received: not accepting new requests; finishing (\d+) in flight",
                                             f.log()), 30, what="SIGTERM to be logged")
            inflight = int(m.group(1))
            lock.release()
            wait_until(lambda: (p.pump(100), not os.path.exists(f"/proc/{pid}"))[1], 120,
                       what="feed to exit")
            while p.pump(500):
                pass
        finally:
            lock.release()
            p.close()
        self.assertGreater(inflight, 0, "nothing was in flight when SIGTERM came")
        self.assertEqual(p.bad, [])
        self.assertEqual(p.answered, inflight, "requests in flight at SIGTERM vs answered")
        acked = sorted(t for i in p.true_ids() for t in tickets_of(bodies[i]))
        stored = sorted(int(r[0]) for r in f.sql("SELECT ticket FROM fee;"))
        self.assertEqual(stored, acked, "rows committed but not answered, or answered but not stored")
        self.assertNotIn("requests unanswered", f.log())



# ==== Unique keys other than the ticket's ====

class TestOtherUniqueKey(IngestCase):
    """A unique violation that is not the ticket key refuses the request that
    causes it (FALSE, kept in fee_reject); it is no ticket race to retry."""

    # fee.ref follows login (a generated column): two records of one login collide
    REF = {"sqlite": "ALTER TABLE fee ADD COLUMN ref INTEGER AS (login) VIRTUAL;"
                     "CREATE UNIQUE INDEX fee_ref ON fee (ref);",
           "postgresql": "ALTER TABLE fee ADD COLUMN ref bigint GENERATED ALWAYS AS (login) STORED UNIQUE;",
           "mysql": "ALTER TABLE fee ADD COLUMN ref BIGINT AS (login) PERSISTENT, ADD UNIQUE KEY fee_ref (ref);"}
    # a trigger copies each login into a table of its own with a unique key
    AUDIT = {"sqlite": "CREATE TABLE fee_audit (login INTEGER PRIMARY KEY);"
                       "CREATE TRIGGER fee_audit AFTER INSERT ON fee "
                       "BEGIN INSERT INTO fee_audit (login) VALUES (NEW.login); END;",
             "postgresql": "CREATE TABLE fee_audit (login bigint PRIMARY KEY);"
                           "CREATE OR REPLACE FUNCTION fee_audit() RETURNS trigger LANGUAGE plpgsql AS "
                           "$$BEGIN INSERT INTO fee_audit (login) VALUES (NEW.login); RETURN NEW; END$$;"
                           "CREATE TRIGGER fee_audit AFTER INSERT ON fee FOR EACH ROW EXECUTE FUNCTION fee_audit();",
             # MariaDB names only the key, 'PRIMARY' as fee's: the entry tells them apart
             "mysql": "CREATE TABLE fee_audit (login BIGINT NOT NULL PRIMARY KEY);"
                      "CREATE TRIGGER fee_audit AFTER INSERT ON fee FOR EACH ROW "
                      "INSERT INTO fee_audit (login) VALUES (NEW.login);"}

    def check(self, f):
        self.assertEqual(f.req("3001,7,1.5", timeout=10), "TRUE")
        r = f.req("3002,7,2.5", timeout=10)         # login 7 again
        self.assertTrue(r.startswith("FALSE: database refused the request: "), r)
        self.assertEqual(f.req("3003,8,1.5", timeout=10), "TRUE")
        self.assertEqual(f.req("3002,7,2.5", timeout=10), r)          # the client's re-send
        self.assertEqual(f.req("3001,7,1.5", timeout=10), "TRUE")     # an identical re-send
        # a batch: the colliding request among others, all answered
        bodies = [f"{3100 + i},{100 + i},1\n".encode() for i in range(50)]
        bodies[20] = b"3120,8,1\n"                                   # login 8 again
        lock = DbLock(f)
        p = Pipeline(f, bodies, window=len(bodies))
        try:
            p.pump(1000)
            lock.release()
            p.run(timeout=20)
        finally:
            lock.release()
            p.close()
        self.assertEqual([i for i, x in enumerate(p.replies) if x != "TRUE"], [20])
        self.assertTrue(p.replies[20].startswith("FALSE: database refused the request: "), p.replies[20])
        self.assertEqual(f.req("3200,9,1", timeout=10), "TRUE")
        self.assertEqual(sorted(int(x[0]) for x in f.sql("SELECT ticket FROM fee;")),
                         [3001, 3003] + [3100 + i for i in range(50) if i != 20] + [3200])
        self.assertEqual([(k[0], k[2]) for k in rejects(f)],
                         [(r[len("FALSE: "):], b"3002,7,2.5")] * 2 + [(p.replies[20][len("FALSE: "):], bodies[20])])

    def test_second_unique_column(self):
        f = self.started()
        f.sql(self.REF[backend()])
        self.check(f)

    def test_unique_key_hit_in_a_trigger(self):
        f = self.started()
        if os.environ.get("FEED_TEST_URL") and f.url == os.environ["FEED_TEST_URL"]:
            self.addCleanup(f.sql, "DROP TABLE IF EXISTS fee_audit;")
            f.sql("DROP TABLE IF EXISTS fee_audit;")
        f.sql(self.AUDIT[backend()])
        self.check(f)


# ==== The sender on every row ====

class TestSource(IngestCase):
    def test_plain_client_rows_carry_its_address(self):
        f = self.started()
        self.assertEqual(f.req("4001,7,1.5"), "TRUE")
        # 40 records in one request: PostgreSQL's COPY path, MariaDB's bulk array
        self.assertEqual(f.req("".join(f"{t},7,1\n" for t in range(4100, 4140))), "TRUE")
        self.assertTrue(f.req("4002,7,x").startswith("FALSE: "))
        rows = f.sql("SELECT coalesce(source, 'NULL'), count(*) FROM fee GROUP BY source;")
        self.assertEqual(rows, [["127.0.0.1", "41"]])
        self.assertEqual(f.sql("SELECT coalesce(source, 'NULL') FROM fee_reject;"), [["127.0.0.1"]])


if __name__ == "__main__":
    unittest.main()
