/*
 * test_protocol.c - unit tests of src/protocol.c: the record grammar, every
 * kind of malformed input with its exact error text, the body limits, and
 * the bounds of the output array and of the error buffer. Table-driven: a
 * failing row is printed with its index.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "decimal.h"
#include "protocol.h"

#define MAXREC 8
#define S(lit) lit, sizeof(lit) - 1   /* a literal and its length, NULs included */

static const struct proto_limits default_limits = { 1048576, 10000 };

struct ok_case {
	const char *body;
	size_t len;
	int n;
	struct record rec[4];
};

static const struct ok_case ok_cases[] = {
	{ S("1,2,3"), 1, { { 1, 2, 300000000 } } },
	{ S("1,2,3\n"), 1, { { 1, 2, 300000000 } } },
	{ S("1,2,3\r\n"), 1, { { 1, 2, 300000000 } } },
	{ S("1,2,0"), 1, { { 1, 2, 0 } } },
	{ S("1,2,0.5"), 1, { { 1, 2, 50000000 } } },
	{ S("1,2,1.12345678"), 1, { { 1, 2, 112345678 } } },
	{ S("1,2,0.00000001"), 1, { { 1, 2, 1 } } },
	{ S("007,0042,0001.50"), 1, { { 7, 42, 150000000 } } },
	{ S(" 1 ,\t2\t, 3.5 "), 1, { { 1, 2, 350000000 } } },
	{ S("\t 1,2,3 \t"), 1, { { 1, 2, 300000000 } } },
	{ S("1,2,3\n4,5,6.25\n"), 2, { { 1, 2, 300000000 }, { 4, 5, 625000000 } } },
	{ S("1,2,3\r\n4,5,6\r\n"), 2, { { 1, 2, 300000000 }, { 4, 5, 600000000 } } },
	{ S("1,2,3\n4,5,6"), 2, { { 1, 2, 300000000 }, { 4, 5, 600000000 } } },
	{ S("\n\n1,2,3\n\n"), 1, { { 1, 2, 300000000 } } },
	{ S("  \n\t\n \t \r\n1,2,3\n   \n"), 1, { { 1, 2, 300000000 } } },
	{ S("\r\n1,2,3\r\n\r\n"), 1, { { 1, 2, 300000000 } } },
	/* mixed endings */
	{ S("1,2,3\r\n4,5,6\n7,8,9"), 3,
	  { { 1, 2, 300000000 }, { 4, 5, 600000000 }, { 7, 8, 900000000 } } },
	/* a repeated ticket is the store's business, not the parser's */
	{ S("1,2,3\n1,2,3\n1,9,9"), 3,
	  { { 1, 2, 300000000 }, { 1, 2, 300000000 }, { 1, 9, 900000000 } } },
	/* 64-bit limits */
	{ S("9223372036854775807,9223372036854775807,92233720368.54775807"), 1,
	  { { INT64_MAX, INT64_MAX, INT64_MAX } } },
	{ S("00009223372036854775807,1,0"), 1, { { INT64_MAX, 1, 0 } } },
};

static void test_parse_ok(void **state)
{
	size_t i;
	int j;

	(void)state;
	for (i = 0; i < sizeof(ok_cases) / sizeof(ok_cases[0]); i++) {
		const struct ok_case *c = &ok_cases[i];
		struct record out[MAXREC];
		struct proto_error err;
		char buf[256];
		int n;

		n = proto_parse(c->body, c->len, &default_limits, out, MAXREC, &err);
		if (n != c->n) {
			proto_format_error(&err, buf, sizeof(buf));
			print_error("case %zu: got %d (%s), want %d\n", i, n, n < 0 ? buf : "",
				    c->n);
		}
		assert_int_equal(n, c->n);
		for (j = 0; j < n; j++) {
			assert_true(out[j].ticket == c->rec[j].ticket);
			assert_true(out[j].login == c->rec[j].login);
			assert_true(out[j].volume == c->rec[j].volume);
		}
	}
}

struct bad_case {
	const char *body;
	size_t len;
	size_t line;
	const char *field;
	const char *text;   /* the whole formatted error */
};

