/*
 * test_decimal.c - unit tests of src/decimal.c: parsing (strict wire form and
 * lenient database form), canonical formatting and round trips, id parsing,
 * and fee rounding. Table-driven: each case is one row; a failing row is
 * named by its index and input.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "decimal.h"

#define SENTINEL ((int64_t)0x5a5a5a5a5a5a5a5aLL)

struct parse_case {
	const char *in;
	int max_frac;
	int flags;
	int rc;
	int64_t value;     /* when rc == 0 */
};

static const struct parse_case parse_cases[] = {
	/* strict, the wire volume form at DEC_SCALE */
	{ "0", 8, DEC_STRICT, 0, 0 },
	{ "1", 8, DEC_STRICT, 0, DEC_ONE },
	{ "1.5", 8, DEC_STRICT, 0, 150000000 },
	{ "0.00000001", 8, DEC_STRICT, 0, 1 },
	{ "1.12345678", 8, DEC_STRICT, 0, 112345678 },
	{ "00001.50", 8, DEC_STRICT, 0, 150000000 },
	{ "0.0", 8, DEC_STRICT, 0, 0 },
	{ "000000000000000000000000000000000000001", 8, DEC_STRICT, 0, DEC_ONE },
	{ "92233720368.54775807", 8, DEC_STRICT, 0, INT64_MAX },
	{ "92233720368", 8, DEC_STRICT, 0, 9223372036800000000LL },
	{ "92233720368.54775808", 8, DEC_STRICT, -ERANGE, 0 },
	{ "92233720369", 8, DEC_STRICT, -ERANGE, 0 },
	{ "99999999999999999999", 8, DEC_STRICT, -ERANGE, 0 },
	{ "99999999999999999999999999999", 8, DEC_STRICT, -ERANGE, 0 },
	{ "1.123456789", 8, DEC_STRICT, -EDOM, 0 },
	{ "1.000000000", 8, DEC_STRICT, -EDOM, 0 },
	{ "", 8, DEC_STRICT, -EINVAL, 0 },
	{ "1.", 8, DEC_STRICT, -EINVAL, 0 },
	{ ".5", 8, DEC_STRICT, -EINVAL, 0 },
	{ ".", 8, DEC_STRICT, -EINVAL, 0 },
	{ "1e5", 8, DEC_STRICT, -EINVAL, 0 },
	{ "1E5", 8, DEC_STRICT, -EINVAL, 0 },
	{ "-1", 8, DEC_STRICT, -EINVAL, 0 },
	{ "+1", 8, DEC_STRICT, -EINVAL, 0 },
	{ "1,5", 8, DEC_STRICT, -EINVAL, 0 },
	{ " ", 8, DEC_STRICT, -EINVAL, 0 },
	{ " 1", 8, DEC_STRICT, -EINVAL, 0 },
	{ "1 ", 8, DEC_STRICT, -EINVAL, 0 },
	{ "1.2.3", 8, DEC_STRICT, -EINVAL, 0 },
	{ "0x10", 8, DEC_STRICT, -EINVAL, 0 },
	{ "inf", 8, DEC_STRICT, -EINVAL, 0 },
	{ "NaN", 8, DEC_STRICT, -EINVAL, 0 },
	{ "1.5x", 8, DEC_STRICT, -EINVAL, 0 },
	{ "1.123456789x", 8, DEC_STRICT, -EINVAL, 0 },   /* syntax before digits */
	{ "99999999999999999999x", 8, DEC_STRICT, -EINVAL, 0 }, /* syntax before range */
	{ "1.0000000000000000001", 8, DEC_LENIENT, -EDOM, 0 },
	/* other scales */
	{ "12.34", 2, DEC_STRICT, 0, 1234 },
	{ "12.345", 2, DEC_STRICT, -EDOM, 0 },
	{ "9223372036854775807", 0, DEC_STRICT, 0, INT64_MAX },
	{ "9223372036854775808", 0, DEC_STRICT, -ERANGE, 0 },
	{ "1.5", 0, DEC_STRICT, -EDOM, 0 },
	{ "9.223372036854775807", 18, DEC_STRICT, 0, INT64_MAX },
	{ "9.223372036854775808", 18, DEC_STRICT, -ERANGE, 0 },
	{ "10", 18, DEC_STRICT, -ERANGE, 0 },
	{ "1", 19, DEC_STRICT, -EINVAL, 0 },
	{ "1", -1, DEC_STRICT, -EINVAL, 0 },
	/* lenient, what databases print */
	{ "-1.5", 8, DEC_LENIENT, 0, -150000000 },
	{ "-0", 8, DEC_LENIENT, 0, 0 },
	{ "-0.00000001", 8, DEC_LENIENT, 0, -1 },
	{ "1.25000000000", 8, DEC_LENIENT, 0, 125000000 },
	{ "1.250000000001", 8, DEC_LENIENT, -EDOM, 0 },
	{ "0.000000000", 8, DEC_LENIENT, 0, 0 },
	{ "92233720368.547758070000", 8, DEC_LENIENT, 0, INT64_MAX },
	{ "-92233720368.54775807", 8, DEC_LENIENT, 0, -INT64_MAX },
	{ "-92233720368.54775808", 8, DEC_LENIENT, 0, INT64_MIN },
	{ "-92233720368.54775809", 8, DEC_LENIENT, -ERANGE, 0 },
	{ "92233720368.54775808", 8, DEC_LENIENT, -ERANGE, 0 },
	{ "-", 8, DEC_LENIENT, -EINVAL, 0 },
	{ "--1", 8, DEC_LENIENT, -EINVAL, 0 },
	{ "+1", 8, DEC_LENIENT, -EINVAL, 0 },
	{ "-.5", 8, DEC_LENIENT, -EINVAL, 0 },
	{ "1e5", 8, DEC_LENIENT, -EINVAL, 0 },
	{ "1.5E+00", 8, DEC_LENIENT, -EINVAL, 0 },
	{ " 1", 8, DEC_LENIENT, -EINVAL, 0 },
};

