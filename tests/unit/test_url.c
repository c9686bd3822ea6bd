/*
 * test_url.c - unit tests of src/url.c: parsing database URLs into their
 * decoded parts (several hosts, IPv6 literals, parameters), malformed URLs
 * refused with a message naming the byte and the reason and never the
 * password, redaction and scrubbing. Table-driven: a failing row is named by its input.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "url.h"

/* ==== Well-formed URLs ==== */

struct ok_case {
	const char *in;
	const char *scheme, *user, *password;
	const char *hosts;            /* "name:port,name:port" (port 0 if none) */
	const char *database;
	const char *params;           /* "key=value&key=value", decoded */
};

static const struct ok_case ok_cases[] = {
	{ "mysql://h/db", "mysql", NULL, NULL, "h:0", "db", "" },
	{ "mysql://u:p@h:3306/db", "mysql", "u", "p", "h:3306", "db", "" },
	{ "postgresql://u@h/db", "postgresql", "u", NULL, "h:0", "db", "" },
	{ "mysql://:p@h/db", "mysql", NULL, "p", "h:0", "db", "" },
	{ "mysql://u:@h/db", "mysql", "u", "", "h:0", "db", "" },
	{ "mysql://u%40x:p%3A%2F%3F%23%40w@h/d%20b", "mysql", "u@x", "p:/?#@w", "h:0", "d b", "" },
	/* the userinfo ends at the last '@' of the authority */
	{ "mysql://u:p@w@h/db", "mysql", "u", "p@w", "h:0", "db", "" },
	{ "mysql://[::1]:3307/db", "mysql", NULL, NULL, "::1:3307", "db", "" },
	{ "mysql://[fe80::1%25eth0]/db", "mysql", NULL, NULL, "fe80::1%eth0:0", "db", "" },
	{ "postgresql://a:1,b,[::1]:3/db", "postgresql", NULL, NULL, "a:1,b:0,::1:3", "db", "" },
	{ "mysql:///db?socket=%2Frun%2Fm.sock", "mysql", NULL, NULL, "", "db",
	  "socket=/run/m.sock" },
	{ "mysql://h/db?a=1&&b=&c=x%3Dy&", "mysql", NULL, NULL, "h:0", "db", "a=1&b=&c=x=y" },
	{ "postgresql://h", "postgresql", NULL, NULL, "h:0", NULL, "" },
	{ "postgresql://h/", "postgresql", NULL, NULL, "h:0", "", "" },
	{ "postgresql://h?sslmode=require", "postgresql", NULL, NULL, "h:0", NULL,
	  "sslmode=require" },
	{ "sqlite:///var/lib/feed/f.db", "sqlite", NULL, NULL, "", "var/lib/feed/f.db", "" },
	{ "MySQL+x.y-z://h:65535/db", "MySQL+x.y-z", NULL, NULL, "h:65535", "db", "" },
};

static void expect_str(const char *in, const char *what, const char *want, const char *got)
{
	if ((want == NULL) != (got == NULL) || (want && strcmp(want, got)))
		fail_msg("%s: %s: want %s%s%s, got %s%s%s", in, what, want ? "\"" : "",
			 want ? want : "NULL", want ? "\"" : "", got ? "\"" : "",
			 got ? got : "NULL", got ? "\"" : "");
}

static void test_parse_ok(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(ok_cases) / sizeof(ok_cases[0]); i++) {
		const struct ok_case *c = &ok_cases[i];
		char err[256] = "", hosts[256] = "", params[256] = "";
		size_t hl = 0, pl = 0;
		struct url u;
		int r = url_parse(c->in, &u, err, sizeof(err));

		if (r != 0)
			fail_msg("%s: url_parse = %d: %s", c->in, r, err);
		expect_str(c->in, "scheme", c->scheme, u.scheme);
		expect_str(c->in, "user", c->user, u.user);
		expect_str(c->in, "password", c->password, u.password);
		expect_str(c->in, "database", c->database, u.database);
		for (size_t h = 0; h < u.nhosts; h++)
			hl += (size_t)snprintf(hosts + hl, sizeof(hosts) - hl, "%s%s:%u",
					       h ? "," : "", u.hosts[h].name, u.hosts[h].port);
		expect_str(c->in, "hosts", c->hosts, hosts);
		for (size_t k = 0; k < u.nparams; k++)
			pl += (size_t)snprintf(params + pl, sizeof(params) - pl, "%s%s=%s",
					       k ? "&" : "", u.params[k].key, u.params[k].value);
		expect_str(c->in, "params", c->params, params);
		url_free(&u);
		assert_null(u.scheme);
		url_free(&u);   /* twice is fine */
	}
}

