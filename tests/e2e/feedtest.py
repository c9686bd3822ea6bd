"""feedtest - helpers for feed's end-to-end tests (real binary, real sockets, real databases).

The binary comes from FEED_BIN (CTest sets it). The database comes from the
environment that tests/lib/with-<backend>.sh exports (FEED_TEST_URL,
FEED_TEST_PASSWORD_FILE, FEED_TEST_SQL, FEED_TEST_DB_STOP/START); without it,
a fresh SQLite file in the test's own directory is used.

Tests run as root in CI: feed then refuses to run without a user, so every
instance runs as `nobody` with its directory owned by nobody.
"""
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

import zmq

FEED = os.environ.get("FEED_BIN", os.path.join(os.path.dirname(__file__), "../../build/feed"))
IS_ROOT = os.geteuid() == 0
RUN_USER = "nobody" if IS_ROOT else pwd.getpwuid(os.geteuid()).pw_name


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout=10.0, step=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def give_to_run_user(path):
    if IS_ROOT:
        pw = pwd.getpwnam(RUN_USER)
        os.chown(path, pw.pw_uid, pw.pw_gid)


def backend():
    return os.environ.get("FEED_TEST_BACKEND", "sqlite")


class Feed:
    """One feed instance: its directory, config file, endpoint and database."""

    def __init__(self, url=None, conf=None, user=True, log_to_file=True):
        self.dir = tempfile.mkdtemp(prefix="feed-e2e.")
        os.chmod(self.dir, 0o755)
        give_to_run_user(self.dir)
        self.port = free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.pidfile = os.path.join(self.dir, "run", "feed.pid")
        self.logfile = os.path.join(self.dir, "feed.log")
        env_url = os.environ.get("FEED_TEST_URL")
        if url is None:
            url = env_url if env_url else "sqlite://" + os.path.join(self.dir, "feed.db")
        self.url = url
        if url.startswith("sqlite://"):
            dbdir = os.path.dirname(url[len("sqlite://"):])
            give_to_run_user(dbdir)
        self.sections = {
            "daemon": {"pidfile": self.pidfile, "log": self.logfile if log_to_file else "stderr",
                       "log_level": "debug"},
            "listen": {"endpoint": self.endpoint},
            "database": {"url": url},
            "fee": {"default_rate": "7.5", "settle_interval": "100"},
        }
        if user and IS_ROOT:
            self.sections["daemon"]["user"] = RUN_USER
        pwfile = os.environ.get("FEED_TEST_PASSWORD_FILE")
        if pwfile and url == env_url:
            self.sections["database"]["password_file"] = pwfile
        for sec, kv in (conf or {}).items():
            self.sections.setdefault(sec, {}).update(kv)
        self.conf = os.path.join(self.dir, "feed.conf")
        self.write_conf()
        self.proc = None
        self.ctx = zmq.Context.instance()

    def write_conf(self, text=None):
        if text is None:
            text = ""
            for sec, kv in self.sections.items():
                text += f"[{sec}]\n" + "".join(f"{k} = {v}\n" for k, v in kv.items() if v is not None)
        with open(self.conf, "w") as f:
            f.write(text)

    # -- the command line -------------------------------------------------
    def cmd(self, *args, timeout=90, conf=True):
        argv = [FEED] + (["-c", self.conf] if conf else []) + list(args)
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def start(self):
        r = self.cmd("start")
        return r

    def start_ok(self):
        r = self.start()
        assert r.returncode == 0, f"start failed ({r.returncode}): {r.stderr}\nlog:\n{self.log()}"
        return r

    def stop(self, timeout=30):
        return self.cmd("stop", "--timeout", str(timeout), timeout=timeout + 30)

    def status(self):
        return self.cmd("status")

    def pid(self):
        with open(self.pidfile) as f:
            return int(f.read().strip())

    def run_foreground(self, *extra):
        """feed run in the foreground; returns once it serves."""
        self.proc = subprocess.Popen([FEED, "-c", self.conf, "run", *extra],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        wait_until(lambda: self.proc.poll() is not None or self._serving(), 60, what="feed run to serve")
        assert self.proc.poll() is None, f"feed run exited: {self.proc.communicate()}"
        return self.proc

    def _serving(self):
        return " serving " in self.log()

    def log(self):
        try:
            with open(self.logfile, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def kill9(self):
        pid = self.pid()
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not os.path.exists(f"/proc/{pid}") or _zombie(pid), 10, what="kill -9")
        return pid

    def close(self):
        """Stops whatever runs; removes the directory."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            for s in (self.proc.stdout, self.proc.stderr):
                if s:
                    s.close()
        try:
            pid = self.pid()
            if os.path.exists(f"/proc/{pid}"):
                self.stop(10)
        except (OSError, ValueError):
            pass
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- talking to it --------------------------------------------------------
    def req(self, body, timeout=20.0):
        """One REQ round trip; returns the reply text."""
        s = self.ctx.socket(zmq.REQ)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
        s.connect(self.endpoint)
        try:
            s.send(body.encode() if isinstance(body, str) else body)
            return s.recv().decode()
        finally:
            s.close()

    def dealer(self):
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(self.endpoint)
        return s

    # -- the database -------------------------------------------------------
    def sql(self, query):
        """Runs SQL with admin rights; returns rows as lists of strings."""
        if os.environ.get("FEED_TEST_SQL") and self.url == os.environ.get("FEED_TEST_URL"):
            cmd = os.environ["FEED_TEST_SQL"]
        else:
            cmd = f"sqlite3 -batch -bail -noheader -cmd '.timeout 5000' -separator '\t' '{self.url[len('sqlite://'):]}'"
        r = subprocess.run(cmd, shell=True, input=query, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise AssertionError(f"SQL failed: {query!r}: {r.stderr}")
        return [line.split("\t") for line in r.stdout.splitlines() if line != ""]

    def reset_db(self):
        """Drops feed's tables (shared server databases outlive one test)."""
        for t in ("fee", "fee_rate", "fee_reject", "feed_schema"):
            self.sql(f"DROP TABLE IF EXISTS {t};")
        if self.url.startswith("sqlite://"):
            # the SQL above ran as root: give the files it made to feed's user
            path = self.url[len("sqlite://"):]
            for p in (path, path + "-wal", path + "-shm"):
                if os.path.exists(p):
                    give_to_run_user(p)


def _zombie(pid):
    """Whether pid has exited (or is gone): every thread of it a zombie. Its main thread
    shows Z as soon as it exits, while the others may still be running down, holding the
    process's files and the locks on them (a pidfile's): not exited yet."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return True
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/stat") as f:
                if f.read().split(")")[-1].split()[0] not in ("Z", "X"):
                    return False
        except OSError:         # that thread is gone
            pass
    return True


def feed_procs(conf):
    """Pids of live (non-zombie) processes whose command line names conf (a serving daemon's
    title, "feed: serving ENDPOINTS (-c CONF)", is one string)."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        title = b"(-c " + conf.encode() + b")"
        if (conf.encode() in args or args[0].endswith(title)) and not _zombie(int(d)):
            pids.append(int(d))
    return pids


def norm_dec(s):
    """'1.25000000' -> '1.25', '3.00' -> '3' : compare decimals exactly, as text."""
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s


class FeedTestCase(unittest.TestCase):
    """Gives each test fresh Feed instances, closed afterwards."""

    def setUp(self):
        self.instances = []

    def tearDown(self):
        for f in self.instances:
            if self._outcome_failed():
                print(f"--- log of {f.dir} ---\n{f.log()[-4000:]}")
            f.close()

    def _outcome_failed(self):
        res = getattr(self, "_outcome", None)
        if res is None:
            return False
        errs = getattr(res, "errors", None) or getattr(getattr(res, "result", None), "errors", [])
        return bool(errs)

    def feed(self, **kw):
        f = Feed(**kw)
        self.instances.append(f)
        if os.environ.get("FEED_TEST_URL") and f.url == os.environ.get("FEED_TEST_URL"):
            f.reset_db()
        return f
