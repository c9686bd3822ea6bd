"""test_stall - a database that takes the connection but never answers.

Runs under tests/lib/with-sqlite.sh, with-postgres.sh and with-mariadb.sh.
The stall is real: the server's processes are stopped with SIGSTOP
(PostgreSQL: the postmaster and every process under it; MariaDB: mariadbd),
so that connections are accepted by the kernel and nothing ever answers; for
SQLite, another process holds the write lock (DbLock). feed must call that
an outage after [database] stall_timeout, cancel and retry, answer every
request once the database is back and store each record once; and
`feed stop` during the stall must end within shutdown_timeout without
SIGKILL, saying how many requests it left unanswered.
"""
import os
import re
import signal
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import feedtest  # noqa: E402
from feedtest import backend, wait_until  # noqa: E402
from test_ingest import DbLock, IngestCase, Pipeline, chunk_bodies, count, tickets_of  # noqa: E402

STALL = 3        # [database] stall_timeout
SHUTDOWN = 8     # [daemon] shutdown_timeout (stop's own wait is SHUTDOWN + 5, then SIGKILL)


def _ppids():
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as fh:
                    out[int(d)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return out


def _tree(root):
    """root and every process under it."""
    ppid = _ppids()
    found, todo = [root], [root]
    while todo:
        parent = todo.pop()
        kids = [p for p, pp in ppid.items() if pp == parent and p not in found]
        found += kids
        todo += kids
    return found


def _state(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


class Stall:
    """Stalls the database until resume(): SIGSTOP for a server, a held write lock for SQLite."""

    def __init__(self, f):
        self.f = f
        self.stopped = []
        self.lock = None

    def start(self):
        if backend() == "sqlite":
            self.lock = DbLock(self.f)
            return
        with open(os.environ["FEED_TEST_DB_PIDFILE"]) as fh:
            root = int(fh.readline())
        # twice: a process forked while the first round ran is caught by the second
        for _ in range(2):
            for pid in _tree(root):
                if pid not in self.stopped:
                    try:
                        os.kill(pid, signal.SIGSTOP)
                        self.stopped.append(pid)
                    except ProcessLookupError:
                        pass
        wait_until(lambda: all(_state(p) in ("T", "gone", "Z") for p in self.stopped), 10,
                   what="the database server's processes to stop")

    def resume(self):
        if self.lock:
            self.lock.release()
            self.lock = None
        for pid in self.stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self.stopped = []


class StallCase(IngestCase):
    def setUp(self):
        super().setUp()
        self.stalls = []

    def tearDown(self):
        for s in self.stalls:      # never leave the server stopped for the next test
            s.resume()
        super().tearDown()

    def stall(self, f):
        s = Stall(f)
        self.stalls.append(s)
        s.start()
        return s

    def status_down(self, f, timeout):
        """Waits until `feed status` shows the database down; returns its output."""
        return wait_until(lambda: (lambda r: r.stdout if "DOWN" in r.stdout else None)(f.status()),
                          timeout, what="status to show the database DOWN")


class TestStall(StallCase):
    def test_stall_is_an_outage_then_everything_answered_once(self):
        f = self.started(conf={"database": {"stall_timeout": str(STALL), "retry_max": "500"}})
        first, total, per = 2_000_001, 20000, 20
        bodies = chunk_bodies(first, total, per)
        p = Pipeline(f, bodies, window=100)
        p.limit = 200                    # the rest only once the database stalls
        err = []

        def body():
            try:
                p.run(timeout=600)       # no re-sends: feed keeps what it took
            except BaseException as e:  # reported below
                err.append(e)
        t = threading.Thread(target=body, daemon=True)
        t.start()
        try:
            wait_until(lambda: p.answered >= 200 or err, 120, what="the first 200 answers")
            self.assertEqual(err, [])
            s = self.stall(f)
            p.limit = len(bodies)
            out = self.status_down(f, STALL + 30)
            self.assertRegex(out, r"state: .*database .* DOWN since \d+: stalled: no answer for \d+ s")
            answered_down = p.answered
            time.sleep(STALL + 2)        # the stall outlasts a cancelled call and its retry
            st = f.status()
            self.assertEqual(st.returncode, 0, "feed exited during the stall")
            self.assertIn("DOWN", st.stdout)
            self.assertEqual(p.answered, answered_down, "answers while the database was stalled")
            s.resume()
            t.join(600)
        finally:
            p.limit = len(bodies)
            for s in self.stalls:
                s.resume()
            t.join(600)
            p.close()
        self.assertEqual(err, [])
        self.assertEqual(p.bad, [])
        self.assertTrue(p.done())
        self.assertLess(answered_down, len(bodies), "the stream was over before the stall")
        rows = f.sql("SELECT count(*), count(DISTINCT ticket), min(ticket), max(ticket) FROM fee;")
        self.assertEqual([int(x) for x in rows[0]], [total, total, first, first + total - 1])
        wait_until(lambda: "DOWN" not in f.status().stdout, 30, what="status to show the database up")
        log = f.log()
        self.assertEqual(len(re.findall(r"database unavailable: stalled: no answer for \d+ s", log)), 1,
                         "stall not logged once:\n" + "\n".join(
                             ln for ln in log.splitlines() if "database" in ln or "writer" in ln)[-4000:])
        self.assertEqual(len(re.findall(r"database unavailable", log)), 1, "outage logged more than once")
        self.assertEqual(len(re.findall(r"database available again", log)), 1, "recovery not logged once")


class TestStopDuringStall(StallCase):
    def test_stop_ends_in_time_and_counts_unanswered(self):
        f = self.started(conf={"daemon": {"shutdown_timeout": str(SHUTDOWN)},
                               "database": {"stall_timeout": str(STALL)}})
        first, total, per = 3_000_001, 10000, 20
        bodies = chunk_bodies(first, total, per)
        p = Pipeline(f, bodies, window=len(bodies))
        p.limit = 100
        try:
            p.run(timeout=120, until=lambda: p.answered >= 100)
            self.stall(f)
            p.limit = len(bodies)
            p.fill()                     # 400 more requests into a stalled database
            wait_until(lambda: (p.pump(100), "DOWN" in f.status().stdout)[1], STALL + 30,
                       what="status to show the database DOWN")
            p.pump(500)
            pid = f.pid()
            t0 = time.monotonic()
            r = f.cmd("stop", timeout=SHUTDOWN + 60)   # stop's default wait: shutdown_timeout + 5
            elapsed = time.monotonic() - t0
            exited = not os.path.exists(f"/proc/{pid}") or feedtest._zombie(pid)
        finally:
            for s in self.stalls:
                s.resume()
        while p.pump(500):
            pass
        p.close()
        out = r.stdout + r.stderr
        print(f"stop after {elapsed:.1f} s (shutdown_timeout {SHUTDOWN}): rc {r.returncode}: {out.strip()}",
              file=sys.stderr)
        self.assertTrue(exited, "feed still runs after stop")
        self.assertNotIn("SIGKILL", out)
        self.assertLess(elapsed, SHUTDOWN + 5, "stop did not end within shutdown_timeout")
        self.assertNotEqual(r.returncode, 0, "stop left requests unanswered and said it was fine")
        m = re.search(r"(\d+) requests were left unanswered", r.stderr)
        self.assertIsNotNone(m, out)
        left = int(m.group(1))
        m = re.search(r"received: not accepting new requests; finishing (\d+) in flight", f.log())
        self.assertIsNotNone(m, "SIGTERM not logged")
        self.assertEqual(left, int(m.group(1)), "unanswered at exit vs in flight at SIGTERM (nothing was answered)")
        self.assertGreater(left, 0)
        self.assertLessEqual(left, len(bodies) - p.answered)
        self.assertEqual(p.bad, [])
        self.assertFalse(os.path.exists(f.pidfile), "pidfile left behind")
        self.assertFalse(os.path.exists(f.pidfile[:-4] + ".status"), "status file left behind")
        # what was answered is stored; what was not may be: the senders' re-send settles it
        acked = sorted(t for i in p.true_ids() for t in tickets_of(bodies[i]))
        stored = {int(x[0]) for x in f.sql("SELECT ticket FROM fee;")}
        self.assertTrue(set(acked) <= stored, "answered TRUE but not stored")
        f.start_ok()
        p = Pipeline(f, bodies, window=200)
        try:
            p.run(timeout=300)
        finally:
            p.close()
        self.assertEqual(p.bad, [])
        rows = f.sql("SELECT count(*), count(DISTINCT ticket) FROM fee;")
        self.assertEqual([int(x) for x in rows[0]], [total, total])
        self.assertEqual(count(f), total)


class TestConfig(StallCase):
    def test_stall_timeout_must_be_below_shutdown_timeout(self):
        f = self.feed(conf={"daemon": {"shutdown_timeout": "5"}, "database": {"stall_timeout": "5"}})
        r = f.cmd("check")
        self.assertEqual(r.returncode, 6, r.stdout + r.stderr)
        self.assertIn("[database] stall_timeout (5) must be below [daemon] shutdown_timeout (5)", r.stderr)
        f.sections["database"]["stall_timeout"] = "4"
        f.write_conf()
        r = f.cmd("check")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)


if __name__ == "__main__":
    unittest.main()
