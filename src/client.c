/*
 * client.c - `feed send`: reads records from files or stdin and delivers
 * them to feed over ZeroMQ DEALER sockets, pipelined: one socket per
 * endpoint (one feed instance each).
 *
 * Owns the input readers, the in-flight window (a fixed array of request
 * slots, each with its body and the input position of each of its lines),
 * the id -> slot table and the tallies. Only the window is held in memory,
 * never the whole input. Runs on the main thread of `feed send`, single
 * threaded; every wait is a zmq_poll() with a timeout, and the run gives up
 * when nothing has been answered for a whole retry cycle.
 *
 * Requests carry an 8-byte sequence number as their id. A re-send after a
 * timeout reuses the id; ids are never reused for another request, so a late
 * reply to a request already answered finds no slot and is ignored.
 *
 * With several endpoints each request goes to the live one with the fewest
 * in flight, so a slow instance gets less. An endpoint that loses its
 * connection, or has requests in flight and answers nothing for a timeout,
 * is dead: what it had in flight is re-sent to the others with the same ids
 * (feed keys records by ticket, so a request stored twice is stored once).
 * A dead endpoint gets one request again after a timeout, or as soon as it
 * connects again; an answer from it makes it live.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <zmq.h>

#include "auth.h"
#include "client.h"

#define CLIENT_LINE_MAX     4096      /* bytes per input line, newline excluded */
#define CLIENT_READBUF      65536
#define CLIENT_WINDOW_MAX   100000
#define CLIENT_BATCH_MAX    100000
#define CLIENT_TIMEOUT_MAX  3600000
#define CLIENT_RETRIES_MAX  1000
#define CLIENT_REASONS      10
#define CLIENT_REASON_LEN   256
#define CLIENT_PROGRESS_NS  250000000LL
#define CLIENT_CONNECT_NS   3000000000LL  /* no connection by then: say nothing answers */
#define CLIENT_NOTES_MAX    5             /* notes about what the input probably is */
#define CLIENT_MONITOR      "inproc://feed-send-monitor"
#define CLIENT_EPS_MAX      16            /* endpoints in -e */

/* ==== Input ==== */

struct client_input {
	char **files;                 /* names; "-" is stdin */
	int nfiles;
	int cur;                      /* index into files; nfiles = done */
	int fd;                       /* -1 when none open */
	uint64_t lineno;              /* last line read from files[cur] */
	char buf[CLIENT_READBUF];
	size_t pos, len;
	bool eof;
	uint64_t bytes_read;          /* from all files, for the progress line */
	uint64_t bytes_total;         /* their sizes; 0 if one is not a regular file */
};

/* Where an input line came from. */
struct client_pos {
	uint32_t file;
	uint64_t line;
};

static const char *client_fname(const struct client_input *in, uint32_t file)
{
	return strcmp(in->files[file], "-") == 0 ? "<stdin>" : in->files[file];
}

/* Opens the next input file. Returns 0, 1 when there is none left, or a
 * negative errno (already reported) if it cannot be opened. */
static int client_input_next(struct client_input *in)
{
	const char *name;

	if (in->fd > STDIN_FILENO)
		close(in->fd);
	in->fd = -1;
	in->cur++;
	if (in->cur >= in->nfiles)
		return 1;
	in->lineno = 0;
	in->pos = in->len = 0;
	in->eof = false;
	name = in->files[in->cur];
	if (strcmp(name, "-") == 0) {
		in->fd = STDIN_FILENO;
		return 0;
	}
	in->fd = open(name, O_RDONLY | O_CLOEXEC);
	if (in->fd < 0) {
		int r = -errno;

		fprintf(stderr, "feed send: %s: %s\n", name, strerror(errno));
		return r;
	}
	return 0;
}

static int client_input_fill(struct client_input *in)
{
	ssize_t n;

	if (in->pos > 0) {
		memmove(in->buf, in->buf + in->pos, in->len - in->pos);
		in->len -= in->pos;
		in->pos = 0;
	}
	do
		n = read(in->fd, in->buf + in->len, sizeof(in->buf) - in->len);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	if (n == 0)
		in->eof = true;
	in->len += (size_t)n;
	in->bytes_read += (uint64_t)n;
	return 0;
}

/*
 * Reads the next non-empty line of the current file into line (no newline,
 * a trailing CR dropped). Returns 1 with *ret_len set, 0 at the end of the
 * file, -E2BIG for a line longer than CLIENT_LINE_MAX (consumed whole), or
 * another negative errno on a read error.
 */
static int client_input_line(struct client_input *in, char *line, size_t *ret_len)
{
	bool toolong = false;

	for (;;) {
		char *start = in->buf + in->pos;
		char *nl = memchr(start, '\n', in->len - in->pos);
		size_t n;
		int r;

		if (!nl && !in->eof && in->len - in->pos < CLIENT_LINE_MAX + 2 &&
		    !(in->pos == 0 && in->len == sizeof(in->buf))) {
			r = client_input_fill(in);
			if (r < 0)
				return r;
			continue;
		}
		if (!nl && in->len - in->pos >= CLIENT_LINE_MAX + 2) {
			/* far too long: drop what we have and keep skipping to the newline */
			toolong = true;
			in->pos = in->len;
			if (in->eof)
				goto line_end;
			r = client_input_fill(in);
			if (r < 0)
				return r;
			continue;
		}
		if (!nl && in->pos == in->len && in->eof) {
			if (toolong)
				goto line_end;
			return 0;
		}
		n = nl ? (size_t)(nl - start) : in->len - in->pos;
		in->pos += n + (nl ? 1 : 0);
		in->lineno++;
		if (toolong)
			return -E2BIG;
		if (n > 0 && start[n - 1] == '\r')
			n--;
		if (n > CLIENT_LINE_MAX)
			return -E2BIG;
		if (n == 0)
			continue;
		memcpy(line, start, n);
		*ret_len = n;
		return 1;
line_end:
		in->lineno++;
		return -E2BIG;
	}
}

/* ==== Window ==== */

enum client_state { SLOT_FREE = 0, SLOT_QUEUED, SLOT_SENT };

