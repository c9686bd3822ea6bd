"""test_security - CURVE, the ZAP handler and the address allowlist, for real.

Certificates are made by pyzmq's zmq.auth.create_certificates (and by
`feed keygen`); every client is a real pyzmq socket over 127.0.0.1. A client
that must be refused is shown to get no reply AND to have stored nothing;
removals are shown to reach a connection opened before them. The handshake
flood counts the refusals on the client side (ZMQ_EVENT_HANDSHAKE_FAILED_AUTH
from a socket monitor), so that each of the 1,000 attempts really reached
feed's ZAP handler.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import unittest

import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from feedtest import FEED, IS_ROOT, FeedTestCase, wait_until  # noqa: E402
from test_ingest import count, sanitized, vm  # noqa: E402

MiB = 1 << 20
NO_REPLY_S = 2.0      # a refused client: how long it is given to (not) get an answer


def refused_total(log):
    """Handshakes the log accounts for: the lines, plus the suppressed ones summarised."""
    lines = log.count("refused a handshake from")
    supp = sum(int(n) for n in re.findall(r"suppressed (\d+) more lines about refused handshakes", log))
    return lines, supp


class Keys:
    """A server certificate, a clients directory with alice in it, and spare client keys."""

    def __init__(self, base, clients=("alice",), spare=("bob", "mallory")):
        self.base = os.path.join(base, "curve")
        self.keys = os.path.join(self.base, "keys")       # the test's copies, secrets included
        self.clients = os.path.join(self.base, "clients")
        os.makedirs(self.keys)
        os.makedirs(self.clients)
        os.chmod(self.base, 0o755)
        os.chmod(self.clients, 0o755)
        self.server_public, self.server_secret = zmq.auth.create_certificates(self.base, "server")
        os.chmod(self.server_secret, 0o600)    # pyzmq leaves it to the umask
        for name in tuple(clients) + tuple(spare):
            zmq.auth.create_certificates(self.keys, name)
        for name in clients:
            self.admit(name)
        # a second server key: what a client configured with the wrong one has
        self.other = os.path.join(base, "other")
        os.makedirs(self.other)
        self.other_public, _ = zmq.auth.create_certificates(self.other, "server")

    def secret(self, name):
        return os.path.join(self.keys, name + ".key_secret")

    def admit(self, name):
        """Copies NAME.key in the way docs/security.md says: write aside, rename into place."""
        tmp = os.path.join(self.clients, "." + name + ".tmp")
        shutil.copyfile(os.path.join(self.keys, name + ".key"), tmp)
        os.chmod(tmp, 0o644)
        os.rename(tmp, os.path.join(self.clients, name + ".key"))

    def revoke(self, name):
        os.unlink(os.path.join(self.clients, name + ".key"))

    def conf(self, **extra):
        listen = {"curve_server_cert": self.server_secret, "curve_clients": self.clients}
        listen.update(extra)
        return {"listen": listen}


def curve_socket(ctx, kind, secret_file, server_public_file):
    s = ctx.socket(kind)
    s.setsockopt(zmq.LINGER, 0)
    pub, sec = zmq.auth.load_certificate(secret_file)
    spub, _ = zmq.auth.load_certificate(server_public_file)
    s.curve_publickey, s.curve_secretkey, s.curve_serverkey = pub, sec, spub
    return s


def ask(sock, endpoint, body, timeout=NO_REPLY_S):
    """Connects if endpoint, sends one request, returns the reply text or None."""
    if endpoint:
        sock.connect(endpoint)
    sock.send(body.encode())
    if sock.poll(int(timeout * 1000)):
        return sock.recv().decode()
    return None


class SecurityCase(FeedTestCase):
    def curve_feed(self, clients=("alice",), **listen):
        f = self.feed()
        keys = Keys(f.dir, clients=clients)
        for sec, kv in keys.conf(**listen).items():
            f.sections.setdefault(sec, {}).update(kv)
        f.write_conf()
        return f, keys

    def curve_ask(self, f, keys, name, body, server_public=None, timeout=NO_REPLY_S):
        s = curve_socket(f.ctx, zmq.REQ, keys.secret(name), server_public or keys.server_public)
        try:
            return ask(s, f.endpoint, body, timeout)
        finally:
            s.close()

    def plain_ask(self, f, body, endpoint=None, timeout=NO_REPLY_S):
        s = f.ctx.socket(zmq.REQ)
        s.setsockopt(zmq.LINGER, 0)
        try:
            return ask(s, endpoint or f.endpoint, body, timeout)
        finally:
            s.close()


class TestCurve(SecurityCase):
    def test_allowed_client_gets_true(self):
        f, keys = self.curve_feed()
        f.start_ok()
        self.assertEqual(self.curve_ask(f, keys, "alice", "1,7,1.5", timeout=20), "TRUE")
        self.assertEqual(count(f), 1)
        self.assertIn("1 client certificates", f.log())

    def test_plain_unknown_and_wrong_server_key_store_nothing(self):
        f, keys = self.curve_feed()
        f.start_ok()
        self.assertIsNone(self.plain_ask(f, "11,7,1.5"), "a plain client got an answer")
        self.assertIsNone(self.curve_ask(f, keys, "mallory", "12,7,1.5"), "an unknown key got an answer")
        self.assertIsNone(self.curve_ask(f, keys, "alice", "13,7,1.5", server_public=keys.other_public),
                          "a client with the wrong server key got an answer")
        # the server still serves, and none of the three stored anything, not even as a reject
        self.assertEqual(self.curve_ask(f, keys, "alice", "14,7,1.5", timeout=20), "TRUE")
        self.assertEqual(f.sql("SELECT ticket FROM fee;"), [["14"]])
        self.assertEqual(f.sql("SELECT count(*) FROM fee_reject;"), [["0"]])
        mallory, _ = zmq.auth.load_certificate(keys.secret("mallory").replace("_secret", ""))
        log = f.log()
        self.assertIn(f"refused a handshake from 127.0.0.1 with client key {mallory.decode()}: key not in [listen] curve_clients",
                      log)

    def test_ipc_endpoint_stays_plain(self):
        f, keys = self.curve_feed()
        ipc = "ipc://" + os.path.join(f.dir, "feed.sock")
        f.sections["listen"]["endpoint"] = f.endpoint + ", " + ipc
        f.write_conf()
        f.start_ok()
        self.assertEqual(self.plain_ask(f, "21,7,1.5", endpoint=ipc, timeout=20), "TRUE")
        self.assertIsNone(self.plain_ask(f, "22,7,1.5"))
        self.assertEqual(count(f), 1)

    def test_certificate_added_is_accepted_without_restart(self):
        f, keys = self.curve_feed()
        f.start_ok()
        pid = f.pid()
        self.assertIsNone(self.curve_ask(f, keys, "bob", "31,7,1.5"))
        keys.admit("bob")
        # the directory's mtime changed: picked up within about a second, no signal
        wait_until(lambda: self.curve_ask(f, keys, "bob", "32,7,1.5", timeout=1) == "TRUE", 15,
                   what="bob admitted")
        self.assertEqual(f.pid(), pid)
        self.assertEqual(f.sql("SELECT ticket FROM fee;"), [["32"]])
        self.assertRegex(f.log(), r"curve_clients: 2 client certificates \(1 added, 0 removed: \+bob\)")

    def test_certificate_removed_is_refused_also_on_an_open_connection(self):
        f, keys = self.curve_feed(clients=("alice", "bob"))
        f.start_ok()
        old = curve_socket(f.ctx, zmq.REQ, keys.secret("alice"), keys.server_public)
        old.setsockopt(zmq.RCVTIMEO, 20000)
        old.connect(f.endpoint)
        old.send(b"41,7,1.5")
        self.assertEqual(old.recv(), b"TRUE")
        keys.revoke("alice")
        # the connection stays open; from the rescan on, its requests are refused, unstored
        replies = {}
        ticket = [41]

        def refused():
            ticket[0] += 1
            old.send(f"{ticket[0]},7,1.5".encode())
            replies[ticket[0]] = old.recv().decode()
            if replies[ticket[0]] == "TRUE":
                time.sleep(0.1)
            return replies[ticket[0]] != "TRUE"

        wait_until(refused, 15, what="the open connection's requests refused")
        self.assertEqual(replies[ticket[0]], "FALSE: not authorized")
        stored = {int(r[0]) for r in f.sql("SELECT ticket FROM fee;")}
        self.assertEqual(stored, {41} | {t for t, v in replies.items() if v == "TRUE"})
        self.assertNotIn(ticket[0], stored)
        self.assertEqual(f.sql("SELECT count(*) FROM fee_reject;"), [["0"]])
        # again on the same connection, and a new connection gets no session at all
        old.send(b"90,7,1.5")
        self.assertEqual(old.recv(), b"FALSE: not authorized")
        old.close()
        self.assertIsNone(self.curve_ask(f, keys, "alice", "91,7,1.5"))
        # bob was not touched
        self.assertEqual(self.curve_ask(f, keys, "bob", "92,7,1.5", timeout=20), "TRUE")
        self.assertIn("no longer in [listen] curve_clients", f.log())

    def test_sighup_rescans_at_once(self):
        f, keys = self.curve_feed(clients=("alice", "bob"))
        f.start_ok()
        s = curve_socket(f.ctx, zmq.REQ, keys.secret("bob"), keys.server_public)
        s.setsockopt(zmq.RCVTIMEO, 20000)
        s.connect(f.endpoint)
        s.send(b"51,7,1.5")
        self.assertEqual(s.recv(), b"TRUE")
        # bob.key rewritten in place with another key: the directory's mtime does not
        # change, so only SIGHUP can see that bob's key is gone
        st = os.stat(keys.clients)
        with open(os.path.join(keys.keys, "mallory.key")) as src, \
                open(os.path.join(keys.clients, "bob.key"), "w") as dst:
            dst.write(src.read())
        self.assertEqual(os.stat(keys.clients).st_mtime_ns, st.st_mtime_ns)
        time.sleep(2.5)    # two rescan periods: the mtime check must not have seen it
        s.send(b"52,7,1.5")
        self.assertEqual(s.recv(), b"TRUE")
        os.kill(f.pid(), signal.SIGHUP)
        wait_until(lambda: "+bob -bob" in f.log(), 10, what="the SIGHUP rescan")
        s.send(b"53,7,1.5")
        self.assertEqual(s.recv(), b"FALSE: not authorized")
        s.close()
        self.assertEqual(f.sql("SELECT ticket FROM fee ORDER BY ticket;"), [["51"], ["52"]])


class TestAllow(SecurityCase):
    def test_address_outside_allow_is_refused_with_curve(self):
        f, keys = self.curve_feed(allow="127.0.0.2/32, ::2")
        f.start_ok()
        self.assertIsNone(self.curve_ask(f, keys, "alice", "61,7,1.5"))
        self.assertEqual(count(f), 0)
        self.assertIn("refused a handshake from 127.0.0.1: address not in [listen] allow", f.log())

    def test_address_inside_allow_is_served_with_curve(self):
        f, keys = self.curve_feed(allow="10.0.0.0/8, 127.0.0.0/8")
        f.start_ok()
        self.assertEqual(self.curve_ask(f, keys, "alice", "62,7,1.5", timeout=20), "TRUE")
        self.assertEqual(count(f), 1)

    def test_allow_without_curve(self):
        f = self.feed(conf={"listen": {"allow": "127.0.0.2"}})
        f.start_ok()
        self.assertIsNone(self.plain_ask(f, "63,7,1.5"))
        self.assertEqual(count(f), 0)
        f.stop()
        f.sections["listen"]["allow"] = "127.0.0.0/8"
        f.write_conf()
        f.start_ok()
        self.assertEqual(self.plain_ask(f, "64,7,1.5", timeout=20), "TRUE")
        self.assertEqual(count(f), 1)

    def test_bad_allow_entry_is_a_configuration_error(self):
        f = self.feed(conf={"listen": {"allow": "127.0.0.1, 10.0.0.0/33"}})
        r = f.start()
        self.assertEqual(r.returncode, 6, r.stderr)
        self.assertIn("[listen] allow: a prefix length must be 0..32", r.stderr)


class TestFlood(SecurityCase):
    ROUND = 100

    def attempts(self, f, keys, n):
        """n handshakes with fresh random keys; returns once each client saw its refusal."""
        ctx = zmq.Context()
        try:
            for _ in range(n // self.ROUND):
                socks, mons = [], []
                for _ in range(self.ROUND):
                    s = ctx.socket(zmq.DEALER)
                    s.setsockopt(zmq.LINGER, 0)
                    s.setsockopt(zmq.RECONNECT_IVL, -1)    # one attempt each
                    pub, sec = zmq.curve_keypair()
                    s.curve_publickey, s.curve_secretkey = pub, sec
                    s.curve_serverkey = zmq.auth.load_certificate(keys.server_public)[0]
                    mons.append(s.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH |
                                                     zmq.EVENT_HANDSHAKE_SUCCEEDED))
                    s.connect(f.endpoint)
                    s.send(b"99,7,1.5")
                    socks.append(s)
                for m in mons:
                    self.assertTrue(m.poll(20000), "a handshake got no answer")
                    ev = recv_monitor_message(m)
                    self.assertEqual(ev["event"], zmq.EVENT_HANDSHAKE_FAILED_AUTH, ev)
                    self.assertEqual(ev["value"], 400, ev)
                for s in socks:
                    s.disable_monitor()
                    s.close()
                for m in mons:
                    m.close()
        finally:
            ctx.term()

    def test_thousand_random_keys(self):
        f, keys = self.curve_feed()
        f.start_ok()
        pid = f.pid()
        alice = curve_socket(f.ctx, zmq.REQ, keys.secret("alice"), keys.server_public)
        alice.setsockopt(zmq.RCVTIMEO, 20000)
        alice.connect(f.endpoint)
        alice.send(b"1,7,1.5")
        self.assertEqual(alice.recv(), b"TRUE")
        self.attempts(f, keys, 200)        # warm-up: libzmq's and the allocator's steady state
        base = vm(pid, "VmRSS")
        start = time.monotonic()
        for i in range(10):
            self.attempts(f, keys, 100)
            alice.send(f"{i + 2},7,1.5".encode())
            self.assertEqual(alice.recv(), b"TRUE", "the allowed client was not served during the flood")
        took = time.monotonic() - start
        grown = vm(pid, "VmRSS") - base
        alice.close()
        # every attempt reached the handler and is accounted for in the log, in few lines
        wait_until(lambda: sum(refused_total(f.log())) >= 1200, 15, what="all refusals accounted for")
        lines, supp = refused_total(f.log())
        self.assertEqual(lines + supp, 1200, (lines, supp))
        self.assertLess(lines, 200, f"{lines} log lines for 1200 refused handshakes in {took:.1f} s")
        if not sanitized():
            self.assertLess(grown, 8 * MiB, f"VmRSS grew {grown >> 10} KiB over 1000 refused handshakes")
        self.assertEqual(count(f), 11)


class TestStartRefused(SecurityCase):
    def refused(self, f, *needles):
        r = f.start()
        self.assertNotEqual(r.returncode, 0, "feed started")
        for n in needles:
            self.assertIn(n, r.stderr)
        self.assertFalse(os.path.exists(f.pidfile) and os.path.getsize(f.pidfile) > 0,
                         "a pidfile was left behind")
        return r

    def test_secret_readable_by_others(self):
        f, keys = self.curve_feed()
        os.chmod(keys.server_secret, 0o644)
        self.refused(f, keys.server_secret, "mode 0644", "chmod 600")
        r = f.cmd("check")
        self.assertEqual(r.returncode, 6, r.stderr)
        self.assertIn("mode 0644", r.stderr)

    def test_missing_directory(self):
        f, keys = self.curve_feed()
        shutil.rmtree(keys.clients)
        self.refused(f, "[listen] curve_clients", keys.clients, "No such file or directory")

    def test_missing_certificate(self):
        f, keys = self.curve_feed()
        os.unlink(keys.server_secret)
        self.refused(f, "[listen] curve_server_cert", keys.server_secret, "No such file or directory")

    def test_public_certificate_given_as_the_secret(self):
        f, keys = self.curve_feed()
        f.sections["listen"]["curve_server_cert"] = keys.server_public
        f.write_conf()
        os.chmod(keys.server_public, 0o600)
        self.refused(f, "no secret-key")

    def test_directory_the_daemon_user_cannot_read(self):
        # as root: readable by root (who binds) but not by nobody (who rescans)
        f, keys = self.curve_feed()
        os.chmod(keys.clients, 0o700 if IS_ROOT else 0)
        self.refused(f, keys.clients, "Permission denied")

    def test_cert_without_clients(self):
        f, keys = self.curve_feed()
        del f.sections["listen"]["curve_clients"]
        f.write_conf()
        r = self.refused(f, "curve_server_cert and curve_clients go together")
        self.assertEqual(r.returncode, 6)


class TestTools(SecurityCase):
    def test_keygen_output_works_with_pyzmq(self):
        f = self.feed()
        d = os.path.join(f.dir, "kg")
        os.makedirs(d)
        os.makedirs(os.path.join(d, "clients"))
        os.chmod(d, 0o755)
        os.chmod(os.path.join(d, "clients"), 0o755)
        for name in ("server", "carol"):
            r = subprocess.run([FEED, "keygen", name, "-d", d], capture_output=True, text=True, timeout=30)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(os.stat(os.path.join(d, name + ".key_secret")).st_mode & 0o777, 0o600)
            self.assertEqual(os.stat(os.path.join(d, name + ".key")).st_mode & 0o777, 0o644)
            pub, sec = zmq.auth.load_certificate(os.path.join(d, name + ".key_secret"))
            self.assertEqual(zmq.curve_public(sec), pub)
            self.assertEqual(zmq.auth.load_certificate(os.path.join(d, name + ".key"))[0], pub)
        # never overwrites
        r = subprocess.run([FEED, "keygen", "carol", "-d", d], capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 1)
        self.assertIn("never overwrites", r.stderr)
        shutil.copyfile(os.path.join(d, "carol.key"), os.path.join(d, "clients", "carol.key"))
        f.sections["listen"].update({"curve_server_cert": os.path.join(d, "server.key_secret"),
                                     "curve_clients": os.path.join(d, "clients")})
        f.write_conf()
        f.start_ok()
        s = curve_socket(f.ctx, zmq.REQ, os.path.join(d, "carol.key_secret"), os.path.join(d, "server.key"))
        try:
            self.assertEqual(ask(s, f.endpoint, "71,7,1.5", 20), "TRUE")
        finally:
            s.close()
        self.assertEqual(count(f), 1)

    def test_feed_send_with_curve(self):
        f, keys = self.curve_feed()
        f.start_ok()
        data = "".join(f"{t},7,1.5\n" for t in range(100, 300))
        r = subprocess.run([FEED, "send", "-e", f.endpoint, "-q", "--server-key", keys.server_public,
                            "--cert", keys.secret("alice"), "-"], input=data, capture_output=True,
                           text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(count(f), 200)
        # the same keys from the configuration's [send] section
        f.sections["send"] = {"server_key": keys.server_public, "cert": keys.secret("alice")}
        f.write_conf()
        r = subprocess.run([FEED, "-c", f.conf, "send", "-q", "-"], input="300,7,1.5\n",
                           capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(count(f), 201)
        # without CURVE: nothing gets through, feed send says it got no reply
        r = subprocess.run([FEED, "send", "-e", f.endpoint, "-q", "-t", "300", "-r", "0", "-"],
                           input="301,7,1.5\n", capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertEqual(count(f), 201)

    def test_feed_send_needs_both_keys(self):
        r = subprocess.run([FEED, "send", "-e", "tcp://127.0.0.1:1", "--server-key", "/nonexistent"],
                           input="", capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 2)
        self.assertIn("--cert", r.stderr)


class TestSource(SecurityCase):
    def test_rows_carry_the_certificate_name(self):
        f, keys = self.curve_feed(clients=("alice", "bob"))
        f.start_ok()
        self.assertEqual(self.curve_ask(f, keys, "alice", "31,7,1.5", timeout=20), "TRUE")
        self.assertEqual(self.curve_ask(f, keys, "bob", "32,7,2", timeout=20), "TRUE")
        # an identical re-send from another client: TRUE, and the row keeps its first sender
        self.assertEqual(self.curve_ask(f, keys, "bob", "31,7,1.5", timeout=20), "TRUE")
        reply = self.curve_ask(f, keys, "bob", "31,8,1.5", timeout=20)
        self.assertTrue(reply.startswith("FALSE: conflict"), reply)
        self.assertTrue(self.curve_ask(f, keys, "alice", "33,7,x", timeout=20).startswith("FALSE: "))
        self.assertEqual(f.sql("SELECT ticket, source FROM fee ORDER BY ticket;"),
                         [["31", "alice"], ["32", "bob"]])
        self.assertEqual(f.sql("SELECT source FROM fee_reject ORDER BY id;"), [["bob"], ["alice"]])


if __name__ == "__main__":
    unittest.main()
