/*
 * transport.c - ROUTER sockets: bind, receive requests, send replies.
 *
 * Framing rules live in request.c. Every frame of a message is read (ZeroMQ
 * delivers messages whole); past REQUEST_MAX_FRAMES they are drained, and
 * past DROP_FRAMES the sender's connection is dropped. ROUTER_MANDATORY makes a full or vanished peer visible
 * instead of a silent drop. Main thread only; created after the last fork.
 *
 * Security (docs/security.md): with [listen] curve_server_cert every
 * endpoint but ipc:// is a CURVE server; with CURVE or an allow list the
 * ZAP handler (auth.c) is bound before any endpoint and polled here, and
 * network endpoints get a ZAP domain so that plain (NULL) handshakes are
 * checked against the allow list too. Each request on a CURVE endpoint is
 * checked against the current client set: a removed certificate refuses
 * the connection's next request ("FALSE: not authorized"), unstored.
 */
#include "transport.h"

#include <errno.h>
#include <malloc.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <zmq.h>

#include "auth.h"
#include "log.h"
#include "metrics.h"
#include "protocol.h"
#include "ratelimit.h"
#include "timeutil.h"

#define MAX_SOCKETS 16
#define ENDPOINT_MAX 256
#define DROP_FRAMES 1024       /* a message of more frames drops its peer's connection */
#define ZAP_BURST 256          /* handshakes answered per poll */
#define ZAP_DOMAIN "feed"
#define NOT_AUTHORIZED "not authorized"

struct transport {
	void *ctx;
	void *socks[MAX_SOCKETS];
	char names[MAX_SOCKETS][ENDPOINT_MAX];
	bool curve[MAX_SOCKETS];   /* a CURVE server: its requests are checked against the set */
	struct auth *auth;         /* NULL: no CURVE, no allow list */
	unsigned n;
	unsigned next;             /* round-robin start for fairness */
	struct proto_limits lim;
	char endpoints[MAX_SOCKETS * ENDPOINT_MAX];
	struct ratelimit rl_drop;  /* log lines about dropped messages and peers */
	struct ratelimit rl_auth;  /* log lines about requests refused as not authorized */
	_Atomic uint64_t unauthorized; /* requests refused so (metrics.h: main thread adds) */
};

static int set_int(void *s, int opt, int v) { return zmq_setsockopt(s, opt, &v, sizeof(v)); }

/*
 * CURVE and ZAP for one endpoint, before its bind. ipc:// is left to the
 * file system's permissions (its peers have no address to allow, and the
 * socket file's mode says who may connect). Sets *ret_curve.
 */
static int secure_socket(const struct transport *t, void *s, const char *endpoint, bool *ret_curve)
{
	const uint8_t *secret;

	*ret_curve = false;
	if (!t->auth || strncmp(endpoint, "ipc://", 6) == 0)
		return 0;
	if (zmq_setsockopt(s, ZMQ_ZAP_DOMAIN, ZAP_DOMAIN, strlen(ZAP_DOMAIN)) != 0)
		return -1;
	if (!auth_curve(t->auth, &secret))
		return 0;
	*ret_curve = true;
	return set_int(s, ZMQ_CURVE_SERVER, 1) || zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, secret, AUTH_KEY_BYTES);
}