struct client_slot {
	enum client_state state;
	bool in_sendq;
	uint64_t id;
	char *body;
	size_t len, cap;
	struct client_pos *pos;        /* one per record */
	size_t nrec, poscap;
	int attempts;                  /* sends so far */
	int ep;                        /* endpoint of the last send, -1 before the first */
	int64_t deadline;              /* monotonic ns */
};

/* One feed instance: its socket and what it has in flight. */
struct client_ep {
	const char *addr;              /* points into client.eplist */
	void *sock;
	void *mon;                     /* PAIR receiving sock's connection events */
	bool up;                       /* connected now (several endpoints only) */
	bool dead;                     /* lost, or silent for a timeout: takes no work */
	int64_t retry_at;              /* dead: when it may take one request again */
	int64_t last_reply;            /* its last answer, or the start */
	size_t inflight;               /* slots sent to it, unanswered */
	uint64_t requests, answered;   /* requests handed to it; records it answered */
};

struct client_reason {
	char text[CLIENT_REASON_LEN];
	uint64_t count;                /* records */
	struct client_pos first;
};

struct client {
	/* options */
	const char *endpoint;              /* as given: one endpoint or a comma list */
	char *eplist;                      /* endpoint, split in place */
	const char *server_key, *cert;     /* CURVE: certificate files, or NULL */
	size_t window, batch;
	int timeout_ms, retries;
	bool quiet, progress;

	void *ctx;
	struct client_ep eps[CLIENT_EPS_MAX];
	int nep;
	int blocked;                       /* endpoint whose socket took no more, or -1 */
	bool connected;                    /* a connection was made at least once */
	struct client_input in;
	struct client_slot *slots;
	size_t *freelist, nfree;
	size_t *sendq, sq_head, sq_len;    /* ring of slot indexes, capacity window */
	uint64_t *hkeys;                   /* id -> slot, open addressing; 0 = empty */
	size_t *hvals, hmask;
	uint64_t next_id;
	bool input_done;
	bool gave_up;                      /* stopped before the end of the input */

	/* tallies, in records except requests */
	uint64_t sent, requests, ok, bad, resent, noreply, unsent, stray;
	uint64_t moved;                    /* re-sent to another endpoint than the last */
	uint64_t skipped, notes;           /* header lines not sent; notes printed */
	struct client_reason reasons[CLIENT_REASONS];
	size_t nreasons;
	uint64_t other_reasons;
	int64_t start, last_reply, last_progress;
};

static int64_t client_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static size_t client_hash(uint64_t id, size_t mask)
{
	return (size_t)((id * 0x9E3779B97F4A7C15ULL) >> 17) & mask;
}

static void client_map_put(struct client *c, uint64_t id, size_t slot)
{
	size_t i = client_hash(id, c->hmask);

	while (c->hkeys[i] != 0)
		i = (i + 1) & c->hmask;
	c->hkeys[i] = id;
	c->hvals[i] = slot;
}

/* Returns the slot of id, or -1. */
static long client_map_get(const struct client *c, uint64_t id)
{
	size_t i = client_hash(id, c->hmask);

	while (c->hkeys[i] != 0) {
		if (c->hkeys[i] == id)
			return (long)c->hvals[i];
		i = (i + 1) & c->hmask;
	}
	return -1;
}

/* Removes id; backward-shift deletion keeps probe chains intact. */
static void client_map_del(struct client *c, uint64_t id)
{
	size_t i = client_hash(id, c->hmask), j;

	while (c->hkeys[i] != id) {
		if (c->hkeys[i] == 0)
			return;
		i = (i + 1) & c->hmask;
	}
	j = i;
	for (;;) {
		size_t home;

		j = (j + 1) & c->hmask;
		if (c->hkeys[j] == 0)
			break;
		home = client_hash(c->hkeys[j], c->hmask);
		/* move j back to i unless its home lies cyclically in (i, j] */
		if ((i <= j) ? (i < home && home <= j) : (i < home || home <= j))
			continue;
		c->hkeys[i] = c->hkeys[j];
		c->hvals[i] = c->hvals[j];
		i = j;
	}
	c->hkeys[i] = 0;
}

static void client_sendq_push(struct client *c, size_t slot)
{
	if (c->slots[slot].in_sendq)
		return;
	c->sendq[(c->sq_head + c->sq_len) % c->window] = slot;
	c->sq_len++;
	c->slots[slot].in_sendq = true;
}

static void client_slot_free(struct client *c, size_t slot)
{
	struct client_slot *s = &c->slots[slot];

	client_map_del(c, s->id);
	if (s->state == SLOT_SENT && s->ep >= 0)
		c->eps[s->ep].inflight--;
	s->state = SLOT_FREE;
	s->len = 0;
	s->nrec = 0;
	c->freelist[c->nfree++] = slot;
}

/* ==== Replies ==== */

/* "line 3: volume: ..." -> 3 and the text after "line 3: ". */
static size_t client_reason_line(const char *reason, const char **ret_rest)
{
	size_t line = 0;
	const char *p = reason;

	*ret_rest = reason;
	if (strncmp(p, "line ", 5) != 0)
		return 0;
	p += 5;
	if (*p < '0' || *p > '9')
		return 0;
	while (*p >= '0' && *p <= '9' && line < CLIENT_BATCH_MAX + 1)
		line = line * 10 + (size_t)(*p++ - '0');
	if (p[0] != ':' || p[1] != ' ')
		return 0;
	*ret_rest = p + 2;
	return line;
}

static void client_note_reason(struct client *c, const struct client_slot *s,
			       const char *reason)
{
	const char *text;
	size_t line = client_reason_line(reason, &text);
	struct client_pos first = s->pos[0];
	size_t i;

	if (line >= 1 && line <= s->nrec)
		first = s->pos[line - 1];
	for (i = 0; i < c->nreasons; i++) {
		if (strcmp(c->reasons[i].text, text) == 0) {
			c->reasons[i].count += s->nrec;
			return;
		}
	}
	if (c->nreasons == CLIENT_REASONS) {
		c->other_reasons += s->nrec;
		return;
	}
	snprintf(c->reasons[i].text, sizeof(c->reasons[i].text), "%s", text);
	c->reasons[i].count = s->nrec;
	c->reasons[i].first = first;
	c->nreasons++;
}

