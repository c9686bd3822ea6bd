/*
 * store.c - backend registry and the batch algorithm every backend shares.
 *
 * store_write() turns a batch of requests into one transaction: look up the
 * batch's tickets, decide in C which records are new, which are identical
 * re-sends and which conflict, insert the new ones, store the rejected
 * requests, commit. It runs on a writer thread with that writer's own
 * connection and scratch space.
 */
#include "store.h"
#include "store_int.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "decimal.h"
#include "url.h"

static const struct store_ops *const backends[] = {
	&store_sqlite_ops,
	&store_pg_ops,
	&store_mysql_ops,
	NULL,
};

const struct store_ops *store_find(const char *url)
{
	const char *colon = strchr(url, ':');

	if (!colon)
		return NULL;
	for (size_t i = 0; backends[i]; i++)
		for (size_t j = 0; backends[i]->schemes[j]; j++) {
			size_t n = strlen(backends[i]->schemes[j]);
			if ((size_t)(colon - url) == n && strncmp(url, backends[i]->schemes[j], n) == 0)
				return backends[i];
		}
	return NULL;
}

void store_url_redact(const char *url, char *buf, size_t size)
{
	url_redact(url, buf, size);
}

/* ==== Helpers for the backends (store_int.h) ==== */

int store_parse_i64(const char *s, size_t len, int64_t *ret)
{
	/* dec_parse at scale 0 would take "1.0": a server prints an integer column without */
	if (!s || memchr(s, '.', len))
		return -EINVAL;
	return dec_parse(s, len, 0, DEC_LENIENT, ret, NULL);
}

int64_t store_parse_amount(const char *s, size_t len)
{
	int64_t v;

	if (!s || dec_parse(s, len, DEC_SCALE, DEC_LENIENT, &v, NULL) < 0 || v < 0)
		return -1;
	return v;
}

void store_keys_reset(struct store_keys *k)
{
	snprintf(k->names, sizeof(k->names), " ");
	k->known = false;
}

void store_keys_add(struct store_keys *k, const char *name)
{
	size_t len = strlen(k->names);

	if (len + strlen(name) + 2 <= sizeof(k->names))
		snprintf(k->names + len, sizeof(k->names) - len, "%s ", name);
}

void store_keys_done(struct store_keys *k)
{
	k->known = true;
	k->read_txn = k->txn;
}

int store_keys_class(struct store_keys *k, const char *name, size_t len)
{
	char word[sizeof(k->names)];

	if (len + 3 > sizeof(word))
		return -EINVAL;      /* longer than any name the list can hold */
	snprintf(word, sizeof(word), " %.*s ", (int)len, name);
	if (k->known && strstr(k->names, word))
		return -EEXIST;
	if (k->known && k->read_txn == k->txn)
		return -EINVAL;
	k->known = false;
	return -EEXIST;
}

int store_sqlstate_errno(const char *state)
{
	if (!state || strlen(state) != 5)
		return -EIO;
	if (!strncmp(state, "08", 2))
		return -ENOTCONN;
	if (!strcmp(state, "40001"))
		return -EAGAIN;
	if (!strncmp(state, "22", 2) || !strncmp(state, "23", 2))
		return -EINVAL;
	if (!strncmp(state, "54", 2))
		return -E2BIG;
	return -EIO;
}