static const struct bad_case bad_cases[] = {
	/* no record at all */
	{ S(""), 0, NULL, "FALSE: empty request" },
	{ S("\n"), 0, NULL, "FALSE: empty request" },
	{ S(" \t \r\n\n  "), 0, NULL, "FALSE: empty request" },
	/* field count */
	{ S("1,2"), 1, NULL, "FALSE: line 1: expected 3 fields (ticket,login,volume), got 2" },
	{ S("1"), 1, NULL, "FALSE: line 1: expected 3 fields (ticket,login,volume), got 1" },
	{ S("1,2,3,4"), 1, NULL,
	  "FALSE: line 1: expected 3 fields (ticket,login,volume), got 4" },
	{ S("1,2,1,5"), 1, NULL,
	  "FALSE: line 1: expected 3 fields (ticket,login,volume), got 4" },
	{ S("1,2,3\n\n4,5"), 3, NULL,
	  "FALSE: line 3: expected 3 fields (ticket,login,volume), got 2" },
	{ S(",,,,,"), 1, NULL, "FALSE: line 1: expected 3 fields (ticket,login,volume), got 6" },
	/* ticket */
	{ S(",2,3"), 1, "ticket", "FALSE: line 1: ticket: missing" },
	{ S("  ,2,3"), 1, "ticket", "FALSE: line 1: ticket: missing" },
	{ S("0,2,3"), 1, "ticket", "FALSE: line 1: ticket: must be positive in \"0\"" },
	{ S("000,2,3"), 1, "ticket", "FALSE: line 1: ticket: must be positive in \"000\"" },
	{ S("-1,2,3"), 1, "ticket", "FALSE: line 1: ticket: not an integer in \"-1\"" },
	{ S("+1,2,3"), 1, "ticket", "FALSE: line 1: ticket: not an integer in \"+1\"" },
	{ S("1.0,2,3"), 1, "ticket", "FALSE: line 1: ticket: not an integer in \"1.0\"" },
	{ S("1 2,2,3"), 1, "ticket", "FALSE: line 1: ticket: not an integer in \"1 2\"" },
	{ S("abc,2,3"), 1, "ticket", "FALSE: line 1: ticket: not an integer in \"abc\"" },
	{ S("9223372036854775808,2,3"), 1, "ticket",
	  "FALSE: line 1: ticket: out of range (max 9223372036854775807) in "
	  "\"9223372036854775808\"" },
	/* login */
	{ S("1,,3"), 1, "login", "FALSE: line 1: login: missing" },
	{ S("1,0,3"), 1, "login", "FALSE: line 1: login: must be positive in \"0\"" },
	{ S("1,x,3"), 1, "login", "FALSE: line 1: login: not an integer in \"x\"" },
	{ S("1,9223372036854775808,3"), 1, "login",
	  "FALSE: line 1: login: out of range (max 9223372036854775807) in "
	  "\"9223372036854775808\"" },
	/* volume */
	{ S("1,2,"), 1, "volume", "FALSE: line 1: volume: missing" },
	{ S("1,2, \t "), 1, "volume", "FALSE: line 1: volume: missing" },
	{ S("1,2,1."), 1, "volume", "FALSE: line 1: volume: not a decimal number in \"1.\"" },
	{ S("1,2,.5"), 1, "volume", "FALSE: line 1: volume: not a decimal number in \".5\"" },
	{ S("1,2,1e5"), 1, "volume", "FALSE: line 1: volume: not a decimal number in \"1e5\"" },
	{ S("1,2,-1"), 1, "volume", "FALSE: line 1: volume: not a decimal number in \"-1\"" },
	{ S("1,2,+1"), 1, "volume", "FALSE: line 1: volume: not a decimal number in \"+1\"" },
	{ S("1,2,1 5"), 1, "volume", "FALSE: line 1: volume: not a decimal number in \"1 5\"" },
	{ S("1,2,1\t5"), 1, "volume",
	  "FALSE: line 1: volume: not a decimal number in \"1\\x095\"" },
	{ S("1,2,\"1\""), 1, "volume",
	  "FALSE: line 1: volume: not a decimal number in \"\\x221\\x22\"" },
	{ S("1,2,1.123456789"), 1, "volume",
	  "FALSE: line 1: volume: more than 8 fractional digits in \"1.123456789\"" },
	{ S("1,2,1.000000000"), 1, "volume",
	  "FALSE: line 1: volume: more than 8 fractional digits in \"1.000000000\"" },
	{ S("1,2,92233720368.54775808"), 1, "volume",
	  "FALSE: line 1: volume: out of range (max 92233720368.54775807) in "
	  "\"92233720368.54775808\"" },
	{ S("1,2,92233720369"), 1, "volume",
	  "FALSE: line 1: volume: out of range (max 92233720368.54775807) in "
	  "\"92233720369\"" },
	/* the first error wins; ticket is checked before login and volume */
	{ S("x,y,z"), 1, "ticket", "FALSE: line 1: ticket: not an integer in \"x\"" },
	{ S("1,2,3\n4,5,6\nx,2,3\n1,2"), 3, "ticket",
	  "FALSE: line 3: ticket: not an integer in \"x\"" },
	/* bytes outside printable ASCII, space and tab */
	{ S("1,2,3\0"), 1, NULL, "FALSE: line 1: invalid byte 0x00 at column 6" },
	{ S("1,2,\0003"), 1, NULL, "FALSE: line 1: invalid byte 0x00 at column 5" },
	{ S("\0"), 1, NULL, "FALSE: line 1: invalid byte 0x00 at column 1" },
	{ S("1,2,3\n\xc3\xa9,2,3"), 2, NULL, "FALSE: line 2: invalid byte 0xc3 at column 1" },
	{ S("\xef\xbb\xbf" "1,2,3"), 1, NULL, "FALSE: line 1: invalid byte 0xef at column 1" },
	{ S("1,2,3\x7f"), 1, NULL, "FALSE: line 1: invalid byte 0x7f at column 6" },
	{ S("1,2,3\x1b[0m"), 1, NULL, "FALSE: line 1: invalid byte 0x1b at column 6" },
	{ S("1,2,3\v"), 1, NULL, "FALSE: line 1: invalid byte 0x0b at column 6" },
	{ S("1,2,3\f"), 1, NULL, "FALSE: line 1: invalid byte 0x0c at column 6" },
	/* only one \r right before \n is dropped */
	{ S("1,2,3\r"), 1, NULL, "FALSE: line 1: invalid byte 0x0d at column 6" },
	{ S("1,2,3\r\r\n"), 1, NULL, "FALSE: line 1: invalid byte 0x0d at column 6" },
	{ S("1\r,2,3\n"), 1, NULL, "FALSE: line 1: invalid byte 0x0d at column 2" },
	{ S("\r"), 1, NULL, "FALSE: line 1: invalid byte 0x0d at column 1" },
	/* a bad byte even on an otherwise blank line */
	{ S("1,2,3\n \0 \n"), 2, NULL, "FALSE: line 2: invalid byte 0x00 at column 2" },
	/* a long field is quoted cut to 40 bytes, with "..." */
	{ S("1,2,12345678901234567890123456789012345678901234567890"), 1, "volume",
	  "FALSE: line 1: volume: out of range (max 92233720368.54775807) in "
	  "\"1234567890123456789012345678901234567890\"..." },
	{ S("1,2,1234567890123456789012345678901234567890"), 1, "volume",
	  "FALSE: line 1: volume: out of range (max 92233720368.54775807) in "
	  "\"1234567890123456789012345678901234567890\"" },
	/* escapes count against the 40 bytes and are never split */
	{ S("1,2,123456789012345678901234567890123456\t\tx"), 1, "volume",
	  "FALSE: line 1: volume: not a decimal number in "
	  "\"123456789012345678901234567890123456\\x09\"..." },
	{ S("1,2,1234567890123456789012345678901234567\tx"), 1, "volume",
	  "FALSE: line 1: volume: not a decimal number in "
	  "\"1234567890123456789012345678901234567\"..." },
};

