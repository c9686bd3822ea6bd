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
from feedtest import FEED, IS_ROOT, RUN_USER, FeedTestCase, feed_procs, wait_until  # noqa: E402

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
        """The valid base configuration, less the keys extra sets (a key may appear once), followed
        by extra (str or bytes); returns the line number of extra's first line."""
        raw = extra if isinstance(extra, bytes) else extra.encode()
        given = set(re.findall(rb"(?m)^[ \t]*(\w+)[ \t]*[=:]", raw))
        base = "".join(f"[{sec}]\n" + "".join(f"{k} = {v}\n" for k, v in kv.items()
                                               if v is not None and k.encode() not in given)
                       for sec, kv in self.f.sections.items())
        with open(self.f.conf, "wb") as c:
            c.write(base.encode() + raw)
        return base.count("\n") + 1

    def run_raw(self, *args, conf=None):
        """check with the raw bytes of stderr (what reaches the terminal): (exit code, stderr)."""
        r = subprocess.run([FEED, "-c", conf or self.f.conf, *args, "check"], capture_output=True,
                           timeout=30, stdin=subprocess.DEVNULL)
        return r.returncode, r.stderr

    def assert_no_raw_control(self, err):
        """Nothing but printable ASCII and newlines reaches the terminal."""
        bad = [b for b in err if b != 0x0A and not 0x20 <= b < 0x7F]
        self.assertEqual(bad, [], f"raw control or non-ASCII bytes in the message: {err!r}")

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
        # reported once, on the line of its header, with the known sections
        line = self.write("[bogus]\nkey = 1\nother = 2\n")
        self.assert_config_error(patterns=[re.escape(
            f"{self.f.conf}:{line}: unknown section [bogus] (known: daemon, listen, database, fee, metrics, send)")], count=1)

    def test_unknown_empty_section(self):
        for extra, shown in (("[bogus]\n", "[bogus]"), ("[bogus]\n[daemon]\nlog_level = info\n", "[bogus]"),
                             ("[]\n", "[]"), ("[Daemon]\n", "[Daemon]"),
                             ("[" + "d" * 150 + "]\n", "[" + "d" * 150 + "]")):
            with self.subTest(extra=extra):
                line = self.write(extra)
                self.assert_config_error(patterns=[re.escape(
                    f"{self.f.conf}:{line}: unknown section {shown} (known: daemon, listen, database, fee, metrics, send)")],
                    count=1)

    def test_unknown_key_lists_the_accepted_keys(self):
        line = self.write("[daemon]\nbatch_max = 5\n")
        err = self.assert_config_error(
            patterns=[re.escape(f"{self.f.conf}:{line + 1}: [daemon] batch_max: unknown key")], count=1)
        accepted = [k for s, k in example_keys() if s == "daemon"]
        msg = next(ln for ln in err.splitlines() if "unknown key" in ln)
        for k in accepted:
            self.assertRegex(msg, rf"\b{k}\b", f"accepted key {k} not listed")
        self.assertIn("batch_max is a key of [database]", msg, "the section the key belongs to is not named")

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
        # value errors, syntax errors and unknown names, each with its line, in the order of the file
        # (the keys under a broken or unknown section header are not checked: that header is the error)
        line = self.write("[database]\nbatch_max = abc\nwriters = 1\nthis is not ini\n[listen]\nhwm = 1\n= 5\n"
                          "[daemon\nfoo = bar\n[daemon]\nfoo = bar\n[fee] junk\nsettle_batch = x\n"
                          "[bogus]\nsettle_batch = x\n")
        expected = [(1, "[database] batch_max:"), (3, "syntax error"), (5, "[listen] hwm:"), (6, "syntax error"),
                    (7, "syntax error"), (10, "[daemon] foo:"), (11, "syntax error"), (13, "unknown section [bogus]")]
        err = self.assert_config_error(
            patterns=[re.escape(f"{self.f.conf}:{line + n}: {what}") for n, what in expected], count=len(expected))
        self.assertNotIn(f"{self.f.conf}:{line + 2}:", err, "a good line was reported")
        reported = [int(m) for m in re.findall(rf"(?m)^{re.escape(self.f.conf)}:(\d+): ", err)]
        self.assertEqual(reported, [line + n for n, _ in expected], "not one error per bad line, in file order")
        # every line but the summary names FILE:LINE
        for ln in err.splitlines():
            if not ln.startswith("feed: "):
                self.assertRegex(ln, "^" + re.escape(self.f.conf) + r":\d+: ", "error without FILE:LINE")

    def test_syntax_errors_name_their_line(self):
        cases = ["[daemon", "[daemon] log_level = loud", "[daemon] # comment", "log_level", "= debug",
                 "  = debug", "log_level ; = debug"]
        for text in cases:
            with self.subTest(text=text):
                line = self.write(f"[daemon]\n{text}\n")
                err = self.assert_config_error(patterns=[re.escape(f"{self.f.conf}:{line + 1}: syntax error")],
                                               count=1)
                self.assertNotIn("log_level:", err)
        # keys after a broken section header do not land in the section before it
        line = self.write("[listen]\n[database\nbatch_max = 5\n")
        err = self.assert_config_error(patterns=[re.escape(f"{self.f.conf}:{line + 1}: syntax error")], count=1)
        self.assertNotIn("unknown key", err)
        # a header followed by a ; comment is fine
        self.write("[daemon] ; the daemon\nlog_level = info\n")
        r = feed_cmd("-c", self.f.conf, "check")
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_indented_line_is_not_a_continuation(self):
        # an indented key is a key of its own, not more value of the key above it
        line = self.write("[daemon]\nlog_level = info\n  umask = 0\n")
        err = self.assert_config_error(patterns=[re.escape(
            f'{self.f.conf}:{line + 2}: [daemon] umask: must be an octal number 001..777, got "0"')], count=1)
        self.assertNotIn("log_level", err)
        # and an indented word is no silent second value of it
        line = self.write("[daemon]\nlog_level = info\n    debug\n")
        self.assert_config_error(patterns=[re.escape(f"{self.f.conf}:{line + 2}: syntax error")], count=1)
        self.write("[daemon]\n\tlog_level = info\n  umask = 077\n")
        r = feed_cmd("-c", self.f.conf, "check")
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_repeated_key(self):
        line = self.write("[daemon]\nlog_level = error\n[listen]\nhwm = 100\n[daemon]\nlog_level = debug\n")
        self.assert_config_error(patterns=[re.escape(
            f"{self.f.conf}:{line + 5}: [daemon] log_level: set again (first on line {line + 1})")], count=1)
        # the same section twice is fine
        self.write("[daemon]\nlog_level = error\n[listen]\nhwm = 100\n[daemon]\numask = 077\n")
        r = feed_cmd("-c", self.f.conf, "check")
        self.assertEqual(r.returncode, 0, r.stderr)

    # -- bytes that are not text ---------------------------------------------------------
    def test_nul_byte_cannot_hide_a_key_behind_the_line_limit(self):
        # fgets() reads 199 bytes of the padded comment, strlen() stops at the NUL and sees a short
        # line, so the rest of the physical line used to be parsed as a line of its own
        limit = 198
        pad = b"; \0" + b"x" * (limit + 1 - 3)
        for hidden in (b"log_level = loud", b"log_level = error"):
            with self.subTest(hidden=hidden):
                line = self.write(b"[daemon]\n" + pad + hidden + b"\n")
                err = self.assert_config_error(patterns=[re.escape(
                    f"{self.f.conf}:{line + 1}: control byte \\x00 in column 3")], count=1)
                self.assertNotIn("log_level", err, "the text after the NUL byte was parsed")
                self.assertNotIn(f"{self.f.conf}:{line + 2}:", err, "a line beyond the end of the file")

    def test_control_bytes_refused(self):
        for byte, col_text in ((b"\0", b"log_level = info\0 junk"), (b"\x1b", b"log_level = \x1b[31minfo"),
                               (b"\x01", b"; \x01 comment"), (b"\x7f", b"log_level = in\x7ffo"),
                               (b"\x0c", b"\x0c"), (b"\x0b", b"log_level = info\x0b"),
                               (b"\r", b"log_level = in\rfo")):
            with self.subTest(byte=byte):
                line = self.write(b"[daemon]\n" + col_text + b"\n")
                col = col_text.index(byte) + 1
                rc, err = self.run_raw()
                self.assertEqual(rc, EXIT_CONFIG, err)
                self.assertIn(f"{self.f.conf}:{line + 1}: control byte \\x{byte[0]:02x} in column {col}".encode(),
                              err)
                self.assertIn(b"1 configuration error;", err)
                self.assert_no_raw_control(err)
        # tab, CRLF line ends and UTF-8 in comments are text
        self.write(b"[daemon]\r\n\tlog_level\t=\tinfo\r\n; caf\xc3\xa9\r\numask = 077\r\n")
        rc, err = self.run_raw()
        self.assertEqual(rc, 0, err)

    def test_messages_escape_control_and_non_ascii_bytes(self):
        # from the file: bytes >= 0x80 (here a UTF-8 C1 CSI) in a value, a key and a section name
        line = self.write(b"[daemon]\nlog_level = \xc2\x9b31mred\nfo\xc2\x9bo = 1\n[b\xc2\x9bgus]\n")
        rc, err = self.run_raw()
        self.assertEqual(rc, EXIT_CONFIG, err)
        self.assertIn(f'{self.f.conf}:{line + 1}: [daemon] log_level: must be one of error, warning, info, debug, '
                      f'got "\\xc2\\x9b31mred"'.encode(), err)
        self.assertIn(f"{self.f.conf}:{line + 2}: [daemon] fo\\xc2\\x9bo: unknown key".encode(), err)
        self.assertIn(f"{self.f.conf}:{line + 3}: unknown section [b\\xc2\\x9bgus]".encode(), err)
        self.assert_no_raw_control(err)
        # from the command line: ESC, BEL and a quote in option values
        for args in (("-p", "run/\x1b]0;owned\x07"), ("-l", "\x1b[2Jx"), ("-d", "ftp://u:pw@h/\x1b[31m"),
                     ("-p", 'a"b\\c')):
            with self.subTest(args=args):
                self.write("")
                rc, err = self.run_raw(*args)
                self.assertEqual(rc, EXIT_CONFIG, err)
                self.assertIn(args[0].encode(), err)
                self.assert_no_raw_control(err)
                self.assertNotIn(b"pw", err)
                if "\x1b" in args[1]:
                    self.assertIn(b"\\x1b", err)
        rc, err = self.run_raw("-p", 'a"b\\c')
        self.assertIn(b'got "a\\"b\\\\c"', err, "a quote or backslash in the value is not escaped")
        # the path of the file itself
        d = os.path.join(self.f.dir, "conf\x1b[31m")
        os.mkdir(d)
        path = os.path.join(d, "feed.conf")
        with open(path, "w") as c:
            c.write(self.base + "[daemon]\numask = 0\n")
        for conf in (path, path + ".missing"):
            rc, err = self.run_raw(conf=conf)
            self.assertEqual(rc, EXIT_CONFIG, err)
            self.assertIn(b"conf\\x1b[31m", err)
            self.assert_no_raw_control(err)

    def test_long_command_line_value_is_shortened_visibly(self):
        rc, err = self.run_raw("-p", "r" * 5000)
        self.assertEqual(rc, EXIT_CONFIG, err)
        msg = next(ln for ln in err.splitlines() if b"--pidfile" in ln)
        self.assertRegex(msg, rb'got "r+"\.\.\. \(5000 bytes\)')
        self.assertLess(len(msg), 1200, "the whole value was echoed")

    def test_password_file_symlink_is_not_followed(self):
        # read as root: a link planted where the password file should be must not
        # hand another file's first line to the database server as a password
        secret = os.path.join(self.f.dir, "not-the-password")
        with open(secret, "w") as fh:
            fh.write("root:$6$hash:19000:0:99999:7:::\n")
        path = os.path.join(self.f.dir, "db.password")
        os.symlink(secret, path)
        self.write(f"[database]\npassword_file = {path}\n")
        r = feed_cmd("-c", self.f.conf, "check")
        self.assertEqual(r.returncode, EXIT_CONFIG, r.stdout + r.stderr)
        self.assertIn(f"[database] password_file: cannot read {path}: it is a symbolic link", r.stderr)

    def test_password_file_that_would_give_a_wrong_password(self):
        # the password is the first line: a line cut at the buffer, cut at a NUL byte, or a
        # file that cannot be read would silently give another password than the file holds
        path = os.path.join(self.f.dir, "db.password")
        for content, why in ((b"p" * 2000 + b"\n", "first line longer than 1023 bytes"),
                             (b"secret\0more\n", "a NUL byte"), (None, "Is a directory")):
            with self.subTest(why=why):
                if os.path.isdir(path):
                    os.rmdir(path)
                elif os.path.exists(path):
                    os.remove(path)
                if content is None:
                    os.mkdir(path)
                else:
                    with open(path, "wb") as pw:
                        pw.write(content)
                self.write(f"[database]\npassword_file = {path}\n")
                r = feed_cmd("-c", self.f.conf, "check")
                self.assertEqual(r.returncode, EXIT_CONFIG, r.stdout + r.stderr)
                self.assertIn(f"[database] password_file: {path}:", r.stderr)
                self.assertIn(why, r.stderr)
                self.assertNotIn("secret", r.stderr)
        os.rmdir(path)
        for content in (b"p" * 1023 + b"\n", b"secret\r\n", b"secret", b""):
            with open(path, "wb") as pw:
                pw.write(content)
            r = feed_cmd("-c", self.f.conf, "check")
            self.assertEqual(r.returncode, 0, f"{content[:20]!r}: {r.stderr}")

    # -- what is not a configuration file -----------------------------------------------------
    def test_directory_is_not_a_configuration_file(self):
        r = feed_cmd("-c", self.f.dir, "-d", self.f.url, "-p", self.f.pidfile, "check")
        self.assertEqual(r.returncode, EXIT_CONFIG, r.stdout + r.stderr)
        self.assertIn(f"{self.f.dir}: cannot read configuration file: Is a directory", r.stderr)
        self.assertNotIn("configuration OK", r.stdout)

    def test_endless_or_huge_file_is_refused(self):
        # a character device that never ends: refused after the size limit, not read forever
        r = feed_cmd("-c", "/dev/zero", "check", timeout=60)
        self.assertEqual(r.returncode, EXIT_CONFIG, r.stderr)
        self.assertIn("/dev/zero:1: control byte \\x00 in column 1", r.stderr)
        self.assertIn("/dev/zero:1: file larger than 1048576 bytes", r.stderr)
        # many lines of comments beyond 1 MiB, then a key
        line = self.write("; a comment of some length to fill the file up\n" * 30000 + "[daemon]\nlog_level = info\n")
        big = os.path.getsize(self.f.conf)
        self.assertGreater(big, 1 << 20)
        err = self.assert_config_error(patterns=[r"feed\.conf:\d+: file larger than 1048576 bytes"], count=1)
        n = int(re.search(r"feed\.conf:(\d+): file larger", err).group(1))
        self.assertTrue(line < n <= line + 30000, n)

    def test_error_count_is_bounded(self):
        line = self.write("[daemon]\n" + "log_levl = x\n" * 500)
        err = self.assert_config_error(count=100)
        self.assertEqual(len(re.findall(r"unknown key", err)), 100)
        self.assertIn(f"{self.f.conf}:{line + 100}: too many errors (100); the rest of the file is not read", err)

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
        # as root, check (like start) wants a user to run as: the default has none
        user = ["-u", RUN_USER] if IS_ROOT else []
        r = feed_cmd("-c", self.f.conf, "-d", self.f.url, "-p", self.f.pidfile, *user, "check")
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