int transport_open(const struct feed_config *cfg, struct transport **ret, char *err, size_t errsz)
{
	struct transport *t = calloc(1, sizeof(*t));
	char *list = NULL, *save = NULL;
	int r = 0;

	if (!t)
		return -ENOMEM;
	t->lim.max_bytes = (size_t)cfg->max_message_bytes;
	t->lim.max_records = (size_t)cfg->max_records;
	t->rl_drop = (struct ratelimit)RATELIMIT_INIT(1000, 10);
	t->ctx = zmq_ctx_new();
	t->rl_auth = (struct ratelimit)RATELIMIT_INIT(1000, 10);
	list = strdup(cfg->endpoint);
	if (!t->ctx || !list) {
		r = -ENOMEM;
		snprintf(err, errsz, "cannot create the ZeroMQ context: %s", zmq_strerror(errno));
		goto fail;
	}
	r = auth_open(cfg, &t->auth, err, errsz);
	if (r < 0)
		goto fail;
	/* before the first bind: without a handler libzmq lets CURVE clients in unchecked */
	if (t->auth && (r = auth_zap_bind(t->auth, t->ctx, err, errsz)) < 0)
		goto fail;
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
		    zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &maxmsg, sizeof(maxmsg)) ||
		    secure_socket(t, s, tok, &t->curve[t->n])) {
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
	auth_free(&t->auth);
	if (t->ctx)
		zmq_ctx_term(t->ctx);
	free(t);
	*pt = NULL;
}

const char *transport_endpoints(const struct transport *t) { return t->endpoints; }

int transport_auth_rescan(struct transport *t, char *err, size_t errsz)
{
	return auth_rescan(t->auth, true, err, errsz);
}

int transport_poll(struct transport *t, bool want_input, const int *fds, size_t nfds,
		   int timeout_ms, unsigned *ret_fds, bool *ret_input)
{
	zmq_pollitem_t items[MAX_SOCKETS + 9];
	size_t n = 0, zap = SIZE_MAX;
	void *zs = auth_zap_socket(t->auth);

	*ret_fds = 0;
	*ret_input = false;
	nfds = nfds < 8 ? nfds : 8;
	for (size_t i = 0; i < nfds; i++)
		items[n++] = (zmq_pollitem_t){ .fd = fds[i], .events = ZMQ_POLLIN };
	/* handshakes go on while input waits for admission: they hold no request */
	if (zs) {
		zap = n;
		items[n++] = (zmq_pollitem_t){ .socket = zs, .events = ZMQ_POLLIN };
	}
	if (want_input)
		for (unsigned i = 0; i < t->n; i++)
			items[n++] = (zmq_pollitem_t){ .socket = t->socks[i], .events = ZMQ_POLLIN };
	int r = zmq_poll(items, (int)n, timeout_ms);
	if (r < 0)
		return errno == EINTR ? 0 : -errno;
	uint64_t now = mono_ms();
	auth_tick(t->auth, now);
	uint64_t suppressed = ratelimit_suppressed(&t->rl_auth, now);
	if (suppressed)
		log_warn("suppressed %llu more lines about requests refused as not authorized",
			 (unsigned long long)suppressed);
	for (size_t i = 0; i < n; i++) {
		if (!(items[i].revents & ZMQ_POLLIN))
			continue;
		if (i == zap) {
			/* not fatal: that handshake fails, the others go on */
			r = auth_zap_serve(t->auth, ZAP_BURST);
			if (r < 0 && ratelimit_ok(&t->rl_drop, now))
				log_err("ZAP handler: %s", zmq_strerror(-r));
		} else if (i < nfds)
			*ret_fds |= 1u << i;
		else
			*ret_input = true;
	}
	return 0;
}

/*
 * The sender of m as "host:port", from the descriptor ZeroMQ read it on
 * (ZMQ_SRCFD), or "" if unknown. A system call: only for rare messages.
 */
static void peer_of_fd(zmq_msg_t *m, int *ret_fd, char *buf, size_t size)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	char host[NI_MAXHOST], serv[NI_MAXSERV];
	int fd = zmq_msg_get(m, ZMQ_SRCFD);

	buf[0] = '\0';
	*ret_fd = -1;
	if (fd < 0 || getpeername(fd, (struct sockaddr *)&ss, &len) != 0 ||
	    (ss.ss_family != AF_INET && ss.ss_family != AF_INET6) ||
	    getnameinfo((struct sockaddr *)&ss, len, host, sizeof(host), serv, sizeof(serv),
			NI_NUMERICHOST | NI_NUMERICSERV) != 0)
		return;
	*ret_fd = fd;
	snprintf(buf, size, "%s:%s", host, serv);
}

