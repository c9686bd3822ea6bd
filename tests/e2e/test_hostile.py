"""test_hostile - feed against hostile and broken peers, with real floods.

Runs under tests/lib/with-<backend>.sh like test_ingest.py. Every test sends
the real thing over 127.0.0.1: floods of empty, malformed, many-frame and
big-envelope messages while the database is really locked, a message of a
million frames, a peer that never reads its replies, an HTTP request.

The memory bound checked here is the one docs/operations.md states:

  VmRSS <= VmHWM after warm-up
           + queue_bytes + one message           requests admitted (each at its
                                                 whole allocation, at least 1 record)
           + per connection: hwm x its message   ZeroMQ's receive pipe
             footprint + 64 KiB                  (frames of <= 33 bytes sit in a
                                                 64-byte zmq_msg_t; larger ones are
                                                 allocated: size + 64)
           + 16 MiB                              slack: allocator, ZeroMQ, client libraries
"""
import os
import re
import socket
import struct
import sys
import threading
import time
import unittest

import zmq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from feedtest import wait_until  # noqa: E402
from test_ingest import DbLock, IngestCase, Pipeline, count, sanitized, vm  # noqa: E402

MiB = 1 << 20


def footprint(frames):
    """Bytes ZeroMQ holds for one received message of these frames."""
    return sum(64 if len(f) <= 33 else 64 + len(f) for f in frames) + 64


class HostileCase(IngestCase):
    HWM, MMB, QB, QR, MR = 20, 65536, 262144, 20000, 10000

    def hostile_feed(self, **extra):
        conf = {"listen": {"hwm": str(self.HWM), "max_message_bytes": str(self.MMB),
                           "queue_bytes": str(self.QB), "queue_records": str(self.QR),
                           "max_records": str(self.MR)}}
        for k, v in extra.items():
            conf.setdefault(k, {}).update(v)
        f = self.started(conf=conf)
        # warm-up through every stage, so that the baseline holds the batch buffers
        p = Pipeline(f, [b"".join(f"{t},5,0.5\n".encode() for t in range(a, a + 3000))
                         for a in range(1, 60001, 3000)], window=20)
        p.run(timeout=120)
        p.close()
        self.assertEqual(p.bad, [])
        return f


# ==== Memory: rejected and odd-shaped requests are admitted at their real cost ====

class TestHostileFlood(HostileCase):
    def flood(self, f, messages, conns, seconds, bound):
        """conns DEALERs send messages (lists of frames, cycled) for `seconds`
        without reading a reply. Stops early once VmRSS passes bound (the
        assertion then fails) rather than exhausting the machine."""
        pid = f.pid()
        socks = []
        for _ in range(conns):
            d = f.dealer()
            d.setsockopt(zmq.SNDHWM, 10)
            socks.append(d)
        sent = blocked = peak = 0
        end = time.monotonic() + seconds
        try:
            while time.monotonic() < end:
                for d in socks:
                    for _ in range(50):
                        try:
                            d.send_multipart(messages[sent % len(messages)], zmq.NOBLOCK)
                            sent += 1
                        except zmq.Again:
                            blocked += 1
                            break
                rss = vm(pid, "VmRSS")
                peak = max(peak, rss)
                if rss > bound + 256 * MiB:
                    break
                time.sleep(0.001)
        finally:
            for d in socks:
                d.close(0)
        return sent, blocked, peak

    def test_hostile_kinds_with_the_database_locked(self):
        f = self.hostile_feed()
        base = vm(f.pid(), "VmHWM")
        kinds = {
            # DEALER frames; the ROUTER adds the routing id in front
            "empty": [[b""]],
            "malformed": [[b"", b"1,2"], [b"", b"id", b"x", b"y"], [b"", b"", b"1,1,1"]],
            "many-frame": [[b""] + [b"f"] * 40],
            "big-envelope": [[b"E" * 16384] * 29 + [b"", b"1,1,1"]],
        }
        report = []
        rss_checked = not sanitized()
        for name, messages in kinds.items():
            conns = 8 if name != "big-envelope" else 2
            biggest = max(sum(len(fr) + 64 for fr in m) + 64 for m in messages)
            zmq_term = conns * (self.HWM * max(footprint([b"r" * 5] + m) for m in messages) + 65536)
            bound = base + self.QB + 2 * biggest + zmq_term + 16 * MiB
            lock = DbLock(f)
            try:
                sent, blocked, peak = self.flood(f, messages, conns, 4, bound)
            finally:
                lock.release()
            report.append(f"{name}: {sent} sent, held back {blocked} times, peak VmRSS "
                          f"{peak >> 10} KiB, bound {bound >> 10} KiB")
            print(report[-1], file=sys.stderr)
            if rss_checked:
                self.assertLessEqual(peak, bound, f"{name}: VmRSS over the documented bound; {report}")
            if name == "big-envelope":
                # tiny messages fit the socket buffers by the million; these do not
                self.assertGreater(blocked, 0, f"{name}: the flood never met back-pressure")
            # feed still serves once the database is free again
            self.assertEqual(f.req(f"{1_000_700 + len(report)},1,1", timeout=120), "TRUE")
        self.assertGreater(count(f, "WHERE ticket > 1000700 AND ticket < 1000710"), 3)


