/*
 * fuzz_protocol.c - libFuzzer target for proto_parse() and the decimal
 * parser. Feeds arbitrary bytes to both and checks invariants that must hold
 * for any input: no crash or sanitizer report, no write past the output
 * array, every record in range, parse(format(records)) == records, error
 * text printable ASCII, decimal format/parse round trips. Invariants are
 * checked with FUZZ_CHECK (abort), not assert: release builds define NDEBUG.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_check.h"

#include "decimal.h"
#include "protocol.h"

#define FUZZ_CAP 16           /* output slots handed to the parser */
#define FUZZ_MAX_BYTES 4096   /* the fuzzer's -max_len stays below this or not */
#define FUZZ_MAX_RECORDS 12   /* below FUZZ_CAP: the records limit must bite first */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fuzz_check_error_text(const struct proto_error *err)
{
	char buf[512];
	size_t n, i;

	n = proto_format_error(err, buf, sizeof(buf));
	FUZZ_CHECK(n == strlen(buf));
	FUZZ_CHECK(n < sizeof(buf) - 1);          /* never near the bound */
	FUZZ_CHECK(strncmp(buf, "FALSE: ", 7) == 0);
	for (i = 0; i < n; i++)
		FUZZ_CHECK(buf[i] >= 0x20 && buf[i] <= 0x7e);
	FUZZ_CHECK(err->field == NULL || strcmp(err->field, "ticket") == 0 ||
		   strcmp(err->field, "login") == 0 || strcmp(err->field, "volume") == 0);
	FUZZ_CHECK(err->field == NULL || err->line > 0);
}

/* Records -> canonical body -> records again: must be identical. */
static void fuzz_check_roundtrip(const struct record *rec, size_t n)
{
	const struct proto_limits lim = { 1 << 16, FUZZ_CAP };
	char body[FUZZ_CAP * (3 * DEC_STRMAX + 3)];
	char t[DEC_STRMAX], l[DEC_STRMAX], v[DEC_STRMAX];
	struct record again[FUZZ_CAP];
	struct proto_error err;
	size_t len = 0, i;
	int w;

	for (i = 0; i < n; i++) {
		dec_format(rec[i].ticket, 0, 0, t);
		dec_format(rec[i].login, 0, 0, l);
		dec_format(rec[i].volume, DEC_SCALE, 0, v);
		w = snprintf(body + len, sizeof(body) - len, "%s,%s,%s\n", t, l, v);
		FUZZ_CHECK(w > 0 && (size_t)w < sizeof(body) - len);
		len += (size_t)w;
	}
	w = proto_parse(body, len, &lim, again, FUZZ_CAP, &err);
	FUZZ_CHECK(w >= 0 && (size_t)w == n);
	FUZZ_CHECK(memcmp(again, rec, n * sizeof(*rec)) == 0);
}

/* Any value dec_parse accepts formats back to text that parses to it. */
static void fuzz_check_decimal(const uint8_t *data, size_t size)
{
	char buf[DEC_STRMAX];
	int64_t v = 0, back = 0, fee = 0;
	size_t n;
	int rc, scale;

	scale = size ? data[0] % 19 : 8;
	rc = dec_parse((const char *)data, size, scale, DEC_LENIENT, &v, NULL);
	FUZZ_CHECK(rc == 0 || rc == -EINVAL || rc == -ERANGE || rc == -EDOM);
	if (rc == 0) {
		n = dec_format(v, scale, 0, buf);
		FUZZ_CHECK(n == strlen(buf) && n < DEC_STRMAX);
		FUZZ_CHECK(dec_parse(buf, n, scale, v < 0 ? DEC_LENIENT : DEC_STRICT,
				     &back, NULL) == 0);
		FUZZ_CHECK(back == v);
	}
	rc = dec_parse_id((const char *)data, size, &v, NULL);
	FUZZ_CHECK(rc == 0 || rc == -EINVAL || rc == -ERANGE);
	FUZZ_CHECK(rc != 0 || v >= 1);

	/* fee: symmetric in sign and in its two factors */
	if (size >= 16) {
		int64_t a, b, fee2 = 0;

		memcpy(&a, data, 8);
		memcpy(&b, data + 8, 8);
		rc = dec_fee(a, b, &fee);
		FUZZ_CHECK(rc == 0 || rc == -ERANGE);
		FUZZ_CHECK(dec_fee(b, a, &fee2) == rc);
		FUZZ_CHECK(rc != 0 || fee2 == fee);
		if (rc == 0 && a != INT64_MIN && fee != INT64_MIN) {
			FUZZ_CHECK(dec_fee(-a, b, &fee2) == 0);
			FUZZ_CHECK(fee2 == -fee);
		}
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const struct proto_limits lim = { FUZZ_MAX_BYTES, FUZZ_MAX_RECORDS };
	struct record out[FUZZ_CAP + 1];   /* + 1: a canary past cap */
	struct proto_error err;
	const unsigned char *p;
	size_t k, untouched;
	int n, i;

	memset(out, 0xa5, sizeof(out));
	n = proto_parse((const char *)data, size, &lim, out, FUZZ_CAP, &err);
	FUZZ_CHECK(n == -EINVAL || (n >= 1 && n <= FUZZ_MAX_RECORDS));
	/* Nothing is written past the records returned, or past max_records. */
	untouched = n > 0 ? (size_t)n : FUZZ_MAX_RECORDS;
	p = (const unsigned char *)&out[untouched];
	for (k = 0; k < (FUZZ_CAP + 1 - untouched) * sizeof(out[0]); k++)
		FUZZ_CHECK(p[k] == 0xa5);

	if (n < 0) {
		fuzz_check_error_text(&err);
	} else {
		for (i = 0; i < n; i++) {
			FUZZ_CHECK(out[i].ticket >= 1);
			FUZZ_CHECK(out[i].login >= 1);
			FUZZ_CHECK(out[i].volume >= 0);
		}
		fuzz_check_roundtrip(out, (size_t)n);
	}

	fuzz_check_decimal(data, size);
	return 0;
}
