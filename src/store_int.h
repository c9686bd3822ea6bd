/*
 * store_int.h - what the backends share and nothing else of feed needs:
 * reading values the servers print, and the migration driver
 * (store_migrate.c) with the catalog and DDL hooks each backend gives it.
 * Include it from store_*.c only; the rest of feed sees store.h.
 */
#ifndef FEED_STORE_INT_H
#define FEED_STORE_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store.h"

/* ==== store.c: values as the servers print them ==== */

/*
 * A (possibly negative) int64 printed by the server, s[0..len). 0, or
 * -EINVAL (s NULL, not an integer), -ERANGE (outside int64). *ret untouched
 * on failure.
 */
int store_parse_i64(const char *s, size_t len, int64_t *ret);

/*
 * A non-negative exact decimal at DEC_SCALE ("1.25", "1.25000000000",
 * "3"), or -1 if s is NULL (SQL NULL), negative or not a decimal feed can
 * read exactly: struct store_row's and struct store_settle's convention.
 */
int64_t store_parse_amount(const char *s, size_t len);

/* vsnprintf into s->errmsg. */
void store_setmsg(struct store *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
