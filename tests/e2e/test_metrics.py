"""test_metrics - /metrics, /healthz, `feed status`, the summary line and the systemd watchdog.

Runs under tests/lib/with-sqlite.sh and with-postgres.sh. Everything is
real: a Prometheus server (Debian's `prometheus`, on a free port of
127.0.0.1, its own configuration and storage in a temporary directory)
scrapes feed and is asked for feed_records_committed_total through its HTTP
API; `promtool check metrics` reads /metrics as served; the database is
stopped (PostgreSQL: FEED_TEST_DB_STOP) or stalled (a server SIGSTOPped, or
a write lock held by another process: test_stall.Stall); the watchdog pings
arrive on a notify socket of the test's own, as systemd's would.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from feedtest import FEED, backend, free_port, wait_until  # noqa: E402
from test_ingest import DbLock, IngestCase  # noqa: E402
from test_stall import Stall  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
RULES = os.path.join(ROOT, "docs", "monitoring", "feed.rules.yml")
REASONS = {"parse", "conflict", "refused", "malformed", "too_large", "unauthorized"}


def http_get(url, timeout=10):
    """(status, body) of a GET; an HTTP error status is a result, not an exception."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def samples(text):
    """{(name, labels-string): value} of a Prometheus text body."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)", line)
        assert m, f"not a sample line: {line!r}"
        out[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return out


class MetricsCase(IngestCase):
    def setUp(self):
        super().setUp()
        self.cleanups = []
        self.stalls = []

    def tearDown(self):
        for s in self.stalls:      # never leave the server stopped for the next test
            s.resume()
        for fn in reversed(self.cleanups):
            fn()
        super().tearDown()

    def metrics_feed(self, **conf):
        port = free_port()
        c = {"metrics": {"listen": f"127.0.0.1:{port}"}}
        for sec, kv in conf.items():
            c.setdefault(sec, {}).update(kv)
        f = self.feed(conf=c)
        f.http = f"http://127.0.0.1:{port}"
        return f

    def scrape(self, f):
        st, body = http_get(f.http + "/metrics")
        self.assertEqual(st, 200, body)
        return body

    def health(self, f):
        return http_get(f.http + "/healthz")

    def stall(self, f):
        s = Stall(f)
        self.stalls.append(s)
        s.start()
        return s

    def send_async(self, f, body, timeout=120):
        """Sends one request on a thread; returns the list its reply lands in."""
        out = []
        t = threading.Thread(target=lambda: out.append(f.req(body, timeout=timeout)), daemon=True)
        t.start()
        return out


class TestMetrics(MetricsCase):
    def test_prometheus_scrapes_committed_records(self):
        f = self.metrics_feed()
        f.start_ok()
        pdir = tempfile.mkdtemp(prefix="feed-prom.")
        self.cleanups.append(lambda: shutil.rmtree(pdir, ignore_errors=True))
        pport = free_port()
        with open(os.path.join(pdir, "prometheus.yml"), "w") as fh:
            fh.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                     "rule_files:\n  - %s\n"
                     "scrape_configs:\n  - job_name: feed\n    static_configs:\n"
                     "      - targets: ['127.0.0.1:%d']\n" % (RULES, int(f.http.rsplit(":", 1)[1])))
        log = open(os.path.join(pdir, "prometheus.log"), "w")
        prom = subprocess.Popen(["prometheus", "--config.file=" + os.path.join(pdir, "prometheus.yml"),
                                 f"--web.listen-address=127.0.0.1:{pport}",
                                 "--storage.tsdb.path=" + os.path.join(pdir, "data")],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=pdir)

        def stop_prom():
            prom.terminate()
            try:
                prom.wait(30)
            except subprocess.TimeoutExpired:
                prom.kill()
                prom.wait()
            log.close()
        self.cleanups.append(stop_prom)

        def query(q):
            url = f"http://127.0.0.1:{pport}/api/v1/query?" + urllib.parse.urlencode({"query": q})
            try:
                st, body = http_get(url, timeout=5)
            except (urllib.error.URLError, ConnectionError, socket.timeout):
                return None
            if st != 200:
                return None
            res = json.loads(body)["data"]["result"]
            return float(res[0]["value"][1]) if res else None

        wait_until(lambda: query('up{job="feed"}') == 1, 60, step=0.5,
                   what="Prometheus to scrape feed (up == 1)")
        for i in range(5):
            body = "".join(f"{3000 + 10 * i + k},7,1.5\n" for k in range(10))
            self.assertEqual(f.req(body), "TRUE")
        self.assertEqual(f.req("3000,7,1.5"), "TRUE")   # a re-send: a duplicate, not committed again
        wait_until(lambda: query("feed_records_committed_total") == 50, 60, step=0.5,
                   what="Prometheus to report feed_records_committed_total 50")
        wait_until(lambda: query("feed_records_duplicate_total") == 1, 30, step=0.5,
                   what="Prometheus to report feed_records_duplicate_total 1")
        # the shipped alert rules load and none fires on a healthy feed
        url = f"http://127.0.0.1:{pport}/api/v1/rules"
        st, body = http_get(url)
        self.assertEqual(st, 200, body)
        groups = json.loads(body)["data"]["groups"]
        self.assertTrue(groups and groups[0]["rules"], f"no rule loaded by Prometheus: {body}")
        self.assertEqual([r["name"] for g in groups for r in g["rules"] if r.get("state") == "firing"], [])

    def test_metrics_as_served_pass_promtool_and_count_right(self):
        f = self.metrics_feed()
        f.start_ok()
        self.assertEqual(f.req("4001,7,1.5\n4002,7,2"), "TRUE")
        self.assertEqual(f.req("4001,7,1.5"), "TRUE")                  # duplicate
        self.assertTrue(f.req("4001,8,1.5").startswith("FALSE: conflict"))
        self.assertTrue(f.req("not,a,record").startswith("FALSE"))    # parse
        too_many = f.req("".join(f"{900000 + k},7,1\n" for k in range(10001)))
        self.assertRegex(too_many, r"^FALSE: too many records")
        wait_until(lambda: samples(self.scrape(f)).get(("feed_records_settled_total", "")) == 2, 30,
                   what="both records settled")
        body = self.scrape(f)
        r = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, text=True,
                           timeout=60)
        self.assertEqual(r.returncode, 0, f"promtool check metrics: {r.stdout}{r.stderr}\n{body}")
        s = samples(body)
        self.assertEqual(s[("feed_records_committed_total", "")], 2)
        self.assertEqual(s[("feed_records_duplicate_total", "")], 1)
        self.assertEqual(s[("feed_requests_total", '{result="true"}')], 2)
        self.assertEqual(s[("feed_requests_total", '{result="false"}')], 3)
        got = {k[1]: v for k, v in s.items() if k[0] == "feed_requests_rejected_total"}
        self.assertEqual(set(got), {f'{{reason="{r}"}}' for r in REASONS})
        self.assertEqual(got['{reason="conflict"}'], 1)
        self.assertEqual(got['{reason="parse"}'], 1)
        self.assertEqual(got['{reason="too_large"}'], 1)
        self.assertEqual(s[("feed_database_up", "")], 1)
        self.assertEqual(s[("feed_database_outages_total", "")], 0)
        self.assertEqual(s[("feed_unsettled_records", "")], 0)
        self.assertEqual(s[("feed_queue_records", "")], 0)
        self.assertIn(("feed_queue_bytes", ""), s)
        self.assertEqual(s[("feed_commit_duration_seconds_count", "")], 5)
        self.assertEqual(s[("feed_batch_records_count", "")], 5)
        self.assertEqual(s[("feed_request_duration_seconds_count", "")], 5)
        self.assertEqual(s[("feed_request_duration_seconds_bucket", '{le="+Inf"}')], 5)
        self.assertEqual(s[("feed_build_info", '{version="0.1.0"}')], 1)
        self.assertGreater(s[("process_resident_memory_bytes", "")], 1e6)
        self.assertGreater(s[("process_open_fds", "")], 3)
        self.assertLess(abs(s[("process_start_time_seconds", "")] - time.time()), 120)
        # no label a client controls: only le, result, reason, version
        for name, labels in s:
            for k in re.findall(r'(\w+)="', labels):
                self.assertIn(k, {"le", "result", "reason", "version"}, f"{name}{labels}")
        st, text = self.health(f)
        self.assertEqual((st, text), (200, "ok\n"))
        self.assertEqual(http_get(f.http + "/nothing")[0], 404)

    def test_status_tells_rates_queue_backlog_latency_and_log_has_a_summary(self):
        f = self.metrics_feed(metrics={"summary_interval": "1"})
        f.start_ok()
        for i in range(3):
            self.assertEqual(f.req("".join(f"{5000 + 10 * i + k},7,1.5\n" for k in range(10))), "TRUE")
        self.assertTrue(f.req("junk").startswith("FALSE"))
        st = wait_until(lambda: (lambda r: r if "committed: 30 records" in r.stdout else None)(f.status()),
                        10, what="status to show 30 records committed")
        self.assertEqual(st.returncode, 0)
        out = st.stdout
        self.assertRegex(out, r"committed: 30 records \([0-9.]+/s over the last minute\)")
        self.assertRegex(out, r"rejected:  1 requests \([0-9.]+/s")
        self.assertRegex(out, r"queue:     0 records, 0 bytes in flight")
        self.assertRegex(out, r"unsettled: \d+ records")
        self.assertRegex(out, r"commit:    [0-9.]+ ms on average")
        self.assertRegex(out, r"database:  \S+ up \(since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
        self.assertRegex(out, r"uptime: +\d\d:\d\d:\d\d")
        wait_until(lambda: re.search(r"info: summary: last \d+ s: 30 records committed .*requests rejected; "
                                     r"in flight \d+ records, \d+ bytes; unsettled \d+", f.log()),
                   10, what="a summary line in the log")

    def test_bad_listen_is_a_config_error_and_a_taken_port_fails_start(self):
        f = self.metrics_feed()
        for bad in ("9187", "localhost:9187", "127.0.0.1:0", "127.0.0.1:99999", "[::1:9187"):
            f.sections["metrics"]["listen"] = bad
            f.write_conf()
            r = f.cmd("check")
            self.assertEqual(r.returncode, 6, f"{bad}: {r.stdout}{r.stderr}")
            self.assertIn("[metrics] listen", r.stderr)
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            f.sections["metrics"]["listen"] = f"127.0.0.1:{port}"
            f.write_conf()
            r = f.start()
            self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
            self.assertIn(f"[metrics] listen 127.0.0.1:{port}: cannot bind: Address already in use", r.stderr)
        self.assertEqual(f.status().returncode, 3)

    def test_healthz_503_while_the_database_stalls(self):
        f = self.metrics_feed(database={"stall_timeout": "2", "retry_max": "500"})
        f.start_ok()
        self.assertEqual(self.health(f), (200, "ok\n"))
        s = self.stall(f)
        reply = self.send_async(f, "6001,7,1.5")
        st, text = wait_until(lambda: (lambda r: r if r[0] == 503 else None)(self.health(f)), 20,
                              what="/healthz to turn 503 while the database stalls")
        self.assertRegex(text, r"^database down since \S+ \(\d+ s\): stalled: no answer for \d+ s\n$")
        self.assertGreaterEqual(samples(self.scrape(f))[("feed_database_outages_total", "")], 1)
        self.assertEqual(samples(self.scrape(f))[("feed_database_up", "")], 0)
        out = wait_until(lambda: (lambda r: r.stdout if "DOWN" in r.stdout else None)(f.status()), 10,
                         what="status to show the database DOWN")
        self.assertRegex(out, r"database:  \S+ DOWN since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+ \(for \d\d:\d\d:\d\d\): stalled")
        s.resume()
        wait_until(lambda: reply, 60, what="the request held during the stall to be answered")
        self.assertEqual(reply, ["TRUE"])
        wait_until(lambda: self.health(f) == (200, "ok\n"), 20, what="/healthz back to 200")


if backend() == "postgresql":
    from test_servers import db_ctl  # noqa: E402

    class TestMetricsServerDown(MetricsCase):
        def test_healthz_503_while_the_server_is_down(self):
            f = self.metrics_feed(database={"retry_max": "500", "connect_timeout": "2"})
            f.start_ok()
            self.assertEqual(self.health(f), (200, "ok\n"))
            db_ctl("FEED_TEST_DB_STOP")
            self.cleanups.append(lambda: db_ctl("FEED_TEST_DB_START") if not restarted else None)
            restarted = False
            reply = self.send_async(f, "7001,7,1.5")
            st, text = wait_until(lambda: (lambda r: r if r[0] == 503 else None)(self.health(f)), 20,
                                  what="/healthz to turn 503 while the server is down")
            self.assertRegex(text, r"^database down since \S+ \(\d+ s\): .+\n$")
            db_ctl("FEED_TEST_DB_START")
            restarted = True
            wait_until(lambda: reply, 60, what="the request held during the outage to be answered")
            self.assertEqual(reply, ["TRUE"])
            wait_until(lambda: self.health(f) == (200, "ok\n"), 20, what="/healthz back to 200")
            self.assertEqual(samples(self.scrape(f))[("feed_database_outages_total", "")], 1)


class TestWatchdog(MetricsCase):
    WATCHDOG_S = 2

    def test_watchdog_pings_while_idle_or_working_and_stop_while_a_call_is_stuck(self):
        # the stuck call must outlive the watchdog interval: stall_timeout well above it
        f = self.feed(conf={"database": {"stall_timeout": "20"}, "daemon": {"shutdown_timeout": "40"}})
        path = os.path.join(f.dir, "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.cleanups.append(sock.close)
        sock.bind(path)
        os.chmod(path, 0o666)   # feed sends after dropping to nobody, as under systemd
        sock.settimeout(0.2)
        pings, stop = [], threading.Event()

        def listen():
            while not stop.is_set():
                try:
                    m = sock.recv(4096).decode()
                except socket.timeout:
                    continue
                except OSError:
                    return
                if "WATCHDOG=1" in m.split("\n"):
                    pings.append(time.monotonic())
        t = threading.Thread(target=listen, daemon=True)
        t.start()
        self.cleanups.append(stop.set)
        env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC=str(self.WATCHDOG_S * 1000000))
        p = subprocess.Popen([FEED, "-c", f.conf, "run"], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        f.proc = p

        def gaps(since, until):
            ts = [since] + [x for x in pings if since <= x <= until] + [until]
            return [b - a for a, b in zip(ts, ts[1:])]

        wait_until(lambda: pings, 30, what="a first WATCHDOG=1")
        t0 = time.monotonic()
        for i in range(4):                              # working
            self.assertEqual(f.req(f"{8000 + i},7,1.5"), "TRUE")
            time.sleep(0.5)
        time.sleep(3)                                    # idle
        t1 = time.monotonic()
        # what systemd checks: no silence as long as WatchdogSec (pings come every half of it)
        self.assertLess(max(gaps(t0, t1)), self.WATCHDOG_S, f"pings while working/idle: {gaps(t0, t1)}")

        lock = DbLock(f)                                 # a writer's call now waits on the lock
        released = False
        try:
            t2 = time.monotonic()
            reply = self.send_async(f, "8100,7,1.5")
            time.sleep(6)
            t3 = time.monotonic()
            self.assertEqual(reply, [], "the request was answered through a held write lock")
            # systemd with WatchdogSec=2 would have restarted feed: a silence past the interval
            self.assertGreater(max(gaps(t2, t3)), self.WATCHDOG_S + 0.5,
                               f"pings while a writer is stuck: {gaps(t2, t3)}")
            self.assertIn("no longer telling systemd that feed is alive", f.log())
            lock.release()
            released = True
        finally:
            if not released:
                lock.release()
        wait_until(lambda: reply, 30, what="the request to be answered once the lock is gone")
        self.assertEqual(reply, ["TRUE"])
        t4 = time.monotonic()
        time.sleep(3)
        self.assertLess(max(gaps(t4, time.monotonic())), self.WATCHDOG_S, "pings did not resume after the stuck call")
        p.send_signal(signal.SIGTERM)
        self.assertEqual(p.wait(60), 0)


class TestAlertRules(unittest.TestCase):
    def test_promtool_accepts_the_shipped_rules(self):
        r = subprocess.run(["promtool", "check", "rules", RULES], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertRegex(r.stdout, r"SUCCESS: [4-9] rules found")
        with open(RULES) as fh:
            text = fh.read()
        for metric in ("feed_database_up", "feed_commit_duration_seconds", "feed_requests_rejected_total",
                       "feed_unsettled_records"):
            self.assertIn(metric, text)


if __name__ == "__main__":
    unittest.main()
