/*
 * auth.h - who may send: the CURVE certificates (ZPL files), the set of
 * allowed client keys (a directory, rescanned while serving), the address
 * allowlist (CIDR), and the ZAP handler that applies them to every
 * handshake. Main thread only (the ZAP socket is polled by the main loop).
 */
#ifndef FEED_AUTH_H
#define FEED_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

#define AUTH_KEY_BYTES 32
#define AUTH_Z85_LEN 40
#define AUTH_NAME_MAX 64        /* a client certificate's name: its file name less ".key" */

struct auth;

/*
 * Reads what cfg's [listen] curve_server_cert, curve_clients and allow name.
 * *ret is NULL when none is set (no ZAP handler, classic behaviour). Refuses
 * (-errno, err says what, where, why) a missing or unreadable certificate
 * or directory, or a secret file that group or others may access.
 */
int auth_open(const struct feed_config *cfg, struct auth **ret, char *err, size_t errsz);
/* NULL-safe; closes the ZAP socket; sets *pa = NULL. */
void auth_free(struct auth **pa);

/* Is CURVE required on network endpoints? Then *ret_secret is the server's secret key. */
bool auth_curve(const struct auth *a, const uint8_t **ret_secret);

/*
 * Binds the ZAP handler (inproc://zeromq.zap.01) in ctx. Call before any
 * other bind: libzmq lets a CURVE handshake through when no handler exists.
 */
int auth_zap_bind(struct auth *a, void *ctx, char *err, size_t errsz);
/* The ZAP socket, to poll for input. */
void *auth_zap_socket(const struct auth *a);
/* Answers up to max pending ZAP requests without blocking. Returns how many, or -errno. */
int auth_zap_serve(struct auth *a, unsigned max);

/*
 * Rereads curve_clients if its mtime changed (every time when force).
 * A directory that cannot be read leaves no client allowed (fail closed);
 * that is logged once per change of state. Returns 0 or -errno (err set).
 */
int auth_rescan(struct auth *a, bool force, char *err, size_t errsz);
/* From the main loop each turn: a rescan at most once a second, log summaries. */
void auth_tick(struct auth *a, uint64_t now_ms);

/*
 * Is a client with this User-Id (certificate name) and key (z85) still in
 * the set? For each request on a CURVE endpoint: a certificate removed
 * after the handshake refuses the connection's next request. Cheap when
 * nothing changed (a generation counter and the last answer are kept).
 */
bool auth_current(struct auth *a, const char *name, const char *z85);

/* Parses an allow list ("10.0.0.0/8, ::1"); NULL if fine, else why not (static text). */
const char *auth_allow_check(const char *list);

/*
 * Reads a ZPL certificate file (the format of CZMQ's zcert_save and pyzmq's
 * zmq.auth.create_certificates). ret_secret may be NULL (public file);
 * otherwise the file must hold a secret-key matching its public-key.
 */
int auth_cert_load(const char *path, uint8_t ret_public[AUTH_KEY_BYTES], uint8_t *ret_secret,
		   char *err, size_t errsz);

/*
 * Writes DIR/NAME.key (0644) and DIR/NAME.key_secret (0600) with a new
 * key pair; never overwrites. Returns 0 or -errno (err set).
 */
int auth_keygen(const char *dir, const char *name, char *err, size_t errsz);

#endif
