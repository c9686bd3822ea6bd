"""test_ops - running feed: logs and logrotate, reload, the systemd unit, and the
traps a new operator hits in the first hour (send, help, check, process title,
README, scripts/run.sh, the operators' SQL queries in docs/operations.md).

Everything is real: logrotate(8) runs the shipped logrotate.d/feed (paths and
owner adapted to the test's directory) while records and rejects flow;
systemd-analyze rates the shipped unit; the documented queries run on the
database of the backend the test runs against (FEED_TEST_BACKEND).
"""
import glob
import gzip
import json
import os
import pty
import pwd
import grp
import re
import select
import signal
import subprocess
import sys
import threading
import time
import unittest

import zmq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from feedtest import (FEED, IS_ROOT, RUN_USER, FeedTestCase, backend, free_port,  # noqa: E402
                      give_to_run_user, wait_until)

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
EXIT_CONFIG = 6
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z feed\[\d+\] (error|warning|info|debug): ")


def feed_cmd(*args, timeout=60, **kw):
    return subprocess.run([FEED, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=kw.pop("stdin", subprocess.DEVNULL), **kw)


def read_text(path):
    with open(os.path.join(REPO, path)) as f:
        return f.read()


# ==== Logs, logrotate, reload ================================================

class LogrotateTest(FeedTestCase):

    def log_feed(self, **conf):
        """A feed logging to DIR/log/feed.log; the log directory is the run-as user's, 0755."""
        f = self.feed(conf=conf)
        logdir = os.path.join(f.dir, "log")
        os.mkdir(logdir, 0o755)
        give_to_run_user(logdir)
        f.logfile = os.path.join(logdir, "feed.log")
        f.sections["daemon"]["log"] = f.logfile
        f.write_conf()
        return f, logdir

    def rotate_conf(self, f, logdir):
        """The shipped logrotate.d/feed, pointed at this feed: its log, its binary and config, its user."""
        text = read_text("logrotate.d/feed")
        group = grp.getgrgid(pwd.getpwnam(RUN_USER).pw_gid).gr_name
        for old, new in (("/var/log/feed/", logdir + "/"), ("/usr/sbin/feed", FEED),
                         ("/etc/feed/feed.conf", f.conf), ("create 0640 feed feed", f"create 0640 {RUN_USER} {group}")):
            self.assertIn(old, text, f"logrotate.d/feed no longer has {old!r}: adapt the test")
            text = text.replace(old, new)
        path = os.path.join(f.dir, "logrotate.conf")
        with open(path, "w") as c:
            c.write(text)
        return path

    def deleted_logs_open(self, pid, logdir):
        """Descriptors of pid on files of logdir that were removed."""
        out = []
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith(logdir) and target.endswith("(deleted)"):
                out.append(target)
        return out

    def all_log_lines(self, logdir):
        """Every line of every log file in logdir, oldest file first (feed.log.N.gz ... feed.log)."""
        def age(p):
            m = re.search(r"feed\.log\.(\d+)", p)
            return -int(m.group(1)) if m else 0
        lines = []
        for p in sorted(glob.glob(os.path.join(logdir, "feed.log*")), key=age):
            opener = gzip.open if p.endswith(".gz") else open
            with opener(p, "rt", errors="replace") as fh:
                lines += fh.read().splitlines()
        return lines

    def test_logrotate_under_load_loses_no_line(self):
        f, logdir = self.log_feed()
        f.start_ok()
        pid = f.pid()
        conf = self.rotate_conf(f, logdir)
        state = os.path.join(f.dir, "logrotate.state")
        stop = threading.Event()
        sent_seq = []
        errors = []

        def rejects():
            # one rejected request every 150 ms (under the 10/s limit of these log lines),
            # each with its own sequence number in the reason feed logs
            s = f.ctx.socket(zmq.REQ)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.RCVTIMEO, 20000)
            s.connect(f.endpoint)
            n = 0
            try:
                while not stop.is_set():
                    n += 1
                    s.send(f"seq{n:06d},1,1".encode())
                    if not s.recv().startswith(b"FALSE"):
                        errors.append(f"seq{n} not rejected")
                    sent_seq.append(n)
                    time.sleep(0.15)
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))
            finally:
                s.close()

        def records():
            # valid records as fast as feed takes them: the load
            t = 1
            d = f.dealer()
            try:
                while not stop.is_set():
                    for _ in range(200):
                        d.send_multipart([b"", f"{t},7,1.5".encode()])
                        t += 1
                    for _ in range(200):
                        if not d.poll(20000):
                            errors.append("no reply to a record")
                            return
                        d.recv_multipart()
            finally:
                d.close()

        threads = [threading.Thread(target=rejects), threading.Thread(target=records)]
        for t in threads:
            t.start()
        try:
            for i in range(6):
                time.sleep(0.7)
                r = subprocess.run(["logrotate", "-f", "-s", state, conf], capture_output=True,
                                   text=True, timeout=60)
                self.assertEqual(r.returncode, 0, f"logrotate run {i}: {r.stdout}{r.stderr}")
                # postrotate's `feed reload` returned: feed writes to the new file only
                self.assertEqual(self.deleted_logs_open(pid, logdir), [])
                st = os.stat(f.logfile)
                held = [os.stat(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")
                        if os.path.realpath(f"/proc/{pid}/fd/{fd}").startswith(logdir)]
                self.assertEqual([(h.st_dev, h.st_ino) for h in held], [(st.st_dev, st.st_ino)],
                                 "feed does not write to the log file that the path names")
                self.assertEqual(st.st_uid, pwd.getpwnam(RUN_USER).pw_uid)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        self.assertEqual(errors, [])
        self.assertEqual(f.stop().returncode, 0)
        lines = self.all_log_lines(logdir)
        self.assertGreaterEqual(len(glob.glob(os.path.join(logdir, "feed.log.*.gz"))), 4,
                                os.listdir(logdir))
        bad = [line for line in lines if not TEXT_LINE.match(line)]
        self.assertEqual(bad, [], "lines without a timestamp and a level by name")
        self.assertFalse([line for line in lines if "suppressed" in line and "rejected" in line],
                         "the test must stay under the rate limit of reject lines")
        logged = [int(m.group(1)) for m in (re.search(r'not an integer in "seq(\d+)"', line) for line in lines) if m]
        self.assertEqual(logged, sent_seq, "reject lines lost, repeated or out of order across the rotations")
        reopened = [line for line in lines if "SIGHUP: log reopened" in line]
        self.assertEqual(len(reopened), 6, "one reopen per rotation")

    def test_failed_reopen_is_not_reported_as_success(self):
        f, logdir = self.log_feed()
        f.start_ok()
        # rotated by a plain rename, and feed's user can no longer create files there
        os.rename(f.logfile, f.logfile + ".1")
        os.chmod(logdir, 0o555)
        if IS_ROOT:
            os.chown(logdir, 0, 0)
        r = f.cmd("reload")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("did not reopen its log", r.stderr)
        with open(f.logfile + ".1") as fh:
            old = fh.read()
        self.assertIn("SIGHUP: log NOT reopened", old)
        self.assertNotIn("SIGHUP: log reopened", old)
        self.assertIn("cannot reopen the log file", old)

    def test_reload_when_not_running_fails(self):
        f, _ = self.log_feed()
        r = f.cmd("reload")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("not running", r.stdout + r.stderr)

    def test_json_log_lines_are_valid_objects(self):
        f, _ = self.log_feed(daemon={"log_format": "json"})
        f.start_ok()
        # a reason that quotes the body: quote, backslash, control byte, invalid UTF-8, é
        self.assertTrue(f.req(b'x"\\\x01\xff\xc3\xa9,1,1').startswith("FALSE"))
        wait_until(lambda: "rejected a request" in f.log(), 10, what="the reject line")
        self.assertEqual(f.stop().returncode, 0)
        with open(f.logfile, "rb") as fh:
            raw = fh.read()
        objs = [json.loads(line) for line in raw.decode("utf-8").splitlines()]  # every line, strictly
        self.assertTrue(objs)
        for o in objs:
            self.assertEqual(set(o), {"time", "level", "pid", "msg"})
            self.assertIn(o["level"], ("error", "warning", "info", "debug"))
        msgs = [o["msg"] for o in objs]
        self.assertTrue(any(m.startswith("feed ") and " serving " in m for m in msgs), msgs)
        self.assertTrue(any("rejected a request" in m for m in msgs), msgs)

    def test_log_stderr_under_start_says_where_lines_go(self):
        f = self.feed(log_to_file=False)
        r = f.start()
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("logging to syslog instead", r.stderr)


# ==== The systemd unit and sysusers.d =========================================

class UnitTest(unittest.TestCase):

    def test_unit_is_rated_ok_by_systemd_analyze(self):
        r = subprocess.run(["systemd-analyze", "security", "--offline=yes",
                            os.path.join(REPO, "systemd/feed.service")],
                           capture_output=True, text=True, timeout=120)
        m = re.search(r"Overall exposure level for feed\.service: (\d+\.\d) (\w+)", r.stdout)
        self.assertTrue(m, r.stdout + r.stderr)
        # systemd's scale: OK is 1.0..4.9, SAFE and PERFECT below
        self.assertLess(float(m.group(1)), 5.0, r.stdout)
        self.assertIn(m.group(2), ("OK", "SAFE", "PERFECT"))

    def test_unit_verifies_cleanly(self):
        # every directive known to this systemd (a typo is only a warning at runtime)
        d = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"feed-unit.{os.getpid()}")
        os.makedirs(d, exist_ok=True)
        try:
            unit = read_text("systemd/feed.service").replace("/usr/sbin/feed", os.path.abspath(FEED))
            unit = re.sub(r"(?m)^Documentation=.*\n", "", unit)   # man feed(8) is not installed here
            with open(os.path.join(d, "feed.service"), "w") as fh:
                fh.write(unit)
            r = subprocess.run(["systemd-analyze", "verify", os.path.join(d, "feed.service")],
                               capture_output=True, text=True, timeout=120)
            self.assertEqual((r.returncode, r.stdout + r.stderr), (0, ""))
        finally:
            subprocess.run(["rm", "-rf", d])

    def test_exec_reload_is_feed_reload(self):
        unit = read_text("systemd/feed.service")
        self.assertRegex(unit, r"(?m)^ExecReload=/usr/sbin/feed -c /etc/feed/feed.conf reload$")
        self.assertRegex(unit, r"(?m)^User=feed$")

    def test_sysusers_file_makes_the_user(self):
        root = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"feed-sysusers.{os.getpid()}")
        os.makedirs(os.path.join(root, "etc"), exist_ok=True)
        try:
            r = subprocess.run(["systemd-sysusers", f"--root={root}",
                                os.path.join(REPO, "systemd/feed.sysusers")],
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, 0, r.stderr)
            with open(os.path.join(root, "etc/passwd")) as fh:
                users = [line.split(":") for line in fh]
            feed = [u for u in users if u[0] == "feed"]
            self.assertEqual(len(feed), 1, users)
            self.assertEqual(feed[0][5], "/var/lib/feed")
            self.assertLess(int(feed[0][2]), 1000, "a system user")
        finally:
            subprocess.run(["rm", "-rf", root])

    def test_install_ships_logrotate_sysusers_and_docs(self):
        build = os.path.dirname(os.path.abspath(FEED))
        dest = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"feed-install.{os.getpid()}")
        try:
            r = subprocess.run(["cmake", "--install", build], env=dict(os.environ, DESTDIR=dest),
                               capture_output=True, text=True, timeout=120)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            for path in ("etc/logrotate.d/feed", "usr/lib/sysusers.d/feed.conf",
                         "usr/lib/systemd/system/feed.service", "usr/share/doc/feed/operations.md",
                         "usr/share/doc/feed/README.md", "usr/share/doc/feed/configuration.md"):
                self.assertTrue(os.path.isfile(os.path.join(dest, path)), f"{path} not installed")
            with open(os.path.join(dest, "etc/logrotate.d/feed")) as fh:
                self.assertEqual(fh.read(), read_text("logrotate.d/feed"))
        finally:
            subprocess.run(["rm", "-rf", dest])


