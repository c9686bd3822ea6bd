"""test_servers - end-to-end tests of feed against a database server (PostgreSQL, MariaDB).

Runs under tests/lib/with-postgres.sh and with-mariadb.sh only: the server
is stopped and started again (FEED_TEST_DB_STOP/START), shared by two feed
instances, altered under feed (a check constraint), and holds a classic fee
table before feed first starts. Helpers come from test_ingest.py.
"""
import os
import re
import select
import subprocess
import sys
import threading
import time
import unittest

import zmq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from feedtest import Feed, backend, norm_dec, wait_until  # noqa: E402
from test_ingest import (DbLock, IngestCase, Pipeline, chunk_bodies, count, rejects,  # noqa: E402
                         sql_cmd, tickets_of)


def db_ctl(var):
    r = subprocess.run(os.environ[var], shell=True, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{var} failed: {r.stdout}{r.stderr}"


class ServerCase(IngestCase):
    def setUp(self):
        super().setUp()
        if backend() not in ("postgresql", "mysql"):
            self.skipTest("needs a database server (run under with-postgres.sh or with-mariadb.sh)")

    def run_in_thread(self, p, **kw):
        err = []

        def body():
            try:
                p.run(**kw)
            except BaseException as e:  # reported by the main thread
                err.append(e)
        t = threading.Thread(target=body, daemon=True)
        t.start()
        return t, err


class TestOutage(ServerCase):
    def test_server_stopped_mid_stream(self):
        f = self.started(conf={"database": {"retry_max": "500", "connect_timeout": "2"}})
        first, total, per = 1_000_001, 100000, 20
        bodies = chunk_bodies(first, total, per)
        p = Pipeline(f, bodies, window=200)
        p.limit = 500                    # the rest only once the server is down
        t, err = self.run_in_thread(p, timeout=600, resend_after=5)
        restarted = False
        try:
            wait_until(lambda: p.answered >= 500 or err, 120, what="the first 500 answers")
            self.assertEqual(err, [])
            db_ctl("FEED_TEST_DB_STOP")
            p.limit = len(bodies)
            st = wait_until(lambda: (lambda r: r if "DOWN" in r.stdout else None)(f.status()), 60,
                            what="status to show the database DOWN")
            self.assertEqual(st.returncode, 0, st.stdout + st.stderr)
            self.assertRegex(st.stdout, r"state: .*database .* DOWN since")
            answered_down = p.answered
            time.sleep(3)               # a few seconds of outage (not an assertion)
            self.assertEqual(f.status().returncode, 0, "feed exited while the database was down")
            db_ctl("FEED_TEST_DB_START")
            restarted = True
            t.join(600)
        finally:
            if not restarted:
                db_ctl("FEED_TEST_DB_START")
            p.limit = len(bodies)
            t.join(600)
            p.close()
        self.assertEqual(err, [])
        self.assertEqual(p.bad, [])
        self.assertTrue(p.done())
        self.assertLess(answered_down, len(bodies), "the stream was over before the outage")
        rows = f.sql("SELECT count(*), count(DISTINCT ticket), min(ticket), max(ticket) FROM fee;")
        self.assertEqual([int(x) for x in rows[0]], [total, total, first, first + total - 1])
        self.assertEqual(f.status().returncode, 0)
        wait_until(lambda: "DOWN" not in f.status().stdout, 30, what="status to show the database up")
        log = f.log()
        print(f"outage: {answered_down} of {len(bodies)} answered when DOWN showed, {p.resent} re-sent; "
              + " | ".join(l for l in log.splitlines() if re.search(r"database|settle: (?!pass)", l)),
              file=sys.stderr)
        self.assertEqual(len(re.findall(r"database unavailable", log)), 1, "outage not logged once")
        self.assertEqual(len(re.findall(r"database available again", log)), 1, "recovery not logged once")
        self.assertLessEqual(len(re.findall(r"settle: .* will retry", log)), 1, "settle outage logged twice")
        self.assert_settled(f, timeout=120)


class TestTwoInstances(ServerCase):
    def test_overlapping_tickets_two_instances(self):
        f1 = self.feed()
        f2 = self.feed()                 # both reset the shared database before either starts
        f1.start_ok()
        f2.start_ok()
        a = Pipeline(f1, chunk_bodies(1, 20000, 10), window=100)
        b = Pipeline(f2, chunk_bodies(10001, 20000, 10), window=100)
        (ta, ea), (tb, eb) = self.run_in_thread(a, timeout=300), self.run_in_thread(b, timeout=300)
        ta.join(600)
        tb.join(600)
        a.close()
        b.close()
        self.assertEqual(ea + eb, [])
        self.assertEqual(a.bad + b.bad, [])
        self.assertTrue(a.done() and b.done())
        rows = f1.sql("SELECT count(*), count(DISTINCT ticket), min(ticket), max(ticket) FROM fee;")
        self.assertEqual([int(x) for x in rows[0]], [30000, 30000, 1, 30000])
        self.assertEqual(f2.req("5,7,1.5"), "TRUE")
        r = f2.req("5,8,1.5")
        self.assertEqual(r, "FALSE: conflict: ticket 5 already stored with login 7 volume 1.5")
        r = f1.req("15000,7,2")
        self.assertEqual(r, "FALSE: conflict: ticket 15000 already stored with login 7 volume 1.5")
        self.assertEqual(count(f1), 30000)
        self.assert_settled(f1, timeout=120)
        fees = f1.sql("SELECT DISTINCT fee FROM fee;")
        self.assertEqual([norm_dec(x[0]) for x in fees], ["11.25"])


class TestRefused(ServerCase):
    def test_check_constraint_isolates_one_request(self):
        f = self.started()
        f.sql("ALTER TABLE fee ADD CONSTRAINT no666 CHECK (login <> 666);")
        bodies = chunk_bodies(5001, 1000, 5)       # 200 requests
        bad = 100
        bodies[bad] = bodies[bad].replace(b",7,", b",666,", 1)
        lock = DbLock(f)                           # so they all queue up and share batches
        p = Pipeline(f, bodies, window=len(bodies))
        try:
            p.pump(1000)
            lock.release()
            p.run(timeout=300)
        finally:
            lock.release()
            p.close()
        self.assertTrue(p.replies[bad].startswith("FALSE: database refused the request: "), p.replies[bad])
        self.assertEqual([i for i, r in enumerate(p.replies) if r != "TRUE"], [bad])
        self.assertEqual(count(f), 199 * 5)
        self.assertEqual(count(f, "WHERE login = 666"), 0)
        self.assertEqual(count(f, "WHERE ticket IN (%s)" % ",".join(map(str, tickets_of(bodies[bad])))), 0)
        got = rejects(f)
        self.assertEqual(len(got), 1, got)
        self.assertEqual(got[0][0], p.replies[bad][len("FALSE: "):])
        self.assertEqual(got[0][2], bodies[bad])
        self.assertIn(f.endpoint, got[0][1])


class TestClassicTable(ServerCase):
    def test_classic_table_adopted(self):
        f = self.feed()
        f.sql("CREATE TABLE fee (ticket BIGINT, login BIGINT, volume DECIMAL(12,2), status CHAR(1));"
              "INSERT INTO fee VALUES (1, 10, 1.50, 'N'), (2, 10, 2.25, 'Y'), (3, 11, 100.00, 'N'),"
              " (4, 12, 0.01, 'N'), (5, 12, 7.00, 'Y');")
        f.start_ok()
        self.assertEqual(f.req("100,10,1"), "TRUE")
        self.assert_settled(f, timeout=60)
        got = {int(r[0]): (int(r[1]), norm_dec(r[2]), r[3]) for r in
               f.sql("SELECT ticket, login, volume, status FROM fee;")}
        self.assertEqual(got, {1: (10, "1.5", "Y"), 2: (10, "2.25", "Y"), 3: (11, "100", "Y"),
                               4: (12, "0.01", "Y"), 5: (12, "7", "Y"), 100: (10, "1", "Y")})
        fees = {int(r[0]): norm_dec(r[1]) for r in
                f.sql("SELECT ticket, fee FROM fee WHERE ticket IN (1, 3, 4, 100);")}
        self.assertEqual(fees, {1: "11.25", 3: "750", 4: "0.08", 100: "7.5"})
        # identical re-sends of classic rows are idempotent, other values conflict
        self.assertEqual(f.req("1,10,1.5\n2,10,2.25\n3,11,100.00000000\n"), "TRUE")
        self.assertEqual(f.req("5,12,7"), "TRUE")
        self.assertEqual(f.req("4,12,0.02"), "FALSE: conflict: ticket 4 already stored with login 12 volume 0.01")
        self.assertEqual(count(f), 6)
        # and a restart (migration again) keeps everything
        self.assertEqual(f.stop().returncode, 0)
        f.start_ok()
        self.assertEqual(f.req("101,10,2"), "TRUE")
        self.assertEqual(count(f), 7)


# ==== Durability and start-up against a busy database (issue 7) ====

class LongReader:
    """Another session with an open transaction that has read from the given
    tables (a long report): it holds PostgreSQL's ACCESS SHARE lock, MySQL's
    shared metadata lock, on each of them until release()."""

    def __init__(self, f, tables=("fee",)):
        begin = "BEGIN;" if backend() == "postgresql" else "START TRANSACTION;"
        # one statement, one line of output (a second line could sit in the pipe's
        # reader buffer, out of select()'s sight)
        reads = "SELECT 'reading' FROM " + ", ".join(
            f"(SELECT count(*) AS n FROM {t}) t{i}" for i, t in enumerate(tables)) + ";"
        self.p = subprocess.Popen("exec stdbuf -oL " + sql_cmd(f), shell=True, text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        self.p.stdin.write(f"{begin}\n{reads}\n")
        self.p.stdin.flush()
        r, _, _ = select.select([self.p.stdout], [], [], 60)
        line = self.p.stdout.readline() if r else ""
        if line.strip() != "reading":
            self.p.kill()
            raise AssertionError(f"the reader did not start: {line!r} {self.p.stderr.read()}")

    def release(self):
        if self.p.poll() is None:
            self.p.stdin.write("COMMIT;\n")
            self.p.stdin.close()
            self.p.wait(60)
        self.p.stdout.close()
        self.p.stderr.close()


class TestDurabilityFull(ServerCase):
    """durability = full against a server (or role) configured to acknowledge
    commits before they are on disk."""

    def setting(self, f, var):
        q = f"SHOW {var};" if backend() == "postgresql" else f"SELECT @@GLOBAL.{var};"
        return f.sql(q)[0][0]

    def set_global(self, f, var, value):
        """SET GLOBAL on the shared test server, restored after the test."""
        old = self.setting(f, var)
        f.sql(f"SET GLOBAL {var} = {value};")
        self.addCleanup(f.sql, f"SET GLOBAL {var} = {old};")

    def set_role(self, f, value):
        """The PostgreSQL role's default synchronous_commit, reset after the test."""
        f.sql(f"ALTER ROLE CURRENT_USER SET synchronous_commit = {value};")
        self.addCleanup(f.sql, "ALTER ROLE CURRENT_USER RESET synchronous_commit;")
        # the condition is real: a new session of feed's role gets the default
        self.assertEqual(self.setting(f, "synchronous_commit"), value)

    def feed_tables(self, f):
        return int(f.sql("SELECT count(*) FROM information_schema.tables WHERE table_schema = DATABASE()"
                         " AND table_name IN ('fee', 'fee_rate', 'fee_reject', 'feed_schema');")[0][0])

    def assert_refused(self, f, var, value):
        r = f.start()
        self.assertNotEqual(r.returncode, 0, f"feed started with {var} = {value}: {r.stdout}")
        err = r.stderr
        self.assertIn(f"{var} = {value}", err)
        self.assertIn("durability = normal", err)     # the way out on feed's side
        self.assertIn("feed.conf", err)
        self.assertRegex(err, rf"set {var} = 1 on the server")   # the way out on the server's
        self.assertIn(f"{var} = {value}", f.log())   # and the log says it too

    def test_full_raises_weaker_setting(self):
        f = self.feed(conf={"database": {"durability": "full", "connect_timeout": "2"}})
        if backend() == "postgresql":
            # remote_write flushes locally but waits only for a standby's write, not its flush
            for n, weaker in enumerate(("off", "local", "remote_write")):
                self.set_role(f, weaker)
                f.start_ok()
                # read back by feed on its own (writer) connection after setting it
                got = re.findall(r"database: (synchronous_commit = .*)", f.log())
                self.assertEqual(got, ["synchronous_commit = on (durability = full)"] * (n + 1), weaker)
                self.assertEqual(f.req(f"{n + 1},7,1.5"), "TRUE")
                self.assertEqual(f.stop().returncode, 0)
        else:
            self.set_global(f, "innodb_flush_log_at_trx_commit", 2)
            self.assert_refused(f, "innodb_flush_log_at_trx_commit", 2)
            self.assertEqual(self.feed_tables(f), 0, "refused, yet it touched the database")
            # the operator accepts the risk: it starts, and says what it accepted
            f.sections["database"]["durability"] = "normal"
            f.write_conf()
            f.start_ok()
            self.assertRegex(f.log(), r"warning.*innodb_flush_log_at_trx_commit = 2")
            self.assertEqual(f.req("1,7,1.5"), "TRUE")

    if backend() == "mysql":
        def test_refused_reconnect_gives_its_reason_to_status(self):
            # While feed runs, the server is weakened below durability = full and
            # feed's sessions are killed: `status` must say why the writers cannot
            # reconnect, not just "not connected"; nothing is answered until the
            # server is fixed, then the request is. (MariaDB only: on PostgreSQL feed
            # raises synchronous_commit itself on every connect.)
            f = self.feed(conf={"database": {"durability": "full", "connect_timeout": "2"}})
            f.start_ok()
            self.assertEqual(f.req("1,7,1.5"), "TRUE")
            self.set_global(f, "innodb_flush_log_at_trx_commit", 2)
            for (tid,) in f.sql("SELECT id FROM information_schema.processlist WHERE id <> CONNECTION_ID()"
                                " AND user NOT IN ('system user', 'event_scheduler')"
                                " AND command NOT IN ('Daemon', 'Binlog Dump');"):
                f.sql(f"KILL CONNECTION {tid};")
            reason, fix = "innodb_flush_log_at_trx_commit = 2", "SET GLOBAL innodb_flush_log_at_trx_commit = 1;"
            s = f.ctx.socket(zmq.REQ)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(f.endpoint)
            try:
                s.send(b"2,7,1.5")
                wait_until(lambda: reason in f.status().stdout, 30,
                           what=f"status to say why reconnects fail ({reason})")
                self.assertFalse(s.poll(500), "answered while the server refuses feed")
                f.sql(fix)
                self.assertTrue(s.poll(30000), "no answer once the server is fixed")
                self.assertEqual(s.recv(), b"TRUE")
            finally:
                s.close(0)
            self.assertEqual(count(f), 2)

    def test_full_keeps_stronger_setting(self):
        f = self.feed(conf={"database": {"durability": "full", "connect_timeout": "2"}})
        if backend() == "postgresql":
            # no synchronous standby here, so remote_apply commits like on
            self.set_role(f, "remote_apply")
            f.start_ok()
            self.assertRegex(f.log(), r"database: synchronous_commit = remote_apply \(durability = full\)")
            self.assertEqual(f.req("1,7,1.5"), "TRUE")
        else:
            # the test server writes a binary log: it must be synced at every commit too
            self.assertEqual(self.setting(f, "log_bin"), "1")
            self.set_global(f, "sync_binlog", 0)
            self.assert_refused(f, "sync_binlog", 0)
            self.assertEqual(self.feed_tables(f), 0, "refused, yet it touched the database")


class TestStartBesideLongReader(ServerCase):
    """A second instance (or a restart) while a long transaction reads feed's tables."""

    def second(self, f1, **conf):
        # not self.feed(): that drops the tables, which would wait for the reader
        f2 = Feed(conf={"database": {"connect_timeout": "2", **conf}})
        self.instances.append(f2)
        return f2

    def test_second_instance_starts_past_reader(self):
        f1 = self.started()
        self.assertEqual(f1.req("1,7,1.5"), "TRUE")
        reader = LongReader(f1, ("fee", "fee_rate", "fee_reject", "feed_schema"))
        try:
            f2 = self.second(f1)
            r = f2.start()    # the old code waited here for the reader (no DDL is needed)
            self.assertEqual(r.returncode, 0, f"second instance did not start: {r.stderr}")
            self.assertEqual(f2.req("2,7,2.5"), "TRUE")
            self.assertEqual(f1.req("3,7,2.5"), "TRUE")
        finally:
            reader.release()
        self.assertEqual(count(f1), 3)

    def test_needed_migration_gives_up_on_lock(self):
        f = self.feed(conf={"database": {"connect_timeout": "2"}})
        f.sql("CREATE TABLE fee (ticket BIGINT, login BIGINT, volume DECIMAL(12,2), status CHAR(1));"
              "INSERT INTO fee VALUES (1, 10, 1.50, 'N');")
        reader = LongReader(f)
        try:
            r = f.start()     # the classic table needs ALTER TABLE, which the reader blocks
            self.assertNotEqual(r.returncode, 0, r.stdout)
            self.assertRegex(r.stderr, r"waited \d+ s for a lock on table fee")
            self.assertIn("another session", r.stderr)
        finally:
            reader.release()
        f.start_ok()          # once the reader is gone, the migration runs
        self.assertEqual(f.req("2,10,1"), "TRUE")
        self.assertEqual(count(f), 2)


class TestServerLimits(ServerCase):
    """A rejected body over a real server limit is refused alone; nobody waits for it.

    MariaDB: max_allowed_packet = 2M, set globally before feed connects.
    PostgreSQL: an index on fee_reject(body), whose rows may not exceed a
    third of a page (SQLSTATE 54000, program_limit_exceeded). A 3.1 MB
    request is a too-large reject with max_message_bytes = 2 MiB (ZeroMQ takes
    up to 8 MiB), which the server then refuses to store whole.
    """

    BIG = 3_100_000

    def limited(self, **conf):
        conf.setdefault("listen", {})["max_message_bytes"] = "2097152"
        f = self.feed(conf=conf)
        if backend() == "mysql":
            f.sql("SET GLOBAL max_allowed_packet = 2097152;")
            self.addCleanup(f.sql, "SET GLOBAL max_allowed_packet = 134217728;")
            f.start_ok()
        else:
            f.start_ok()
            f.sql("CREATE INDEX fee_reject_body ON fee_reject (body);")
        return f

    def unlimited(self, f):
        """Lifts the limit again for new sessions (such as the client reading fee_reject)."""
        if backend() == "mysql":
            f.sql("SET GLOBAL max_allowed_packet = 134217728;")

    def big_reply(self, r, big):
        self.assertTrue(r.startswith(f"FALSE: request too large ({len(big)} bytes, max 2097152)"), r[:200])
        if backend() == "mysql":
            self.assertIn(f"[stored truncated: 65536 of {len(big)} bytes]", r)
        else:
            self.assertIn("[not stored: the database refused it]", r)

    def test_oversized_reject_then_resend_then_small_requests(self):
        f = self.limited()
        big = os.urandom(self.BIG)
        d = f.dealer()
        try:
            d.send_multipart([b"", b"big-1", big])
            time.sleep(3)                        # a client whose request timed out sends it again
            d.send_multipart([b"", b"big-2", big])
            small = [f"{t},7,1.5".encode() for t in range(70001, 70011)]
            for i, b in enumerate(small):
                d.send_multipart([b"", b"small-%d" % i, b])
            got = {}
            deadline = time.monotonic() + 20
            while len(got) < 2 + len(small) and time.monotonic() < deadline:
                if d.poll(200):
                    fr = d.recv_multipart()
                    got[fr[1]] = fr[2].decode()
        finally:
            d.close(0)
        self.assertEqual(len(got), 2 + len(small), f"unanswered after 20 s; answered: {sorted(got)}")
        self.big_reply(got[b"big-1"], big)
        self.big_reply(got[b"big-2"], big)
        self.assertEqual([got[b"small-%d" % i] for i in range(len(small))], ["TRUE"] * len(small))
        self.assertEqual(count(f, "WHERE ticket BETWEEN 70001 AND 70010"), 10)
        self.unlimited(f)
        kept = rejects(f)
        if backend() == "mysql":
            self.assertEqual([k[2] for k in kept], [big[:65536]] * 2)
        else:
            self.assertEqual(kept, [])
            self.assertEqual(len(re.findall(r"not stored", f.log())), 2, f.log()[-2000:])
        self.assertEqual(f.req("70020,7,1.5", timeout=10), "TRUE")

    def test_oversized_reject_does_not_truncate_its_batch(self):
        # One writer, the table locked: the first request holds the writer, the
        # rest queue up and become one batch: two copies of the refused body, a
        # rejected body the server takes whole, a record.
        f = self.limited(database={"writers": "1"})
        big = os.urandom(self.BIG)
        # MariaDB takes up to 2M; PostgreSQL's index rows hold up to 2704 bytes
        mid = b"bad\n" + (os.urandom(1_500_000) if backend() == "mysql" else os.urandom(1000))
        lock = DbLock(f)
        p = Pipeline(f, [b"81,7,1.5", big, mid, b"82,7,1.5", big, b"83,7,1.5"], window=1)
        try:
            p.fill()
            time.sleep(1)                        # the writer takes 81 and waits for the lock
            p.window = 6
            p.fill()
            time.sleep(2)
            lock.release()
            p.run(timeout=30)
        finally:
            lock.release()
            p.close()
        r = p.replies
        self.assertEqual([r[0], r[3], r[5]], ["TRUE"] * 3)
        self.big_reply(r[1], big)
        self.big_reply(r[4], big)
        self.assertTrue(r[2].startswith("FALSE: line 1: "), r[2][:200])
        self.assertNotIn("stored", r[2])
        self.unlimited(f)
        kept = rejects(f)
        self.assertEqual([k[2] for k in kept if k[0] == r[2][len("FALSE: "):]], [mid],
                         "the other reject of the batch is not kept whole")
        self.assertEqual(len(kept), 3 if backend() == "mysql" else 1)
        self.assertEqual(count(f, "WHERE ticket IN (81, 82, 83)"), 3)


if __name__ == "__main__":
    unittest.main()
