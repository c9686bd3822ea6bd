"""test_daemon - the process lifecycle of feed, end to end, on SQLite.

start / run / stop / restart / status against the real binary: readiness,
single instance, stale pidfiles, graceful stop, start-up failures with their
real cause, privilege drop, the daemon(7) steps, SIGTERM / SIGHUP and the
systemd notification protocol. Everything the daemon is supposed to have done
is read back from /proc, the pidfile and the log, never assumed.
"""
import ctypes
import os
import pwd
import re
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import feedtest  # noqa: E402
from feedtest import FEED, IS_ROOT, RUN_USER, FeedTestCase, feed_procs, wait_until  # noqa: E402


def proc_status(pid):
    """/proc/PID/status as a dict of strings."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def proc_stat(pid):
    """Fields of /proc/PID/stat after the command name: [state, ppid, pgrp, session, tty_nr, ...]."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def stat_is_socket(path):
    return stat.S_ISSOCK(os.lstat(path).st_mode)


def ancestors(pid):
    out = []
    while pid > 1:
        pid = int(proc_stat(pid)[1])
        out.append(pid)
    return out


def read_text(path):
    with open(path, errors="replace") as f:
        return f.read()


def gone(pid):
    return not os.path.exists(f"/proc/{pid}") or feedtest._zombie(pid)


def require_root(test):
    if not IS_ROOT:
        test.fail("this test needs root (CI runs as root): it checks the switch to [daemon] user")


def as_run_user(*argv):
    """Runs argv as the run-as user (what that user could do on its own)."""
    pw = pwd.getpwnam(RUN_USER)
    subprocess.run(["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups",
                    "--", *argv], check=True, timeout=30, stdin=subprocess.DEVNULL)


class RootFile:
    """A file of root's, in a directory of root's, that must survive untouched."""

    def __init__(self, testcase):
        self.dir = tempfile.mkdtemp(prefix="feed-e2e-root.")
        testcase.addCleanup(lambda: subprocess.run(["rm", "-rf", self.dir], check=False))
        os.chmod(self.dir, 0o755)
        self.path = os.path.join(self.dir, "precious")
        with open(self.path, "w") as f:
            f.write("root's data, not a pid\n")
        os.chmod(self.path, 0o600)
        self.before = self.state()

    def state(self):
        st = os.lstat(self.path)
        return (read_text(self.path), st.st_uid, st.st_gid, st.st_mode)


# -- ptrace: stop a process at one exact system call (x86_64) ----------------
_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.restype = ctypes.c_long
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
PTRACE_TRACEME, PTRACE_DETACH, PTRACE_GETREGS, PTRACE_SYSCALL, PTRACE_SETOPTIONS = 0, 17, 12, 24, 0x4200
PTRACE_O_TRACESYSGOOD, PTRACE_O_EXITKILL = 1, 0x100000
SYS_UNLINK, SYS_BIND, SYS_UNLINKAT = 87, 49, 263
ENOSYS_RET = 2**64 - 38   # rax at a syscall-entry stop


class _Regs(ctypes.Structure):
    _fields_ = [(n, ctypes.c_ulonglong) for n in (
        "r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip cs eflags rsp ss "
        "fs_base gs_base ds es fs gs").split()]


def _ptrace(req, pid, addr=0, data=0):
    r = _libc.ptrace(req, pid, addr, data)
    if r < 0:
        raise OSError(ctypes.get_errno(), f"ptrace({req}, {pid})")
    return r