static void test_dec_parse_table(void **state)
{
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(parse_cases) / sizeof(parse_cases[0]); i++) {
		const struct parse_case *c = &parse_cases[i];
		int64_t v = SENTINEL;
		const char *why = NULL;
		int rc;

		rc = dec_parse(c->in, strlen(c->in), c->max_frac, c->flags, &v, &why);
		if (rc != c->rc || (rc == 0 && v != c->value))
			print_error("case %zu \"%s\": rc %d value %lld, want rc %d value %lld\n",
				    i, c->in, rc, (long long)v, c->rc, (long long)c->value);
		assert_int_equal(rc, c->rc);
		if (rc == 0) {
			assert_true(v == c->value);
		} else {
			assert_true(v == SENTINEL);     /* untouched on failure */
			assert_non_null(why);
		}
	}
}

/* The length bounds the parse: bytes past len are never read. */
static void test_dec_parse_len(void **state)
{
	int64_t v = SENTINEL;

	(void)state;
	assert_int_equal(dec_parse("1.5xyz", 3, 8, DEC_STRICT, &v, NULL), 0);
	assert_true(v == 150000000);
	assert_int_equal(dec_parse("12", 1, 8, DEC_STRICT, &v, NULL), 0);
	assert_true(v == DEC_ONE);
	/* an embedded NUL is just a bad byte */
	assert_int_equal(dec_parse("1\0", 2, 8, DEC_STRICT, &v, NULL), -EINVAL);
	/* ret_why may be NULL */
	assert_int_equal(dec_parse("x", 1, 8, DEC_STRICT, &v, NULL), -EINVAL);
}

static void test_dec_parse_why(void **state)
{
	const char *why = NULL;
	int64_t v;

	(void)state;
	assert_int_equal(dec_parse("", 0, 8, DEC_STRICT, &v, &why), -EINVAL);
	assert_string_equal(why, "missing");
	assert_int_equal(dec_parse("1e5", 3, 8, DEC_STRICT, &v, &why), -EINVAL);
	assert_string_equal(why, "not a decimal number");
}

