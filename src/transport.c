/*
 * transport.c - ROUTER sockets: bind, receive requests, send replies.
 *
 * Framing (docs/protocol.md): the routing id and every frame up to and
 * including the first empty frame are the envelope, echoed back verbatim;
 * after it, one frame is the body, two are a request id and the body. A
 * DEALER that sends no delimiter gets the same rule on the frames after
 * the routing id. ROUTER_MANDATORY makes a full or vanished peer visible
 * instead of a silent drop. Main thread only; created after the last fork.
 */
#include "transport.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "log.h"
#include "protocol.h"

#define MAX_SOCKETS 16
#define MAX_FRAMES 32          /* frames per message we keep; more is malformed */
#define ENDPOINT_MAX 256

struct transport {
	void *ctx;
	void *socks[MAX_SOCKETS];
	char names[MAX_SOCKETS][ENDPOINT_MAX];
	unsigned n;
	unsigned next;             /* round-robin start for fairness */
	struct proto_limits lim;
	char endpoints[MAX_SOCKETS * ENDPOINT_MAX];
};

static int set_int(void *s, int opt, int v) { return zmq_setsockopt(s, opt, &v, sizeof(v)); }

int transport_open(const struct feed_config *cfg, struct transport **ret, char *err, size_t errsz)
{
	struct transport *t = calloc(1, sizeof(*t));
	char *list = NULL, *save = NULL;
	int r = 0;

	if (!t)
		return -ENOMEM;
	t->lim.max_bytes = (size_t)cfg->max_message_bytes;
	t->lim.max_records = (size_t)cfg->max_records;
	t->ctx = zmq_ctx_new();
	list = strdup(cfg->endpoint);
	if (!t->ctx || !list) {
		r = -ENOMEM;
		snprintf(err, errsz, "cannot create the ZeroMQ context: %s", zmq_strerror(errno));
		goto fail;
	}
	for (char *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		tok += strspn(tok, " \t");
		tok[strcspn(tok, " \t")] = '\0';
		if (!*tok)
			continue;
		if (t->n == MAX_SOCKETS) {
			r = -E2BIG;
			snprintf(err, errsz, "[listen] endpoint: more than %d endpoints", MAX_SOCKETS);
			goto fail;
		}
		void *s = zmq_socket(t->ctx, ZMQ_ROUTER);
		int64_t maxmsg = 4 * (int64_t)cfg->max_message_bytes;
		if (!s || set_int(s, ZMQ_ROUTER_MANDATORY, 1) || set_int(s, ZMQ_SNDHWM, cfg->hwm) ||
		    set_int(s, ZMQ_RCVHWM, cfg->hwm) || set_int(s, ZMQ_LINGER, 1000) ||
		    zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &maxmsg, sizeof(maxmsg))) {
			r = -errno;
			snprintf(err, errsz, "cannot create a ZeroMQ ROUTER socket: %s", zmq_strerror(errno));
			if (s)
				zmq_close(s);
			goto fail;
		}
		t->socks[t->n] = s;
		if (zmq_bind(s, tok) != 0) {
			r = -errno;
			snprintf(err, errsz, "cannot bind %s: %s", tok, zmq_strerror(errno));
			t->n++;
			goto fail;
		}
		size_t len = sizeof(t->names[t->n]);
		if (zmq_getsockopt(s, ZMQ_LAST_ENDPOINT, t->names[t->n], &len) != 0)
			snprintf(t->names[t->n], sizeof(t->names[t->n]), "%s", tok);
		size_t used = strlen(t->endpoints);
		snprintf(t->endpoints + used, sizeof(t->endpoints) - used, "%s%s", used ? "," : "",
			 t->names[t->n]);
		t->n++;
	}
	free(list);
	*ret = t;
	return 0;
fail:
	free(list);
	transport_close(&t);
	return r;
}

void transport_close(struct transport **pt)
{
	struct transport *t = *pt;

	if (!t)
		return;
	for (unsigned i = 0; i < t->n; i++)
		zmq_close(t->socks[i]);
	if (t->ctx)
		zmq_ctx_term(t->ctx);
	free(t);
	*pt = NULL;
}

const char *transport_endpoints(const struct transport *t) { return t->endpoints; }