static void test_param_lookup(void **state)
{
	struct url u;
	char err[256];

	(void)state;
	assert_int_equal(url_parse("mysql://h/db?a=1&b=2&a=3", &u, err, sizeof(err)), 0);
	assert_string_equal(url_param(&u, "a"), "3");   /* the last one wins */
	assert_string_equal(url_param(&u, "b"), "2");
	assert_null(url_param(&u, "c"));
	url_free(&u);
}

/* ==== Malformed URLs: what, where, why, and never the password ==== */

struct bad_case {
	const char *in;
	const char *where;            /* "byte N" */
	const char *why;              /* a piece of the reason */
};

static const struct bad_case bad_cases[] = {
	{ "h/db", "byte 1", "expected scheme://" },
	{ "mysql:/h/db", "byte 5", "expected scheme://" },
	{ "://h/db", "byte 0", "expected scheme://" },
	{ "1sql://h/db", "byte 0", "starting with a letter" },
	{ "my_sql://h/db", "byte 2", "a scheme holds" },
	{ "mysql://u:s%zzecret@h/db", "byte 11", "bad percent-escape in the password" },
	{ "mysql://u:secret%4@h/db", "byte 16", "bad percent-escape in the password" },
	{ "mysql://u:secret%00@h/db", "byte 16", "%00 (NUL) is not allowed" },
	{ "mysql://u%2:secret@h/db", "byte 9", "bad percent-escape in the user" },
	{ "mysql://h%g1/db", "byte 9", "bad percent-escape in the host" },
	{ "mysql://h/d%b", "byte 11", "bad percent-escape in the database name" },
	{ "mysql://h/db?a=%", "byte 15", "bad percent-escape in the parameter value" },
	{ "mysql://h/db?%=1", "byte 13", "bad percent-escape in the parameter name" },
	/* an unencoded '/' cuts the password: the port is not quoted */
	{ "mysql://u:se/cret@h/db", "byte 10", "port must be 1..65535" },
	{ "mysql://h:0/db", "byte 10", "port must be 1..65535" },
	{ "mysql://h:65536/db", "byte 10", "port must be 1..65535" },
	{ "mysql://h:/db", "byte 10", "port must be 1..65535" },
	{ "mysql://h:12a/db", "byte 10", "port must be 1..65535" },
	{ "mysql://h:0000003306/db", "byte 10", "port must be 1..65535" },
	{ "mysql://[::1/db", "byte 8", "has no ']'" },
	{ "mysql://[::1]x/db", "byte 13", "unexpected text after ']'" },
	{ "mysql://a,,b/db", "byte 10", "empty host" },
	{ "mysql://a,/db", "byte 10", "empty host" },
	{ "mysql://,a/db", "byte 8", "empty host" },
	{ "mysql://h/db#frag", "byte 12", "fragments" },
	{ "mysql://h/db?a=1#frag", "byte 16", "fragments" },
	{ "mysql://h/db?novalue", "byte 13", "has no value" },
	{ "mysql://h/db?=1", "byte 13", "empty name" },
};

static void test_parse_bad(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
		const struct bad_case *c = &bad_cases[i];
		char err[256] = "";
		struct url u;
		int r = url_parse(c->in, &u, err, sizeof(err));

		if (r != -EINVAL)
			fail_msg("%s: url_parse = %d, want -EINVAL", c->in, r);
		if (!strstr(err, c->where) || !strstr(err, c->why))
			fail_msg("%s: message \"%s\" does not say \"%s\" and \"%s\"", c->in, err,
				 c->where, c->why);
		if (strstr(err, "secret") || strstr(err, "cret"))
			fail_msg("%s: message quotes the password: %s", c->in, err);
		assert_null(u.scheme);
		assert_int_equal(u.nhosts, 0);
	}
}

