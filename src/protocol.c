/*
 * protocol.c - request bodies -> records, and the text of a rejection.
 *
 * Owns the record grammar of docs/protocol.md: lines of
 * "ticket,login,volume", blank lines skipped, CRLF accepted, the body limits,
 * and the wording of every parse error. The error text is built only from
 * printable ASCII so it is safe to send back and to store. Pure: no I/O, no
 * allocation, no state; the transport thread calls it for each message, and
 * it is the fuzzing target (tests/fuzz/fuzz_protocol.c).
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "decimal.h"
#include "protocol.h"

#define PROTO_QUOTE_MAX 40   /* bytes of a field quoted back in an error */

static bool proto_isblank(char c)
{
	return c == ' ' || c == '\t';
}

/* Bytes allowed inside a line: printable ASCII, space and tab. */
static bool proto_isallowed(unsigned char c)
{
	return (c >= 0x20 && c <= 0x7e) || c == '\t';
}

static void proto_set_error(struct proto_error *err, size_t line, const char *field,
			    const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static void proto_set_error(struct proto_error *err, size_t line, const char *field,
			    const char *fmt, ...)
{
	va_list ap;

	err->line = line;
	err->field = field;
	va_start(ap, fmt);
	vsnprintf(err->reason, sizeof(err->reason), fmt, ap);
	va_end(ap);
}

/*
 * Quotes s[0..len) into buf as printable ASCII: '"', '\\' and anything not
 * printable become \xNN. At most PROTO_QUOTE_MAX output bytes of the text,
 * then "..." if some of it was cut. buf must hold PROTO_QUOTE_MAX + 6 bytes.
 */
static void proto_quote(const char *s, size_t len, char *buf)
{
	static const char hex[] = "0123456789abcdef";
	size_t i, n = 0;

	buf[n++] = '"';
	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		bool plain = c >= 0x20 && c <= 0x7e && c != '"' && c != '\\';
		size_t need = plain ? 1 : 4;

		if (n - 1 + need > PROTO_QUOTE_MAX)
			break;
		if (plain) {
			buf[n++] = (char)c;
		} else {
			buf[n++] = '\\';
			buf[n++] = 'x';
			buf[n++] = hex[c >> 4];
			buf[n++] = hex[c & 0xf];
		}
	}
	buf[n++] = '"';
	if (i < len) {
		memcpy(buf + n, "...", 3);
		n += 3;
	}
	buf[n] = '\0';
}

/* A field with spaces and tabs around it removed. */
struct proto_span {
	const char *p;
	size_t len;
};

static struct proto_span proto_trim(const char *p, size_t len)
{
	while (len && proto_isblank(p[0])) {
		p++;
		len--;
	}
	while (len && proto_isblank(p[len - 1]))
		len--;
	return (struct proto_span){ p, len };
}

static int proto_field_error(struct proto_error *err, size_t line, const char *field,
			     struct proto_span f, const char *why)
{
	char q[PROTO_QUOTE_MAX + 6];

	if (f.len == 0) {
		proto_set_error(err, line, field, "missing");
	} else {
		proto_quote(f.p, f.len, q);
		proto_set_error(err, line, field, "%s in %s", why, q);
	}
	return -EINVAL;
}

static int proto_parse_id(struct proto_span f, size_t line, const char *field,
			  int64_t *ret, struct proto_error *err)
{
	const char *why = "invalid";

	if (dec_parse_id(f.p, f.len, ret, &why) < 0)
		return proto_field_error(err, line, field, f, why);
	return 0;
}

static int proto_parse_volume(struct proto_span f, size_t line, int64_t *ret,
			      struct proto_error *err)
{
	const char *why = "not a decimal number";
	int r;

	r = dec_parse(f.p, f.len, DEC_SCALE, DEC_STRICT, ret, &why);
	if (r == -EDOM)
		why = "more than 8 fractional digits";
	else if (r == -ERANGE)
		why = "out of range (max 92233720368.54775807)";
	if (r < 0)
		return proto_field_error(err, line, "volume", f, why);
	return 0;
}

