"""test_config - configuration errors and the command line, end to end.

Every class of configuration error must give its documented message with
FILE:LINE (or the option it came from), exit 6, report all errors of the file
in one run, and start nothing (no pidfile, no process). Usage errors exit 2.
`feed example-config` is the committed feed.conf.example, byte for byte, and
every key in it is documented in docs/configuration.md.
"""
import os
import re
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from feedtest import FEED, FeedTestCase, feed_procs, wait_until  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
EXIT_USAGE = 2
EXIT_CONFIG = 6


def feed_cmd(*args, timeout=60):
    return subprocess.run([FEED, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def example_keys():
    """[(section, key)] in the order `feed example-config` lists them."""
    r = feed_cmd("example-config")
    assert r.returncode == 0, r.stderr
    keys, section = [], None
    for line in r.stdout.splitlines():
        m = re.fullmatch(r"\[(\w+)\]", line)
        if m:
            section = m.group(1)
            continue
        m = re.fullmatch(r";(\w+) = .*", line)
        if m:
            keys.append((section, m.group(1)))
    assert keys, "example-config lists no keys"
    return keys


class ConfigTest(FeedTestCase):

    def setUp(self):
        super().setUp()
        self.f = self.feed()
        with open(self.f.conf) as c:
            self.base = c.read()   # a valid configuration
        self.base_lines = self.base.count("\n")

    def write(self, extra):
        """The valid base configuration followed by extra; returns the line number of extra's first line."""
        self.f.write_conf(self.base + extra)
        return self.base_lines + 1

    def assert_config_error(self, *args, patterns=(), count=None):
        """start and check must both exit 6 with every pattern on stderr, starting nothing."""
        f = self.f
        for command in ("start", "check"):
            r = feed_cmd("-c", f.conf, *args, command, timeout=30)
            self.assertEqual(r.returncode, EXIT_CONFIG, f"{command}: {r.stdout}{r.stderr}")
            for p in patterns:
                self.assertRegex(r.stderr, p, f"{command}: message not as documented")
            if count is not None:
                self.assertIn(f"{count} configuration error{'s' if count > 1 else ''}; nothing started", r.stderr)
            self.assertNotIn("configuration OK", r.stdout)
        self.assertFalse(os.path.exists(f.pidfile), "a pidfile was created despite the configuration error")
        wait_until(lambda: not feed_procs(f.conf), 10, what="no feed process")
        return r.stderr

    # -- the file ------------------------------------------------------------------
    def test_missing_file_names_the_path(self):
        path = os.path.join(self.f.dir, "nonexistent", "feed.conf")
        for command in ("start", "check", "status", "stop"):
            r = feed_cmd("-c", path, command)
            self.assertEqual(r.returncode, EXIT_CONFIG, f"{command}: {r.stderr}")
            self.assertIn(path, r.stderr)
            self.assertIn("No such file or directory", r.stderr)
        self.assertFalse(os.path.exists(self.f.pidfile))

    def test_good_config_check_ok(self):
        r = feed_cmd("-c", self.f.conf, "check")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("configuration OK", r.stdout)
        self.assertFalse(os.path.exists(self.f.pidfile), "check started something")

    def test_check_reports_a_database_that_cannot_be_opened(self):
        path = os.path.join(self.f.dir, "no", "such", "dir", "feed.db")
        r = feed_cmd("-c", self.f.conf, "-d", "sqlite://" + path, "check")
        self.assertNotEqual(r.returncode, 0)
        self.assertNotIn("configuration OK", r.stdout)
        self.assertIn(os.path.dirname(path), r.stderr)
        self.assertRegex(r.stderr, r"(?i)no such file|unable to open|cannot|not writable")
        self.assertFalse(os.path.exists(os.path.dirname(path)), "check created directories")

    def test_unknown_section(self):
        line = self.write("[bogus]\nkey = 1\n")
        self.assert_config_error(patterns=[re.escape(f"{self.f.conf}:{line + 1}: unknown section [bogus]")],
                                 count=1)

    def test_unknown_key_lists_the_accepted_keys(self):
        line = self.write("[daemon]\nbatch_max = 5\n")
        err = self.assert_config_error(
            patterns=[re.escape(f"{self.f.conf}:{line + 1}: [daemon] batch_max: unknown key")], count=1)
        accepted = [k for s, k in example_keys() if s == "daemon"]
        msg = next(ln for ln in err.splitlines() if "unknown key" in ln)
        for k in accepted:
            self.assertRegex(msg, rf"\b{k}\b", f"accepted key {k} not listed")

    def test_key_outside_any_section(self):
        self.f.write_conf("batch_max = 5\n" + self.base)
        self.assert_config_error(patterns=[re.escape(f"{self.f.conf}:1: "), "outside of any section"])

    def test_bad_integer(self):
        for v in ("abc", "12abc", "1.5", "", "99999999999999999999"):
            with self.subTest(value=v):
                line = self.write(f"[database]\nbatch_max = {v}\n")
                self.assert_config_error(patterns=[re.escape(
                    f'{self.f.conf}:{line + 1}: [database] batch_max: must be an integer 1..1000000, got "{v}"')],
                    count=1)

    def test_integer_out_of_bounds(self):
        for v in ("0", "1000001", "-5"):
            with self.subTest(value=v):
                line = self.write(f"[database]\nbatch_max = {v}\n")
                self.assert_config_error(patterns=[re.escape(
                    f'{self.f.conf}:{line + 1}: [database] batch_max: must be an integer 1..1000000, got "{v}"')],
                    count=1)
        # both bounds are accepted
        for v in ("1", "1000000"):
            self.write(f"[database]\nbatch_max = {v}\n")
            r = feed_cmd("-c", self.f.conf, "check")
            self.assertEqual(r.returncode, 0, f"batch_max = {v}: {r.stderr}")

    def test_bad_enum_lists_choices(self):
        line = self.write("[database]\ndurability = maybe\n")
        self.assert_config_error(patterns=[re.escape(
            f'{self.f.conf}:{line + 1}: [database] durability: must be one of full, normal, got "maybe"')])
        line = self.write("[daemon]\nlog_level = verbose\n")
        self.assert_config_error(patterns=[re.escape(f"{self.f.conf}:{line + 1}: [daemon] log_level:"),
                                           r"error, warning, info, debug", '"verbose"'])

    def test_bad_decimal_default_rate(self):
        for v in ("1.5.5", "-1", "1e3", "abc", "0.123456789", "1,5", "99999999999999999999"):
            with self.subTest(value=v):
                line = self.write(f"[fee]\ndefault_rate = {v}\n")
                self.assert_config_error(patterns=[
                    re.escape(f"{self.f.conf}:{line + 1}: [fee] default_rate: must be a decimal"),
                    re.escape(f'got "{v}"')], count=1)
        for v in ("0", "0.00000001", "12.5"):
            self.write(f"[fee]\ndefault_rate = {v}\n")
            r = feed_cmd("-c", self.f.conf, "check")
            self.assertEqual(r.returncode, 0, f"default_rate = {v}: {r.stderr}")

    def test_umask_zero_refused(self):
        for v in ("0", "000", "888", "1000"):
            with self.subTest(value=v):
                line = self.write(f"[daemon]\numask = {v}\n")
                self.assert_config_error(patterns=[
                    re.escape(f'{self.f.conf}:{line + 1}: [daemon] umask: must be an octal number 001..777, got "{v}"')])

    def test_relative_pidfile(self):
        line = self.write("[daemon]\npidfile = run/feed.pid\n")
        self.assert_config_error(patterns=[re.escape(f"{self.f.conf}:{line + 1}: [daemon] pidfile:"),
                                           "absolute path", '"run/feed.pid"'], count=1)
        self.assertFalse(os.path.exists("/run/feed.pid"))

    def test_bad_log_destination(self):
        line = self.write("[daemon]\nlog = feed.log\n")
        self.assert_config_error(patterns=[re.escape(f"{self.f.conf}:{line + 1}: [daemon] log:"),
                                           "stderr, syslog", '"feed.log"'], count=1)

    def test_unsupported_database_scheme(self):
        line = self.write("[database]\nurl = ftp://user:hunter2@db.example/feed\n")
        err = self.assert_config_error(patterns=[
            re.escape(f"{self.f.conf}:{line + 1}: [database] url:"), "unsupported scheme", "sqlite", "postgresql",
            "mysql"], count=1)
        self.assertNotIn("hunter2", err, "the password of the URL was printed")

    def test_syntax_error_names_the_line(self):
        line = self.write("[daemon]\nthis line is not ini\n")
        self.assert_config_error(patterns=[re.escape(f"{self.f.conf}:{line + 1}: syntax error")], count=1)

    def test_line_longer_than_the_limit(self):
        line = self.write("; " + "x" * 5000 + "\n")
        err = self.assert_config_error(patterns=[re.escape(f"{self.f.conf}:{line}: line longer than ")], count=1)
        limit = int(re.search(r"line longer than (\d+) characters", err).group(1))
        # exactly the limit is fine, one more is not (and the rest of the line is not parsed as keys)
        self.write(";" + "x" * (limit - 1) + "\n")
        r = feed_cmd("-c", self.f.conf, "check")
        self.assertEqual(r.returncode, 0, f"a line of {limit} characters was refused: {r.stderr}")
        line = self.write(";" + "x" * limit + "\n[daemon]\nlog_level = debug\n")
        self.assert_config_error(patterns=[re.escape(f"{self.f.conf}:{line}: line longer than {limit}")],
                                 count=1)
        line = self.write("[fee]\n;" + "x" * (limit + 10) + "\nsettle_batch = abc\n")
        self.assert_config_error(patterns=[
            re.escape(f"{self.f.conf}:{line + 1}: line longer than {limit}"),
            re.escape(f"{self.f.conf}:{line + 2}: [fee] settle_batch:")], count=2)

    def test_comments_and_documented_line_limit(self):
        self.write("# hash comment\n; semicolon comment\n[daemon]\n  # indented comment\nlog_level = info ; inline\n")
        r = feed_cmd("-c", self.f.conf, "check")
        self.assertEqual(r.returncode, 0, r.stderr)
        line = self.write("[daemon]\nlog_level = loud\n")
        err = self.assert_config_error(patterns=[re.escape(f"{self.f.conf}:{line + 1}:")])
        self.assertNotIn("; inline", err)
        # the limit the documentation states is the limit feed enforces
        line = self.write("; " + "x" * 5000 + "\n")
        err = self.assert_config_error(count=1)
        limit = int(re.search(r"line longer than (\d+) characters", err).group(1))
        path = os.path.join(REPO, "docs", "configuration.md")
        self.assertTrue(os.path.exists(path), f"{path} is missing")
        with open(path) as f:
            m = re.search(r"[Ll]ines are limited to (\d+) characters", f.read())
        self.assertIsNotNone(m, "docs/configuration.md does not state the line limit")
        self.assertEqual(int(m.group(1)), limit, "docs/configuration.md states another line limit than feed's")

    def test_all_errors_reported_in_one_run_with_file_and_line(self):
        line = self.write("[database]\nbatch_max = abc\nwriters = 1\n[listen]\nhwm = 1\n[daemon]\nfoo = bar\n")
        err = self.assert_config_error(patterns=[
            re.escape(f"{self.f.conf}:{line + 1}: [database] batch_max:"),
            re.escape(f"{self.f.conf}:{line + 4}: [listen] hwm:"),
            re.escape(f"{self.f.conf}:{line + 6}: [daemon] foo:")], count=3)
        self.assertNotIn(f"{self.f.conf}:{line + 2}:", err, "a good line was reported")
        # every line but the summary names FILE:LINE
        for ln in err.splitlines():
            if not ln.startswith("feed: "):
                self.assertRegex(ln, "^" + re.escape(self.f.conf) + r":\d+: ", "error without FILE:LINE")

    def test_cross_key_error(self):
        self.write("[listen]\nmax_message_bytes = 1048576\nqueue_bytes = 1048576\n")
        self.assert_config_error(patterns=["queue_bytes", "max_message_bytes"], count=1)

    def test_command_line_override_errors_name_the_option(self):
        cases = [
            (("-e", ""), "--endpoint"),
            (("--endpoint", " , "), "--endpoint"),
            (("-d", "ftp://db.example/feed"), "--database"),
            (("-p", "relative.pid"), "--pidfile"),
            (("-l", "relative.log"), "--log"),
        ]
        for args, opt in cases:
            with self.subTest(args=args):
                err = self.assert_config_error(*args, patterns=[re.escape(opt) + r": \["], count=1)
                self.assertNotIn(f"{self.f.conf}:", err, "the file was blamed for a command-line value")
        # and good overrides are applied: check opens the database named by -d
        other = os.path.join(self.f.dir, "other.db")
        r = feed_cmd("-c", self.f.conf, "-d", "sqlite://" + other, "check")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("configuration OK", r.stdout)

    # -- usage ---------------------------------------------------------------------
    def test_unknown_command_is_usage_error(self):
        r = feed_cmd("-c", self.f.conf, "frobnicate")
        self.assertEqual(r.returncode, EXIT_USAGE)
        self.assertIn('unknown command "frobnicate"', r.stderr)
        self.assertIn("usage: feed", r.stderr)
        self.assertEqual(r.stdout, "")
        r = feed_cmd()
        self.assertEqual(r.returncode, EXIT_USAGE)
        self.assertIn("usage: feed", r.stderr)

    def test_bad_stop_timeout_is_usage_error(self):
        for v in ("abc", "0", "-1", "10s", ""):
            with self.subTest(value=v):
                r = feed_cmd("-c", self.f.conf, "stop", "--timeout", v)
                self.assertEqual(r.returncode, EXIT_USAGE, r.stdout + r.stderr)
                self.assertIn("--timeout", r.stderr)
                self.assertNotIn("not running", r.stdout, "stop ran despite the usage error")
        r = feed_cmd("-c", self.f.conf, "status", "--timeout", "5")
        self.assertEqual(r.returncode, EXIT_USAGE, "--timeout accepted by status")
        r = feed_cmd("-c", self.f.conf, "status", "extra")
        self.assertEqual(r.returncode, EXIT_USAGE, "a stray argument was accepted")
        r = feed_cmd("-c", self.f.conf, "--no-such-option", "status")
        self.assertEqual(r.returncode, EXIT_USAGE)

    def test_help(self):
        r = feed_cmd("help", "stop")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("stop", r.stdout)
        self.assertIn("--timeout", r.stdout)
        r = feed_cmd("-h")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("usage: feed", r.stdout)
        for c in ("start", "run", "stop", "restart", "status", "check", "migrate", "send", "example-config"):
            self.assertRegex(r.stdout, rf"\n  {re.escape(c)} ", f"-h does not list {c}")
        r = feed_cmd("help")
        self.assertEqual(r.returncode, 0)
        self.assertIn("usage: feed", r.stdout)
        r = feed_cmd("help", "nonsense")
        self.assertEqual(r.returncode, EXIT_USAGE)
        r = feed_cmd("-c", "/nonexistent/feed.conf", "stop", "-h")
        self.assertEqual(r.returncode, 0, "help for a command needs no configuration")
        self.assertIn("--timeout", r.stdout)

    # -- example-config and the documentation ----------------------------------------
    def test_example_config_is_the_committed_file(self):
        r = subprocess.run([FEED, "example-config"], capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        self.assertEqual(r.returncode, 0)
        path = os.path.join(REPO, "feed.conf.example")
        self.assertTrue(os.path.exists(path), f"{path} is missing")
        with open(path, "rb") as f:
            committed = f.read()
        self.assertEqual(r.stdout, committed,
                         "feed.conf.example differs from `feed example-config`; regenerate it")

    def test_example_config_uncommented_is_valid(self):
        # every default passes its own bounds: uncomment every key and check
        r = feed_cmd("example-config")
        text = re.sub(r"(?m)^;(\w+ = )", r"\1", r.stdout)
        self.f.write_conf(text)
        r = feed_cmd("-c", self.f.conf, "-d", self.f.url, "-p", self.f.pidfile, "check")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("configuration OK", r.stdout)

    def test_every_key_is_documented(self):
        path = os.path.join(REPO, "docs", "configuration.md")
        self.assertTrue(os.path.exists(path), f"{path} is missing: every key must be documented there")
        with open(path) as f:
            doc = f.read()
        missing = [f"[{s}] {k}" for s, k in example_keys() if not re.search(rf"\b{re.escape(k)}\b", doc)]
        self.assertEqual(missing, [], "keys not documented in docs/configuration.md")
        for s in sorted({s for s, _ in example_keys()}):
            self.assertIn(f"[{s}]", doc, f"section [{s}] not documented")


if __name__ == "__main__":
    unittest.main()
