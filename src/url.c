/*
 * url.c - database URLs: parsing (url.h) and redaction for logs.
 *
 * The parser follows RFC 3986's generic syntax as libpq and MySQL's
 * connectors use it: the authority ends at the first '/', '?' or '#', its
 * userinfo at the last '@' in it, so a password must percent-encode those
 * four; errors say so without quoting the userinfo. Redaction is more
 * cautious than the parser: it hides up to the last '@' before the query,
 * so an unencoded '/', '#' or '@' in a password is hidden too.
 * Pure, no I/O: linked into feed, the unit tests and anything else.
 */
#include "url.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define URL_ENCODE_HINT "percent-encode '/', '?', '#' and '@' in the user and password"

struct url_parser {
	const char *text;
	char *err;
	size_t errsz;
};

__attribute__((format(printf, 3, 4)))
static int url_fail(struct url_parser *p, const char *at, const char *fmt, ...)
{
	char why[200];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	snprintf(p->err, p->errsz, "byte %zu: %s", (size_t)(at - p->text), why);
	return -EINVAL;
}

static int url_hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Percent-decodes s[0..len) (part names it in errors) into a new string in *ret. */
static int url_decode(struct url_parser *p, const char *s, size_t len, const char *part,
		      char **ret)
{
	char *out = malloc(len + 1);
	size_t o = 0;

	if (!out) {
		snprintf(p->err, p->errsz, "out of memory");
		return -ENOMEM;
	}
	for (size_t i = 0; i < len; i++) {
		char c = s[i];

		if (c == '%') {
			int hi = -1, lo = -1;

			if (len - i >= 3) {
				hi = url_hexval(s[i + 1]);
				lo = url_hexval(s[i + 2]);
			}
			if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
				free(out);
				return url_fail(p, s + i, "bad percent-escape in the %s: '%%' must be "
						"followed by two hex digits, and %%00 (NUL) is not "
						"allowed", part);
			}
			c = (char)(hi << 4 | lo);
			i += 2;
		}
		out[o++] = c;
	}
	out[o] = '\0';
	*ret = out;
	return 0;
}

/* A port: 1..65535, digits only. Not quoted: with an unencoded '/' it may be a password's. */
static int url_port(struct url_parser *p, const char *s, size_t len, unsigned int *ret)
{
	unsigned long v = 0;

	for (size_t i = 0; i < len && i < 6; i++) {
		if (s[i] < '0' || s[i] > '9') {
			v = 0;
			break;
		}
		v = v * 10 + (unsigned long)(s[i] - '0');
	}
	if (len == 0 || len > 5 || v < 1 || v > 65535)
		return url_fail(p, s, "port must be 1..65535 (" URL_ENCODE_HINT ")");
	*ret = (unsigned int)v;
	return 0;
}

/* One host[:port] or [v6][:port] of s[0..len). */
static int url_host(struct url_parser *p, const char *s, size_t len, struct url_host *h)
{
	const char *end = s + len, *name = s, *name_end, *colon;

	if (len > 0 && *s == '[') {
		const char *rb = memchr(s, ']', len);

		if (!rb)
			return url_fail(p, s, "'[' of an IPv6 address has no ']'");
		name = s + 1;
		name_end = rb;
		colon = rb + 1 < end ? rb + 1 : NULL;
		if (colon && *colon != ':')
			return url_fail(p, colon, "unexpected text after ']' (a port follows ':')");
	} else {
		colon = memchr(s, ':', len);
		name_end = colon ? colon : end;
	}
	if (colon) {
		int r = url_port(p, colon + 1, (size_t)(end - colon - 1), &h->port);
		if (r < 0)
			return r;
	}
	return url_decode(p, name, (size_t)(name_end - name), "host", &h->name);
}