struct format_case {
	int64_t v;
	int scale;
	int min_frac;
	const char *out;
};

static const struct format_case format_cases[] = {
	{ 0, 8, 0, "0" },
	{ 0, 2, 2, "0.00" },
	{ 125000000, 8, 0, "1.25" },
	{ 300000000, 8, 0, "3" },
	{ 1, 8, 0, "0.00000001" },
	{ 10, 8, 0, "0.0000001" },
	{ 100000001, 8, 0, "1.00000001" },
	{ 938, 2, 2, "9.38" },
	{ 300, 2, 2, "3.00" },
	{ 5, 2, 2, "0.05" },
	{ 50, 2, 2, "0.50" },
	{ 50, 2, 0, "0.5" },
	{ 125000000, 8, 4, "1.2500" },
	{ 123456789, 8, 4, "1.23456789" },
	{ -150000000, 8, 0, "-1.5" },
	{ -1, 8, 0, "-0.00000001" },
	{ -1, 2, 2, "-0.01" },
	{ INT64_MAX, 8, 0, "92233720368.54775807" },
	{ INT64_MIN, 8, 0, "-92233720368.54775808" },
	{ INT64_MAX, 0, 0, "9223372036854775807" },
	{ INT64_MIN, 0, 0, "-9223372036854775808" },
	{ INT64_MIN, 18, 0, "-9.223372036854775808" },
	{ 1, 18, 0, "0.000000000000000001" },
	{ -1, 18, 18, "-0.000000000000000001" },
	{ 42, 0, 0, "42" },
	{ 42, 0, 3, "42" },        /* min_frac is capped at scale */
};

static void test_dec_format_table(void **state)
{
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(format_cases) / sizeof(format_cases[0]); i++) {
		const struct format_case *c = &format_cases[i];
		char buf[DEC_STRMAX];
		size_t n;

		memset(buf, 'X', sizeof(buf));
		n = dec_format(c->v, c->scale, c->min_frac, buf);
		if (strcmp(buf, c->out) != 0)
			print_error("case %zu: got \"%s\", want \"%s\"\n", i, buf, c->out);
		assert_string_equal(buf, c->out);
		assert_int_equal(n, strlen(c->out));
	}
}

/* format -> parse gives the value back, for many edge values and scales. */
static void test_dec_format_roundtrip(void **state)
{
	static const int64_t base[] = {
		0, 1, 9, 10, 11, 99, 100, 101, 12345678, 99999999, 100000000,
		100000001, 123456789, 999999999, 1000000000, 150000000,
		INT64_MAX / 10, INT64_MAX - 1, INT64_MAX, 9223372036800000000LL,
		4611686018427387904LL, 1000000000000000000LL,
	};
	size_t i;
	int scale, min_frac, sign;

	(void)state;
	for (i = 0; i < sizeof(base) / sizeof(base[0]); i++)
		for (sign = 1; sign >= -1; sign -= 2)
			for (scale = 0; scale <= 18; scale++)
				for (min_frac = 0; min_frac <= scale; min_frac++) {
					int64_t v = sign * base[i], back = SENTINEL;
					char buf[DEC_STRMAX];
					size_t n = dec_format(v, scale, min_frac, buf);
					int flags = v < 0 ? DEC_LENIENT : DEC_STRICT;

					assert_int_equal(dec_parse(buf, n, scale, flags, &back,
								   NULL), 0);
					assert_true(back == v);
				}
	/* INT64_MIN only has a lenient form */
	{
		char buf[DEC_STRMAX];
		int64_t back = 0;
		size_t n = dec_format(INT64_MIN, 8, 0, buf);

		assert_int_equal(dec_parse(buf, n, 8, DEC_LENIENT, &back, NULL), 0);
		assert_true(back == INT64_MIN);
	}
}

struct id_case {
	const char *in;
	int rc;
	int64_t value;
	const char *why;   /* when rc != 0 */
};