static void test_parse_bad(void **state)
{
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
		const struct bad_case *c = &bad_cases[i];
		struct record out[MAXREC];
		struct proto_error err;
		char buf[512];
		size_t n;
		int rc;

		rc = proto_parse(c->body, c->len, &default_limits, out, MAXREC, &err);
		n = proto_format_error(&err, buf, sizeof(buf));
		if (rc != -EINVAL || strcmp(buf, c->text) != 0)
			print_error("case %zu: rc %d\n got  %s\n want %s\n", i, rc, buf, c->text);
		assert_int_equal(rc, -EINVAL);
		assert_string_equal(buf, c->text);
		assert_int_equal(n, strlen(c->text));
		assert_int_equal(err.line, c->line);
		if (c->field)
			assert_string_equal(err.field, c->field);
		else
			assert_null(err.field);
	}
}

/* A body of exactly `bytes` bytes: records "i,1,1\n", then blanks to pad. */
static char *make_body(size_t records, size_t bytes)
{
	char *b = malloc(bytes ? bytes : 1);
	char line[32];
	size_t i, pos = 0;

	assert_non_null(b);
	for (i = 0; i < records; i++) {
		int w = snprintf(line, sizeof(line), "%zu,1,1\n", i + 1);

		assert_true(w > 0 && pos + (size_t)w <= bytes);
		memcpy(b + pos, line, (size_t)w);
		pos += (size_t)w;
	}
	memset(b + pos, ' ', bytes - pos);
	return b;
}