/* host[:port][,host[:port]...] of s[0..len); nothing at all is no host. */
static int url_hosts(struct url_parser *p, const char *s, size_t len, struct url *u)
{
	const char *end = s + len;

	if (len == 0)
		return 0;
	for (const char *h = s;;) {
		const char *comma = h, *next;
		int r;

		/* a ',' inside an IPv6 literal's brackets does not occur; skip them anyway */
		if (*h == '[') {
			const char *rb = memchr(h, ']', (size_t)(end - h));
			comma = rb ? rb : h;
		}
		next = memchr(comma, ',', (size_t)(end - comma));
		if (!next)
			next = end;
		if (next == h)
			return url_fail(p, h, "empty host in the host list");
		if (u->nhosts == URL_HOSTS_MAX)
			return url_fail(p, h, "more than %d hosts", URL_HOSTS_MAX);
		r = url_host(p, h, (size_t)(next - h), &u->hosts[u->nhosts]);
		if (r < 0)
			return r;
		u->nhosts++;
		if (next == end)
			return 0;
		h = next + 1;
		if (h == end)
			return url_fail(p, h, "empty host in the host list");
	}
}

/* key=value&... of s (to its end); empty pieces ("a=1&&b=2") are skipped. */
static int url_params(struct url_parser *p, const char *s, struct url *u)
{
	while (*s) {
		size_t len = strcspn(s, "&");
		const char *eq = memchr(s, '=', len);
		struct url_param *kv;
		int r;

		if (len == 0) {
			s++;
			continue;
		}
		if (!eq)
			return url_fail(p, s, "parameter \"%.*s\" has no value (key=value)",
					(int)(len > 64 ? 64 : len), s);
		if (eq == s)
			return url_fail(p, s, "parameter with an empty name");
		if (u->nparams == URL_PARAMS_MAX)
			return url_fail(p, s, "more than %d parameters", URL_PARAMS_MAX);
		kv = &u->params[u->nparams];
		r = url_decode(p, s, (size_t)(eq - s), "parameter name", &kv->key);
		if (r == 0)
			r = url_decode(p, eq + 1, len - (size_t)(eq - s) - 1, "parameter value",
				       &kv->value);
		if (r < 0) {
			free(kv->key);
			kv->key = NULL;
			return r;
		}
		u->nparams++;
		s += len;
		if (*s == '&')
			s++;
	}
	return 0;
}