# ==== The first hour ===========================================================

class FirstHourTest(FeedTestCase):

    def test_version_option(self):
        r = feed_cmd("--version")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"^feed \d+\.\d+\.\d+\n$")

    def test_help_send_is_send_help_with_the_options(self):
        a, b = feed_cmd("help", "send"), feed_cmd("send", "--help")
        self.assertEqual((a.returncode, b.returncode), (0, 0))
        self.assertEqual(a.stdout, b.stdout)
        for opt in ("--endpoint", "--window", "--batch", "--timeout", "--retries", "--quiet",
                    "--server-key", "--cert"):
            self.assertIn(opt, a.stdout)

    def test_man_page_lists_send_options_and_defaults(self):
        man = read_text("man/feed.8").replace("\\-", "-")
        send = man.index(".BR send ")
        man = man[send:man.index(".BI keygen", send)]
        for opt, default in (("--window", "64"), ("--batch", "1"), ("--timeout", "5000"), ("--retries", "5"),
                             ("--quiet", None), ("--server-key", None), ("--cert", None)):
            i = man.find(opt)
            self.assertGreaterEqual(i, 0, f"man page lacks send {opt}")
            if default:
                self.assertIn(f"default {default}", man[i:i + 400], f"man page: default of {opt}")

    def test_send_says_soon_that_nothing_answers(self):
        ep = f"tcp://127.0.0.1:{free_port()}"
        # the old behaviour was 30 s of silent re-sends: 15 s is far more than "a few seconds"
        r = feed_cmd("send", "-e", ep, input="1,2,3\n", timeout=15, stdin=None)
        self.assertEqual(r.returncode, 1)
        self.assertIn(f"nothing answers at {ep}", r.stderr)

    def test_send_endpoint_without_transport_suggests_tcp(self):
        r = feed_cmd("send", "-e", "127.0.0.1:5555", input="1,2,3\n", stdin=None)
        self.assertEqual(r.returncode, 2)
        self.assertIn("did you mean tcp://127.0.0.1:5555", r.stderr)

    def test_send_names_header_bom_and_negative_volume(self):
        f = self.feed()
        f.start_ok()
        data = "\ufeffticket,login,volume\r\n101,7,1.5\r\n102,7,-2\r\n".encode()
        r = subprocess.run([FEED, "-c", f.conf, "send", "-q"], input=data, capture_output=True, timeout=60)
        err = r.stderr.decode()
        self.assertIn("byte order mark", err)
        self.assertIn("looks like a header line", err)
        self.assertIn('volume "-2" is negative', err)
        self.assertEqual(r.returncode, 1)        # 102 is answered FALSE
        self.assertIn("TRUE 1, FALSE 1", err)    # the header was not sent
        self.assertEqual(f.sql("SELECT ticket FROM fee ORDER BY ticket"), [["101"]])

    def test_send_empty_input_fails(self):
        f = self.feed()
        f.start_ok()
        for data in (b"", b"\n\n", b"ticket,login,volume\n"):
            r = subprocess.run([FEED, "-c", f.conf, "send"], input=data, capture_output=True, timeout=60)
            self.assertEqual(r.returncode, 1, data)
            self.assertIn("no records in the input", r.stderr.decode())

    def test_send_progress_shows_total_percent_and_eta(self):
        f = self.feed()
        f.start_ok()
        path = os.path.join(f.dir, "bulk.csv")
        with open(path, "w") as fh:
            fh.writelines(f"{t},7,1.5\n" for t in range(1, 60001))
        # a terminal for stderr: the progress line is for people
        master, slave = pty.openpty()
        p = subprocess.Popen([FEED, "-c", f.conf, "send", "-w", "1", path], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=slave)
        os.close(slave)
        out = b""
        try:
            while True:
                rl, _, _ = select.select([master], [], [], 120)
                if not rl:
                    break
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
        finally:
            p.wait(120)
            os.close(master)
        text = out.decode(errors="replace")
        self.assertEqual(p.returncode, 0, text[-2000:])
        self.assertRegex(text, r"\d+% of \d+\.\d MB  ETA \d+:\d\d:\d\d")

    def test_process_title_says_serving(self):
        f = self.feed()
        f.start_ok()
        with open(f"/proc/{f.pid()}/cmdline", "rb") as fh:
            title = fh.read().split(b"\0")[0].decode()
        self.assertEqual(title, f"feed: serving {f.endpoint} (-c {f.conf})")
        # SIGHUP re-reads the configuration through its path, which the title overwrote
        self.assertEqual(f.cmd("reload").returncode, 0)
        wait_until(lambda: "SIGHUP: log reopened" in f.log(), 10, what="the reload")
        self.assertNotIn("configuration not reloaded", f.log())

    def test_readme_next_commands_and_bulk_loads(self):
        readme = read_text("README.md")
        quick = readme[readme.index("## Quick start"):readme.index("## Usage")]
        for cmd in ("build/feed -c var/feed.conf status", "build/feed -c var/feed.conf stop"):
            self.assertIn(cmd, quick)
        self.assertRegex(readme, r"feed (-c \S+ )?send -n \d+")
        self.assertRegex(readme, r"scripts/run\.sh \d+")

    def test_run_sh_takes_a_port_and_says_serving_once_it_serves(self):
        var = os.path.join(self.feed().dir, "var")
        port = free_port()
        env = dict(os.environ, FEED_BIN=FEED, FEED_VAR=var)
        p = subprocess.Popen([os.path.join(REPO, "scripts/run.sh"), str(port)], env=env,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
        try:
            said = []
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                line = p.stderr.readline()
                if not line:
                    break
                said.append(line)
                if "serving" in line:
                    break
            self.assertTrue(said and "serving" in said[-1], "".join(said))
            self.assertIn(f"tcp://127.0.0.1:{port}", said[-1])
            # at the moment it says so, feed answers (one try, short timeout)
            r = feed_cmd("send", "-q", "-e", f"tcp://127.0.0.1:{port}", "-t", "2000", "-r", "0",
                         input="1,2,3\n", stdin=None)
            self.assertEqual(r.returncode, 0, r.stderr)
        finally:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(30)
            p.stderr.close()


class CheckTest(FeedTestCase):
    """`check` finds what `start` rejects; both exit 6."""

    def assert_config_error(self, conf, pattern):
        f = self.feed(conf=conf)
        for command in ("check", "start"):
            r = f.cmd(command)
            self.assertEqual(r.returncode, EXIT_CONFIG, f"{command}: {r.stdout}{r.stderr}")
            self.assertRegex(r.stderr, pattern)
        self.assertFalse(os.path.exists(f.pidfile))

    def test_endpoint_without_double_slash(self):
        self.assert_config_error({"listen": {"endpoint": "tcp:/127.0.0.1:5555"}},
                                 r"endpoint must start with tcp:// or ipc://")

    def test_endpoint_without_port(self):
        self.assert_config_error({"listen": {"endpoint": "tcp://127.0.0.1"}}, r"needs HOST:PORT")

    def test_user_that_does_not_exist(self):
        self.assert_config_error({"daemon": {"user": "nobdy"}}, r'no such user "nobdy"')

    def test_identity_start_would_refuse(self):
        # as root: no user at all; otherwise: a user this process cannot switch to
        if IS_ROOT:
            f = self.feed(user=False)
            pattern = r"refusing to run as root"
        else:
            f = self.feed(conf={"daemon": {"user": "root"}})
            pattern = r'cannot switch to user "root"'
        for command in ("check", "start"):
            r = f.cmd(command)
            self.assertEqual(r.returncode, EXIT_CONFIG, f"{command}: {r.stdout}{r.stderr}")
            self.assertRegex(r.stderr, pattern)
            self.assertNotIn("configuration OK", r.stdout)


# ==== The operators' queries (docs/operations.md) ================================

DOC_BACKEND = {"sqlite": "sqlite", "postgresql": "postgres", "mysql": "mariadb"}


def doc_queries():
    """{name: sql} for this backend, from docs/operations.md."""
    doc = read_text("docs/operations.md")
    out = {}
    for be, name, sql in re.findall(r"```sql\n-- (\w+): ([^\n]+)\n(.*?)```", doc, re.S):
        if be == DOC_BACKEND[backend()]:
            out[name] = sql
    return out


class QueriesTest(FeedTestCase):

    def test_documented_queries_give_exact_answers(self):
        q = doc_queries()
        self.assertEqual(set(q), {"daily totals per login", "unsettled rows", "rejects of the last hour"})
        f = self.feed(conf={"fee": {"default_rate": "1"}})
        f.start_ok()
        # login 43: fees of 13 digits, a total of 16 (past a binary float's 15 shown);
        # login 77: a rate so high that the fee does not fit, so its row stays unsettled
        f.sql("INSERT INTO fee_rate (login, rate) VALUES (43, 1000);")
        f.sql("INSERT INTO fee_rate (login, rate) VALUES (77, 99999999999);")
        body = "1,42,0.10\n2,42,0.20\n3,43,6172839450.61728\n4,43,6172839450.61728\n5,77,90000000000\n"
        for line in body.splitlines():
            self.assertEqual(f.req(line), "TRUE")
        self.assertTrue(f.req("x,1,1").startswith("FALSE"))
        wait_until(lambda: f.sql("SELECT count(*) FROM fee WHERE status = 'Y'") == [["4"]], 30,
                   what="settlement")
        old = {"sqlite": "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-2 hours')",
               "postgresql": "now() - interval '2 hours'",
               "mysql": "NOW(6) - INTERVAL 2 HOUR"}[backend()]
        f.sql(f"INSERT INTO fee_reject (received_at, endpoint, reason, body) VALUES ({old}, 'old', 'old', 'x');")

        rows = f.sql(q["daily totals per login"])
        total = "12345678901234.56"
        self.assertEqual([r[1:] for r in rows], [["42", "2", "0.30"], ["43", "2", total]], rows)
        if backend() == "sqlite":
            # the trap the query avoids: a plain sum is a binary float
            plain = f.sql("SELECT sum(fee) FROM fee WHERE login = 43")[0][0]
            self.assertNotEqual(plain, total)
        rows = f.sql(q["unsettled rows"])
        self.assertEqual([r[0:2] for r in rows], [["5", "77"]], rows)
        rows = f.sql(q["rejects of the last hour"])
        self.assertEqual(len(rows), 1, rows)
        self.assertIn("ticket", rows[0][2])


if __name__ == "__main__":
    unittest.main()