/*
 * A peer that sent a message of more than DROP_FRAMES frames is hostile (no
 * sender or proxy needs that many): ZeroMQ had to hold the whole message
 * before feed could see any of it. Its connection is shut down so that it
 * cannot send the next one, and the memory goes back to the system.
 */
static void drop_peer(struct transport *t, unsigned sock, zmq_msg_t *m, size_t total)
{
	char peer[NI_MAXHOST + NI_MAXSERV + 2];
	int fd;
	uint64_t now = mono_ms();

	peer_of_fd(m, &fd, peer, sizeof(peer));
	/* shut down the connection, not the descriptor's new owner: the address must match */
	const char *pa = zmq_msg_gets(m, "Peer-Address");
	bool same = fd >= 0 && (!pa || strncmp(peer, pa, strlen(pa)) == 0);
	if (same)
		shutdown(fd, SHUT_RDWR);
	if (ratelimit_ok(&t->rl_drop, now))
		log_warn("%s: %s the connection of %s: %zu frames in one message (at most %d)",
			 t->names[sock], same ? "dropped" : "could not drop", peer[0] ? peer : "an unknown peer",
			 total, REQUEST_MAX_FRAMES);
	malloc_trim(0);
}

/* "endpoint peer address", without printf: this runs for every request. */
static void where_of(const struct transport *t, unsigned sock, zmq_msg_t *m, char *buf, size_t size)
{
	const char *pa = zmq_msg_gets(m, "Peer-Address");
	char peer[NI_MAXHOST + NI_MAXSERV + 2];
	size_t elen = strlen(t->names[sock]);
	int fd;

	if (!pa) {
		/*
		 * ZMTP/1.0 peers (libzmq 2, and bytes that are not ZeroMQ at all,
		 * which libzmq reads as ZMTP/1.0) carry neither metadata nor a
		 * source descriptor: say so rather than nothing.
		 */
		peer_of_fd(m, &fd, peer, sizeof(peer));
		pa = peer[0] ? peer : "unknown (ZMTP/1.0 framing: a libzmq 2 sender, or bytes that are not ZeroMQ)";
	}
	memcpy(buf, t->names[sock], elen);
	if (*pa) {
		size_t pl = strnlen(pa, size - elen - 7);
		memcpy(buf + elen, " peer ", 6);
		memcpy(buf + elen + 6, pa, pl);
		elen += 6 + pl;
	}
	buf[elen] = '\0';
}

/*
 * Who sent m: on a CURVE endpoint the client certificate's name (ZAP's
 * User-Id), checked against the current set (*ret_ok false when it left
 * it); elsewhere the peer address. Borrowed from m's metadata.
 */
static const char *source_of(struct transport *t, unsigned sock, zmq_msg_t *m, bool *ret_ok)
{
	if (t->curve[sock]) {
		const char *name = zmq_msg_gets(m, "User-Id");
		*ret_ok = auth_current(t->auth, name, zmq_msg_gets(m, "X-Curve-Key"));
		return name ? name : "";
	}
	const char *pa = zmq_msg_gets(m, "Peer-Address");
	*ret_ok = true;
	return pa ? pa : "";
}

/*
 * A request from a client whose certificate was removed after its
 * handshake: answered "FALSE: not authorized" at once, not stored (its
 * sender is no longer one feed accepts records from).
 */
uint64_t transport_unauthorized(const struct transport *t)
{
	return metric_get(&t->unauthorized);
}

static void refuse(struct transport *t, struct request *r)
{
	r->sr.rejected = true;
	snprintf(r->sr.reason, sizeof(r->sr.reason), "%s", NOT_AUTHORIZED);
	metric_add(&t->unauthorized, 1);
	if (ratelimit_ok(&t->rl_auth, mono_ms()))
		log_warn("%s: refused a request from client %s: its certificate is no longer in [listen] curve_clients",
			 r->sr.endpoint, r->sr.source[0] ? r->sr.source : "(unnamed)");
	int rc = transport_reply(t, r);
	if (rc < 0 && rc != -EAGAIN)
		log_debug("%s: reply not sent: %s", r->sr.endpoint, strerror(-rc));
	request_free(r);
}