static int url_scheme(struct url_parser *p, const char *s, struct url *u, const char **ret_rest)
{
	size_t n = strcspn(s, ":/?#@");

	if (n == 0 || strncmp(s + n, "://", 3) != 0)
		return url_fail(p, s + n, "expected scheme://..., e.g. mysql://host/database");
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			  (i > 0 && ((c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.'));
		if (!ok)
			return url_fail(p, s + i, "a scheme holds letters, digits, '+', '-' and "
					"'.', starting with a letter");
	}
	u->scheme = strndup(s, n);
	if (!u->scheme) {
		snprintf(p->err, p->errsz, "out of memory");
		return -ENOMEM;
	}
	*ret_rest = s + n + 3;
	return 0;
}

static int url_parse_into(struct url_parser *p, struct url *u)
{
	const char *auth = NULL, *auth_end, *at = NULL, *hp, *path, *tail;
	int r;

	r = url_scheme(p, p->text, u, &auth);
	if (r < 0)
		return r;
	auth_end = auth + strcspn(auth, "/?#");
	for (const char *c = auth; c < auth_end; c++)
		if (*c == '@')
			at = c;
	hp = auth;
	if (at) {
		const char *colon = memchr(auth, ':', (size_t)(at - auth));

		r = url_decode(p, auth, (size_t)((colon ? colon : at) - auth), "user", &u->user);
		if (r == 0 && colon)
			r = url_decode(p, colon + 1, (size_t)(at - colon - 1), "password",
				       &u->password);
		if (r < 0)
			return r;
		if (!u->user[0]) {
			free(u->user);
			u->user = NULL;
		}
		hp = at + 1;
	}
	r = url_hosts(p, hp, (size_t)(auth_end - hp), u);
	if (r < 0)
		return r;
	tail = auth_end;
	if (*tail == '/') {
		path = tail + 1;
		tail = path + strcspn(path, "?#");
		r = url_decode(p, path, (size_t)(tail - path), "database name", &u->database);
		if (r < 0)
			return r;
	}
	if (*tail == '?') {
		const char *hash = strchr(tail, '#');

		if (hash)
			tail = hash;
		else
			return url_params(p, tail + 1, u);
	}
	if (*tail == '#')
		return url_fail(p, tail, "fragments ('#') are not allowed (" URL_ENCODE_HINT ")");
	return 0;
}

int url_parse(const char *text, struct url *ret, char *err, size_t errsz)
{
	struct url_parser p = { text, err, errsz };
	int r;

	memset(ret, 0, sizeof(*ret));
	if (!text) {
		snprintf(err, errsz, "no URL");
		return -EINVAL;
	}
	r = url_parse_into(&p, ret);
	if (r < 0)
		url_free(ret);
	return r;
}

void url_free(struct url *u)
{
	if (!u)
		return;
	free(u->scheme);
	free(u->user);
	if (u->password) {
		explicit_bzero(u->password, strlen(u->password));
		free(u->password);
	}
	for (size_t i = 0; i < u->nhosts; i++)
		free(u->hosts[i].name);
	free(u->database);
	for (size_t i = 0; i < u->nparams; i++) {
		free(u->params[i].key);
		if (u->params[i].value) {
			explicit_bzero(u->params[i].value, strlen(u->params[i].value));
			free(u->params[i].value);
		}
	}
	memset(u, 0, sizeof(*u));
}

const char *url_param(const struct url *u, const char *key)
{
	for (size_t i = u->nparams; i-- > 0;)
		if (!strcmp(u->params[i].key, key))
			return u->params[i].value;
	return NULL;
}

const char *url_password_raw(const char *url, size_t *ret_len)
{
	const char *auth = url ? strstr(url, "://") : NULL, *end, *at = NULL, *colon;

	if (!auth)
		return NULL;
	auth += 3;
	end = auth + strcspn(auth, "?");
	for (const char *c = auth; c < end; c++)
		if (*c == '@')
			at = c;
	if (!at)        /* a '?' in the password itself: up to the last '@' of all */
		at = strrchr(auth, '@');
	if (!at)
		return NULL;
	colon = memchr(auth, ':', (size_t)(at - auth));
	if (!colon)
		return NULL;
	*ret_len = (size_t)(at - colon - 1);
	return colon + 1;
}

/* Appends s[0..n) to buf, cut at size. */
static void url_put(char *buf, size_t size, size_t *len, const char *s, size_t n)
{
	if (*len + 1 >= size)
		return;
	if (n > size - 1 - *len)
		n = size - 1 - *len;
	memcpy(buf + *len, s, n);
	*len += n;
	buf[*len] = '\0';
}

void url_redact(const char *url, char *buf, size_t size)
{
	const char *pw, *s, *q;
	size_t len = 0, pwlen = 0;

	if (size == 0)
		return;
	buf[0] = '\0';
	if (!url)
		return;
	pw = url_password_raw(url, &pwlen);
	s = url;
	if (pw) {
		url_put(buf, size, &len, s, (size_t)(pw - s));
		url_put(buf, size, &len, "***", 3);
		s = pw + pwlen;
	}
	/* a password parameter (libpq takes one): ?password=***&... */
	q = strchr(s, '?');
	while (q) {
		const char *v = q + 1, *e;

		if (strncmp(v, "password=", 9) != 0) {
			q = strchr(v, '&');
			continue;
		}
		v += 9;
		e = v + strcspn(v, "&#");
		url_put(buf, size, &len, s, (size_t)(v - s));
		url_put(buf, size, &len, "***", 3);
		s = e;
		q = *e == '&' ? e : NULL;
	}
	url_put(buf, size, &len, s, strlen(s));
}

void url_scrub(char *msg, const char *secret)
{
	size_t sl, stars;
	char *at = msg;

	if (!secret || !*secret)
		return;
	sl = strlen(secret);
	stars = sl < 3 ? sl : 3;
	while ((at = strstr(at, secret)) != NULL) {
		memset(at, '*', stars);
		memmove(at + stars, at + sl, strlen(at + sl) + 1);
		at += stars;
	}
}