static void test_limit_bytes(void **state)
{
	const struct proto_limits lim = { 64, 100 };
	struct record out[MAXREC];
	struct proto_error err;
	char buf[256];
	char *body;

	(void)state;
	body = make_body(2, 64);
	assert_int_equal(proto_parse(body, 64, &lim, out, MAXREC, &err), 2);
	free(body);

	body = make_body(2, 65);
	assert_int_equal(proto_parse(body, 65, &lim, out, MAXREC, &err), -EINVAL);
	assert_int_equal(err.line, 0);
	proto_format_error(&err, buf, sizeof(buf));
	assert_string_equal(buf, "FALSE: request too large (65 bytes, max 64)");
	free(body);

	/* the default: 1048576 accepted, 1048577 refused before looking inside */
	body = make_body(3, 1048577);
	assert_int_equal(proto_parse(body, 1048576, &default_limits, out, MAXREC, &err), 3);
	assert_int_equal(proto_parse(body, 1048577, &default_limits, out, MAXREC, &err),
			 -EINVAL);
	proto_format_error(&err, buf, sizeof(buf));
	assert_string_equal(buf, "FALSE: request too large (1048577 bytes, max 1048576)");
	free(body);
}

static void test_limit_records(void **state)
{
	const struct proto_limits lim = { 1048576, 5 };
	struct record out[MAXREC];
	struct proto_error err;
	char buf[256];
	char *body;
	int i;

	(void)state;
	body = make_body(5, 60);
	assert_int_equal(proto_parse(body, 60, &lim, out, MAXREC, &err), 5);
	for (i = 0; i < 5; i++)
		assert_true(out[i].ticket == i + 1);
	free(body);

	body = make_body(6, 60);
	assert_int_equal(proto_parse(body, 60, &lim, out, MAXREC, &err), -EINVAL);
	assert_int_equal(err.line, 0);
	proto_format_error(&err, buf, sizeof(buf));
	assert_string_equal(buf, "FALSE: too many records (max 5)");
	free(body);

	/* blank lines do not count */
	assert_int_equal(proto_parse(S("\n1,1,1\n\n2,1,1\n \n3,1,1\n4,1,1\n5,1,1\n\n\n"), &lim,
				     out, MAXREC, &err), 5);
}

/* With cap below max_records the parser stops at cap: nothing written past it. */
static void test_limit_cap(void **state)
{
	const struct proto_limits lim = { 1048576, 10000 };
	struct record out[4];
	struct proto_error err;
	char buf[256];
	char *body;

	(void)state;
	memset(out, 0x5a, sizeof(out));
	body = make_body(4, 80);
	assert_int_equal(proto_parse(body, 80, &lim, out, 3, &err), -EINVAL);
	proto_format_error(&err, buf, sizeof(buf));
	assert_string_equal(buf, "FALSE: too many records (max 3)");
	assert_true(out[3].ticket == 0x5a5a5a5a5a5a5a5aLL);
	assert_true(out[3].login == 0x5a5a5a5a5a5a5a5aLL);
	assert_int_equal(proto_parse(body, 80, &lim, out, 4, &err), 4);
	free(body);
}