int transport_poll(struct transport *t, bool want_input, const int *fds, size_t nfds,
		   int timeout_ms, unsigned *ret_fds, bool *ret_input)
{
	zmq_pollitem_t items[MAX_SOCKETS + 8];
	size_t n = 0;

	*ret_fds = 0;
	*ret_input = false;
	for (size_t i = 0; i < nfds && i < 8; i++)
		items[n++] = (zmq_pollitem_t){ .fd = fds[i], .events = ZMQ_POLLIN };
	if (want_input)
		for (unsigned i = 0; i < t->n; i++)
			items[n++] = (zmq_pollitem_t){ .socket = t->socks[i], .events = ZMQ_POLLIN };
	int r = zmq_poll(items, (int)n, timeout_ms);
	if (r < 0)
		return errno == EINTR ? 0 : -errno;
	for (size_t i = 0; i < n; i++) {
		if (!(items[i].revents & ZMQ_POLLIN))
			continue;
		if (i < nfds)
			*ret_fds |= 1u << i;
		else
			*ret_input = true;
	}
	return 0;
}

/* Counts the records a body can hold at most: its lines. */
static size_t max_lines(const char *b, size_t len, size_t cap)
{
	size_t n = 1;

	for (const char *p = b, *end = b + len; n <= cap && (p = memchr(p, '\n', (size_t)(end - p))); p++)
		n++;
	return n < cap ? n : cap;
}

/* Builds the request from the frames; frames stay owned by the caller. */
static struct request *build(struct transport *t, unsigned sock, zmq_msg_t *f, unsigned nf, bool truncated)
{
	unsigned nenv = 1, rest;
	bool delimited = false;
	const char *why = NULL;
	zmq_msg_t *id = NULL, *body = NULL;
	size_t env_len = 0, nrec = 0, body_len;
	char endpoint[ENDPOINT_MAX + 80];
	struct request *r;

	for (unsigned i = 1; i < nf; i++)
		if (zmq_msg_size(&f[i]) == 0) {
			nenv = i + 1;
			delimited = true;
			break;
		}
	rest = nf - nenv;
	if (truncated)
		why = "malformed message: too many frames";
	else if (rest == 1)
		body = &f[nenv];
	else if (rest == 2 && zmq_msg_size(&f[nenv]) > 0 && zmq_msg_size(&f[nenv]) <= 255) {
		id = &f[nenv];
		body = &f[nenv + 1];
	} else if (rest == 2)
		why = "malformed message: the request id frame must be 1..255 bytes";
	else
		why = "malformed message: expected the body, or a request id and the body, after the envelope";
	if (!body && rest > 0)
		body = &f[nf - 1]; /* kept verbatim in fee_reject */

	for (unsigned i = 0; i < nenv; i++) {
		if (zmq_msg_size(&f[i]) > 65535)
			return NULL;
		env_len += 2 + zmq_msg_size(&f[i]);
	}
	body_len = body ? zmq_msg_size(body) : 0;
	if (!why && body_len <= t->lim.max_bytes)
		nrec = max_lines(zmq_msg_data(body), body_len, t->lim.max_records);

	/* "endpoint peer address", without printf: this runs for every request */
	const char *pa = zmq_msg_gets(&f[nf - 1], "Peer-Address");
	size_t elen = strlen(t->names[sock]);
	memcpy(endpoint, t->names[sock], elen);
	if (pa) {
		size_t pl = strnlen(pa, 63);
		memcpy(endpoint + elen, " peer ", 6);
		memcpy(endpoint + elen + 6, pa, pl);
		elen += 6 + pl;
	}
	endpoint[elen] = '\0';

	size_t size = sizeof(*r) + nrec * sizeof(struct record) + env_len +
		      (id ? zmq_msg_size(id) : 0) + body_len + elen + 1;
	r = malloc(size);
	if (!r)
		return NULL;
	memset(r, 0, sizeof(*r));
	unsigned char *p = (unsigned char *)(r + 1);
	struct record *recs = (struct record *)p;
	p += nrec * sizeof(struct record);
	r->env = p;
	for (unsigned i = 0; i < nenv; i++) {
		size_t fl = zmq_msg_size(&f[i]);
		*p++ = (unsigned char)(fl >> 8);
		*p++ = (unsigned char)fl;
		memcpy(p, zmq_msg_data(&f[i]), fl);
		p += fl;
	}
	r->env_len = env_len;
	r->nenv = nenv;
	r->delimited = delimited;
	if (id) {
		r->id = p;
		r->id_len = zmq_msg_size(id);
		memcpy(p, zmq_msg_data(id), r->id_len);
		p += r->id_len;
	}
	r->sr.body = p;
	r->sr.len = body_len;
	if (body_len)
		memcpy(p, zmq_msg_data(body), body_len);
	p += body_len;
	memcpy(p, endpoint, elen + 1);
	r->sr.endpoint = (const char *)p;
	r->sock = sock;

