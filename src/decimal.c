/*
 * decimal.c - exact decimal numbers as scaled 64-bit integers.
 *
 * Parses the wire volume grammar and the looser text databases print for
 * NUMERIC columns, formats scaled values canonically, parses ticket/login ids
 * and computes fees with half-up rounding. Everything is integer arithmetic
 * with explicit overflow checks; there is no binary floating point here.
 * Pure functions: no I/O, no allocation, no state; any thread may call them.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "decimal.h"

#define DEC_MAX_SCALE 18   /* 10^18 is the largest power of ten in int64 */

static const uint64_t dec_pow10[DEC_MAX_SCALE + 1] = {
	1ULL,
	10ULL,
	100ULL,
	1000ULL,
	10000ULL,
	100000ULL,
	1000000ULL,
	10000000ULL,
	100000000ULL,
	1000000000ULL,
	10000000000ULL,
	100000000000ULL,
	1000000000000ULL,
	10000000000000ULL,
	100000000000000ULL,
	1000000000000000ULL,
	10000000000000000ULL,
	100000000000000000ULL,
	1000000000000000000ULL,
};

static bool dec_isdigit(char c)
{
	return c >= '0' && c <= '9';
}

/* Sets *why if the caller asked for it; returns err for tail calls. */
static int dec_fail(int err, const char *msg, const char **ret_why)
{
	if (ret_why)
		*ret_why = msg;
	return err;
}

/*
 * acc = acc * 10 + digit, failing if the result exceeds max. Leading zeros
 * never overflow, so "000000000000000000001" is fine.
 */
static bool dec_push_digit(uint64_t *acc, char c, uint64_t max)
{
	uint64_t d = (uint64_t)(c - '0');

	if (*acc > (max - d) / 10)
		return false;
	*acc = *acc * 10 + d;
	return true;
}

int dec_parse(const char *s, size_t len, int max_frac, int flags, int64_t *ret,
	      const char **ret_why)
{
	size_t i = 0, int_begin, int_end, frac_begin = 0, frac_end = 0, k;
	size_t nfrac = 0;
	bool neg = false, has_point = false;
	uint64_t max, ip = 0, fp = 0, scaled;

	if (max_frac < 0 || max_frac > DEC_MAX_SCALE)
		return dec_fail(-EINVAL, "unsupported scale", ret_why);
	if (len == 0)
		return dec_fail(-EINVAL, "missing", ret_why);

	/* Syntax first, so that a malformed number is never reported as too big. */
	if ((flags & DEC_LENIENT) && s[0] == '-') {
		neg = true;
		i++;
	}
	int_begin = i;
	while (i < len && dec_isdigit(s[i]))
		i++;
	int_end = i;
	if (int_end == int_begin)
		return dec_fail(-EINVAL, "not a decimal number", ret_why);
	if (i < len && s[i] == '.') {
		has_point = true;
		frac_begin = ++i;
		while (i < len && dec_isdigit(s[i]))
			i++;
		frac_end = i;
		if (frac_end == frac_begin)
			return dec_fail(-EINVAL, "not a decimal number", ret_why);
	}
	if (i != len)
		return dec_fail(-EINVAL, "not a decimal number", ret_why);

	if (has_point) {
		nfrac = frac_end - frac_begin;
		if (nfrac > (size_t)max_frac) {
			/* A database may print NUMERIC(30,12) as "1.250000000000". */
			if (!(flags & DEC_LENIENT))
				return dec_fail(-EDOM, "too many fractional digits", ret_why);
			for (k = frac_begin + (size_t)max_frac; k < frac_end; k++)
				if (s[k] != '0')
					return dec_fail(-EDOM, "too many fractional digits",
							ret_why);
			nfrac = (size_t)max_frac;
		}
	}

	/* The magnitude of INT64_MIN is one more than INT64_MAX. */
	max = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
	for (k = int_begin; k < int_end; k++)
		if (!dec_push_digit(&ip, s[k], max))
			return dec_fail(-ERANGE, "out of range", ret_why);
	for (k = frac_begin; k < frac_begin + nfrac; k++)
		fp = fp * 10 + (uint64_t)(s[k] - '0');   /* < 10^18, no overflow */
	fp *= dec_pow10[(size_t)max_frac - nfrac];

	if (__builtin_mul_overflow(ip, dec_pow10[max_frac], &scaled) ||
	    __builtin_add_overflow(scaled, fp, &scaled) || scaled > max)
		return dec_fail(-ERANGE, "out of range", ret_why);

	if (!neg)
		*ret = (int64_t)scaled;
	else if (scaled == (uint64_t)INT64_MAX + 1)
		*ret = INT64_MIN;
	else
		*ret = -(int64_t)scaled;
	return 0;
}

size_t dec_format(int64_t v, int scale, int min_frac, char buf[static DEC_STRMAX])
{
	char tmp[DEC_STRMAX];
	uint64_t mag, ip, fp;
	size_t n = 0, t = 0, nfrac, i;

	if (scale < 0)
		scale = 0;
	if (scale > DEC_MAX_SCALE)
		scale = DEC_MAX_SCALE;
	if (min_frac < 0)
		min_frac = 0;
	if (min_frac > scale)
		min_frac = scale;

	mag = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
	ip = mag / dec_pow10[scale];
	fp = mag % dec_pow10[scale];

	if (v < 0)
		buf[n++] = '-';
	do {
		tmp[t++] = (char)('0' + ip % 10);
		ip /= 10;
	} while (ip);
	while (t)
		buf[n++] = tmp[--t];

	/* fp has exactly `scale` digits with leading zeros; drop trailing zeros. */
	nfrac = (size_t)scale;
	while (nfrac > (size_t)min_frac && fp % 10 == 0) {
		fp /= 10;
		nfrac--;
	}
	if (nfrac) {
		buf[n++] = '.';
		for (i = nfrac; i > 0; i--) {
			buf[n + i - 1] = (char)('0' + fp % 10);
			fp /= 10;
		}
		n += nfrac;
	}
	buf[n] = '\0';
	return n;
}

int dec_parse_id(const char *s, size_t len, int64_t *ret, const char **ret_why)
{
	uint64_t v = 0;
	size_t i;

	if (len == 0)
		return dec_fail(-EINVAL, "missing", ret_why);
	for (i = 0; i < len; i++)
		if (!dec_isdigit(s[i]))
			return dec_fail(-EINVAL, "not an integer", ret_why);
	for (i = 0; i < len; i++)
		if (!dec_push_digit(&v, s[i], (uint64_t)INT64_MAX))
			return dec_fail(-ERANGE, "out of range (max 9223372036854775807)",
					ret_why);
	if (v == 0)
		return dec_fail(-ERANGE, "must be positive", ret_why);
	*ret = (int64_t)v;
	return 0;
}

int dec_fee(int64_t volume, int64_t rate, int64_t *ret_fee)
{
	/* Both factors at 1e-8: the product is at 1e-16, the fee at 1e-2. */
	const __int128 div = (__int128)dec_pow10[2 * DEC_SCALE - FEE_SCALE];
	__int128 p = (__int128)volume * rate;   /* |p| <= 2^126: fits */
	__int128 q = p / div, r = p % div;      /* truncated toward zero */

	if (r < 0)
		r = -r;
	if (2 * r >= div)
		q += p < 0 ? -1 : 1;
	if (q > INT64_MAX || q < INT64_MIN)
		return -ERANGE;
	*ret_fee = (int64_t)q;
	return 0;
}