/* The parser reads only body[0..len): the bytes after it are not looked at. */
static void test_len_bounds(void **state)
{
	struct record out[MAXREC];
	struct proto_error err;
	char *body = malloc(5);

	(void)state;
	assert_non_null(body);
	memcpy(body, "1,2,3", 5);            /* no NUL: ASan would see an overread */
	assert_int_equal(proto_parse(body, 5, &default_limits, out, MAXREC, &err), 1);
	assert_true(out[0].volume == 300000000);
	assert_int_equal(proto_parse(body, 4, &default_limits, out, MAXREC, &err), -EINVAL);
	assert_string_equal(err.field, "volume");
	assert_int_equal(proto_parse(NULL, 0, &default_limits, out, MAXREC, &err), -EINVAL);
	assert_int_equal(err.line, 0);
	free(body);
}

static void test_format_error_bounds(void **state)
{
	struct proto_error err;
	char buf[16];
	size_t n;

	(void)state;
	memset(&err, 0, sizeof(err));
	err.line = 12;
	err.field = "volume";
	snprintf(err.reason, sizeof(err.reason), "%s", "not a decimal number in \"x\"");

	memset(buf, 'X', sizeof(buf));
	n = proto_format_error(&err, buf, sizeof(buf));
	assert_int_equal(n, sizeof(buf) - 1);
	assert_string_equal(buf, "FALSE: line 12:");

	memset(buf, 'X', sizeof(buf));
	assert_int_equal(proto_format_error(&err, buf, 1), 0);
	assert_int_equal(buf[0], '\0');
	assert_int_equal(buf[1], 'X');
	assert_int_equal(proto_format_error(&err, buf, 0), 0);
	assert_int_equal(buf[0], '\0');   /* untouched */

	/* a reason a caller filled with junk still comes out printable */
	{
		char big[256];

		err.line = 0;
		err.field = NULL;
		snprintf(err.reason, sizeof(err.reason), "bad\r\nbyte\x01\xff");
		n = proto_format_error(&err, big, sizeof(big));
		assert_string_equal(big, "FALSE: bad??byte??");
		assert_int_equal(n, strlen(big));
	}
}

/* Every error text the parser can produce is printable ASCII and short. */
static void test_error_text_safe(void **state)
{
	unsigned char body[64];
	struct record out[MAXREC];
	struct proto_error err;
	char buf[512];
	size_t i, n, k;
	int c;

	(void)state;
	for (c = 0; c < 256; c++) {
		if (c == '\n')
			continue;
		/* the byte in each field position, and a long tail of it */
		for (k = 0; k < 4; k++) {
			memcpy(body, "1,2,3", 5);
			memset(body + 5, c, sizeof(body) - 5);
			body[k == 3 ? 4 : k * 2] = (unsigned char)c;
			n = k == 3 ? sizeof(body) : 5;
			if (proto_parse((const char *)body, n, &default_limits, out, MAXREC,
					&err) >= 0)
				continue;
			proto_format_error(&err, buf, sizeof(buf));
			assert_true(strncmp(buf, "FALSE: ", 7) == 0);
			assert_true(strlen(err.reason) < sizeof(err.reason) - 1);
			for (i = 0; buf[i]; i++)
				assert_true(buf[i] >= 0x20 && buf[i] <= 0x7e);
		}
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_ok),
		cmocka_unit_test(test_parse_bad),
		cmocka_unit_test(test_limit_bytes),
		cmocka_unit_test(test_limit_records),
		cmocka_unit_test(test_limit_cap),
		cmocka_unit_test(test_len_bounds),
		cmocka_unit_test(test_format_error_bounds),
		cmocka_unit_test(test_error_text_safe),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