static void client_on_reply(struct client *c, int e, zmq_msg_t *idf, zmq_msg_t *st)
{
	char reason[CLIENT_REASON_LEN];
	const char *data = zmq_msg_data(st);
	size_t len = zmq_msg_size(st);
	struct client_slot *s;
	uint64_t id;
	long slot;

	/* any answer, even a late one, says the instance is working */
	c->eps[e].last_reply = client_now();
	c->eps[e].dead = false;
	if (zmq_msg_size(idf) != sizeof(id)) {
		c->stray++;
		return;
	}
	memcpy(&id, zmq_msg_data(idf), sizeof(id));
	slot = client_map_get(c, id);
	if (slot < 0) {
		c->stray++;            /* late reply to a request already settled */
		return;
	}
	s = &c->slots[slot];
	c->last_reply = c->eps[e].last_reply;
	c->eps[e].answered += s->nrec;
	if (len == 4 && memcmp(data, "TRUE", 4) == 0) {
		c->ok += s->nrec;
	} else {
		size_t n;

		if (len >= 7 && memcmp(data, "FALSE: ", 7) == 0) {
			data += 7;
			len -= 7;
		} else if (len == 5 && memcmp(data, "FALSE", 5) == 0) {
			data = "(no reason given)";
			len = strlen(data);
		} else {
			/* not the protocol: show it as the reason, printable bytes only */
			static const char pfx[] = "unexpected reply: ";

			memcpy(reason, pfx, sizeof(pfx) - 1);
			n = sizeof(pfx) - 1;
			for (size_t i = 0; i < len && n < 80; i++)
				reason[n++] = (data[i] >= 0x20 && data[i] < 0x7f) ? data[i] : '?';
			reason[n] = '\0';
			goto note;
		}
		n = len < sizeof(reason) - 1 ? len : sizeof(reason) - 1;
		memcpy(reason, data, n);
		reason[n] = '\0';
		for (size_t i = 0; i < n; i++)
			if (reason[i] == '\n' || reason[i] == '\0')
				reason[i] = ' ';
note:
		c->bad += s->nrec;
		client_note_reason(c, s, reason);
	}
	client_slot_free(c, (size_t)slot);
}

/* Reads every reply available now on endpoint e. Returns 0 or a negative errno. */
static int client_recv_all(struct client *c, int e)
{
	void *sock = c->eps[e].sock;

	for (;;) {
		zmq_msg_t part[3];
		int n = 0, r = 0, more = 1;
		size_t moresz;

		while (more) {
			zmq_msg_t scratch, *m = n < 3 ? &part[n] : &scratch;

			zmq_msg_init(m);
			if (zmq_msg_recv(m, sock, ZMQ_DONTWAIT) < 0) {
				r = -errno;
				zmq_msg_close(m);
				break;
			}
			moresz = sizeof(more);
			if (zmq_getsockopt(sock, ZMQ_RCVMORE, &more, &moresz) < 0)
				more = 0;
			if (m == &scratch)
				zmq_msg_close(m);
			n++;
		}
		if (r == 0) {
			if (n == 3 && zmq_msg_size(&part[0]) == 0)
				client_on_reply(c, e, &part[1], &part[2]);
			else
				c->stray++;
		}
		for (int i = 0; i < n && i < 3; i++)
			zmq_msg_close(&part[i]);
		if (r == -EAGAIN && n == 0)
			return 0;
		if (r == -EINTR)
			continue;
		if (r < 0)
			return r;
	}
}

/* ==== Sending ==== */