static const struct id_case id_cases[] = {
	{ "1", 0, 1, NULL },
	{ "42", 0, 42, NULL },
	{ "0042", 0, 42, NULL },
	{ "9223372036854775807", 0, INT64_MAX, NULL },
	{ "0000000000000000000009223372036854775807", 0, INT64_MAX, NULL },
	{ "9223372036854775808", -ERANGE, 0, "out of range (max 9223372036854775807)" },
	{ "18446744073709551616", -ERANGE, 0, "out of range (max 9223372036854775807)" },
	{ "99999999999999999999999", -ERANGE, 0, "out of range (max 9223372036854775807)" },
	{ "0", -ERANGE, 0, "must be positive" },
	{ "0000", -ERANGE, 0, "must be positive" },
	{ "", -EINVAL, 0, "missing" },
	{ "-1", -EINVAL, 0, "not an integer" },
	{ "+1", -EINVAL, 0, "not an integer" },
	{ "1.0", -EINVAL, 0, "not an integer" },
	{ "1e3", -EINVAL, 0, "not an integer" },
	{ " 1", -EINVAL, 0, "not an integer" },
	{ "12a", -EINVAL, 0, "not an integer" },
	{ "0x1F", -EINVAL, 0, "not an integer" },
	{ "99999999999999999999x", -EINVAL, 0, "not an integer" },
};

static void test_dec_parse_id_table(void **state)
{
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(id_cases) / sizeof(id_cases[0]); i++) {
		const struct id_case *c = &id_cases[i];
		int64_t v = SENTINEL;
		const char *why = NULL;
		int rc = dec_parse_id(c->in, strlen(c->in), &v, &why);

		if (rc != c->rc)
			print_error("case %zu \"%s\": rc %d, want %d\n", i, c->in, rc, c->rc);
		assert_int_equal(rc, c->rc);
		if (rc == 0) {
			assert_true(v == c->value);
		} else {
			assert_true(v == SENTINEL);
			assert_non_null(why);
			assert_string_equal(why, c->why);
		}
	}
}

struct fee_case {
	int64_t volume;   /* 1e-8 */
	int64_t rate;     /* 1e-8 */
	int rc;
	int64_t fee;      /* 1e-2 */
};

static const struct fee_case fee_cases[] = {
	/* 1.25 x 7.5 = 9.375 -> 9.38 */
	{ 125000000, 750000000, 0, 938 },
	/* exact halves round away from zero */
	{ 500000, DEC_ONE, 0, 1 },                 /* 0.005 -> 0.01 */
	{ 1500000, DEC_ONE, 0, 2 },                /* 0.015 -> 0.02 */
	{ 2500000, DEC_ONE, 0, 3 },                /* 0.025 -> 0.03 (not banker's) */
	{ 100500000, DEC_ONE, 0, 101 },            /* 1.005 -> 1.01 */
	{ DEC_ONE, 500000, 0, 1 },                 /* rate side */
	{ 50000000, 1000000, 0, 1 },               /* 0.5 x 0.01 = 0.005 -> 0.01 */
	/* just below / just above a half, at the 1e-16 resolution */
	{ 49999999, 1000000, 0, 0 },               /* 0.0049999999 -> 0.00 */
	{ 50000001, 1000000, 0, 1 },               /* 0.0050000001 -> 0.01 */
	{ 500000, 99999999, 0, 0 },                /* 0.00499999995 -> 0.00 */
	{ 500000, 100000001, 0, 1 },               /* 0.00500000005 -> 0.01 */
	{ 1, 49999999999999LL, 0, 0 },             /* 0.0049999999999999 */
	{ 1, 50000000000000LL, 0, 1 },             /* 0.005 exactly, tiny factors */
	{ 1, 1, 0, 0 },                            /* 1e-16 */
	{ 1004999999, DEC_ONE, 0, 1005 },          /* 10.04999999 -> 10.05 */
	{ 100499999, DEC_ONE, 0, 100 },            /* 1.00499999 -> 1.00 */
	/* zero */
	{ 0, 750000000, 0, 0 },
	{ 125000000, 0, 0, 0 },
	{ 0, 0, 0, 0 },
	/* negative inputs: symmetric, away from zero */
	{ -500000, DEC_ONE, 0, -1 },
	{ -100499999, DEC_ONE, 0, -100 },
	{ -125000000, 750000000, 0, -938 },
	{ -125000000, -750000000, 0, 938 },
	/* large values */
	{ INT64_MAX, DEC_ONE, 0, 9223372036855LL },            /* 92233720368.54775807 */
	{ 1000000000000000000LL, 1000000000000000000LL, -ERANGE, 0 }, /* 1e10 x 1e10 */
	{ 3037000499LL * DEC_ONE, 3037000499LL * DEC_ONE / 100, 0,
	  3037000499LL * 3037000499LL }, /* fee ~9.22e18 minor units: fits */
	{ INT64_MAX, INT64_MAX, -ERANGE, 0 },
	{ INT64_MIN, INT64_MIN, -ERANGE, 0 },
	{ INT64_MIN, INT64_MAX, -ERANGE, 0 },
	{ INT64_MAX, 100 * DEC_ONE, 0, 922337203685478LL },   /* x100 still fits */
	{ 1000000000000000000LL, 10000000000000000LL, -ERANGE, 0 }, /* 1e20 minor units */
};

