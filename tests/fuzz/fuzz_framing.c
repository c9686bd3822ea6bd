/*
 * fuzz_framing.c - libFuzzer target for request_from_frames(): the frames of
 * one message in, one request (records, or a reject with its reason) out.
 *
 * Input layout: byte 0 says how many frames past the ones given the message
 * had (drained ones; 0..255, x 4096 if its high bit is set), then frames as
 * a 1-byte length and that many bytes (a length byte of 255 takes 2 more
 * bytes, big-endian, for frames of up to 64 KiB). Frame 0 is the routing id.
 * Invariants: the envelope echoes the frames verbatim and ends exactly at
 * env + env_len; cost is the whole allocation; an accepted request has
 * 1..max_records valid records from its last frame; a rejected one a
 * printable reason; more than REQUEST_MAX_FRAMES frames is always rejected.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_check.h"

#include "request.h"

#define FUZZ_MAX_BYTES 2048
#define FUZZ_MAX_RECORDS 12

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const struct proto_limits lim = { FUZZ_MAX_BYTES, FUZZ_MAX_RECORDS };
	struct frame f[REQUEST_MAX_FRAMES];
	static const char where[] = "tcp://127.0.0.1:5555 peer 127.0.0.1";
	unsigned nf = 0;
	size_t extra, pos = 1;

	if (size < 1)
		return 0;
	extra = data[0] & 0x7f;
	if (data[0] & 0x80)
		extra *= 4096;
	while (pos < size && nf < REQUEST_MAX_FRAMES) {
		size_t len = data[pos++];
		if (len == 255) {
			if (pos + 2 > size)
				break;
			len = (size_t)data[pos] << 8 | data[pos + 1];
			pos += 2;
		}
		if (len > size - pos)
			len = size - pos;
		f[nf++] = (struct frame){ data + pos, len };
		pos += len;
	}
	if (nf < 2)
		return 0; /* transport never builds a request from fewer */
	size_t total = nf + extra;

	struct request *r = request_from_frames(f, nf, total, &lim, where, "127.0.0.1", 3);
	FUZZ_CHECK(r != NULL);
	FUZZ_CHECK(r->sock == 3);
	FUZZ_CHECK(strcmp(r->sr.endpoint, where) == 0);
	FUZZ_CHECK(r->cost >= sizeof(*r) + r->env_len + r->id_len + r->sr.len + sizeof(where));
	FUZZ_CHECK(request_records(r) >= 1);
	FUZZ_CHECK(request_same_peer(r, r));

	/* the envelope: frames 0..nenv verbatim, the delimiter last if any */
	FUZZ_CHECK(r->nenv >= 1 && r->nenv <= nf);
	const unsigned char *cur = r->env;
	for (unsigned i = 0; i < r->nenv; i++) {
		size_t fl;
		const unsigned char *fd = request_env_next(&cur, &fl);
		FUZZ_CHECK(fl == f[i].len && memcmp(fd, f[i].data, fl) == 0);
		FUZZ_CHECK(i == 0 || fl > 0 || i == r->nenv - 1);
	}
	FUZZ_CHECK(cur == r->env + r->env_len);
	FUZZ_CHECK(r->delimited == (r->nenv > 1 && f[r->nenv - 1].len == 0));

	if (r->sr.rejected) {
		size_t n = strlen(r->sr.reason);
		FUZZ_CHECK(r->sr.bad_input && n > 0 && n < sizeof(r->sr.reason));
		for (size_t i = 0; i < n; i++)
			FUZZ_CHECK(r->sr.reason[i] >= 0x20 && r->sr.reason[i] <= 0x7e);
		FUZZ_CHECK(r->sr.n == 0);
	} else {
		FUZZ_CHECK(total <= REQUEST_MAX_FRAMES);
		FUZZ_CHECK(r->sr.n >= 1 && r->sr.n <= FUZZ_MAX_RECORDS);
		/* the body is the last frame, the id (if any) the one before it */
		FUZZ_CHECK(r->sr.len == f[nf - 1].len && memcmp(r->sr.body, f[nf - 1].data, r->sr.len) == 0);
		FUZZ_CHECK(nf - r->nenv == (r->id ? 2u : 1u));
		FUZZ_CHECK(!r->id || (r->id_len >= 1 && r->id_len <= 255 &&
				      memcmp(r->id, f[nf - 2].data, r->id_len) == 0));
		for (size_t i = 0; i < r->sr.n; i++)
			FUZZ_CHECK(r->sr.recs[i].ticket >= 1 && r->sr.recs[i].login >= 1 &&
				   r->sr.recs[i].volume >= 0);
	}
	if (total > REQUEST_MAX_FRAMES)
		FUZZ_CHECK(r->sr.rejected && strstr(r->sr.reason, "frames (at most 32)"));
	request_free(r);
	return 0;
}