static void test_too_many(void **state)
{
	char url[1024], err[256];
	size_t len = (size_t)snprintf(url, sizeof(url), "mysql://h0");
	struct url u;

	(void)state;
	for (int i = 1; i <= URL_HOSTS_MAX; i++)
		len += (size_t)snprintf(url + len, sizeof(url) - len, ",h%d", i);
	snprintf(url + len, sizeof(url) - len, "/db");
	assert_int_equal(url_parse(url, &u, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "more than"));

	len = (size_t)snprintf(url, sizeof(url), "mysql://h/db?");
	for (int i = 0; i <= URL_PARAMS_MAX; i++)
		len += (size_t)snprintf(url + len, sizeof(url) - len, "k%d=v&", i);
	assert_int_equal(url_parse(url, &u, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "more than"));
	assert_int_equal(url_parse(NULL, &u, err, sizeof(err)), -EINVAL);
}

/* ==== Redaction ==== */

static const struct {
	const char *in, *want;
} redact_cases[] = {
	{ "mysql://u:secret@h/db", "mysql://u:***@h/db" },
	{ "mysql://u@h/db", "mysql://u@h/db" },
	{ "mysql://h/db", "mysql://h/db" },
	{ "mysql://:secret@h/db", "mysql://:***@h/db" },
	{ "postgresql://u:s%40cret@a:1,b:2/db", "postgresql://u:***@a:1,b:2/db" },
	/* unencoded '@', '/', '#' in a password: hidden all the same */
	{ "mysql://u:se@cret@h/db", "mysql://u:***@h/db" },
	{ "mysql://u:se/cret@h/db", "mysql://u:***@h/db" },
	{ "mysql://u:se#cret@h/db", "mysql://u:***@h/db" },
	{ "mysql://u:se?cret@h/db", "mysql://u:***@h/db" },
	{ "postgresql://h/db?password=secret", "postgresql://h/db?password=***" },
	{ "postgresql://h/db?sslmode=require&password=secret&application_name=x",
	  "postgresql://h/db?sslmode=require&password=***&application_name=x" },
	{ "postgresql://u:secret@h/db?password=other", "postgresql://u:***@h/db?password=***" },
	{ "sqlite:///var/lib/feed/f.db", "sqlite:///var/lib/feed/f.db" },
	{ "not a url", "not a url" },
	{ "", "" },
};

static void test_redact(void **state)
{
	char buf[256], small[12];

	(void)state;
	for (size_t i = 0; i < sizeof(redact_cases) / sizeof(redact_cases[0]); i++) {
		url_redact(redact_cases[i].in, buf, sizeof(buf));
		if (strcmp(buf, redact_cases[i].want))
			fail_msg("url_redact(%s) = %s, want %s", redact_cases[i].in, buf,
				 redact_cases[i].want);
	}
	/* cut at the buffer, never past it, never the password */
	url_redact("mysql://u:secret@h/db", small, sizeof(small));
	assert_string_equal(small, "mysql://u:*");
	url_redact(NULL, buf, sizeof(buf));
	assert_string_equal(buf, "");
}

static void test_password_raw(void **state)
{
	size_t len = 0;
	const char *p;

	(void)state;
	p = url_password_raw("postgresql://u:s%40c@h/db", &len);
	assert_non_null(p);
	assert_int_equal(len, 5);
	assert_memory_equal(p, "s%40c", 5);
	assert_null(url_password_raw("postgresql://u@h/db", &len));
	assert_null(url_password_raw("postgresql://h/db", &len));
	assert_null(url_password_raw("host=h password=x", &len));
}

static void test_scrub(void **state)
{
	static const struct {
		const char *msg, *secret, *want;
	} cases[] = {
		{ "password authentication failed: hunter2", "hunter2",
		  "password authentication failed: ***" },
		{ "ab ab ab", "ab", "** ** **" },
		{ "x", "x", "*" },
		{ "hunter2hunter2", "hunter2", "******" },
		{ "nothing here", "hunter2", "nothing here" },
		{ "empty secret", "", "empty secret" },
		{ "no secret", NULL, "no secret" },
	};
	char buf[128];

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		snprintf(buf, sizeof(buf), "%s", cases[i].msg);
		url_scrub(buf, cases[i].secret);
		if (strcmp(buf, cases[i].want))
			fail_msg("url_scrub(\"%s\", %s) = \"%s\", want \"%s\"", cases[i].msg,
				 cases[i].secret ? cases[i].secret : "NULL", buf, cases[i].want);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_ok),
		cmocka_unit_test(test_param_lookup),
		cmocka_unit_test(test_parse_bad),
		cmocka_unit_test(test_too_many),
		cmocka_unit_test(test_redact),
		cmocka_unit_test(test_password_raw),
		cmocka_unit_test(test_scrub),
	};

	return cmocka_run_group_tests_name("url", tests, NULL, NULL);
}