/* Returns 0 when sent, -EAGAIN when the socket cannot take it now. */
static int client_send_slot(void *sock, struct client_slot *s)
{
	if (zmq_send(sock, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
		return -errno;
	/* once the first frame is queued the rest of the message is too */
	if (zmq_send(sock, &s->id, sizeof(s->id), ZMQ_SNDMORE) < 0 ||
	    zmq_send(sock, s->body, s->len, 0) < 0)
		return -errno;
	return 0;
}

/*
 * The endpoint for the next request: the connected, live one with the
 * fewest in flight; a dead one whose retry time has come takes one request
 * (its answer makes it live). -1: none now, the request waits.
 */
static int client_pick(const struct client *c, int64_t now)
{
	int best = -1;

	if (c->nep == 1)
		return 0;          /* one endpoint: ZeroMQ queues until it connects */
	for (int i = 0; i < c->nep; i++) {
		const struct client_ep *ep = &c->eps[i];

		if (!ep->up || (ep->dead && (now < ep->retry_at || ep->inflight > 0)))
			continue;
		if (best < 0 || ep->inflight < c->eps[best].inflight)
			best = i;
	}
	return best;
}

/* Endpoint e is dead: queues what it has in flight for the others. */
static void client_ep_down(struct client *c, int e, int64_t now, const char *why)
{
	struct client_ep *ep = &c->eps[e];
	size_t n = 0;

	for (size_t i = 0; i < c->window; i++) {
		struct client_slot *s = &c->slots[i];

		if (s->state != SLOT_SENT || s->ep != e)
			continue;
		s->state = SLOT_QUEUED;
		s->deadline = now + (int64_t)c->timeout_ms * 1000000;
		ep->inflight--;
		client_sendq_push(c, i);
		n++;
	}
	if (!ep->dead)
		fprintf(stderr, "%sfeed send: %s: %s; re-sending its %zu requests in flight to the other endpoints\n",
			c->progress ? "\r\033[K" : "", ep->addr, why, n);
	ep->dead = true;
	ep->retry_at = now + (int64_t)c->timeout_ms * 1000000;
}

static int client_flush(struct client *c)
{
	c->blocked = -1;
	while (c->sq_len > 0) {
		size_t slot = c->sendq[c->sq_head];
		struct client_slot *s = &c->slots[slot];
		int r, e;

		if (s->state != SLOT_FREE) {
			e = client_pick(c, client_now());
			if (e < 0)
				return 0;      /* no endpoint takes work now: it waits, and expires */
			r = client_send_slot(c->eps[e].sock, s);
			if (r == -EAGAIN || r == -EINTR) {
				c->blocked = e;
				return 0;
			}
			if (r < 0)
				return r;
			if (s->attempts > 0) {
				c->resent += s->nrec;
				if (s->ep >= 0 && s->ep != e)
					c->moved += s->nrec;
			}
			s->attempts++;
			s->state = SLOT_SENT;
			s->ep = e;
			c->eps[e].inflight++;
			c->eps[e].requests++;
			s->deadline = client_now() + (int64_t)c->timeout_ms * 1000000;
		}
		s->in_sendq = false;
		c->sq_head = (c->sq_head + 1) % c->window;
		c->sq_len--;
	}
	return 0;
}

static int client_slot_add_line(struct client *c, struct client_slot *s,
				const char *line, size_t n)
{
	if (s->len + n + 1 > s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 256;
		char *b;

		while (cap < s->len + n + 1)
			cap *= 2;
		b = realloc(s->body, cap);
		if (!b)
			return -ENOMEM;
		s->body = b;
		s->cap = cap;
	}
	if (s->nrec == s->poscap) {
		size_t cap = s->poscap ? s->poscap * 2 : 4;
		struct client_pos *p;

		if (cap > c->batch)
			cap = c->batch;
		p = realloc(s->pos, cap * sizeof(*p));
		if (!p)
			return -ENOMEM;
		s->pos = p;
		s->poscap = cap;
	}
	memcpy(s->body + s->len, line, n);
	s->len += n;
	s->body[s->len++] = '\n';
	s->pos[s->nrec].file = (uint32_t)c->in.cur;
	s->pos[s->nrec].line = c->in.lineno;
	s->nrec++;
	return 0;
}

/* ==== What the input probably is ==== */

static void __attribute__((format(printf, 2, 3))) client_note(struct client *c, const char *fmt, ...)
{
	va_list ap;

	if (++c->notes > CLIENT_NOTES_MAX) {
		if (c->notes == CLIENT_NOTES_MAX + 1)
			fprintf(stderr, "feed send: (no more notes about the input)\n");
		return;
	}
	fprintf(stderr, "%sfeed send: %s:%" PRIu64 ": ", c->progress ? "\r\033[K" : "",
		client_fname(&c->in, (uint32_t)c->in.cur), c->in.lineno);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

/*
 * The traps of a file made by hand or exported from a spreadsheet: a byte
 * order mark (removed), a header line (skipped), a signed volume (sent, but
 * said why feed will answer FALSE). Returns true if the line is to be sent;
 * may shorten it.
 */
static bool client_lint(struct client *c, char *line, size_t *n)
{
	const char *vol;
	size_t f1;

	if (c->in.lineno == 1 && *n >= 3 && memcmp(line, "\xEF\xBB\xBF", 3) == 0) {
		client_note(c, "the file starts with a UTF-8 byte order mark (saved by a Windows editor?): ignored it");
		memmove(line, line + 3, *n - 3);
		*n -= 3;
		if (*n == 0)
			return false;
	}
	f1 = strcspn(line, ",");
	if (f1 > *n)
		f1 = *n;
	if (c->in.lineno == 1 && memchr(line, ',', *n) && strspn(line, "0123456789") < f1 &&
	    (line[0] | 0x20) >= 'a' && (line[0] | 0x20) <= 'z') {
		client_note(c, "\"%.*s\" looks like a header line: not sent (feed takes ticket,login,volume lines only)",
			    (int)(*n > 80 ? 80 : *n), line);
		c->skipped++;
		return false;
	}
	line[*n] = '\0';
	vol = strchr(line, ',');
	vol = vol ? strchr(vol + 1, ',') : NULL;
	if (vol && vol[1] == '-')
		client_note(c, "volume \"%.40s\" is negative: feed takes volumes >= 0 (a sell or a reversal written with a sign?); sent as is, feed will answer FALSE",
			    vol + 1);
	return true;
}

/* Builds requests from input into free slots. Returns 0 or a negative errno. */
static int client_fill(struct client *c, char *line)
{
	while (c->nfree > 0 && !c->input_done) {
		size_t slot = c->freelist[c->nfree - 1];
		struct client_slot *s = &c->slots[slot];
		int r = 0;

		while (s->nrec < c->batch) {
			size_t n;

			if (c->in.fd < 0) {
				r = client_input_next(&c->in);
				if (r > 0) {
					c->input_done = true;
					break;
				}
				if (r < 0) {
					c->unsent++;   /* counts the file as one failure */
					continue;
				}
			}
			r = client_input_line(&c->in, line, &n);
			if (r == 0) {
				if (c->in.fd > STDIN_FILENO)
					close(c->in.fd);
				c->in.fd = -1;
				continue;
			}
			if (r == -E2BIG) {
				fprintf(stderr, "feed send: %s:%" PRIu64 ": line longer than %d bytes, not sent\n",
					client_fname(&c->in, (uint32_t)c->in.cur), c->in.lineno,
					CLIENT_LINE_MAX);
				c->unsent++;
				continue;
			}
			if (r < 0) {
				fprintf(stderr, "feed send: %s: %s\n",
					client_fname(&c->in, (uint32_t)c->in.cur), strerror(-r));
				c->unsent++;
				if (c->in.fd > STDIN_FILENO)
					close(c->in.fd);
				c->in.fd = -1;
				continue;
			}
			if (!client_lint(c, line, &n))
				continue;
			r = client_slot_add_line(c, s, line, n);
			if (r < 0)
				return r;
		}
		if (s->nrec == 0)
			break;
		c->nfree--;
		s->id = ++c->next_id;
		s->state = SLOT_QUEUED;
		s->attempts = 0;
		s->ep = -1;
		s->deadline = client_now() + (int64_t)c->timeout_ms * 1000000;
		client_map_put(c, s->id, slot);
		client_sendq_push(c, slot);
		c->sent += s->nrec;
		c->requests++;
	}
	return 0;
}

/* Re-queues or gives up on requests past their deadline. */
static void client_expire(struct client *c, int64_t now)
{
	int64_t timeout = (int64_t)c->timeout_ms * 1000000;

	for (size_t i = 0; i < c->window; i++) {
		struct client_slot *s = &c->slots[i];

		if (s->state == SLOT_FREE || s->deadline > now)
			continue;
		if (s->state == SLOT_SENT && c->nep > 1) {
			struct client_ep *ep = &c->eps[s->ep];

			if (ep->dead) {
				ep->retry_at = now + timeout;   /* its one try went unanswered too */
			} else if (ep->last_reply < now - timeout) {
				/* nothing at all from it for a timeout: hung, not just slow */
				client_ep_down(c, s->ep, now, "no reply within the timeout");
				continue;
			}
		}
		if (s->state == SLOT_QUEUED)
			s->attempts++;         /* a try that could not even be handed to ZeroMQ */
		if (s->attempts > c->retries) {
			c->noreply += s->nrec;
			client_slot_free(c, i);    /* a stale send-queue entry is skipped */
			continue;
		}
		if (s->state == SLOT_SENT)
			c->eps[s->ep].inflight--;
		s->state = SLOT_QUEUED;
		s->deadline = now + timeout;
		client_sendq_push(c, i);
	}
}

/* ==== Reporting ==== */

static void client_rate(const struct client *c, int64_t now, uint64_t *ret_rate,
			int64_t *ret_ms)
{
	int64_t ms = (now - c->start) / 1000000;
	uint64_t done = c->ok + c->bad;

	*ret_ms = ms;
	*ret_rate = ms > 0 ? done * 1000 / (uint64_t)ms : done;
}

static void client_progress(struct client *c, int64_t now, bool force)
{
	uint64_t rate;
	int64_t ms;

	if (!c->progress || (!force && now - c->last_progress < CLIENT_PROGRESS_NS))
		return;
	c->last_progress = now;
	client_rate(c, now, &rate, &ms);
	fprintf(stderr, "\rsent %" PRIu64 "  TRUE %" PRIu64 "  FALSE %" PRIu64
		"  re-sent %" PRIu64 "  %" PRIu64 " rec/s",
		c->sent, c->ok, c->bad, c->resent, rate);
	if (c->in.bytes_total > 0) {
		uint64_t done = c->in.bytes_read < c->in.bytes_total ? c->in.bytes_read : c->in.bytes_total;
		/* the rate so far, in bytes of input, for what is left */
		int64_t eta = done > 0 ? (int64_t)((double)ms / 1000 * (double)(c->in.bytes_total - done) / (double)done) : -1;

		fprintf(stderr, "  %3d%% of %.1f MB", (int)(done * 100 / c->in.bytes_total),
			(double)c->in.bytes_total / 1e6);
		if (eta >= 0)
			fprintf(stderr, "  ETA %" PRId64 ":%02d:%02d", eta / 3600, (int)(eta / 60 % 60), (int)(eta % 60));
	}
	fputs("\033[K", stderr);
}

static void client_summary(struct client *c)
{
	uint64_t rate;
	int64_t ms;

	client_rate(c, client_now(), &rate, &ms);
	if (c->progress)
		fprintf(stderr, "\r\033[K");
	fprintf(stderr, "sent %" PRIu64 " records in %" PRIu64 " requests: TRUE %" PRIu64
		", FALSE %" PRIu64 ", re-sent %" PRIu64, c->sent, c->requests, c->ok, c->bad, c->resent);
	if (c->nep > 1)
		fprintf(stderr, " (%" PRIu64 " to another instance)", c->moved);
	fprintf(stderr, ", no reply %" PRIu64 ", elapsed %" PRId64 ".%03d s, rate %" PRIu64 "/s\n",
		c->noreply, ms / 1000, (int)(ms % 1000), rate);
	for (int i = 0; c->nep > 1 && i < c->nep; i++)
		fprintf(stderr, "  %s: %" PRIu64 " requests sent, %" PRIu64 " records answered%s\n",
			c->eps[i].addr, c->eps[i].requests, c->eps[i].answered,
			c->eps[i].dead ? " (dead at the end)" : "");
	if (c->unsent > 0)
		fprintf(stderr, "not sent: %" PRIu64 " unreadable lines or files\n", c->unsent);
	if (c->gave_up)
		fprintf(stderr, "not sent: the rest of the input\n");
	for (size_t i = 0; i < c->nreasons; i++) {
		const struct client_reason *r = &c->reasons[i];

		fprintf(stderr, "FALSE x%" PRIu64 ": %s (first at %s:%" PRIu64 ")\n",
			r->count, r->text, client_fname(&c->in, r->first.file), r->first.line);
	}
	if (c->other_reasons > 0)
		fprintf(stderr, "FALSE x%" PRIu64 ": other reasons\n", c->other_reasons);
}

/* ==== Options ==== */

void client_usage(FILE *f)
{
	fprintf(f,
		"usage: feed send [-e ENDPOINT[,ENDPOINT...]] [-w WINDOW] [-n RECORDS_PER_REQUEST]\n"
		"                 [-t TIMEOUT_MS] [-r MAX_RESENDS] [-q]\n"
		"                 [--server-key FILE --cert FILE] [FILE...]\n"
		"\n"
		"Sends records \"ticket,login,volume\", one per line, from each FILE (stdin\n"
		"when none, or for \"-\") to feed and waits for every answer.\n"
		"\n"
		"  -e, --endpoint LIST      where feed listens (default: [send] endpoint, else the\n"
		"                           first [listen] endpoint); several, comma separated:\n"
		"                           the window is spread over those instances, and what\n"
		"                           one had in flight when it died or hung is re-sent to\n"
		"                           the others (up to %d)\n"
		"  -w, --window N           requests in flight, 1..%d (default 64)\n"
		"  -n, --batch N            records per request, 1..%d (default 1)\n"
		"  -t, --timeout MS         re-send a request not answered within MS (default 5000)\n"
		"  -r, --retries N          re-sends before giving up on a request (default 5)\n"
		"  -q, --quiet              no progress line\n"
		"  -S, --server-key FILE    CURVE: the server's public certificate (NAME.key)\n"
		"  -C, --cert FILE          CURVE: this client's secret certificate (NAME.key_secret)\n"
		"  -h, --help               this text\n"
		"\n"
		"Exit status: 0 if every record got TRUE, 1 otherwise, 2 on bad usage.\n",
		CLIENT_EPS_MAX, CLIENT_WINDOW_MAX, CLIENT_BATCH_MAX);
}

/* The input's size for the progress line, when every file is a regular file. */
static void client_input_size(struct client_input *in)
{
	struct stat st;

	in->bytes_total = 0;
	for (int i = 0; i < in->nfiles; i++) {
		int r = strcmp(in->files[i], "-") == 0 ? fstat(STDIN_FILENO, &st) : stat(in->files[i], &st);
		if (r < 0 || !S_ISREG(st.st_mode)) {
			in->bytes_total = 0;
			return;
		}
		in->bytes_total += (uint64_t)st.st_size;
	}
}

static int client_num(const char *opt, const char *s, long min, long max, long *ret)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end != '\0' || v < min || v > max) {
		fprintf(stderr, "feed send: %s must be %ld..%ld, got \"%s\"\n", opt, min, max, s);
		return -EINVAL;
	}
	*ret = v;
	return 0;
}

/* Splits the endpoint list into c->eps. Returns 0 or -EINVAL (reported). */
static int client_endpoints(struct client *c)
{
	char *p;

	if (c->endpoint)
		c->eplist = strdup(c->endpoint);
	if (c->endpoint && !c->eplist) {
		fprintf(stderr, "feed send: out of memory\n");
		return -EINVAL;
	}
	for (p = c->eplist; p && *p; ) {
		size_t len;
		char *ep;

		p += strspn(p, " \t,");
		len = strcspn(p, ",");
		ep = p;
		p += len;
		if (*p)
			*p++ = '\0';
		while (len > 0 && (ep[len - 1] == ' ' || ep[len - 1] == '\t'))
			ep[--len] = '\0';
		if (len == 0)
			continue;
		if (!strstr(ep, "://")) {
			fprintf(stderr, "feed send: endpoint \"%.200s\" names no transport: did you mean tcp://%.200s ?\n",
				ep, ep);
			return -EINVAL;
		}
		if (c->nep == CLIENT_EPS_MAX) {
			fprintf(stderr, "feed send: more than %d endpoints in \"%.200s\"\n", CLIENT_EPS_MAX,
				c->endpoint);
			return -EINVAL;
		}
		c->eps[c->nep++].addr = ep;
	}
	if (c->nep == 0) {
		fprintf(stderr, "feed send: no endpoint: give -e, or [send] or [listen] endpoint in the configuration\n");
		return -EINVAL;
	}
	return 0;
}

/* Returns 0, 1 for --help (done), or -EINVAL (reported). */
static int client_parse(struct client *c, int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "endpoint", required_argument, NULL, 'e' },
		{ "window",   required_argument, NULL, 'w' },
		{ "batch",    required_argument, NULL, 'n' },
		{ "timeout",  required_argument, NULL, 't' },
		{ "retries",  required_argument, NULL, 'r' },
		{ "quiet",    no_argument,       NULL, 'q' },
		{ "server-key", required_argument, NULL, 'S' },
		{ "cert",     required_argument, NULL, 'C' },
		{ "help",     no_argument,       NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	long v;
	int opt;

	optind = 1;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, ":e:w:n:t:r:qS:C:h", longopts, NULL)) != -1) {
		switch (opt) {
		case 'e':
			c->endpoint = optarg;
			break;
		case 'w':
			if (client_num("window", optarg, 1, CLIENT_WINDOW_MAX, &v) < 0)
				return -EINVAL;
			c->window = (size_t)v;
			break;
		case 'n':
			if (client_num("batch", optarg, 1, CLIENT_BATCH_MAX, &v) < 0)
				return -EINVAL;
			c->batch = (size_t)v;
			break;
		case 't':
			if (client_num("timeout", optarg, 1, CLIENT_TIMEOUT_MAX, &v) < 0)
				return -EINVAL;
			c->timeout_ms = (int)v;
			break;
		case 'r':
			if (client_num("retries", optarg, 0, CLIENT_RETRIES_MAX, &v) < 0)
				return -EINVAL;
			c->retries = (int)v;
			break;
		case 'q':
			c->quiet = true;
			break;
		case 'S':
			c->server_key = optarg;
			break;
		case 'C':
			c->cert = optarg;
			break;
		case 'h':
			client_usage(stdout);
			return 1;
		case ':':
			fprintf(stderr, "feed send: option %s needs a value\n", argv[optind - 1]);
			client_usage(stderr);
			return -EINVAL;
		default:
			fprintf(stderr, "feed send: unknown option %s\n", argv[optind - 1]);
			client_usage(stderr);
			return -EINVAL;
		}
	}
	if (client_endpoints(c) < 0)
		return -EINVAL;
	if (!c->server_key != !c->cert) {
		fprintf(stderr, "feed send: CURVE needs both --server-key (the server's NAME.key) and --cert (this client's NAME.key_secret)\n");
		return -EINVAL;
	}
	return 0;
}

