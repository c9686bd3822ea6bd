"""test_cluster_pg - PostgreSQL streaming replication: failover and synchronous commit.

Runs under tests/lib/with-pg-cluster.sh: a primary (pg0) and two standbys
(pg1, pg2) on 127.0.0.1 with synchronous_standby_names = 'ANY 1 (pg0, pg1,
pg2)'; feed gets the multi-host URL with target_session_attrs=read-write.

- A COMMIT whose wait for synchronous replication is cancelled
  (pg_cancel_backend while both standbys' walreceivers are stopped with
  SIGSTOP: the server returns COMMIT with the WARNING "canceling wait for
  synchronous replication ... already committed locally, but might not have
  been replicated") must not be answered TRUE; the request is answered TRUE
  once a standby is back, by a commit that waited for it.
- The primary stops answering (SIGSTOP on all its processes) and comes first
  in the URL; a standby is promoted: feed must not wait on the stopped host
  forever but reach the promoted one (reconnects rotate the host list).
- The primary is killed (pg_ctl stop -m immediate) in the middle of a
  pipelined stream; the test promotes the standby that received the most WAL
  and points the other at it. feed follows by itself: the stream completes,
  every ticket answered TRUE is on the new primary, each once, and the
  settler settles there too. The failover time (kill to the first TRUE after
  the promotion) is printed.

Test methods run in name order and each works on whatever topology the ones
before it left: a primary and at least one standby streaming from it.
"""
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import feedtest  # noqa: E402
from feedtest import wait_until  # noqa: E402

import zmq  # noqa: E402

NODES = (0, 1, 2)


