/*
 * url.h - database URLs: parsed into their parts, and redacted for logs.
 *
 *   scheme://[user[:password]@]host[:port][,host[:port]...][/database][?key=value&...]
 *
 * Every part but the scheme is percent-decoded; a host may be an IPv6
 * literal in brackets. Several hosts, comma separated, are parsed for
 * backends that will take a cluster. Pure: no I/O, no logging; any thread.
 */
#ifndef FEED_URL_H
#define FEED_URL_H

#include <stddef.h>

#define URL_HOSTS_MAX 16
#define URL_PARAMS_MAX 32

struct url_host {
	char *name;                   /* decoded, brackets of an IPv6 literal removed */
	unsigned int port;            /* 0 if none given */
};

struct url_param {
	char *key;
	char *value;
};

/* Every string is owned by the struct and freed by url_free(); NULL if absent. */
struct url {
	char *scheme;
	char *user;
	char *password;               /* wiped by url_free() */
	struct url_host hosts[URL_HOSTS_MAX];
	size_t nhosts;                /* 0: no host ("scheme:///db") */
	char *database;               /* the path without its '/'; NULL if no path */
	struct url_param params[URL_PARAMS_MAX];
	size_t nparams;
};

/*
 * Parses text into *ret. Returns 0, -EINVAL with a message in err that
 * says what is wrong, where (the byte offset) and why, without quoting the
 * user or password; or -ENOMEM. On failure *ret is left empty.
 */
int url_parse(const char *text, struct url *ret, char *err, size_t errsz);

/* Frees the strings of u (NULL-safe), wiping the password, and empties it. */
void url_free(struct url *u);

/* The value of the last parameter named key, or NULL. */
const char *url_param(const struct url *u, const char *key);

/*
 * The password of url as written (still percent-encoded): *ret_len bytes at
 * the returned pointer into url, or NULL if url has none in its userinfo.
 */
const char *url_password_raw(const char *url, size_t *ret_len);

/*
 * Copies url into buf (at most size bytes, NUL-terminated) with the
 * password of the userinfo and any "password" parameter replaced by "***".
 */
void url_redact(const char *url, char *buf, size_t size);

/*
 * Replaces every occurrence of secret in msg, in place, by "***" (by as
 * many '*' as secret has bytes if fewer: msg never grows). For messages
 * of a library that may quote the password it was given.
 */
void url_scrub(char *msg, const char *secret);

#endif