/* CURVE client keys from the certificate files, on sock before it connects. */
static int client_curve(struct client *c, void *sock)
{
	uint8_t server[AUTH_KEY_BYTES], pub[AUTH_KEY_BYTES], sec[AUTH_KEY_BYTES];
	char err[1024];
	int r;

	if (!c->server_key)
		return 0;
	if ((r = auth_cert_load(c->server_key, server, NULL, err, sizeof(err))) < 0 ||
	    (r = auth_cert_load(c->cert, pub, sec, err, sizeof(err))) < 0) {
		fprintf(stderr, "feed send: %s\n", err);
		return r;
	}
	r = 0;
	if (zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, server, sizeof(server)) < 0 ||
	    zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, pub, sizeof(pub)) < 0 ||
	    zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, sec, sizeof(sec)) < 0) {
		r = -errno;
		fprintf(stderr, "feed send: CURVE: %s\n", zmq_strerror(errno));
	}
	explicit_bzero(sec, sizeof(sec));
	return r;
}

/* ==== Setup and the loop ==== */

/* Endpoint e's socket, its monitor, and its connection (made in the background). */
static int client_ep_open(struct client *c, int e)
{
	struct client_ep *ep = &c->eps[e];
	int linger = 1000, ivl = 100, ivlmax = 2000, hwm, sndtimeo = 1000;
	/* one endpoint: CONNECTED only, read until the first (see client_loop) */
	int events = c->nep > 1 ? ZMQ_EVENT_CONNECTED | ZMQ_EVENT_DISCONNECTED : ZMQ_EVENT_CONNECTED;
	char mon[64];

	snprintf(mon, sizeof(mon), "%s-%d", CLIENT_MONITOR, e);
	ep->sock = zmq_socket(c->ctx, ZMQ_DEALER);
	if (!ep->sock)
		goto zmq_fail;
	/* room for the whole window both ways, so ZeroMQ never drops or blocks on it */
	hwm = c->window * 2 + 16 > 1000 ? (int)(c->window * 2 + 16) : 1000;
	if (zmq_setsockopt(ep->sock, ZMQ_LINGER, &linger, sizeof(linger)) < 0 ||
	    zmq_setsockopt(ep->sock, ZMQ_SNDTIMEO, &sndtimeo, sizeof(sndtimeo)) < 0 ||
	    zmq_setsockopt(ep->sock, ZMQ_RECONNECT_IVL, &ivl, sizeof(ivl)) < 0 ||
	    zmq_setsockopt(ep->sock, ZMQ_RECONNECT_IVL_MAX, &ivlmax, sizeof(ivlmax)) < 0 ||
	    zmq_setsockopt(ep->sock, ZMQ_SNDHWM, &hwm, sizeof(hwm)) < 0 ||
	    zmq_setsockopt(ep->sock, ZMQ_RCVHWM, &hwm, sizeof(hwm)) < 0)
		goto zmq_fail;
	if (client_curve(c, ep->sock) < 0)
		return -EINVAL;
	/* connection events: to say soon that nothing listens, and to see one go */
	if (zmq_socket_monitor(ep->sock, mon, events) < 0 ||
	    !(ep->mon = zmq_socket(c->ctx, ZMQ_PAIR)) ||
	    zmq_setsockopt(ep->mon, ZMQ_LINGER, &(int){ 0 }, sizeof(int)) < 0 ||
	    zmq_connect(ep->mon, mon) < 0)
		goto zmq_fail;
	if (zmq_connect(ep->sock, ep->addr) < 0) {
		int r = -errno;

		fprintf(stderr, "feed send: cannot connect to %s: %s\n", ep->addr,
			zmq_strerror(errno));
		return r;
	}
	return 0;
zmq_fail:
	fprintf(stderr, "feed send: ZeroMQ socket: %s\n", zmq_strerror(errno));
	return -errno;
}

