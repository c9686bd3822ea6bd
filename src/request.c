/*
 * request.c - frames in, one request out (see request.h). Pure; runs on the
 * main thread for every message, so it avoids printf on the good path.
 *
 * Framing (docs/protocol.md): the routing id and every frame up to and
 * including the first empty frame are the envelope, echoed back verbatim;
 * after it, one frame is the body, two are a request id and the body. A
 * DEALER that sends no delimiter gets the same rule on the frames after
 * the routing id.
 */
#include "request.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Counts the records a body can hold at most: its lines. */
static size_t max_lines(const char *b, size_t len, size_t cap)
{
	size_t n = 1;

	for (const char *p = b, *end = b + len; n <= cap && (p = memchr(p, '\n', (size_t)(end - p))); p++)
		n++;
	return n < cap ? n : cap;
}

static void reject(struct request *r, const char *why)
{
	r->sr.bad_input = true;
	r->sr.rejected = true;
	snprintf(r->sr.reason, sizeof(r->sr.reason), "%.255s", why);
}

struct request *request_from_frames(const struct frame *f, unsigned nf, size_t total,
				    const struct proto_limits *lim, const char *where, const char *source,
				    unsigned sock)
{
	unsigned nenv = 1, rest;
	bool delimited = false;
	char why[sizeof(((struct store_req *)0)->reason)] = "";
	const struct frame *id = NULL, *body = NULL;
	size_t env_len = 0, nrec = 0, body_len, wlen = strlen(where);
	size_t slen;
	struct request *r;

	if (!source)
		source = "";
	slen = strnlen(source, REQUEST_SOURCE_MAX);
	if (nf > REQUEST_MAX_FRAMES)
		nf = REQUEST_MAX_FRAMES;
	for (unsigned i = 1; i < nf; i++)
		if (f[i].len == 0) {
			nenv = i + 1;
			delimited = true;
			break;
		}
	rest = nf - nenv;
	if (total > REQUEST_MAX_FRAMES)
		snprintf(why, sizeof(why), "malformed message: %zu frames (at most %d)", total,
			 REQUEST_MAX_FRAMES);
	else if (rest == 1)
		body = &f[nenv];
	else if (rest == 2 && f[nenv].len > 0 && f[nenv].len <= 255) {
		id = &f[nenv];
		body = &f[nenv + 1];
	} else if (rest == 2)
		snprintf(why, sizeof(why), "malformed message: the request id frame must be 1..255 bytes");
	else
		snprintf(why, sizeof(why),
			 "malformed message: expected the body, or a request id and the body, after the envelope");
	if (!body && rest > 0)
		body = &f[nf - 1]; /* kept verbatim in fee_reject */

	for (unsigned i = 0; i < nenv; i++)
		env_len += 4 + f[i].len;
	body_len = body ? body->len : 0;
	if (!why[0] && body_len <= lim->max_bytes)
		nrec = max_lines(body->data, body_len, lim->max_records);

	size_t size = sizeof(*r) + nrec * sizeof(struct record) + env_len +
		      (id ? id->len : 0) + body_len + wlen + 1 + slen + 1;
	r = malloc(size);
	if (!r)
		return NULL;
	memset(r, 0, sizeof(*r));
	r->cost = size;
	unsigned char *p = (unsigned char *)(r + 1);
	struct record *recs = (struct record *)p;
	p += nrec * sizeof(struct record);
	r->env = p;
	for (unsigned i = 0; i < nenv; i++) {
		size_t fl = f[i].len;
		p[0] = (unsigned char)(fl >> 24);
		p[1] = (unsigned char)(fl >> 16);
		p[2] = (unsigned char)(fl >> 8);
		p[3] = (unsigned char)fl;
		memcpy(p + 4, f[i].data, fl);
		p += 4 + fl;
	}
	r->env_len = env_len;
	r->nenv = nenv;
	r->delimited = delimited;
	if (id) {
		r->id = p;
		r->id_len = id->len;
		memcpy(p, id->data, id->len);
		p += id->len;
	}
	r->sr.body = p;
	r->sr.len = body_len;
	if (body_len)
		memcpy(p, body->data, body_len);
	p += body_len;
	memcpy(p, where, wlen + 1);
	r->sr.endpoint = (const char *)p;
	p += wlen + 1;
	memcpy(p, source, slen);
	p[slen] = '\0';
	r->sr.source = (const char *)p;
	r->sock = sock;

	if (why[0]) {
		reject(r, why);
		return r;
	}
	struct proto_error pe;
	int n = proto_parse(r->sr.body, body_len, lim, recs, nrec, &pe);
	if (n < 0) {
		char text[sizeof(r->sr.reason) + 8];
		proto_format_error(&pe, text, sizeof(text));
		/* stored and sent without the "FALSE: " prefix the formatter adds */
		reject(r, strncmp(text, "FALSE: ", 7) == 0 ? text + 7 : text);
		return r;
	}
	r->sr.recs = recs;
	r->sr.n = (size_t)n;
	return r;
}

const unsigned char *request_env_next(const unsigned char **cursor, size_t *ret_len)
{
	const unsigned char *p = *cursor;

	*ret_len = (size_t)p[0] << 24 | (size_t)p[1] << 16 | (size_t)p[2] << 8 | p[3];
	*cursor = p + 4 + *ret_len;
	return p + 4;
}

bool request_same_peer(const struct request *a, const struct request *b)
{
	const unsigned char *pa = a->env, *pb = b->env;
	size_t la, lb;
	const unsigned char *ia = request_env_next(&pa, &la), *ib = request_env_next(&pb, &lb);

	return a->sock == b->sock && la == lb && memcmp(ia, ib, la) == 0;
}

void request_free(struct request *r)
{
	free(r);
}