class SyscallTrap:
    """Runs argv with its main thread traced, and stops it at the first system
    call for which stop_at(trap, regs, entering) is true: the test then acts
    in that exact window and calls release(). A real race, made deterministic."""

    def __init__(self, argv, stop_at, timeout=60, **popen):
        if os.uname().machine != "x86_64":
            raise AssertionError("SyscallTrap reads x86_64 registers")
        self.proc = subprocess.Popen(argv, preexec_fn=lambda: _ptrace(PTRACE_TRACEME, 0),
                                     stdin=subprocess.DEVNULL, **popen)
        self.pid = self.proc.pid
        self.returncode = None
        self._wait(timeout)   # the SIGTRAP of execve
        _ptrace(PTRACE_SETOPTIONS, self.pid, 0, PTRACE_O_TRACESYSGOOD | PTRACE_O_EXITKILL)
        sig = 0
        while True:
            _ptrace(PTRACE_SYSCALL, self.pid, 0, sig)
            status = self._wait(timeout)
            if status is None:
                raise AssertionError(f"{argv} exited ({self.returncode}) before the trapped system call")
            sig = os.WSTOPSIG(status)
            if sig != (signal.SIGTRAP | 0x80):
                continue   # a signal for the tracee: deliver it
            sig = 0
            regs = _Regs()
            _ptrace(PTRACE_GETREGS, self.pid, 0, ctypes.addressof(regs))
            if stop_at(self, regs, regs.rax == ENOSYS_RET):
                return

    def _wait(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG | getattr(os, "__WALL", 0x40000000))
            if pid:
                break
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"traced pid {self.pid} neither stopped nor exited within {timeout} s")
            time.sleep(0.0002)
        if os.WIFSTOPPED(status):
            return status
        self.returncode = os.waitstatus_to_exitcode(status)
        self.proc.returncode = self.returncode
        return None

    def read(self, addr, size):
        with open(f"/proc/{self.pid}/mem", "rb", buffering=0) as m:
            m.seek(addr)
            return m.read(size)

    def string(self, addr, limit=4096):
        out = b""
        while b"\0" not in out and len(out) < limit:
            out += self.read(addr + len(out), 4096 - (addr + len(out)) % 4096)  # up to a page end
        return out.split(b"\0", 1)[0].decode(errors="replace")

    def release(self):
        _ptrace(PTRACE_DETACH, self.pid, 0, 0)


class InFlight:
    """A request kept in flight: another connection holds SQLite's write lock
    (BEGIN IMMEDIATE) and the request is sent on a DEALER. release() lets it
    commit; close() releases and closes both."""

    def __init__(self, f, body, wait_for="transient database error"):
        self.db = sqlite3.connect(f.url[len("sqlite://"):], timeout=30, isolation_level=None)
        self.db.execute("BEGIN IMMEDIATE")
        self.dealer = f.dealer()
        self.dealer.send_multipart([b"", body])
        wait_until(lambda: wait_for in f.log(), 60, what=f"{wait_for!r} in the log")

    def release(self):
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")

    def close(self):
        self.dealer.close()
        self.release()
        self.db.close()


