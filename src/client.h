/*
 * client.h - `feed send`: a pipelining ZeroMQ DEALER client for feed.
 */
#ifndef FEED_CLIENT_H
#define FEED_CLIENT_H

/*
 * argv[0] is "send"; argv[1..] are its options and files (feed's global
 * options, -c included, go before "send").
 * default_endpoint comes from the configuration ([listen] endpoint, first
 * one, wildcard host replaced by 127.0.0.1). Returns the process exit code:
 * 0 only if every record got TRUE, 1 otherwise, 2 on bad usage.
 */
int client_send(const char *default_endpoint, int argc, char **argv);

#endif