static void test_dec_fee_table(void **state)
{
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(fee_cases) / sizeof(fee_cases[0]); i++) {
		const struct fee_case *c = &fee_cases[i];
		int64_t fee = SENTINEL;
		int rc = dec_fee(c->volume, c->rate, &fee);

		if (rc != c->rc || (rc == 0 && fee != c->fee))
			print_error("case %zu: rc %d fee %lld, want rc %d fee %lld\n", i, rc,
				    (long long)fee, c->rc, (long long)c->fee);
		assert_int_equal(rc, c->rc);
		if (rc == 0)
			assert_true(fee == c->fee);
		else
			assert_true(fee == SENTINEL);
	}
}

/* The exact boundary of -ERANGE, including rounding across it. */
static void test_dec_fee_limit(void **state)
{
	int64_t fee = 0;

	(void)state;
	/* 92233720368.54775807 x 0.01 = 922337203.6854775807 -> 922337203.69 */
	assert_int_equal(dec_fee(INT64_MAX, 1000000, &fee), 0);
	assert_true(fee == 92233720369LL);
	/* volume 1000000 (1e14 units) makes fee == rate in minor units */
	assert_int_equal(dec_fee(100000000000000LL, INT64_MAX, &fee), 0);
	assert_true(fee == INT64_MAX);
	assert_int_equal(dec_fee(100000000000000LL, INT64_MIN, &fee), 0);
	assert_true(fee == INT64_MIN);
	assert_int_equal(dec_fee(100000000000001LL, INT64_MAX, &fee), -ERANGE);
	/* product = INT64_MAX x 1e14 + 0.5e14: the half rounds up past INT64_MAX */
	fee = SENTINEL;
	assert_int_equal(dec_fee(250000000000000LL, 3689348814741910323LL, &fee), -ERANGE);
	assert_true(fee == SENTINEL);
	/* its negation rounds down to exactly INT64_MIN, which fits */
	assert_int_equal(dec_fee(-250000000000000LL, 3689348814741910323LL, &fee), 0);
	assert_true(fee == INT64_MIN);
	/* product = -(2^63 x 1e14 + 0.5e14): one past INT64_MIN after rounding */
	assert_int_equal(dec_fee(-1673443603515625LL, 551161211377426432LL, &fee), -ERANGE);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_dec_parse_table),
		cmocka_unit_test(test_dec_parse_len),
		cmocka_unit_test(test_dec_parse_why),
		cmocka_unit_test(test_dec_format_table),
		cmocka_unit_test(test_dec_format_roundtrip),
		cmocka_unit_test(test_dec_parse_id_table),
		cmocka_unit_test(test_dec_fee_table),
		cmocka_unit_test(test_dec_fee_limit),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