/* Parses one non-blank line (bytes already checked) into *rec. */
static int proto_parse_line(const char *p, size_t len, size_t line, struct record *rec,
			    struct proto_error *err)
{
	const char *c1, *c2;
	struct proto_span t, l, v;
	size_t commas = 0, i;
	int r;

	for (i = 0; i < len; i++)
		if (p[i] == ',')
			commas++;
	if (commas != 2) {
		proto_set_error(err, line, NULL,
				"expected 3 fields (ticket,login,volume), got %zu", commas + 1);
		return -EINVAL;
	}
	c1 = memchr(p, ',', len);
	c2 = memchr(c1 + 1, ',', len - (size_t)(c1 + 1 - p));
	t = proto_trim(p, (size_t)(c1 - p));
	l = proto_trim(c1 + 1, (size_t)(c2 - c1 - 1));
	v = proto_trim(c2 + 1, len - (size_t)(c2 + 1 - p));

	r = proto_parse_id(t, line, "ticket", &rec->ticket, err);
	if (r == 0)
		r = proto_parse_id(l, line, "login", &rec->login, err);
	if (r == 0)
		r = proto_parse_volume(v, line, &rec->volume, err);
	return r;
}

int proto_parse(const char *body, size_t len, const struct proto_limits *lim,
		struct record *out, size_t cap, struct proto_error *err)
{
	size_t pos = 0, line = 0, n = 0, max, i, end, next;
	const char *nl;
	bool blank;
	struct record rec;

	err->line = 0;
	err->field = NULL;
	err->reason[0] = '\0';

	if (len > lim->max_bytes) {
		proto_set_error(err, 0, NULL, "request too large (%zu bytes, max %zu)", len,
				lim->max_bytes);
		return -EINVAL;
	}
	max = lim->max_records < cap ? lim->max_records : cap;
	if (max > INT_MAX)
		max = INT_MAX;

	while (pos < len) {
		line++;
		nl = memchr(body + pos, '\n', len - pos);
		if (nl) {
			end = (size_t)(nl - body);
			next = end + 1;
			if (end > pos && body[end - 1] == '\r')
				end--;
		} else {
			end = len;
			next = len;
		}

		blank = true;
		for (i = pos; i < end; i++) {
			unsigned char c = (unsigned char)body[i];

			if (!proto_isallowed(c)) {
				proto_set_error(err, line, NULL, "invalid byte 0x%02x at column %zu",
						c, i - pos + 1);
				return -EINVAL;
			}
			if (!proto_isblank((char)c))
				blank = false;
		}
		if (!blank) {
			if (n >= max) {
				proto_set_error(err, 0, NULL, "too many records (max %zu)", max);
				return -EINVAL;
			}
			if (proto_parse_line(body + pos, end - pos, line, &rec, err) < 0)
				return -EINVAL;
			out[n++] = rec;
		}
		pos = next;
	}

	if (n == 0) {
		proto_set_error(err, 0, NULL, "empty request");
		return -EINVAL;
	}
	return (int)n;
}

size_t proto_format_error(const struct proto_error *err, char *buf, size_t size)
{
	int r;
	size_t n, i;

	if (size == 0)
		return 0;
	if (err->line == 0)
		r = snprintf(buf, size, "FALSE: %s", err->reason);
	else if (err->field)
		r = snprintf(buf, size, "FALSE: line %zu: %s: %s", err->line, err->field,
			     err->reason);
	else
		r = snprintf(buf, size, "FALSE: line %zu: %s", err->line, err->reason);
	if (r < 0) {
		buf[0] = '\0';
		return 0;
	}
	n = (size_t)r < size ? (size_t)r : size - 1;
	/* The reason is ours and clean, but a caller may have filled err itself. */
	for (i = 0; i < n; i++)
		if (!(buf[i] >= 0x20 && buf[i] <= 0x7e))
			buf[i] = '?';
	return n;
}
