"""test_tls - feed talks to its database server over verified TLS.

Runs under FEED_TEST_TLS=1 tests/lib/with-postgres.sh or with-mariadb.sh:
the wrapper starts the server with TLS on, its certificate (IP:127.0.0.1,
DNS:localhost) signed by a CA the wrapper made with openssl
(FEED_TEST_TLS_CA). The tests make more certificates with the same tool
(tests/lib/mkcert.sh): a second CA that did not sign the server's
certificate, and a certificate of the right CA for another host name,
which the server is switched to (PostgreSQL: ALTER SYSTEM + reload;
MariaDB: the files replaced + FLUSH SSL).

What is checked: with verification on, feed connects, answers TRUE, and the
server itself reports every one of feed's sessions as TLS (pg_stat_ssl;
performance_schema.status_by_thread's Ssl_cipher), which the same query
does not for a feed told not to use TLS (the assertion can fail); a
certificate that does not verify fails `feed check` and `feed start`
non-zero, with the TLS library's reason in the message.
"""
import os
import shutil
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from feedtest import FeedTestCase, backend, feed_procs, wait_until  # noqa: E402

MKCERT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib", "mkcert.sh")


def mkcert(*args):
    r = subprocess.run(["sh", MKCERT, *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"mkcert.sh {args}: {r.stderr}"


def server_sql(query):
    """SQL as the server's superuser, in a new session; rows as lists."""
    r = subprocess.run(os.environ["FEED_TEST_SQL"], shell=True, input=query, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, f"SQL failed: {query!r}: {r.stderr}"
    return [line.split("\t") for line in r.stdout.splitlines() if line != ""]


def with_params(url, **params):
    sep = "&" if "?" in url else "?"
    return url + sep + "&".join(f"{k}={v}" for k, v in params.items())


class TlsCase(FeedTestCase):
    """Common to both servers; the subclasses say how each one is asked."""
    server = None          # "postgresql" or "mysql": the wrapper this class needs

    @classmethod
    def setUpClass(cls):
        # Not a skip: a TLS test run without a TLS server must fail.
        for var in ("FEED_TEST_TLS_DIR", "FEED_TEST_TLS_CA", "FEED_TEST_URL", "FEED_TEST_SQL"):
            if not os.environ.get(var):
                raise AssertionError(f"{var} is not set: run under FEED_TEST_TLS=1 "
                                     "tests/lib/with-postgres.sh or with-mariadb.sh")
        cls.tls = os.environ["FEED_TEST_TLS_DIR"]
        cls.ca = os.environ["FEED_TEST_TLS_CA"]
        cls.wrong_ca = os.path.join(cls.tls, "wrongca.crt")
        if not os.path.exists(cls.wrong_ca):
            mkcert("ca", cls.tls, "wrongca")

    def tls_feed(self, url):
        conf = {}
        pw = os.environ.get("FEED_TEST_PASSWORD_FILE")
        if pw:
            conf["database"] = {"password_file": pw}
        return self.feed(url=url, conf=conf)

    def assert_refused(self, f, reason):
        """check and start both fail, saying what (the database), where (its
        address) and why (the library's reason); nothing keeps running."""
        for command in ("check", "start"):
            r = f.cmd(command)
            self.assertNotEqual(r.returncode, 0, f"{command} passed: {r.stdout}{r.stderr}")
            for part in (f"database {f.url}", "127.0.0.1", reason):
                self.assertIn(part, r.stderr, f"{command}: {r.stderr}\nlog:\n{f.log()}")
        # the refused daemon may still be tearing down when start returns
        wait_until(lambda: feed_procs(f.conf) == [], 20, what="the refused feed to exit")
        return r

    def serve_one(self, f, ticket):
        f.start_ok()
        self.assertEqual(f.req(f"{ticket},7,1.5"), "TRUE")

    def stop(self, f):
        r = f.stop()
        self.assertEqual(r.returncode, 0, r.stderr)


class TestPostgresTls(TlsCase):
    server = "postgresql"

    def url(self, app, **params):
        # application_name tells this feed's backends from any other's
        return with_params(os.environ["FEED_TEST_URL"], application_name=app, **params)

    def sessions(self, app):
        """(ssl, version) of every backend of the feed named app."""
        return server_sql("SELECT s.ssl, coalesce(s.version, '') FROM pg_stat_activity a "
                          "JOIN pg_stat_ssl s USING (pid) "
                          f"WHERE a.application_name = '{app}' AND a.pid <> pg_backend_pid();")

    def test_verify_full_connects_over_tls(self):
        f = self.tls_feed(self.url("feed-tls", sslmode="verify-full", sslrootcert=self.ca))
        r = f.cmd("check")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.serve_one(f, 8_000_001)
        rows = wait_until(lambda: self.sessions("feed-tls"), 20, what="feed's sessions")
        self.assertTrue(all(ssl == "t" and v.startswith("TLS") for ssl, v in rows), rows)

        # The same question about a feed told not to use TLS says so: the
        # assertion above is one that can fail.
        plain = self.tls_feed(self.url("feed-plain", sslmode="disable"))
        self.serve_one(plain, 8_000_002)
        rows = wait_until(lambda: self.sessions("feed-plain"), 20, what="the plain feed's sessions")
        self.assertFalse(any(ssl == "t" for ssl, _ in rows), rows)
        self.assertEqual(server_sql("SELECT count(*) FROM fee WHERE ticket IN (8000001, 8000002);"),
                         [["2"]])

    def test_wrong_ca_fails_check_and_start(self):
        f = self.tls_feed(self.url("feed-wrongca", sslmode="verify-full", sslrootcert=self.wrong_ca))
        # libpq's words for OpenSSL's verdict
        self.assert_refused(f, "certificate verify failed")
        self.assertEqual(self.sessions("feed-wrongca"), [])

    def test_wrong_host_name_fails_verify_full(self):
        mkcert("server", self.tls, "otherhost", "ca", "DNS:db.invalid")
        shutil.chown(os.path.join(self.tls, "otherhost.key"), "postgres", "postgres")
        old = dict(server_sql("SELECT name, setting FROM pg_settings "
                              "WHERE name IN ('ssl_cert_file', 'ssl_key_file');"))
        self.switch_cert(os.path.join(self.tls, "otherhost.crt"),
                         os.path.join(self.tls, "otherhost.key"))
        try:
            # the chain is the right one: verify-ca (no name check) connects
            ok = self.tls_feed(self.url("feed-ca", sslmode="verify-ca", sslrootcert=self.ca))
            r = ok.cmd("check")
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            f = self.tls_feed(self.url("feed-name", sslmode="verify-full", sslrootcert=self.ca))
            r = self.assert_refused(f, 'server certificate for "db.invalid"')
            self.assertIn('does not match host name "127.0.0.1"', r.stderr)
        finally:
            self.switch_cert(old["ssl_cert_file"], old["ssl_key_file"])

    def switch_cert(self, crt, key):
        server_sql(f"ALTER SYSTEM SET ssl_cert_file = '{crt}';\n"
                   f"ALTER SYSTEM SET ssl_key_file = '{key}';\nSELECT pg_reload_conf();")
        # a new session forks from the postmaster once it has reloaded
        wait_until(lambda: server_sql("SHOW ssl_cert_file;") == [[crt]], 20,
                   what=f"the server to load {crt}")


class TestMariadbTls(TlsCase):
    server = "mysql"

    def sessions(self):
        """Ssl_cipher of every session of the user feed ('' = plain)."""
        return server_sql("SELECT t.THREAD_ID, coalesce(s.VARIABLE_VALUE, '') "
                          "FROM performance_schema.threads t "
                          "LEFT JOIN performance_schema.status_by_thread s "
                          "ON s.THREAD_ID = t.THREAD_ID AND s.VARIABLE_NAME = 'Ssl_cipher' "
                          "WHERE t.PROCESSLIST_USER = 'feed';")

    def no_sessions(self):
        wait_until(lambda: self.sessions() == [], 20, what="feed's sessions to end")

    def url(self, **params):
        return with_params(os.environ["FEED_TEST_URL"], **params)

    def test_verify_identity_connects_over_tls(self):
        self.no_sessions()
        f = self.tls_feed(self.url(**{"ssl-mode": "VERIFY_IDENTITY", "ssl-ca": self.ca}))
        r = f.cmd("check")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.serve_one(f, 9_000_001)
        rows = wait_until(self.sessions, 20, what="feed's sessions")
        self.assertTrue(all(cipher for _, cipher in rows), rows)
        self.stop(f)

        # The same question about a feed told not to use TLS says so: the
        # assertion above is one that can fail.
        self.no_sessions()
        plain = self.tls_feed(self.url(**{"ssl-mode": "DISABLED"}))
        self.serve_one(plain, 9_000_002)
        rows = wait_until(self.sessions, 20, what="the plain feed's sessions")
        self.assertFalse(any(cipher for _, cipher in rows), rows)
        self.assertEqual(server_sql("SELECT count(*) FROM fee WHERE ticket IN (9000001, 9000002);"),
                         [["2"]])

    def test_wrong_ca_fails_check_and_start(self):
        # OpenSSL's reason as Connector/C passes it on: the server sends
        # its chain up to a root that ssl-ca does not hold
        for mode in ("VERIFY_IDENTITY", "VERIFY_CA"):
            f = self.tls_feed(self.url(**{"ssl-mode": mode, "ssl-ca": self.wrong_ca}))
            r = self.assert_refused(f, "TLS/SSL error: self-signed certificate in certificate chain")
            self.assertIn("connect to MySQL server 127.0.0.1", r.stderr)

    def test_wrong_host_name_fails_verify_identity(self):
        mkcert("server", self.tls, "otherhost", "ca", "DNS:db.invalid")
        saved = {}
        for ext in ("crt", "key"):
            path = os.path.join(self.tls, f"server.{ext}")
            with open(path, "rb") as fh:
                saved[path] = fh.read()
        other = {}
        for ext in ("crt", "key"):
            with open(os.path.join(self.tls, f"otherhost.{ext}"), "rb") as fh:
                other[os.path.join(self.tls, f"server.{ext}")] = fh.read()
        # FLUSH SSL re-reads the files the server was started with
        self.replace_cert(other)
        try:
            for mode in ("VERIFY_IDENTITY", "VERIFY_CA"):   # Connector/C checks the name in both
                f = self.tls_feed(self.url(**{"ssl-mode": mode, "ssl-ca": self.ca}))
                self.assert_refused(f, "Validation of SSL server certificate failed (the server's "
                                       "certificate does not name the host 127.0.0.1")
        finally:
            self.replace_cert(saved)
        # and back: the right name connects again
        f = self.tls_feed(self.url(**{"ssl-mode": "VERIFY_IDENTITY", "ssl-ca": self.ca}))
        r = f.cmd("check")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def replace_cert(self, files):
        for path, data in files.items():
            with open(path, "wb") as fh:
                fh.write(data)
            shutil.chown(path, "mysql", "mysql")
        server_sql("FLUSH SSL;")


def load_tests(loader, tests, pattern):
    """Only the class of the server the wrapper started (see load_tests protocol)."""
    for cls in (TestPostgresTls, TestMariadbTls):
        if cls.server == backend():
            return loader.loadTestsFromTestCase(cls)
    raise AssertionError(f"backend {backend()!r}: run under FEED_TEST_TLS=1 "
                         "tests/lib/with-postgres.sh or with-mariadb.sh")


if __name__ == "__main__":
    unittest.main()