# ==== Very many frames: drained, the peer dropped, memory given back ====

class TestManyFrames(HostileCase):
    def test_million_frame_messages_drop_the_peer_and_give_memory_back(self):
        f = self.hostile_feed()
        pid = f.pid()
        base = vm(pid, "VmRSS")
        socks, mons = [], []
        for _ in range(4):
            d = f.dealer()
            d.setsockopt(zmq.SNDHWM, 0)
            mons.append(d.get_monitor_socket(zmq.EVENT_DISCONNECTED))
            socks.append(d)
        wait_until(lambda: count(f) >= 60000, 30, what="warm-up committed")
        frames = [b"x"] * 1_000_000
        try:
            for d in socks:
                d.send_multipart(frames, copy=False)
            # every offender is disconnected by feed (no reply: it is gone)
            for m in mons:
                self.assertTrue(m.poll(60000), "feed did not drop a peer that sent 1,000,001 frames")
            wait_until(lambda: len([r for r in f.sql("SELECT reason FROM fee_reject;")
                                    if "frames" in r[0]]) == 4, 60, what="4 fee_reject rows")
        finally:
            for m in mons:
                m.close(0)
            for d in socks:
                d.close(0)
        reasons = f.sql("SELECT reason, endpoint FROM fee_reject;")
        for reason, endpoint in reasons:
            self.assertRegex(reason, r"^malformed message: 1000001 frames \(at most 32\)")
            self.assertRegex(endpoint, r" peer 127\.0\.0\.1$")
        self.assertRegex(f.log(), r"dropped the connection of 127\.0\.0\.1:\d+: 1000001 frames")
        if not sanitized():
            # 4 x 1 M frames held ~256 MiB inside ZeroMQ; it must go back
            wait_until(lambda: vm(pid, "VmRSS") < base + 48 * MiB, 20,
                       what=f"VmRSS back near {base >> 10} KiB (now {vm(pid, 'VmRSS') >> 10} KiB)")
        self.assertEqual(f.req("1000900,1,1"), "TRUE")

    def test_delimiter_kept_past_32_frames(self):
        f = self.started()
        d = f.dealer()
        try:
            # ROUTER sees: routing id, 30 envelope frames, delimiter, id, body = 34 frames
            d.send_multipart([b"e%d" % i for i in range(30)] + [b"", b"id", b"1,1,1"])
            self.assertTrue(d.poll(20000), "no reply to a 34-frame message")
            fr = d.recv_multipart()
        finally:
            d.close(0)
        self.assertEqual(fr[:31], [b"e%d" % i for i in range(30)] + [b""])
        self.assertEqual(len(fr), 32, fr)
        self.assertRegex(fr[31].decode(), r"^FALSE: malformed message: 34 frames \(at most 32\)$")
        self.assertEqual(count(f), 0)

    def test_envelope_frame_over_64k_is_answered(self):
        f = self.started()
        d = f.dealer()
        big = b"E" * 70000
        try:
            d.send_multipart([big, b"", b"31,1,1"])
            self.assertTrue(d.poll(20000), "no reply to a message with a 70,000-byte envelope frame")
            fr = d.recv_multipart()
        finally:
            d.close(0)
        self.assertEqual(fr, [big, b"", b"TRUE"])
        self.assertEqual(count(f, "WHERE ticket = 31"), 1)


