/*
 * decimal.h - exact decimal numbers as scaled 64-bit integers.
 *
 * Volumes and rates are held in units of 1e-8 (DEC_SCALE digits), fees in
 * units of 1e-2. No binary floating point is used anywhere on the path.
 * Pure functions, no I/O, no allocation.
 */
#ifndef FEED_DECIMAL_H
#define FEED_DECIMAL_H

#include <stddef.h>
#include <stdint.h>

#define DEC_SCALE 8                 /* fractional digits of volume and rate */
#define DEC_ONE   100000000LL       /* 1.0 at DEC_SCALE */
#define FEE_SCALE 2                 /* fractional digits of a fee */
#define DEC_STRMAX 32               /* enough for any formatted int64 decimal + NUL */

enum dec_flags {
	DEC_STRICT = 0,        /* wire form: [0-9]+(\.[0-9]{1,max_frac})? */
	DEC_LENIENT = 1 << 0,  /* database form: also a leading '-', and extra
				  fractional digits if they are all zero ("1.25000000000") */
};

/*
 * Parses s[0..len) into a value scaled by 10^max_frac (max_frac <= 18).
 * Returns 0, -EINVAL (not a decimal of the accepted form; *ret_why, if not
 * NULL, gets a static explanation), -ERANGE (does not fit int64 at that
 * scale), -EDOM (more than max_frac fractional digits). *ret untouched on
 * failure.
 */
int dec_parse(const char *s, size_t len, int max_frac, int flags, int64_t *ret,
	      const char **ret_why);

/*
 * Formats v (scaled by 10^scale) into buf. At least min_frac fractional
 * digits are written; further trailing zeros are dropped (min_frac = 0 gives
 * "1.25", "3"; min_frac = 2 gives "9.38", "3.00"). Returns the length
 * (excluding NUL); buf must hold DEC_STRMAX bytes.
 */
size_t dec_format(int64_t v, int scale, int min_frac, char buf[static DEC_STRMAX]);

/* Parses a positive int64 (1..INT64_MAX) of decimal digits only. Same returns as dec_parse. */
int dec_parse_id(const char *s, size_t len, int64_t *ret, const char **ret_why);

/*
 * fee = volume x rate, both at DEC_SCALE, rounded half-up (away from zero on
 * .5) to FEE_SCALE digits. Returns 0, or -ERANGE if the fee does not fit.
 */
int dec_fee(int64_t volume, int64_t rate, int64_t *ret_fee);

#endif
