/*
 * client.h - `feed send`: a pipelining ZeroMQ DEALER client for feed.
 */
#ifndef FEED_CLIENT_H
#define FEED_CLIENT_H

#include <stdio.h>

/* Defaults from the configuration; options override them. */
struct client_defaults {
	char endpoint[2048];    /* [send] endpoint (a list), else the first [listen] endpoint,
				 * wildcard host replaced by 127.0.0.1 */
	char *server_key;       /* [send] server_key, or NULL: the server's public certificate */
	char *cert;             /* [send] cert, or NULL: this client's secret certificate */
};

/*
 * argv[0] is "send"; argv[1..] are its options and files (feed's global
 * options, -c included, go before "send"). With a server key (--server-key
 * or [send] server_key) the connection is CURVE, and a client certificate
 * (--cert or [send] cert) is required. Returns the process exit code: 0
 * only if every record got TRUE, 1 otherwise, 2 on bad usage.
 */
int client_send(const struct client_defaults *d, int argc, char **argv);
/* The text of `feed send --help` (and of `feed help send`). */
void client_usage(FILE *f);

#endif