def node_sql(n, query, timeout=10):
    """Rows of query on node n (None if the node does not answer)."""
    try:
        r = subprocess.run([os.environ["FEED_TEST_PG_NODE_SQL"], str(n)], input=query,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if r.returncode != 0:
        return None
    return [line.split("\t") for line in r.stdout.splitlines() if line != ""]


def pg_ctl(n, *args):
    r = subprocess.run([os.environ["FEED_TEST_PG_CTL"], str(n), *args], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, f"pg_ctl {args} on pg{n}: {r.stdout}{r.stderr}"


def role(n):
    """'primary', 'standby' or None (down)."""
    rows = node_sql(n, "SELECT pg_is_in_recovery()")
    if not rows:
        return None
    return "standby" if rows[0][0] == "t" else "primary"


def walreceiver_pid(n):
    rows = node_sql(n, "SELECT pid FROM pg_stat_wal_receiver WHERE status = 'streaming'")
    return int(rows[0][0]) if rows else None


def syncrep_waits(f, found_only=False):
    """pids of feed's sessions waiting for synchronous replication; found_only: those
    whose transaction only read and locked rows of fee (FOR KEY SHARE: RowShareLock),
    inserting or updating none (RowExclusiveLock), as a writer accepting rows it found."""
    extra = ("" if not found_only else
             " AND EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid"
             " AND l.relation = 'fee'::regclass AND l.mode = 'RowShareLock')"
             " AND NOT EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid"
             " AND l.relation = 'fee'::regclass AND l.mode = 'RowExclusiveLock')")
    return [int(r[0]) for r in f.sql("SELECT pid FROM pg_stat_activity a WHERE wait_event = 'SyncRep'"
                                      " AND application_name = 'feed'" + extra)]


class Dealer:
    """Pipelines bodies[i] with the 8-byte id i, window at a time; records each reply's time."""

    def __init__(self, f, bodies, window):
        self.sock = f.dealer()
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.bodies = bodies
        self.window = window
        self.replies = [None] * len(bodies)
        self.at = [None] * len(bodies)
        self.next = 0
        self.pending = 0
        self.answered = 0

    def send(self, i):
        self.sock.send_multipart([b"", struct.pack(">Q", i), self.bodies[i]])

    def pump(self, timeout_ms=100):
        while self.next < len(self.bodies) and self.pending < self.window:
            self.send(self.next)
            self.next += 1
            self.pending += 1
        if not self.sock.poll(timeout_ms, zmq.POLLIN):
            return
        while True:
            try:
                fr = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            i = struct.unpack(">Q", fr[1])[0]
            if self.replies[i] is None:
                self.replies[i] = fr[2].decode(errors="replace")
                self.at[i] = time.monotonic()
                self.pending -= 1
                self.answered += 1

    def close(self):
        self.sock.close()


class ClusterCase(feedtest.FeedTestCase):
    def setUp(self):
        super().setUp()
        self.stopped = []     # walreceivers stopped with SIGSTOP, resumed by tearDown

    def tearDown(self):
        for pid in self.stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except OSError:
                pass
        super().tearDown()

    def primary(self):
        for n in NODES:
            if role(n) == "primary":
                return n
        raise AssertionError("no primary")

    def started(self, **conf):
        f = self.feed(conf=conf)
        f.start_ok()
        self.assertEqual(f.req("1,1,1"), "TRUE")
        return f


class TestCluster(ClusterCase):
    def test_cancelled_sync_wait_is_not_success(self):
        # stall_timeout well above the waits below: the watchdog plays no part
        f = self.started(daemon={"shutdown_timeout": "120"},
                         database={"stall_timeout": "100", "retry_max": "200"})
        standbys = [n for n in NODES if role(n) == "standby"]
        self.assertTrue(standbys, "no standby")
        for n in standbys:
            pid = walreceiver_pid(n)
            self.assertIsNotNone(pid, f"pg{n} is not streaming")
            os.kill(pid, signal.SIGSTOP)
            self.stopped.append(pid)
        d = f.dealer()
        try:
            d.send_multipart([b"", b"id-2", b"2,1,1\n3,1,2.5"])
            first = wait_until(lambda: syncrep_waits(f), 10, what="feed's COMMIT to wait in SyncRep")
            got = f.sql("SELECT pg_cancel_backend(pid) FROM pg_stat_activity"
                        " WHERE wait_event = 'SyncRep' AND application_name = 'feed'")
            self.assertEqual(got, [["t"]] * len(first))
            # Committed locally, maybe not replicated: not TRUE. feed must look
            # again and accept what it finds in a commit that waits too (the
            # settler's UPDATE of the same rows waits as well: not that one).
            deadline = time.monotonic() + 10
            again = []
            while time.monotonic() < deadline and not again:
                if d.poll(100):
                    self.fail("answered after a COMMIT whose wait for synchronous replication "
                              f"was cancelled: {d.recv_multipart()}")
                again = [p for p in syncrep_waits(f, found_only=True) if p not in first]
            self.assertTrue(again, "feed did not wait for replication before accepting the rows found")
            self.assertEqual(d.poll(1000), 0, "answered while no standby has the commit")
            self.assertEqual(f.sql("SELECT count(*) FROM fee WHERE ticket IN (2, 3)"), [["2"]])
            for pid in self.stopped:
                os.kill(pid, signal.SIGCONT)
            self.stopped = []
            self.assertEqual(d.poll(20000), zmq.POLLIN, "no answer once the standbys are back")
            self.assertEqual(d.recv_multipart(), [b"", b"id-2", b"TRUE"])
        finally:
            d.close()
        self.assertEqual(f.sql("SELECT count(*), count(DISTINCT ticket) FROM fee"), [["3", "3"]])
        # the operator is told, once, why the batch was retried
        self.assertRegex(f.log(), r"warning: writer \d+: COMMIT returned with a warning, outcome unknown: "
                         r"canceling wait for synchronous replication.*; reconnected, retrying the batch")

    def test_failover_nothing_acknowledged_lost(self):
        old = self.primary()
        f = self.started(database={"retry_max": "200"})
        total, per = 3000, 5
        bodies = [("\n".join(f"{1000 + i * per + j},{1 + i % 50},{j}.25" for j in range(per))).encode()
                  for i in range(total)]
        p = Dealer(f, bodies, window=200)
        ev = {}

        def failover():
            ev["kill"] = time.monotonic()
            pg_ctl(old, "stop", "-m", "immediate", "-w")
            # promote the standby with the most WAL: it has every acknowledged commit
            lsn = {}
            for n in NODES:
                if n != old:
                    rows = node_sql(n, "SELECT pg_last_wal_receive_lsn() - '0/0'::pg_lsn")
                    lsn[n] = float(rows[0][0]) if rows and rows[0][0] else -1
            new = max(lsn, key=lambda n: lsn[n])
            pg_ctl(new, "promote", "-w")
            ev["promoted"] = time.monotonic()
            ev["new"] = new
            for n in lsn:
                if n != new:
                    subprocess.run([os.environ["FEED_TEST_PG_FOLLOW"], str(n), str(new)],
                                   check=True, timeout=30)

        t = None
        try:
            deadline = time.monotonic() + 60
            while p.answered < total and time.monotonic() < deadline:
                p.pump()
                if t is None and p.answered >= total // 3:
                    t = threading.Thread(target=failover)
                    t.start()
            if t:
                t.join(60)
        finally:
            p.close()
        self.assertIsNotNone(t, "the stream ended before the failover")
        self.assertIn("new", ev, "the failover did not complete")
        new = ev["new"]
        self.assertEqual(role(new), "primary")
        self.assertEqual(p.answered, total, f"{total - p.answered} requests unanswered")
        self.assertEqual([i for i, r in enumerate(p.replies) if r != "TRUE"], [])
        after = [a for a in p.at if a > ev["promoted"]]
        self.assertTrue(after, "no TRUE after the promotion")
        print(f"\nfailover: kill -> promoted {ev['promoted'] - ev['kill']:.2f} s, "
              f"promoted -> first TRUE {min(after) - ev['promoted']:.2f} s, "
              f"kill -> first TRUE {min(after) - ev['kill']:.2f} s "
              f"({len(after)} of {total} requests answered after the promotion)", flush=True)
        # every ticket answered TRUE is on the new primary, once, as sent
        rows = node_sql(new, "SELECT count(*), count(DISTINCT ticket), min(ticket), max(ticket),"
                             " sum(volume)::text FROM fee WHERE ticket >= 1000")
        self.assertIsNotNone(rows, f"pg{new} does not answer")
        rows[0][4] = feedtest.norm_dec(rows[0][4])
        self.assertEqual(rows, [[str(total * per), str(total * per), "1000",
                                 str(1000 + total * per - 1),
                                 feedtest.norm_dec(f"{total * sum(j + 0.25 for j in range(per)):.2f}")]])
        # the settler followed too
        wait_until(lambda: node_sql(new, "SELECT count(*) FROM fee WHERE status = 'N'") == [["0"]],
                   30, what="the settler to settle on the new primary")
        st = f.status()
        self.assertEqual(st.returncode, 0, st.stdout + st.stderr)
        self.assertNotIn("DOWN", st.stdout)

    def test_hung_primary_is_passed_over(self):
        # The primary stops answering without closing anything (SIGSTOP on all
        # its processes: the kernel still accepts connections) and comes first
        # in the URL: reconnects must not wait on it forever.
        old = self.primary()
        others = [n for n in NODES if n != old]
        ports = os.environ["FEED_TEST_PG_PORTS"].split()
        hosts = ",".join(f"127.0.0.1:{ports[n]}" for n in [old] + others)
        f = self.feed(conf={"daemon": {"shutdown_timeout": "30"},
                            "database": {"connect_timeout": "2", "stall_timeout": "3",
                                         "retry_max": "200"}})
        f.sections["database"]["url"] = (f"postgresql://postgres@{hosts}/feed"
                                         "?target_session_attrs=read-write")
        f.write_conf()
        f.start_ok()
        self.assertEqual(f.req("1,1,1"), "TRUE")
        data = os.environ["FEED_TEST_PG_DATA"].split()[old]
        with open(os.path.join(data, "postmaster.pid")) as fh:
            tree = _tree(int(fh.readline()))
        lsn = {}
        for n in others:
            rows = node_sql(n, "SELECT pg_last_wal_receive_lsn() - '0/0'::pg_lsn")
            if rows and rows[0][0]:
                lsn[n] = float(rows[0][0])
        self.assertTrue(lsn, "no standby")
        try:
            for pid in tree:
                os.kill(pid, signal.SIGSTOP)
            t0 = time.monotonic()
            new = max(lsn, key=lambda n: lsn[n])
            pg_ctl(new, "promote", "-w")
            # no standby follows it: commits there must not wait for one
            node_sql(new, "ALTER SYSTEM SET synchronous_standby_names = '';\n"
                          "SELECT pg_reload_conf();")
            self.assertEqual(f.req("2,1,1", timeout=40), "TRUE")
            print(f"\nhung primary: stop -> TRUE on the promoted standby {time.monotonic() - t0:.2f} s",
                  flush=True)
            self.assertEqual(node_sql(new, "SELECT count(*) FROM fee WHERE ticket = 2"), [["1"]])
            # The settler's connection hangs on the stopped primary too (its
            # query is sent; no answer comes, and keepalives are answered by
            # the kernel): it is watched like the writers' and moves over.
            wait_until(lambda: node_sql(new, "SELECT status FROM fee WHERE ticket = 2") == [["Y"]],
                       40, what="the settler to settle ticket 2 on the promoted standby")
            print(f"hung primary: stop -> ticket 2 settled {time.monotonic() - t0:.2f} s", flush=True)
            self.assertRegex(f.log(), r"settle: no answer from the database for \d+ s; the call is cancelled")
        finally:
            # never let it run again: it would be a second primary
            for pid in tree:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass


def _tree(root):
    """root and every process under it."""
    ppid = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as fh:
                    ppid[int(d)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, todo = [root], [root]
    while todo:
        parent = todo.pop()
        kids = [p for p, pp in ppid.items() if pp == parent and p not in found]
        found += kids
        todo += kids
    return found


if __name__ == "__main__":
    unittest.main()