# ==== A peer that never reads holds back nobody else ====

class TestSlowPeer(HostileCase):
    def test_peer_not_reading_does_not_delay_others(self):
        f = self.started(conf={"listen": {"hwm": "10"}})
        stuck = f.dealer()
        stuck.setsockopt(zmq.RCVHWM, 1)
        stuck.setsockopt(zmq.RCVBUF, 4096)
        stuck.setsockopt(zmq.SNDHWM, 100000)
        stop = threading.Event()

        def jam():
            n = 0
            while not stop.is_set():
                for _ in range(500):
                    try:
                        stuck.send_multipart([b"", struct.pack(">Q", n).rjust(255, b"i"), b"5001,7,1.5"],
                                             zmq.NOBLOCK)
                        n += 1
                    except zmq.Again:
                        break
                time.sleep(0.02)

        t = threading.Thread(target=jam)
        t.start()
        rtts = []
        try:
            time.sleep(3)   # the stuck peer's pipe fills up
            end = time.monotonic() + 12
            n = 0
            while time.monotonic() < end:
                t0 = time.monotonic()
                self.assertEqual(f.req(f"{6000 + n},7,2", timeout=30), "TRUE")
                rtts.append(time.monotonic() - t0)
                n += 1
                time.sleep(0.05)
        finally:
            stop.set()
            t.join()
            stuck.close(0)
        print(f"slow peer: {len(rtts)} round trips, max {max(rtts):.3f} s", file=sys.stderr)
        # the old main loop stopped reading every socket for 5 s at a time
        self.assertLess(max(rtts), 2.0, f"a reader waited behind the stuck peer: {sorted(rtts)[-5:]}")
        self.assertEqual(count(f, "WHERE ticket >= 6000"), len(rtts))


# ==== Odd peers and logs ====

class TestOddPeers(HostileCase):
    def test_http_request_is_kept_with_its_peer_address(self):
        f = self.started()
        with socket.create_connection(("127.0.0.1", f.port), timeout=10) as s:
            # ZeroMQ reads this as a ZMTP/1.0 peer: its bytes become messages
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" +
                      b"".join(b"X-Header-%d: %s\r\n" % (i, b"v" * i) for i in range(60)) + b"\r\n")
            s.settimeout(5)
            try:
                while s.recv(4096):
                    pass
            except OSError:
                pass
        time.sleep(1)
        rows = wait_until(lambda: f.sql("SELECT endpoint FROM fee_reject;"), 10,
                          what="the HTTP request's bytes in fee_reject")
        for (endpoint,) in rows:
            # libzmq gives neither the address nor the descriptor of a ZMTP/1.0
            # peer: the row says what it came as (the ZAP handler of the security
            # issue refuses such peers outright)
            self.assertRegex(endpoint, r" peer (127\.0\.0\.1(:\d+)?|unknown \(ZMTP/1\.0 framing: "
                                       r"a libzmq 2 sender, or bytes that are not ZeroMQ\))$",
                             "a fee_reject row without its sender")
        self.assertEqual(f.req("41,1,1"), "TRUE")

    def test_reject_log_lines_are_rate_limited(self):
        f = self.started()
        p = Pipeline(f, [b"bad"] * 3000, window=500)
        p.run(timeout=120)
        p.close()
        self.assertEqual(len(p.bad), 3000)
        wait_until(lambda: re.search(r"suppressed \d+", f.log()), 10, what="a suppression summary")
        lines = f.log().count("rejected a request from")
        self.assertLess(lines, 100, f"{lines} log lines for 3000 rejects")
        self.assertEqual(count(f), 0)
        self.assertEqual(len(f.sql("SELECT reason FROM fee_reject;")), 3000)


if __name__ == "__main__":
    unittest.main()