/* Whether s is valid UTF-8; else *ret_bad is the offset of the first bad byte. */
static bool store_utf8_ok(const unsigned char *s, size_t *ret_bad)
{
	size_t i = 0;

	while (s[i]) {
		unsigned char c = s[i];
		size_t k;
		uint32_t cp;

		if (c < 0x80) {
			i++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf) {
			k = 1;
			cp = c & 0x1f;
		} else if (c >= 0xe0 && c <= 0xef) {
			k = 2;
			cp = c & 0x0f;
		} else if (c >= 0xf0 && c <= 0xf4) {
			k = 3;
			cp = c & 0x07;
		} else {
			goto bad;
		}
		for (size_t j = 1; j <= k; j++) {
			if ((s[i + j] & 0xc0) != 0x80)
				goto bad;
			cp = cp << 6 | (s[i + j] & 0x3f);
		}
		if ((k == 2 && cp < 0x800) || (k == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
		    (cp >= 0xd800 && cp <= 0xdfff))
			goto bad;
		i += k + 1;
		continue;
bad:
		*ret_bad = i;
		return false;
	}
	return true;
}

const char *store_clean_text(const char *s, char **ret_copy)
{
	size_t bad;
	char *c;

	*ret_copy = NULL;
	if (!s)
		return "";
	if (store_utf8_ok((const unsigned char *)s, &bad))
		return s;
	c = strdup(s);
	if (!c)
		return NULL;
	do {
		c[bad] = '?';
	} while (!store_utf8_ok((const unsigned char *)c, &bad));
	*ret_copy = c;
	return c;
}

void store_setmsg(struct store *s, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(s->errmsg, sizeof(s->errmsg), fmt, ap);
	va_end(ap);
}

/* ==== The batch ==== */

/* Open-addressing map ticket -> slot, rebuilt for every attempt. */
struct slot {
	int64_t ticket;
	int64_t login;
	int64_t volume;
	int owner;        /* SLOT_STORED, SLOT_FREED or the index of the request that brings it */
	bool used;
};

enum { SLOT_STORED = -1, SLOT_FREED = -2 };

#define REJECT_KEEP 65536   /* bytes of a rejected body kept if the database refuses it whole */

struct store_batch {
	size_t cap;               /* records */
	size_t nslots;            /* power of two >= 2 * cap */
	size_t mask;              /* of the part in use for this batch */
	struct slot *slots;
	int64_t *tickets;
	struct store_row *rows;
	struct record *fresh;     /* records to insert */
	const char **fresh_src;   /* their senders (NULL: unknown), borrowed from the requests */
	struct store_reject *rejects;
	size_t rejects_cap;
};

struct store_batch *store_batch_new(size_t cap)
{
	struct store_batch *b = calloc(1, sizeof(*b));

	if (!b)
		return NULL;
	b->cap = cap;
	b->nslots = 16;
	while (b->nslots < 2 * cap)
		b->nslots <<= 1;
	b->slots = calloc(b->nslots, sizeof(*b->slots));
	b->tickets = calloc(cap, sizeof(*b->tickets));
	b->rows = calloc(cap, sizeof(*b->rows));
	b->fresh = calloc(cap, sizeof(*b->fresh));
	b->fresh_src = calloc(cap, sizeof(*b->fresh_src));
	b->rejects_cap = 1024;
	b->rejects = calloc(b->rejects_cap, sizeof(*b->rejects));
	if (!b->slots || !b->tickets || !b->rows || !b->fresh || !b->fresh_src || !b->rejects)
		store_batch_free(&b);
	return b;
}

void store_batch_free(struct store_batch **pb)
{
	struct store_batch *b = *pb;

	if (!b)
		return;
	free(b->slots);
	free(b->tickets);
	free(b->rows);
	free(b->fresh);
	free(b->fresh_src);
	free(b->rejects);
	free(b);
	*pb = NULL;
}

static size_t hash(int64_t t, size_t mask)
{
	uint64_t x = (uint64_t)t * 0x9E3779B97F4A7C15ULL;
	return (size_t)(x >> 17) & mask;
}

static struct slot *slot_find(struct store_batch *b, int64_t ticket)
{
	size_t mask = b->mask;

	for (size_t i = hash(ticket, mask);; i = (i + 1) & mask) {
		struct slot *sl = &b->slots[i];
		if (!sl->used || sl->ticket == ticket)
			return sl;
	}
}

static void format_conflict(struct store_req *r, int64_t ticket, const struct slot *sl,
			    int owner, int self)
{
	char vol[DEC_STRMAX];
	const char *how = owner == SLOT_STORED ? "already stored" :
			  owner == self ? "appears earlier in this request" :
					  "sent concurrently by another request";

	if (sl->volume < 0)
		snprintf(vol, sizeof(vol), "(unreadable)");
	else
		dec_format(sl->volume, DEC_SCALE, 0, vol);
	snprintf(r->reason, sizeof(r->reason), "conflict: ticket %lld %s with login %lld volume %s",
		 (long long)ticket, how, (long long)sl->login, vol);
	r->rejected = 1;
}

/* The sender as stored: "" (unknown) is SQL NULL, not an empty name. */
static const char *source_of(const struct store_req *r)
{
	return r->source && r->source[0] ? r->source : NULL;
}

/*
 * Decides each request's fate against the stored rows and the requests
 * before it; fills b->fresh and b->fresh_src. A request that conflicts leaves no trace in the map.
 */
static size_t classify(struct store_batch *b, struct store_req **reqs, size_t n,
		       const struct store_row *rows, size_t nrows)
{
	size_t nfresh = 0, want = 16, entries = nrows;

	/* a map twice the size of this batch: clearing all of it would cost more than the batch */
	for (size_t i = 0; i < n; i++)
		entries += reqs[i]->n;
	while (want < 2 * entries && want < b->nslots)
		want <<= 1;
	b->mask = want - 1;
	memset(b->slots, 0, want * sizeof(*b->slots));
	for (size_t i = 0; i < nrows; i++) {
		struct slot *sl = slot_find(b, rows[i].ticket);
		*sl = (struct slot){ rows[i].ticket, rows[i].login, rows[i].volume, SLOT_STORED, true };
	}
	for (size_t i = 0; i < n; i++) {
		struct store_req *r = reqs[i];
		size_t start = nfresh;
		const char *src = source_of(r);

		r->dup = 0;
		if (r->rejected)
			continue;
		for (size_t j = 0; j < r->n; j++) {
			const struct record *rec = &r->recs[j];
			struct slot *sl = slot_find(b, rec->ticket);

			if (!sl->used || sl->owner == SLOT_FREED) {
				*sl = (struct slot){ rec->ticket, rec->login, rec->volume, (int)i, true };
				b->fresh_src[nfresh] = src;
				b->fresh[nfresh++] = *rec;
			} else if (sl->login != rec->login || sl->volume != rec->volume) {
				format_conflict(r, rec->ticket, sl, sl->owner, (int)i);
				break;
			} else {
				r->dup++;
			}
		}
		if (r->rejected) {
			/* undo this request's claims: mark its slots as not inserted */
			for (size_t k = start; k < nfresh; k++) {
				struct slot *sl = slot_find(b, b->fresh[k].ticket);
				sl->owner = SLOT_FREED; /* keeps probing chains intact */
			}
			nfresh = start;
		}
	}
	return nfresh;
}

/*
 * How much of a rejected body goes to fee_reject (store_req.keep), after the
 * database refused it whole: its first REJECT_KEEP bytes, then nothing.
 */
enum keep { KEEP_ALL, KEEP_PREFIX, KEEP_NONE };

static void annotate(struct store_req *q, const char *note)
{
	size_t used = strlen(q->reason);

	if (!strstr(q->reason, note))
		snprintf(q->reason + used, sizeof(q->reason) - used, "%s", note);
}

static int store_rejects(struct store *s, struct store_batch *b, struct store_req **reqs, size_t n)
{
	char note[96];
	size_t k = 0;
	int r;

	for (size_t i = 0; i < n; i++) {
		struct store_req *q = reqs[i];
		size_t len = q->len;

		if (!q->rejected)
			continue;
		if (q->keep == KEEP_NONE) {
			char *cut = strstr(q->reason, " [stored truncated: ");

			if (cut)        /* noted by an attempt that failed */
				*cut = '\0';
			q->unstored = true;
			annotate(q, " [not stored: the database refused it]");
			continue;
		}
		if (q->keep == KEEP_PREFIX && len > REJECT_KEEP) {
			len = REJECT_KEEP;
			snprintf(note, sizeof(note), " [stored truncated: %d of %zu bytes]", REJECT_KEEP, q->len);
			annotate(q, note);
		}
		b->rejects[k++] = (struct store_reject){ q->endpoint, q->reason, q->body, len,
							source_of(q) };
		if (k == b->rejects_cap) {
			r = s->ops->insert_rejects(s, b->rejects, k);
			if (r < 0)
				return r;
			k = 0;
		}
	}
	return k ? s->ops->insert_rejects(s, b->rejects, k) : 0;
}

/* How many requests would insert something: the candidates for isolation. */
static size_t count_writers(struct store_req **reqs, size_t n)
{
	size_t c = 0;

	for (size_t i = 0; i < n; i++)
		if (!reqs[i]->rejected && reqs[i]->n > 0)
			c++;
	return c;
}

/* How many rejected requests offer fee_reject a body: the candidates when it refuses one. */
static size_t count_rejects(struct store_req **reqs, size_t n)
{
	size_t c = 0;

	for (size_t i = 0; i < n; i++)
		if (reqs[i]->rejected && reqs[i]->keep != KEEP_NONE)
			c++;
	return c;
}

/* Whether a request of reqs is rejected (its body goes to fee_reject, or is noted unstored). */
static bool any_rejected(struct store_req **reqs, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (reqs[i]->rejected)
			return true;
	return false;
}

/*
 * One transaction over reqs. *ret_in_rejects tells whether fee_reject was the
 * one refused. look: look the batch's tickets up first. Without, every
 * ticket is taken as new and inserted at once, without the probe's and the
 * lookup's round trips: right whenever it succeeds, since the ticket's key
 * refuses any ticket already stored (-EEXIST), and the caller then tries
 * again with look. That is the common case (fresh trades) and what a
 * lock-step sender waits for; a re-send costs one rolled-back attempt more.
 */
static int write_once(struct store *s, struct store_batch *b, struct store_req **reqs, size_t n,
		      bool look, bool *ret_in_rejects)
{
	size_t nt = 0, nrows = 0, nfresh;
	int r;

	*ret_in_rejects = false;
	for (size_t i = 0; i < n; i++)
		if (!reqs[i]->rejected)
			for (size_t j = 0; j < reqs[i]->n; j++)
				b->tickets[nt++] = reqs[i]->recs[j].ticket;

	r = s->ops->begin(s);
	if (r < 0)
		return r;
	if (nt > 0 && look) {
		/*
		 * Tickets mostly grow: one probe of the key's end spares the
		 * lookup of every ticket above the largest stored one (usually
		 * the whole batch). A ticket another writer stores meanwhile is
		 * caught by the key at insert (-EEXIST: the batch is looked up again).
		 */
		int64_t max;
		size_t np = 0;

		r = s->ops->max_ticket(s, &max);
		if (r < 0)
			goto fail;
		for (size_t i = 0; i < nt; i++)
			if (b->tickets[i] <= max)
				b->tickets[np++] = b->tickets[i];
		if (np > 0) {
			r = s->ops->lookup(s, b->tickets, np, b->rows, &nrows);
			if (r < 0)
				goto fail;
		}
	}
	nfresh = classify(b, reqs, n, b->rows, nrows);
	if (nfresh > 0 && s->ops->insert_commit && !any_rejected(reqs, n)) {
		/* nothing for fee_reject: the insert and the commit in one go */
		r = s->ops->insert_commit(s, b->fresh, b->fresh_src, nfresh);
		if (r < 0)
			goto fail;
		for (size_t i = 0; i < n; i++)
			reqs[i]->done = true;
		return 0;
	}
	if (nfresh > 0) {
		r = s->ops->insert(s, b->fresh, b->fresh_src, nfresh);
		if (r < 0)
			goto fail;
	}
	r = store_rejects(s, b, reqs, n);
	if (r < 0) {
		*ret_in_rejects = true;
		goto fail;
	}
	r = s->ops->commit(s);
	if (r < 0)
		goto fail;
	for (size_t i = 0; i < n; i++)
		reqs[i]->done = true;
	return 0;
fail:
	store_rollback(s);
	return r;
}

/* The database refuses something of one request, not the batch as a whole (store.h). */
static bool is_refusal(int r)
{
	return r == -EINVAL || r == -E2BIG;
}

/* The only candidate left in reqs has its refusal recorded: it is refused, or its body cut. */
static void refuse_one(struct store *s, struct store_req **reqs, size_t n, bool in_rejects)
{
	for (size_t i = 0; i < n; i++) {
		struct store_req *q = reqs[i];

		if (in_rejects && q->rejected && q->keep != KEEP_NONE) {
			/* a body within the prefix is refused whole already: keep nothing */
			q->keep = q->keep == KEEP_ALL && q->len > REJECT_KEEP ? KEEP_PREFIX : KEEP_NONE;
		} else if (!in_rejects && !q->rejected && q->n > 0) {
			snprintf(q->reason, sizeof(q->reason), "database refused the request: %.200s",
				 s->errmsg);
			q->refused = true;
		}
	}
}

/*
 * Writes the requests not done yet. A refusal splits them in halves until
 * the request it belongs to stands alone: that one is refused (its records)
 * or cut (its body in fee_reject), the others commit as if it were not there.
 * after_refusal: the database refused something in this call already.
 */
static int write_part(struct store *s, struct store_batch *b, struct store_req **all, size_t nall,
		      bool after_refusal)
{
	struct store_req **reqs = all;
	bool reconnected = false;
	size_t n = 0;
	int r = 0;

	/*
	 * The requests not done yet, moved to the front in place (no copy on
	 * the stack: batches can be batch_max requests). The caller's order
	 * carries no meaning, and halves are split within this range only.
	 */
	for (size_t i = 0; i < nall; i++)
		if (!all[i]->done) {
			struct store_req *t = all[n];
			all[n++] = all[i];
			all[i] = t;
		}
	if (n == 0)
		return 0;

	for (int attempt = 0; attempt < 8; attempt++) {
		bool in_rejects;
		size_t c;

		/* parser rejections and refusals stand; conflicts are decided anew */
		for (size_t i = 0; i < n; i++)
			reqs[i]->rejected = reqs[i]->bad_input || reqs[i]->refused;
		r = write_once(s, b, reqs, n, attempt > 0 || after_refusal, &in_rejects);
		if (r == -EEXIST)
			continue; /* a ticket is stored already (or since lookup): look (again) */
		if (r == -ENOTCONN && after_refusal && !reconnected) {
			/*
			 * A server may close the connection after what it
			 * refused (MariaDB, a packet over max_allowed_packet):
			 * go on with a new one rather than find the refusal
			 * again from the start.
			 */
			reconnected = true;
			if (s->ops->reconnect(s) == 0)
				continue;
			return r;
		}
		if (!is_refusal(r))
			return r;
		after_refusal = true;
		c = in_rejects ? count_rejects(reqs, n) : count_writers(reqs, n);
		if (c == 0)
			return -EIO;
		if (c == 1) {
			refuse_one(s, reqs, n, in_rejects);
			continue; /* commit it refused or cut, with the rest */
		}
		size_t half = n / 2;
		r = write_part(s, b, reqs, half, true);
		if (r == 0)
			r = write_part(s, b, reqs + half, n - half, true);
		return r;
	}
	return r == -EEXIST ? -EAGAIN : r;
}

int store_rollback(struct store *s)
{
	char cause[sizeof(s->errmsg)];
	int r;

	memcpy(cause, s->errmsg, sizeof(cause));
	r = s->ops->rollback(s);
	if (r < 0 && cause[0]) {
		char failed[sizeof(s->errmsg)];
		memcpy(failed, s->errmsg, sizeof(failed));
		snprintf(s->errmsg, sizeof(s->errmsg), "%.300s (then ROLLBACK failed: %.180s)", cause, failed);
	} else {
		memcpy(s->errmsg, cause, sizeof(cause));
	}
	return r;
}

int store_write(struct store *s, struct store_batch *b, struct store_req **reqs, size_t n)
{
	/* a refusal is found again on a retry: the database may have changed meanwhile */
	for (size_t i = 0; i < n; i++)
		if (!reqs[i]->done) {
			reqs[i]->refused = false;
			reqs[i]->keep = KEEP_ALL;
		}
	return write_part(s, b, reqs, n, false);
}