static int client_setup(struct client *c)
{
	size_t hcap = 16;

	c->slots = calloc(c->window, sizeof(*c->slots));
	c->freelist = calloc(c->window, sizeof(*c->freelist));
	c->sendq = calloc(c->window, sizeof(*c->sendq));
	while (hcap < c->window * 2)
		hcap *= 2;
	c->hkeys = calloc(hcap, sizeof(*c->hkeys));
	c->hvals = calloc(hcap, sizeof(*c->hvals));
	if (!c->slots || !c->freelist || !c->sendq || !c->hkeys || !c->hvals) {
		fprintf(stderr, "feed send: out of memory\n");
		return -ENOMEM;
	}
	c->hmask = hcap - 1;
	for (size_t i = 0; i < c->window; i++)
		c->freelist[c->nfree++] = c->window - 1 - i;

	c->ctx = zmq_ctx_new();
	if (!c->ctx) {
		fprintf(stderr, "feed send: ZeroMQ context: %s\n", zmq_strerror(errno));
		return -errno;
	}
	for (int i = 0; i < c->nep; i++) {
		int r = client_ep_open(c, i);

		if (r < 0)
			return r;
	}
	return 0;
}

/* Reads endpoint e's monitor events (2 frames each). */
static void client_monitor(struct client *c, int e, int64_t now)
{
	struct client_ep *ep = &c->eps[e];
	zmq_msg_t m;
	bool first = true;   /* frames: event (u16 id, u32 value), then the address */

	zmq_msg_init(&m);
	while (zmq_msg_recv(&m, ep->mon, ZMQ_DONTWAIT) >= 0) {
		uint16_t ev;

		if (first && zmq_msg_size(&m) >= sizeof(ev)) {
			memcpy(&ev, zmq_msg_data(&m), sizeof(ev));
			if (ev == ZMQ_EVENT_CONNECTED) {
				c->connected = true;
				ep->up = true;
				/* back (restarted?): one request now, its answer makes it live;
				 * not the whole window, in case it only connects and drops again */
				ep->retry_at = now;
			} else if (ev == ZMQ_EVENT_DISCONNECTED && c->nep > 1) {
				ep->up = false;
				client_ep_down(c, e, now, "connection lost");
			}
		}
		first = !zmq_msg_more(&m);
	}
	zmq_msg_close(&m);
}