class DaemonTest(FeedTestCase):

    def assert_no_daemon(self, f, why):
        wait_until(lambda: not feed_procs(f.conf), 10, what=f"no feed process left ({why})")
        self.assertFalse(os.path.exists(f.pidfile), f"pidfile left behind ({why})")

    # -- start, status, single instance --------------------------------------
    def test_start_serves_at_once_and_status_shows_it(self):
        f = self.feed()
        r = f.start_ok()
        # no retry: the port must accept a connection the moment start returned
        with socket.create_connection(("127.0.0.1", f.port), timeout=5):
            pass
        self.assertEqual(f.req("1001,7,1.5", timeout=10), "TRUE")
        pid = f.pid()
        m = re.search(r"pid (\d+)", r.stdout)
        self.assertIsNotNone(m, f"start does not print the pid: {r.stdout!r}")
        self.assertEqual(int(m.group(1)), pid)
        self.assertFalse(gone(pid))
        st = f.status()
        self.assertEqual(st.returncode, 0, st.stdout + st.stderr)
        self.assertIn(f"pid {pid}", st.stdout)
        self.assertIn(f.endpoint, st.stdout)
        self.assertIn(f.url, st.stdout)
        self.assertEqual(f.sql("SELECT ticket, login FROM fee WHERE ticket = 1001;"), [["1001", "7"]])

    def test_second_start_is_refused_and_first_keeps_serving(self):
        f = self.feed()
        f.start_ok()
        pid = f.pid()
        r = f.start()
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn(f"already running (pid {pid})", r.stderr)
        self.assertEqual(f.pid(), pid, "the refused start rewrote the pidfile")
        self.assertFalse(gone(pid))
        self.assertEqual(f.req("1002,7,2"), "TRUE")
        self.assertEqual(feed_procs(f.conf), [pid], "more than one feed process serves")

    def test_kill9_leaves_stale_pidfile_that_does_not_block_start(self):
        f = self.feed()
        f.start_ok()
        old = f.kill9()
        self.assertTrue(os.path.exists(f.pidfile))
        st = f.status()
        self.assertEqual(st.returncode, 1, st.stdout + st.stderr)
        self.assertIn("not running", st.stdout)
        f.start_ok()
        self.assertNotEqual(f.pid(), old)
        self.assertEqual(f.req("1003,7,3"), "TRUE")
        self.assertEqual(f.status().returncode, 0)

    # -- stop --------------------------------------------------------------------
    def test_stop_removes_everything(self):
        f = self.feed()
        f.start_ok()
        pid = f.pid()
        self.assertEqual(f.req("1004,7,4"), "TRUE")
        r = f.stop(timeout=30)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertTrue(gone(pid), "stop returned while the daemon still lives")
        self.assertFalse(os.path.exists(f.pidfile), "pidfile not removed")
        self.assertEqual(f.status().returncode, 3)
        self.assertEqual(feed_procs(f.conf), [])

    def test_stop_answers_and_stores_the_request_in_flight(self):
        f = self.feed()
        f.start_ok()
        pid = f.pid()
        self.assertEqual(f.req("1005,7,1"), "TRUE")   # schema exists, WAL files exist
        # Hold SQLite's write lock so the next request stays in flight.
        held = InFlight(f, b"1006,8,2.25")
        d = held.dealer
        stop = None
        try:
            stop = subprocess.Popen([FEED, "-c", f.conf, "stop", "--timeout", "60"],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            wait_until(lambda: "not accepting new requests" in f.log(), 30, what="SIGTERM to arrive")
            self.assertIn("finishing 1 in flight", f.log())
            self.assertIsNone(stop.poll(), "stop returned while a request was in flight")
            held.release()
            self.assertTrue(d.poll(30000), "no reply to the request in flight at stop")
            self.assertEqual(d.recv_multipart(), [b"", b"TRUE"])
            out, err = stop.communicate(timeout=90)
            self.assertEqual(stop.returncode, 0, out + err)
        finally:
            held.close()
            if stop and stop.poll() is None:
                stop.kill()
                stop.communicate()
        self.assertTrue(gone(pid))
        self.assertFalse(os.path.exists(f.pidfile))
        self.assertEqual(f.sql("SELECT ticket, login FROM fee WHERE ticket = 1006;"), [["1006", "8"]])

    def test_stop_escalates_to_sigkill_after_its_timeout(self):
        f = self.feed(conf={"daemon": {"shutdown_timeout": "300"}})
        f.start_ok()
        pid = f.pid()
        self.assertEqual(f.req("1007,7,1"), "TRUE")
        # the database never lets the request in flight commit: feed cannot finish
        held = InFlight(f, b"1008,8,2")
        try:
            r = f.cmd("stop", "--timeout", "2")
            self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
            self.assertIn(f"pid {pid} did not stop within 2 s; sending SIGKILL", r.stderr)
            self.assertTrue(gone(pid))
            self.assertFalse(held.dealer.poll(500), "a reply came for a request that was never committed")
        finally:
            held.close()
        self.assertFalse(os.path.exists(f.pidfile), "stale pidfile left after SIGKILL")
        self.assertEqual(f.status().returncode, 3)
        self.assertEqual(f.sql("SELECT ticket FROM fee;"), [["1007"]])

    def test_stop_after_sigkill_never_removes_the_pidfile_of_a_new_instance(self):
        # After its SIGKILL, stop cleans up the stale pidfile. It is stopped
        # by ptrace at that clean-up (its first unlink), and a new instance is
        # started in that window: the new instance's pidfile must survive.
        f = self.feed(conf={"daemon": {"shutdown_timeout": "300"}})
        f.start_ok()
        old = f.pid()
        self.assertEqual(f.req("1015,7,1"), "TRUE")
        held = InFlight(f, b"1016,8,2")   # feed cannot finish: stop escalates

        def at_cleanup(trap, regs, entering):
            if not entering or regs.orig_rax not in (SYS_UNLINK, SYS_UNLINKAT):
                return False
            path = trap.string(regs.rdi if regs.orig_rax == SYS_UNLINK else regs.rsi)
            return os.path.basename(path) in ("feed.pid", "feed.status")

        try:
            trap = SyscallTrap([FEED, "-c", f.conf, "stop", "--timeout", "2"], at_cleanup,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            self.assertTrue(gone(old))
        finally:
            held.close()
        try:
            r = f.start()
        finally:
            trap.release()
        out, err = trap.proc.communicate(timeout=60)
        self.assertIn(f"pid {old} did not stop within 2 s; sending SIGKILL", err)
        if r.returncode == 0:
            self.assertTrue(os.path.exists(f.pidfile), "stop removed the pidfile of the new instance")
            new = f.pid()
        else:
            # refused while stop held the stale pidfile: it says why, and the next start works
            self.assertIn(f.pidfile, r.stderr)
            self.assertFalse(os.path.exists(f.pidfile), "stop left the stale pidfile")
            f.start_ok()
            new = f.pid()
        self.assertNotEqual(new, old)
        self.assertEqual(f.status().returncode, 0)
        r = f.start()
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn(f"already running (pid {new})", r.stderr)
        self.assertEqual(feed_procs(f.conf), [new], "more than one feed process serves")
        self.assertEqual(f.req("1017,7,1"), "TRUE")

    def test_long_lock_contention_is_reported_as_an_outage(self):
        # SQLite BUSY is transient: retried quietly at first, reported as an
        # outage (once, in the log and in status) after 10 s, and the request
        # is answered TRUE once the lock is gone.
        f = self.feed()
        f.start_ok()
        self.assertEqual(f.req("1009,7,1"), "TRUE")
        held = InFlight(f, b"1010,8,2", wait_for="database unavailable")
        d = held.dealer
        try:
            wait_until(lambda: "DOWN" in f.status().stdout, 10, what="status to show the outage")
            self.assertFalse(d.poll(100), "answered while the database was locked")
            held.release()
            self.assertTrue(d.poll(60000), "no reply after the lock was released")
            self.assertEqual(d.recv_multipart(), [b"", b"TRUE"])
        finally:
            held.close()
        wait_until(lambda: "database available again" in f.log(), 30, what="the recovery to be logged")
        self.assertEqual(f.log().count("database unavailable"), 1)
        self.assertEqual(f.log().count("database available again"), 1)
        self.assertEqual(f.sql("SELECT count(*) FROM fee WHERE ticket = 1010;"), [["1"]])

    def test_stop_when_not_running(self):
        f = self.feed()
        r = f.stop(timeout=5)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("not running", r.stdout)
        st = f.status()
        self.assertEqual(st.returncode, 3, st.stdout + st.stderr)
        self.assertIn("not running", st.stdout)

    def test_stale_pidfile_naming_another_process_is_left_alone(self):
        f = self.feed()
        sleeper = subprocess.Popen(["sleep", "300"])
        try:
            os.makedirs(os.path.dirname(f.pidfile), exist_ok=True)
            with open(f.pidfile, "w") as p:
                p.write(f"{sleeper.pid}\n")
            r = f.stop(timeout=5)
            self.assertIsNone(sleeper.poll(), f"stop killed an unrelated process: {r.stdout}{r.stderr}")
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            st = f.status()
            self.assertEqual(st.returncode, 1, st.stdout + st.stderr)
            self.assertIsNone(sleeper.poll(), "an unrelated process died")
        finally:
            sleeper.kill()
            sleeper.wait()

    def test_restart_gives_a_new_pid_and_serves(self):
        f = self.feed()
        f.start_ok()
        old = f.pid()
        r = f.cmd("restart", "--timeout", "30")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertTrue(gone(old), "the old daemon survived restart")
        new = f.pid()
        self.assertNotEqual(new, old)
        self.assertFalse(gone(new))
        self.assertEqual(f.req("1007,7,7"), "TRUE")
        self.assertEqual(f.status().returncode, 0)

    # -- start-up failures ----------------------------------------------------
    def test_start_fails_when_endpoint_in_use(self):
        f = self.feed()
        blocker = socket.socket()
        try:
            blocker.bind(("127.0.0.1", f.port))
            blocker.listen()
            r = f.cmd("start", timeout=20)
        finally:
            blocker.close()
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("Address already in use", r.stderr)
        self.assertIn(str(f.port), r.stderr)
        self.assert_no_daemon(f, "endpoint in use")

    def test_start_fails_when_database_not_writable(self):
        require_root(self)
        f = self.feed()
        rodir = os.path.join(f.dir, "rootonly")
        os.mkdir(rodir, 0o755)   # root's: nobody cannot create the database here
        dbpath = os.path.join(rodir, "feed.db")
        f.sections["database"]["url"] = "sqlite://" + dbpath
        f.write_conf()
        r = f.cmd("start", timeout=20)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn(rodir, r.stderr)
        self.assertRegex(r.stderr, r"(?i)permission denied|readonly|read-only|unable to open|not writable")
        self.assert_no_daemon(f, "database not writable")
        self.assertFalse(os.path.exists(dbpath))

    # -- identity ---------------------------------------------------------------
    def test_runs_as_the_configured_user(self):
        require_root(self)
        f = self.feed()
        f.start_ok()
        pid = f.pid()
        pw = pwd.getpwnam(RUN_USER)
        st = proc_status(pid)
        self.assertEqual(st["Uid"].split(), [str(pw.pw_uid)] * 4, st["Uid"])
        self.assertEqual(st["Gid"].split(), [str(pw.pw_gid)] * 4, st["Gid"])
        groups = {int(g) for g in st["Groups"].split()}
        self.assertNotIn(0, groups)
        self.assertEqual(groups, set(os.getgrouplist(RUN_USER, pw.pw_gid)),
                         "supplementary groups are not exactly the user's")
        self.assertEqual(st["CapEff"].strip("0"), "", f"capabilities left: {st['CapEff']}")
        self.assertEqual(f.req("1008,7,8"), "TRUE")
        r = f.stop()
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertTrue(gone(pid))
        self.assertFalse(os.path.exists(f.pidfile), "the unprivileged daemon could not remove its pidfile")

    def test_root_without_user_is_refused(self):
        require_root(self)
        f = self.feed(user=False)
        self.assertNotIn("user", f.sections["daemon"])
        r = f.cmd("start", timeout=20)
        self.assertEqual(r.returncode, 6, r.stdout + r.stderr)   # a configuration error
        self.assertIn("[daemon] user", r.stderr)
        self.assertIn("root", r.stderr)
        self.assert_no_daemon(f, "root without user")
        r = subprocess.run([FEED, "-c", f.conf, "run"], capture_output=True, text=True, timeout=20,
                           stdin=subprocess.DEVNULL)
        self.assertEqual(r.returncode, 6, r.stdout + r.stderr)
        self.assertIn("[daemon] user", f.log() + r.stderr)
        self.assert_no_daemon(f, "run as root without user")

    # -- files that root opens for the run-as user ------------------------------
    def plant_symlink(self, path, target):
        """The run-as user plants path -> target: its own directory lets it."""
        as_run_user("ln", "-sfn", target, path)
        st = os.lstat(path)
        self.assertEqual(st.st_uid, pwd.getpwnam(RUN_USER).pw_uid)

    def assert_refused(self, f, r, *words):
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        for w in words:
            self.assertIn(w, r.stderr)
        self.assert_no_daemon(f, " ".join(words))

    def test_pidfile_symlink_planted_by_the_run_user_is_not_followed(self):
        require_root(self)
        f = self.feed()
        victim = RootFile(self)
        rundir = os.path.dirname(f.pidfile)
        os.mkdir(rundir, 0o755)
        feedtest.give_to_run_user(rundir)   # as feed itself makes it
        self.plant_symlink(f.pidfile, victim.path)
        r = f.cmd("start", timeout=60)
        self.assertEqual(victim.state(), victim.before, "start wrote or chowned through the planted symlink")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn(f.pidfile, r.stderr)
        self.assertIn("symbolic link", r.stderr)
        wait_until(lambda: not feed_procs(f.conf), 10, what="no feed process left")
        self.assertTrue(os.path.islink(f.pidfile), "the planted link is the user's business")

    def test_log_symlink_planted_by_the_run_user_is_not_followed(self):
        require_root(self)
        f = self.feed()
        victim = RootFile(self)
        self.plant_symlink(f.logfile, victim.path)
        r = f.cmd("start", timeout=60)
        self.assertEqual(victim.state(), victim.before, "start wrote or chowned through the planted symlink")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn(f.logfile, r.stderr)
        self.assertIn("symbolic link", r.stderr)
        wait_until(lambda: not feed_procs(f.conf), 10, what="no feed process left")

    def test_ipc_socket_swapped_for_a_symlink_after_bind_is_not_followed(self):
        # The run-as user owns the socket's directory, so between bind(2) and
        # the change of the socket's owner and mode it can replace the socket
        # with a symlink. The daemon is stopped by ptrace right after its
        # bind returns, the swap is done, then it goes on.
        require_root(self)
        f = self.feed()
        victim = RootFile(self)
        path = os.path.join(f.dir, "feed.sock")
        f.sections["listen"]["endpoint"] = f"{f.endpoint},ipc://{path}"
        f.write_conf()

        def after_bind(trap, regs, entering):
            return (not entering and regs.orig_rax == SYS_BIND and regs.rax == 0
                    and trap.string(regs.rsi + 2) == path)

        trap = SyscallTrap([FEED, "-c", f.conf, "run"], after_bind,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        f.proc = trap.proc
        try:
            self.assertTrue(stat_is_socket(path))
            self.plant_symlink(path, victim.path)
        finally:
            trap.release()
        wait_until(lambda: trap.proc.poll() is not None or f._serving(), 60, what="feed run to fail or serve")
        self.assertEqual(victim.state(), victim.before, "feed changed owner or mode through the planted symlink")
        self.assertEqual(trap.proc.wait(60), 1, f.log())
        self.assertIn(path, f.log())
        self.assertIn("symbolic link", f.log())

    def test_pidfile_directory_writable_by_others_is_refused(self):
        f = self.feed()
        rundir = os.path.dirname(f.pidfile)
        os.mkdir(rundir)
        os.chmod(rundir, 0o777)   # anyone could plant a symlink there
        r = f.cmd("start", timeout=60)
        self.assert_refused(f, r, rundir, "writable by other users")
        self.assertEqual(os.listdir(rundir), [], "start left something in the refused directory")
        # with the sticky bit, others cannot replace what feed creates there
        os.chmod(rundir, 0o1777)
        f.start_ok()
        self.assertEqual(f.req("1013,7,1"), "TRUE")

    def test_log_directory_writable_by_others_is_refused(self):
        f = self.feed()
        logdir = os.path.join(f.dir, "log")
        os.mkdir(logdir)
        os.chmod(logdir, 0o777)
        f.logfile = os.path.join(logdir, "feed.log")
        f.sections["daemon"]["log"] = f.logfile
        f.write_conf()
        r = f.cmd("start", timeout=60)
        self.assert_refused(f, r, logdir, "writable by other users")
        self.assertFalse(os.path.exists(f.logfile))

    def test_no_new_privileges_and_no_capabilities_in_any_thread(self):
        require_root(self)
        f = self.feed()
        f.start_ok()
        pid = f.pid()
        self.assertEqual(f.req("1014,7,1"), "TRUE")   # the writer threads exist now
        tasks = os.listdir(f"/proc/{pid}/task")
        self.assertGreater(len(tasks), 1)
        for tid in tasks:
            st = proc_status(f"{pid}/task/{tid}")
            self.assertEqual(st["NoNewPrivs"], "1", f"thread {tid}")
            for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
                self.assertEqual(st[cap], "0000000000000000", f"thread {tid}: {cap}")

    # -- the daemon(7) steps ----------------------------------------------------
    def test_start_detaches_properly(self):
        f = self.feed(conf={"daemon": {"umask": "077"}})
        leak_path = os.path.join(f.dir, "leaked-descriptor")
        leak = os.open(leak_path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.set_inheritable(leak, True)
            r = subprocess.run([FEED, "-c", f.conf, "start"], capture_output=True, text=True,
                               timeout=90, stdin=subprocess.DEVNULL, pass_fds=(leak,))
        finally:
            os.close(leak)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr + f.log())
        pid = f.pid()
        stat = proc_stat(pid)
        ppid, pgrp, sid, tty = int(stat[1]), int(stat[2]), int(stat[3]), int(stat[4])
        self.assertTrue(ppid == 1 or ppid in ancestors(os.getpid()),
                        f"parent {ppid} is neither init nor a subreaper above the test")
        self.assertNotEqual(ppid, os.getpid())
        self.assertNotEqual(sid, pid, "the daemon is a session leader (could get a controlling tty)")
        self.assertNotEqual(sid, os.getsid(0), "the daemon stayed in the caller's session")
        self.assertEqual(sid, pgrp, "not in the new session's process group")
        self.assertEqual(tty, 0, "the daemon has a controlling terminal")
        self.assertEqual(os.readlink(f"/proc/{pid}/cwd"), "/")
        self.assertEqual(proc_status(pid)["Umask"], "0077")
        for fd in (0, 1, 2):
            self.assertEqual(os.readlink(f"/proc/{pid}/fd/{fd}"), "/dev/null", f"fd {fd}")
        targets = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        self.assertNotIn(leak_path, targets, "an inherited descriptor survived daemonizing")
        # the umask is really applied: files the daemon creates are not world readable
        self.assertEqual(f.req("1009,7,9"), "TRUE")
        dbmode = os.stat(f.url[len("sqlite://"):]).st_mode & 0o777
        self.assertEqual(dbmode & 0o077, 0, f"database created with mode {dbmode:o} under umask 077")

    # -- foreground: signals --------------------------------------------------------
    def test_run_sigterm_exits_zero_and_removes_pidfile(self):
        f = self.feed()
        p = f.run_foreground()
        pid = f.pid()
        self.assertEqual(pid, p.pid)
        self.assertEqual(f.req("1010,7,10"), "TRUE")
        p.send_signal(signal.SIGTERM)
        self.assertEqual(p.wait(60), 0, f.log())
        self.assertFalse(os.path.exists(f.pidfile))
        self.assertEqual(f.status().returncode, 3)

    def test_run_sighup_reopens_the_log(self):
        f = self.feed()
        p = f.run_foreground()
        rotated = f.logfile + ".1"
        os.rename(f.logfile, rotated)
        p.send_signal(signal.SIGHUP)
        wait_until(lambda: os.path.exists(f.logfile) and "SIGHUP" in f.log(), 30,
                   what="a new log file with the SIGHUP line")
        before = read_text(rotated)
        reply = f.req("this is not a record")
        self.assertTrue(reply.startswith("FALSE"), reply)
        wait_until(lambda: "rejected a request" in f.log(), 30, what="the rejection in the new log")
        self.assertNotIn("rejected a request", read_text(rotated))
        self.assertEqual(read_text(rotated), before, "lines still go to the rotated file")
        self.assertIn(" serving ", before)
        self.assertEqual(f.req("1011,7,11"), "TRUE", "not serving after SIGHUP")
        p.send_signal(signal.SIGTERM)
        self.assertEqual(p.wait(60), 0)

    def test_run_systemd_notify(self):
        f = self.feed()
        path = os.path.join(f.dir, "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        msgs = []
        try:
            sock.bind(path)
            os.chmod(path, 0o666)   # the daemon sends after dropping to nobody, as with systemd
            sock.settimeout(60)
            env = dict(os.environ, NOTIFY_SOCKET=path)
            p = subprocess.Popen([FEED, "-c", f.conf, "run"], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
            f.proc = p

            def recv_until(pred, what):
                while not any(pred(m) for m in msgs):
                    try:
                        msgs.append(sock.recv(4096).decode())
                    except socket.timeout:
                        self.fail(f"no {what} on NOTIFY_SOCKET; got {msgs}; log:\n{f.log()}")

            def has(field):
                return lambda m: field in m.split("\n")

            recv_until(has("READY=1"), "READY=1")
            ready = next(m for m in msgs if "READY=1" in m.split("\n"))
            self.assertIn(f"MAINPID={p.pid}", ready.split("\n"))
            self.assertEqual(f.req("1012,7,12"), "TRUE")
            recv_until(lambda m: m.startswith("STATUS="), "STATUS=")
            self.assertTrue(any(m.startswith("STATUS=") and "serving" in m for m in msgs), msgs)
            self.assertFalse(any("STOPPING=1" in m.split("\n") for m in msgs))
            p.send_signal(signal.SIGTERM)
            recv_until(has("STOPPING=1"), "STOPPING=1")
            self.assertEqual(p.wait(60), 0)
        finally:
            sock.close()


    def test_ipc_endpoint_belongs_to_the_run_user(self):
        if not IS_ROOT:
            self.fail("this test needs root (CI runs as root)")
        f = self.feed()
        path = os.path.join(f.dir, "feed.sock")
        f.sections["listen"]["endpoint"] = f"{f.endpoint},ipc://{path}"
        f.write_conf()
        f.start_ok()
        st = os.stat(path)
        nobody = pwd.getpwnam(RUN_USER)
        self.assertEqual((st.st_uid, st.st_gid), (nobody.pw_uid, nobody.pw_gid))
        self.assertEqual(st.st_mode & 0o777, 0o770)
        f.endpoint = f"ipc://{path}"
        self.assertEqual(f.req("6001,7,1"), "TRUE")
        self.assertEqual(f.stop().returncode, 0)

    # -- a peer that never reads its replies -----------------------------------
    def test_peer_not_reading_replies_does_not_hold_others_back(self):
        import struct
        import time

        import zmq
        f = self.feed(conf={"listen": {"hwm": "10"}})
        f.start_ok()
        d = f.ctx.socket(zmq.DEALER)
        d.setsockopt(zmq.LINGER, 0)
        d.setsockopt(zmq.RCVHWM, 1)
        d.setsockopt(zmq.RCVBUF, 4096)
        d.setsockopt(zmq.SNDHWM, 100000)
        d.connect(f.endpoint)
        try:
            # identical re-sends of one record: cheap for feed; each reply echoes
            # a 255-byte id, so they fill the peer's pipe and the socket buffers
            # until feed's sends fail
            deadline = time.monotonic() + 60
            n = 0
            while "replies to peers that did not read them" not in f.log():
                self.assertLess(time.monotonic(), deadline,
                                f"feed never gave up on the unread replies; log:\n{f.log()[-2000:]}")
                for _ in range(2000):
                    try:
                        d.send_multipart([b"", struct.pack(">Q", n).rjust(255, b"i"), b"5001,7,1.5"],
                                        zmq.NOBLOCK)
                        n += 1
                    except zmq.Again:
                        break
                time.sleep(0.05)
            # the stuck peer is still connected and still not reading: others are served
            self.assertEqual(f.req("5002,7,2", timeout=30), "TRUE")
        finally:
            d.close(0)
        self.assertEqual(f.sql("SELECT ticket FROM fee ORDER BY ticket;"), [["5001"], ["5002"]])


if __name__ == "__main__":
    unittest.main()