	if (why) {
		r->sr.bad_input = true;
		r->sr.rejected = true;
		snprintf(r->sr.reason, sizeof(r->sr.reason), "%s", why);
		return r;
	}
	struct proto_error pe;
	int n = proto_parse(r->sr.body, body_len, &t->lim, recs, nrec, &pe);
	if (n < 0) {
		char text[sizeof(r->sr.reason) + 8];
		proto_format_error(&pe, text, sizeof(text));
		/* stored and sent without the "FALSE: " prefix the formatter adds */
		snprintf(r->sr.reason, sizeof(r->sr.reason), "%.255s",
			 strncmp(text, "FALSE: ", 7) == 0 ? text + 7 : text);
		r->sr.bad_input = true;
		r->sr.rejected = true;
		return r;
	}
	r->sr.recs = recs;
	r->sr.n = (size_t)n;
	return r;
}

int transport_recv(struct transport *t, struct request **ret)
{
	for (unsigned k = 0; k < t->n; k++) {
		unsigned sock = (t->next + k) % t->n;
		void *s = t->socks[sock];
		zmq_msg_t f[MAX_FRAMES];
		unsigned nf = 0;
		bool truncated = false;
		int more = 1;

		zmq_msg_init(&f[0]);
		if (zmq_msg_recv(&f[0], s, ZMQ_DONTWAIT) < 0) {
			int e = errno;
			zmq_msg_close(&f[0]);
			if (e == EAGAIN || e == EINTR)
				continue;
			return -e;
		}
		nf = 1;
		more = zmq_msg_more(&f[0]);
		while (more) {
			zmq_msg_t *m = nf < MAX_FRAMES ? &f[nf] : &f[MAX_FRAMES - 1];
			if (nf >= MAX_FRAMES) {
				/* keep draining the message; the overflow frames are dropped */
				zmq_msg_close(m);
				truncated = true;
			}
			zmq_msg_init(m);
			int rc;
			do /* the rest of a message is already here: this does not block */
				rc = zmq_msg_recv(m, s, 0);
			while (rc < 0 && errno == EINTR);
			if (rc < 0) {
				int e = errno;
				for (unsigned i = 0; i < nf; i++)
					if (&f[i] != m)
						zmq_msg_close(&f[i]);
				zmq_msg_close(m);
				return -e;
			}
			more = zmq_msg_more(m);
			if (nf < MAX_FRAMES)
				nf++;
		}
		t->next = (sock + 1) % t->n;
		struct request *r = nf >= 2 ? build(t, sock, f, nf, truncated) : NULL;
		if (!r)
			log_warn("%s: dropped a message that cannot be answered (%u frames)", t->names[sock], nf);
		for (unsigned i = 0; i < nf; i++)
			zmq_msg_close(&f[i]);
		if (!r)
			return 0;
		*ret = r;
		return 1;
	}
	return 0;
}

int transport_reply(struct transport *t, struct request *r)
{
	void *s = t->socks[r->sock];
	const unsigned char *p = r->env;
	char text[sizeof(r->sr.reason) + 8] = "TRUE";
	size_t len = 4;

	if (r->sr.rejected) {
		len = (size_t)snprintf(text, sizeof(text), "FALSE: %s", r->sr.reason);
		if (len >= sizeof(text))
			len = sizeof(text) - 1;
	}
	for (unsigned i = 0; i < r->nenv; i++) {
		size_t fl = ((size_t)p[0] << 8) | p[1];
		if (zmq_send(s, p + 2, fl, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
			if (i > 0)
				return -errno; /* cannot happen: the message is queued whole */
			if (errno == EAGAIN)
				return -EAGAIN;
			if (errno == EHOSTUNREACH) {
				log_debug("%s: peer gone, reply dropped (the client re-sends)", r->sr.endpoint);
				return 0;
			}
			return -errno;
		}
		p += 2 + fl;
	}
	if (r->id && zmq_send(s, r->id, r->id_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
		return -errno;
	if (zmq_send(s, text, len, ZMQ_DONTWAIT) < 0)
		return -errno;
	return 0;
}