static int client_loop(struct client *c)
{
	/* give up when nothing has been answered for a whole retry cycle */
	int64_t idle = (int64_t)c->timeout_ms * 1000000 * (c->retries + 1) + 1000000000LL;
	int64_t check_ns = (int64_t)c->timeout_ms * 100000;    /* timeout / 10 */
	int64_t next_check;
	char *line;
	int r = 0;

	if (check_ns > 100000000)
		check_ns = 100000000;
	if (check_ns < 1000000)
		check_ns = 1000000;
	line = malloc(CLIENT_LINE_MAX + 1);
	if (!line)
		return -ENOMEM;
	c->start = c->last_reply = c->last_progress = client_now();
	next_check = c->start + check_ns;
	for (int i = 0; i < c->nep; i++)
		c->eps[i].last_reply = c->start;
	for (;;) {
		/* the sockets, then their monitors while they matter */
		zmq_pollitem_t items[2 * CLIENT_EPS_MAX];
		bool monitors = !c->connected || c->nep > 1;
		int64_t now;
		long wait_ms;

		r = client_fill(c, line);
		if (r < 0)
			goto out;
		r = client_flush(c);
		if (r < 0)
			goto out;
		if (c->input_done && c->nfree == c->window)
			break;
		for (int i = 0; i < c->nep; i++) {
			items[i] = (zmq_pollitem_t){ .socket = c->eps[i].sock, .events = ZMQ_POLLIN };
			items[c->nep + i] = (zmq_pollitem_t){ .socket = c->eps[i].mon, .events = ZMQ_POLLIN };
			if (c->sq_len > 0 && (c->nep == 1 || c->blocked == i))
				items[i].events |= ZMQ_POLLOUT;
		}
		now = client_now();
		wait_ms = (long)((next_check - now) / 1000000) + 1;
		if (wait_ms < 0)
			wait_ms = 0;
		if (zmq_poll(items, monitors ? 2 * c->nep : c->nep, wait_ms) < 0 && errno != EINTR) {
			r = -errno;
			goto out;
		}
		/* replies first: those that came before a disconnect need no re-send */
		for (int i = 0; i < c->nep; i++) {
			if (items[i].revents & ZMQ_POLLIN) {
				r = client_recv_all(c, i);
				if (r < 0)
					goto out;
			}
		}
		now = client_now();
		for (int i = 0; monitors && i < c->nep; i++)
			if (items[c->nep + i].revents & ZMQ_POLLIN)
				client_monitor(c, i, now);
		if (now >= next_check) {
			client_expire(c, now);
			next_check = now + check_ns;
		}
		bool unreachable = !c->connected && now - c->start > CLIENT_CONNECT_NS;
		if (c->nfree < c->window && (unreachable || now - c->last_reply > idle)) {
			if (unreachable)
				fprintf(stderr, "%sfeed send: nothing answers at %s: no connection within %lld s (is feed running there? `feed status` tells; is the address right?)\n",
					c->progress ? "\r\033[K" : "", c->endpoint, CLIENT_CONNECT_NS / 1000000000);
			else
				fprintf(stderr, "%sfeed send: no reply from %s for %" PRId64 " ms, giving up\n",
					c->progress ? "\r\033[K" : "", c->endpoint, idle / 1000000);
			for (size_t i = 0; i < c->window; i++) {
				if (c->slots[i].state != SLOT_FREE) {
					c->noreply += c->slots[i].nrec;
					client_slot_free(c, i);
				}
			}
			c->gave_up = !c->input_done;
			break;
		}
		client_progress(c, now, false);
	}
	r = 0;
out:
	free(line);
	return r;
}