/*
 * Reads the rest of a message: the first REQUEST_MAX_FRAMES frames into f,
 * the others drained into one scratch frame. Returns the frame count or -errno.
 */
static ssize_t recv_rest(void *s, zmq_msg_t *f, unsigned *ret_nf)
{
	zmq_msg_t scratch;
	unsigned nf = 1;
	size_t total = 1;
	bool more = zmq_msg_more(&f[0]), drained = false;
	int r = 0;

	while (more) {
		zmq_msg_t *m = &scratch;
		if (nf < REQUEST_MAX_FRAMES) {
			m = &f[nf];
			zmq_msg_init(m);
		} else if (!drained) {
			zmq_msg_init(m);
			drained = true;     /* zmq_msg_recv frees its previous content */
		}
		int rc;
		do /* the rest of a message is already here: this does not block */
			rc = zmq_msg_recv(m, s, 0);
		while (rc < 0 && errno == EINTR);
		if (rc < 0) {
			r = -errno;
			if (m != &scratch)
				zmq_msg_close(m);
			break;
		}
		more = zmq_msg_more(m);
		if (m != &scratch)
			nf++;
		total++;
	}
	if (drained)
		zmq_msg_close(&scratch);
	*ret_nf = nf;
	return r < 0 ? r : (ssize_t)total;
}

int transport_recv(struct transport *t, struct request **ret)
{
	for (unsigned k = 0; k < t->n; k++) {
		unsigned sock = (t->next + k) % t->n;
		void *s = t->socks[sock];
		zmq_msg_t f[REQUEST_MAX_FRAMES];
		struct frame fr[REQUEST_MAX_FRAMES];
		char where[ENDPOINT_MAX + NI_MAXHOST + NI_MAXSERV + 8];
		unsigned nf = 0;

		zmq_msg_init(&f[0]);
		if (zmq_msg_recv(&f[0], s, ZMQ_DONTWAIT) < 0) {
			int e = errno;
			zmq_msg_close(&f[0]);
			if (e == EAGAIN || e == EINTR)
				continue;
			return -e;
		}
		ssize_t total = recv_rest(s, f, &nf);
		if (total < 0) {
			for (unsigned i = 0; i < nf; i++)
				zmq_msg_close(&f[i]);
			return (int)total;
		}
		t->next = (sock + 1) % t->n;
		if ((size_t)total > DROP_FRAMES)
			drop_peer(t, sock, &f[nf - 1], (size_t)total);
		struct request *r = NULL;
		bool authorized = true;
		if (nf >= 2) {
			for (unsigned i = 0; i < nf; i++)
				fr[i] = (struct frame){ zmq_msg_data(&f[i]), zmq_msg_size(&f[i]) };
			where_of(t, sock, &f[nf - 1], where, sizeof(where));
			const char *source = source_of(t, sock, &f[nf - 1], &authorized);
			r = request_from_frames(fr, nf, (size_t)total, &t->lim, where, source, sock);
		}
		if (!r && ratelimit_ok(&t->rl_drop, mono_ms()))
			log_warn("%s: dropped a message that cannot be answered (%zd frames%s)", t->names[sock],
				 total, nf >= 2 ? ", out of memory" : "");
		for (unsigned i = 0; i < nf; i++)
			zmq_msg_close(&f[i]);
		if (r && !authorized) {
			refuse(t, r);
			r = NULL;
		}
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
		size_t fl;
		const unsigned char *fd = request_env_next(&p, &fl);
		if (zmq_send(s, fd, fl, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
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
	}
	if (r->id && zmq_send(s, r->id, r->id_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
		return -errno;
	if (zmq_send(s, text, len, ZMQ_DONTWAIT) < 0)
		return -errno;
	return 0;
}
