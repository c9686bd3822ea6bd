/*
 * protocol.h - request bodies <-> records. Pure: no I/O, no allocation, fuzzable.
 *
 * A body holds one or more records, one per line, each "ticket,login,volume"
 * (see docs/protocol.md for the exact grammar and limits).
 */
#ifndef FEED_PROTOCOL_H
#define FEED_PROTOCOL_H

#include <stddef.h>
#include <stdint.h>

struct record {
	int64_t ticket;   /* 1..INT64_MAX, the key */
	int64_t login;    /* 1..INT64_MAX */
	int64_t volume;   /* >= 0, units of 1e-8 (DEC_SCALE) */
};

struct proto_limits {
	size_t max_bytes;    /* body size limit */
	size_t max_records;  /* records per body */
};

struct proto_error {
	size_t line;          /* 1-based line number; 0 = the whole request */
	const char *field;    /* "ticket", "login", "volume", or NULL */
	char reason[192];     /* human text without the "FALSE: " prefix */
};

/*
 * Parses body[0..len) into out[0..cap). Returns the number of records (>= 1)
 * or -EINVAL with *err filled. A ticket repeated within the body is not
 * checked here (the store's batch logic handles repeats and conflicts).
 */
int proto_parse(const char *body, size_t len, const struct proto_limits *lim,
		struct record *out, size_t cap, struct proto_error *err);

/* Writes "FALSE: line 3: volume: ..." into buf (NUL-terminated). Returns length. */
size_t proto_format_error(const struct proto_error *err, char *buf, size_t size);

#endif