static void client_cleanup(struct client *c)
{
	if (c->slots) {
		for (size_t i = 0; i < c->window; i++) {
			free(c->slots[i].body);
			free(c->slots[i].pos);
		}
	}
	free(c->slots);
	free(c->freelist);
	free(c->sendq);
	free(c->hkeys);
	free(c->hvals);
	for (int i = 0; i < c->nep; i++) {
		if (c->eps[i].mon)
			zmq_close(c->eps[i].mon);
		if (c->eps[i].sock)
			zmq_close(c->eps[i].sock);
	}
	free(c->eplist);
	if (c->ctx)
		zmq_ctx_term(c->ctx);
	if (c->in.fd > STDIN_FILENO)
		close(c->in.fd);
}

int client_send(const struct client_defaults *d, int argc, char **argv)
{
	static char stdin_name[] = "-";
	static char prog[] = "feed send";
	static char *stdin_files[] = { stdin_name };
	struct client *c;
	char **av = NULL;
	int r, ret = 2;

	/*
	 * getopt wants a program name in argv[0]. client.h says argv starts after
	 * "send"; main.c passes "send" itself as argv[0]. Take either.
	 */
	if (argc > 0 && strcmp(argv[0], "send") == 0) {
		argc--;
		argv++;
	}
	c = calloc(1, sizeof(*c));
	av = calloc((size_t)argc + 2, sizeof(*av));
	if (!c || !av) {
		fprintf(stderr, "feed send: out of memory\n");
		ret = 1;
		goto out;
	}
	av[0] = prog;
	for (int i = 0; i < argc; i++)
		av[i + 1] = argv[i];
	c->endpoint = d->endpoint;
	c->server_key = d->server_key;
	c->cert = d->cert;
	c->window = 64;
	c->batch = 1;
	c->timeout_ms = 5000;
	c->retries = 5;
	c->in.fd = -1;
	c->in.cur = -1;

	r = client_parse(c, argc + 1, av);
	if (r != 0) {
		ret = r > 0 ? 0 : 2;
		goto out;
	}
	c->in.files = optind < argc + 1 ? av + optind : stdin_files;
	c->in.nfiles = optind < argc + 1 ? argc + 1 - optind : 1;
	c->progress = !c->quiet && isatty(STDERR_FILENO);
	client_input_size(&c->in);

	ret = 1;
	if (client_setup(c) < 0)
		goto out;                       /* reported */
	r = client_loop(c);
	if (r < 0)
		fprintf(stderr, "%sfeed send: %s\n", c->progress ? "\r\033[K" : "", zmq_strerror(-r));
	if (r == 0 && c->sent == 0 && c->unsent == 0) {
		if (c->progress)
			fputs("\r\033[K", stderr);
		fprintf(stderr, "feed send: no records in the input%s: nothing sent\n",
			c->skipped ? " (only a header line)" : "");
		goto out;
	}
	client_summary(c);
	if (r == 0 && c->ok == c->sent && c->unsent == 0 && !c->gave_up)
		ret = 0;
out:
	if (c)
		client_cleanup(c);
	free(c);
	free(av);
	return ret;
}
