/*
 * auth.c - CURVE certificates, the allowed client set, the address
 * allowlist, and the ZAP handler (RFC 27) that applies them.
 *
 * The ZAP handler is written on libzmq, not CZMQ's zauth: zauth has no CIDR
 * ranges and no per-request check of a connection authenticated before a
 * key was removed, and runs as an actor thread with its own locking. Here
 * the handler is a REP socket in the daemon's own context, polled by the
 * main loop like the ROUTER sockets: a handshake waits for the loop's next
 * turn, and the set is touched by one thread only (no locks).
 *
 * Certificate files are read and written here too, in the subset of ZPL
 * that zcert_save and pyzmq write (a "curve" section with public-key and
 * secret-key): about a hundred lines instead of libczmq's whole ZPL parser
 * and its process-wide state (zsys_file_mode_private() changes the umask).
 */
#include "auth.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "log.h"
#include "ratelimit.h"
#include "timeutil.h"

#define CERT_FILE_MAX 65536     /* a certificate is a few hundred bytes */
#define CLIENTS_MAX 100000      /* certificates in curve_clients */
#define ALLOW_MAX 256           /* entries of the allow list */
#define ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define ZAP_FRAMES 8            /* frames of a ZAP request that are read; more are drained */
#define ZAP_FRAME_MAX 512       /* bytes kept of each */

struct cert {
	uint8_t key[AUTH_KEY_BYTES];
	char z85[AUTH_Z85_LEN + 1];
	char name[AUTH_NAME_MAX + 1];
};

struct cidr {
	uint8_t addr[16];           /* IPv4 as ::ffff:a.b.c.d */
	unsigned bits;
};

struct auth {
	bool curve;
	uint8_t secret[AUTH_KEY_BYTES];
	char *clients_dir;
	struct cert *certs;         /* sorted by key */
	size_t ncerts;
	uint64_t gen;               /* bumped whenever the set changes */
	struct timespec dir_mtime;
	ino_t dir_ino;
	bool dir_ok;                /* the last scan read the directory */
	char dir_err[512];          /* why not, as last logged */
	uint64_t last_tick;
	struct cidr allow[ALLOW_MAX];
	size_t nallow;
	void *zap;
	/* auth_current()'s last answer */
	uint64_t cur_gen;
	char cur_name[AUTH_NAME_MAX + 1], cur_z85[AUTH_Z85_LEN + 1];
	bool cur_ok;
	struct ratelimit rl_refused;
};

/* ==== Addresses ==== */

/* "a.b.c.d" or an IPv6 address into 16 bytes (IPv4 mapped). */
static int parse_addr(const char *s, uint8_t out[16], bool *ret_v4)
{
	struct in_addr v4;

	if (inet_pton(AF_INET, s, &v4) == 1) {
		memset(out, 0, 10);
		out[10] = out[11] = 0xff;
		memcpy(out + 12, &v4, 4);
		*ret_v4 = true;
		return 0;
	}
	*ret_v4 = false;
	return inet_pton(AF_INET6, s, out) == 1 ? 0 : -EINVAL;
}

/* One "addr[/bits]" entry of len bytes. NULL if fine, else why not. */
static const char *parse_cidr(const char *s, size_t len, struct cidr *ret)
{
	char buf[INET6_ADDRSTRLEN + 8];
	char *slash, *end;
	bool v4;
	long bits;

	if (len >= sizeof(buf))
		return "an entry is too long to be an address";
	memcpy(buf, s, len);
	buf[len] = '\0';
	slash = strchr(buf, '/');
	if (slash)
		*slash = '\0';
	if (parse_addr(buf, ret->addr, &v4) < 0)
		return "each entry must be an IPv4 or IPv6 address, optionally /prefix-length";
	bits = v4 ? 32 : 128;
	if (slash) {
		errno = 0;
		bits = strtol(slash + 1, &end, 10);
		if (!slash[1] || *end || errno || bits < 0 || bits > (v4 ? 32 : 128))
			return "a prefix length must be 0..32 (IPv4) or 0..128 (IPv6)";
	}
	ret->bits = (unsigned)bits + (v4 ? 96 : 0);
	return NULL;
}

/* Parses list into rules (when not NULL); NULL if fine, else why not. */
static const char *parse_allow(const char *list, struct cidr *rules, size_t *ret_n)
{
	struct cidr scratch;
	size_t n = 0;

	for (const char *p = list; *p;) {
		p += strspn(p, " \t,");
		size_t len = strcspn(p, " \t,");
		if (!len)
			break;
		if (n == ALLOW_MAX)
			return "more than 256 entries";
		const char *why = parse_cidr(p, len, rules ? &rules[n] : &scratch);
		if (why)
			return why;
		n++;
		p += len;
	}
	if (ret_n)
		*ret_n = n;
	return NULL;
}

const char *auth_allow_check(const char *list) { return parse_allow(list, NULL, NULL); }

static bool cidr_match(const struct cidr *c, const uint8_t a[16])
{
	unsigned full = c->bits / 8, rest = c->bits % 8;

	if (memcmp(c->addr, a, full) != 0)
		return false;
	if (!rest)
		return true;
	uint8_t mask = (uint8_t)(0xff << (8 - rest));
	return (c->addr[full] & mask) == (a[full] & mask);
}

static bool address_allowed(const struct auth *a, const char *addr)
{
	uint8_t bin[16];
	bool v4;

	if (!a->nallow)
		return true;
	if (parse_addr(addr, bin, &v4) < 0)
		return false;
	for (size_t i = 0; i < a->nallow; i++)
		if (cidr_match(&a->allow[i], bin))
			return true;
	return false;
}

/* ==== Certificate files ==== */

/* The value of a "key = value" line: quotes stripped. Returns its length or -1. */
static int zpl_value(char *v, char **ret)
{
	v += strspn(v, " \t");
	size_t len = strlen(v);
	while (len && (v[len - 1] == ' ' || v[len - 1] == '\t'))
		v[--len] = '\0';
	if (len >= 2 && (v[0] == '"' || v[0] == '\'') && v[len - 1] == v[0]) {
		v[len - 1] = '\0';
		v++;
		len -= 2;
	}
	*ret = v;
	return (int)len;
}

/* "public-key"/"secret-key" of the "curve" section of text, z85 into pub/sec (41 bytes each). */
static const char *zpl_keys(char *text, char *pub, char *sec)
{
	bool in_curve = false;
	char *save = NULL;

	pub[0] = sec[0] = '\0';
	for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		line[strcspn(line, "\r")] = '\0';
		char *s = line + strspn(line, " \t");
		if (!*s || *s == '#')
			continue;
		if (s == line) {    /* a section name: not indented */
			in_curve = strncmp(s, "curve", 5) == 0 && strspn(s + 5, " \t") == strlen(s + 5);
			continue;
		}
		char *eq = strchr(s, '=');
		if (!in_curve || !eq)
			continue;
		size_t klen = strcspn(s, " \t=");
		char *dst = klen == 10 && strncmp(s, "public-key", 10) == 0 ? pub :
			    klen == 10 && strncmp(s, "secret-key", 10) == 0 ? sec : NULL;
		char *v;
		if (!dst)
			continue;
		if (dst[0])
			return "a key is given twice";
		if (zpl_value(eq + 1, &v) != AUTH_Z85_LEN)
			return "a key is not 40 characters of Z85";
		memcpy(dst, v, AUTH_Z85_LEN + 1);
	}
	return NULL;
}

/* Reads at most CERT_FILE_MAX bytes of an open file into buf (NUL-terminated). */
static int read_small(int fd, char *buf, size_t size, const char **ret_why)
{
	struct stat st;
	size_t len = 0;

	if (fstat(fd, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode)) {
		*ret_why = "not a regular file";
		return -EINVAL;
	}
	for (;;) {
		ssize_t n = read(fd, buf + len, size - 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			break;
		len += (size_t)n;
		if (len == size - 1) {
			*ret_why = "larger than 64 KiB: not a certificate";
			return -EFBIG;
		}
	}
	buf[len] = '\0';
	if (memchr(buf, '\0', len)) {
		*ret_why = "holds a NUL byte: not a certificate";
		return -EINVAL;
	}
	return 0;
}

/* Parses an open certificate file; path is for messages. */
static int cert_read_fd(int fd, const char *path, uint8_t pub[AUTH_KEY_BYTES], uint8_t *sec,
			char *err, size_t errsz)
{
	char *buf = malloc(CERT_FILE_MAX);
	char zpub[AUTH_Z85_LEN + 1], zsec[AUTH_Z85_LEN + 1], derived[AUTH_Z85_LEN + 1];
	const char *why = NULL;
	int r;

	if (!buf)
		return -ENOMEM;
	r = read_small(fd, buf, CERT_FILE_MAX, &why);
	if (r < 0) {
		snprintf(err, errsz, "%s: cannot read: %s", path, why ? why : strerror(-r));
		goto out;
	}
	why = zpl_keys(buf, zpub, zsec);
	if (!why && !zpub[0])
		why = "no public-key in a \"curve\" section (not a ZPL certificate?)";
	if (!why && sec && !zsec[0])
		why = "no secret-key in its \"curve\" section (the public NAME.key was given where NAME.key_secret is needed?)";
	if (!why && !zmq_z85_decode(pub, zpub))
		why = "public-key is not valid Z85";
	if (!why && sec && !zmq_z85_decode(sec, zsec))
		why = "secret-key is not valid Z85";
	if (!why && sec && (zmq_curve_public(derived, zsec) != 0 || strcmp(derived, zpub) != 0))
		why = "public-key does not belong to secret-key";
	if (why) {
		snprintf(err, errsz, "%s: %s", path, why);
		r = -EINVAL;
	}
out:
	explicit_bzero(buf, CERT_FILE_MAX);
	explicit_bzero(zsec, sizeof(zsec));
	free(buf);
	return r;
}

int auth_cert_load(const char *path, uint8_t ret_public[AUTH_KEY_BYTES], uint8_t *ret_secret,
		   char *err, size_t errsz)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);

	if (fd < 0) {
		int e = errno;
		snprintf(err, errsz, "%s: cannot open: %s", path, strerror(e));
		return -e;
	}
	int r = cert_read_fd(fd, path, ret_public, ret_secret, err, errsz);
	close(fd);
	return r;
}

/* The server's secret certificate: read as root, before binding; group and others kept out. */
static int load_server_cert(struct auth *a, const char *path, char *err, size_t errsz)
{
	uint8_t pub[AUTH_KEY_BYTES];
	struct stat st;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY | O_NOFOLLOW);
	int r;

	if (fd < 0) {
		r = -errno;
		snprintf(err, errsz, "[listen] curve_server_cert: %s: cannot open: %s", path,
			 r == -ELOOP ? "it is a symbolic link (give the file itself)" : strerror(-r));
		return r;
	}
	if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && (st.st_mode & 077)) {
		snprintf(err, errsz, "[listen] curve_server_cert: %s: mode %04o lets group or others access the server's secret key; chmod 600 it (and make a new key pair if others may have read it)",
			 path, (unsigned)(st.st_mode & 07777));
		close(fd);
		return -EPERM;
	}
	char why[512];
	r = cert_read_fd(fd, path, pub, a->secret, why, sizeof(why));
	close(fd);
	if (r < 0)
		snprintf(err, errsz, "[listen] curve_server_cert: %s", why);
	return r;
}

/* ==== The client set ==== */

static int cert_cmp(const void *x, const void *y)
{
	return memcmp(((const struct cert *)x)->key, ((const struct cert *)y)->key, AUTH_KEY_BYTES);
}

/* "NAME.key" -> NAME, if NAME is 1..64 of [A-Za-z0-9._@-] and not hidden. */
static bool cert_name(const char *file, char name[AUTH_NAME_MAX + 1])
{
	size_t len = strlen(file);

	if (len < 5 || len - 4 > AUTH_NAME_MAX || strcmp(file + len - 4, ".key") != 0 || file[0] == '.')
		return false;
	for (size_t i = 0; i < len - 4; i++) {
		char c = file[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == '-' || c == '@'))
			return false;
	}
	memcpy(name, file, len - 4);
	name[len - 4] = '\0';
	return true;
}

/*
 * Reads every NAME.key of the directory into a new sorted array. Files that
 * are not certificates are skipped with a warning (logged when warn): one
 * bad file must not lock every client out.
 */
static int scan_dir(const char *dir, bool warn, struct cert **ret, size_t *ret_n,
		    struct stat *ret_st, char *err, size_t errsz)
{
	int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	struct cert *certs = NULL;
	size_t n = 0, cap = 0;
	DIR *d;
	struct dirent *e;
	int r = 0;

	if (dfd < 0 || fstat(dfd, ret_st) < 0) {
		r = -errno;
		snprintf(err, errsz, "[listen] curve_clients: %s: cannot open the directory: %s", dir, strerror(-r));
		if (dfd >= 0)
			close(dfd);
		return r;
	}
	d = fdopendir(dfd);
	if (!d) {
		r = -errno;
		close(dfd);
		snprintf(err, errsz, "[listen] curve_clients: %s: %s", dir, strerror(-r));
		return r;
	}
	errno = 0;
	while ((e = readdir(d))) {
		struct cert c;
		char why[512];

		if (!cert_name(e->d_name, c.name)) {
			errno = 0;
			continue;
		}
		if (n == CLIENTS_MAX) {
			if (warn)
				log_warn("[listen] curve_clients: %s: more than %d certificates; the rest are ignored", dir, CLIENTS_MAX);
			break;
		}
		int fd = openat(dirfd(d), e->d_name, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
		char path[4200];
		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		if (fd < 0) {
			if (warn)
				log_warn("[listen] curve_clients: %s: cannot open: %s; that client is not allowed", path, strerror(errno));
			errno = 0;
			continue;
		}
		r = cert_read_fd(fd, path, c.key, NULL, why, sizeof(why));
		close(fd);
		if (r == -ENOMEM)
			goto fail;
		if (r < 0) {
			if (warn)
				log_warn("[listen] curve_clients: %s; that client is not allowed", why);
			r = 0;
			errno = 0;
			continue;
		}
		zmq_z85_encode(c.z85, c.key, AUTH_KEY_BYTES);
		if (n == cap) {
			size_t ncap = cap ? cap * 2 : 16;
			struct cert *bigger = realloc(certs, ncap * sizeof(*certs));
			if (!bigger) {
				r = -ENOMEM;
				goto fail;
			}
			certs = bigger;
			cap = ncap;
		}
		certs[n++] = c;
		errno = 0;
	}
	if (errno) {
		r = -errno;
		snprintf(err, errsz, "[listen] curve_clients: %s: cannot read the directory: %s", dir, strerror(-r));
		goto fail;
	}
	closedir(d);
	if (n)
		qsort(certs, n, sizeof(*certs), cert_cmp);
	/* one key under two names: the first name in sort order would win by chance; refuse both */
	for (size_t i = 0; i + 1 < n; i++) {
		if (memcmp(certs[i].key, certs[i + 1].key, AUTH_KEY_BYTES) == 0) {
			if (warn)
				log_warn("[listen] curve_clients: %s: %s.key and %s.key hold the same key; neither is allowed",
					 dir, certs[i].name, certs[i + 1].name);
			size_t j = i + 2;
			while (j < n && memcmp(certs[i].key, certs[j].key, AUTH_KEY_BYTES) == 0)
				j++;
			memmove(&certs[i], &certs[j], (n - j) * sizeof(*certs));
			n -= j - i;
			i--;
		}
	}
	*ret = certs;
	*ret_n = n;
	return 0;
fail:
	if (r == -ENOMEM)
		snprintf(err, errsz, "[listen] curve_clients: %s: out of memory", dir);
	closedir(d);
	free(certs);
	return r;
}

static const struct cert *find_key(const struct auth *a, const uint8_t key[AUTH_KEY_BYTES])
{
	struct cert probe;

	memcpy(probe.key, key, AUTH_KEY_BYTES);
	return a->ncerts ? bsearch(&probe, a->certs, a->ncerts, sizeof(*a->certs), cert_cmp) : NULL;
}

/* Logs the names that came and went (a few); returns whether anything changed. */
static bool log_changes(const struct auth *a, const struct cert *c, size_t n)
{
	size_t added = 0, removed = 0;
	char list[512] = "";
	size_t used = 0;

	for (size_t i = 0; i < n; i++) {
		const struct cert *old = find_key(a, c[i].key);
		if (old && strcmp(old->name, c[i].name) == 0)
			continue;
		added++;
		if (used < sizeof(list) - 80)
			used += (size_t)snprintf(list + used, sizeof(list) - used, " +%s", c[i].name);
	}
	for (size_t i = 0; i < a->ncerts; i++) {
		struct cert *now = n ? bsearch(&a->certs[i], c, n, sizeof(*c), cert_cmp) : NULL;
		if (now && strcmp(now->name, a->certs[i].name) == 0)
			continue;
		removed++;
		if (used < sizeof(list) - 80)
			used += (size_t)snprintf(list + used, sizeof(list) - used, " -%s", a->certs[i].name);
	}
	if (added || removed)
		log_info("[listen] curve_clients: %zu client certificates (%zu added, %zu removed:%s%s)",
			 n, added, removed, list, used >= sizeof(list) - 80 ? " ..." : "");
	return added || removed;
}

int auth_rescan(struct auth *a, bool force, char *err, size_t errsz)
{
	struct stat st;
	struct cert *certs = NULL;
	size_t n = 0;
	int r;

	if (!a || !a->curve)
		return 0;
	if (!force && a->dir_ok && stat(a->clients_dir, &st) == 0 && st.st_ino == a->dir_ino &&
	    st.st_mtim.tv_sec == a->dir_mtime.tv_sec && st.st_mtim.tv_nsec == a->dir_mtime.tv_nsec)
		return 0;
	r = scan_dir(a->clients_dir, true, &certs, &n, &st, err, errsz);
	if (r < 0) {
		/* fail closed: a directory that cannot be read allows nobody */
		if (a->ncerts || a->dir_ok)
			a->gen++;
		free(a->certs);
		a->certs = NULL;
		a->ncerts = 0;
		a->dir_ok = false;
		return r;
	}
	/* the first scan is summed up by auth_open(), not listed */
	if ((a->gen > 0 && log_changes(a, certs, n)) || !a->dir_ok)
		a->gen++;
	if (!a->dir_ok && a->dir_err[0])
		log_info("[listen] curve_clients: %s readable again: %zu client certificates", a->clients_dir, n);
	free(a->certs);
	a->certs = certs;
	a->ncerts = n;
	a->dir_ok = true;
	a->dir_err[0] = '\0';
	a->dir_mtime = st.st_mtim;
	a->dir_ino = st.st_ino;
	return 0;
}

void auth_tick(struct auth *a, uint64_t now_ms)
{
	char err[512];

	if (!a || now_ms - a->last_tick < 1000)
		return;
	a->last_tick = now_ms;
	if (auth_rescan(a, false, err, sizeof(err)) < 0 && strcmp(err, a->dir_err) != 0) {
		log_err("%s; no client is allowed until it can be read", err);
		snprintf(a->dir_err, sizeof(a->dir_err), "%s", err);
	}
	uint64_t n = ratelimit_suppressed(&a->rl_refused, now_ms);
	if (n)
		log_warn("suppressed %llu more lines about refused handshakes", (unsigned long long)n);
}

bool auth_current(struct auth *a, const char *name, const char *z85)
{
	uint8_t key[AUTH_KEY_BYTES];

	if (!name || !z85 || strlen(z85) != AUTH_Z85_LEN || strlen(name) > AUTH_NAME_MAX)
		return false;
	if (a->cur_gen == a->gen && strcmp(a->cur_name, name) == 0 && strcmp(a->cur_z85, z85) == 0)
		return a->cur_ok;
	const struct cert *c = zmq_z85_decode(key, z85) ? find_key(a, key) : NULL;
	a->cur_ok = c && strcmp(c->name, name) == 0;
	a->cur_gen = a->gen;
	strcpy(a->cur_name, name);
	strcpy(a->cur_z85, z85);
	return a->cur_ok;
}

/* ==== Setup ==== */

int auth_open(const struct feed_config *cfg, struct auth **ret, char *err, size_t errsz)
{
	struct auth *a;
	const char *why;
	int r;

	*ret = NULL;
	if (!cfg->curve_server_cert[0] && !cfg->curve_clients[0] && !cfg->allow[0])
		return 0;
	if (!cfg->curve_server_cert[0] != !cfg->curve_clients[0]) {
		snprintf(err, errsz, "[listen] curve_server_cert and curve_clients go together: %s is set, %s is not",
			 cfg->curve_server_cert[0] ? "curve_server_cert" : "curve_clients",
			 cfg->curve_server_cert[0] ? "curve_clients" : "curve_server_cert");
		return -EINVAL;
	}
	a = calloc(1, sizeof(*a));
	if (!a)
		return -ENOMEM;
	a->rl_refused = (struct ratelimit)RATELIMIT_INIT(1000, 10);
	why = parse_allow(cfg->allow, a->allow, &a->nallow);
	if (why) {
		snprintf(err, errsz, "[listen] allow: %s", why);
		r = -EINVAL;
		goto fail;
	}
	if (cfg->curve_server_cert[0]) {
		a->curve = true;
		a->clients_dir = strdup(cfg->curve_clients);
		if (!a->clients_dir) {
			r = -ENOMEM;
			goto fail;
		}
		r = load_server_cert(a, cfg->curve_server_cert, err, errsz);
		if (r < 0)
			goto fail;
		r = auth_rescan(a, true, err, errsz);
		if (r < 0)
			goto fail;
		log_info("[listen] curve_clients: %zu client certificates in %s", a->ncerts, a->clients_dir);
	}
	*ret = a;
	return 0;
fail:
	auth_free(&a);
	return r;
}

void auth_free(struct auth **pa)
{
	struct auth *a = *pa;

	if (!a)
		return;
	if (a->zap)
		zmq_close(a->zap);
	explicit_bzero(a->secret, sizeof(a->secret));
	free(a->certs);
	free(a->clients_dir);
	free(a);
	*pa = NULL;
}

bool auth_curve(const struct auth *a, const uint8_t **ret_secret)
{
	if (!a || !a->curve)
		return false;
	*ret_secret = a->secret;
	return true;
}

/* ==== ZAP ==== */

int auth_zap_bind(struct auth *a, void *ctx, char *err, size_t errsz)
{
	int linger = 0;

	a->zap = zmq_socket(ctx, ZMQ_REP);
	if (!a->zap || zmq_setsockopt(a->zap, ZMQ_LINGER, &linger, sizeof(linger)) != 0 ||
	    zmq_bind(a->zap, ZAP_ENDPOINT) != 0) {
		int e = errno;
		snprintf(err, errsz, "cannot start the ZAP handler (%s): %s", ZAP_ENDPOINT, zmq_strerror(e));
		return -e;
	}
	return 0;
}

void *auth_zap_socket(const struct auth *a) { return a ? a->zap : NULL; }

struct zap_req {
	char f[ZAP_FRAMES][ZAP_FRAME_MAX + 1];
	size_t len[ZAP_FRAMES];
	unsigned n;
};

/* Reads one whole ZAP request. 1 if read, 0 if none pending, -errno. */
static int zap_recv(void *s, struct zap_req *q)
{
	zmq_msg_t m;
	int more = 1, flags = ZMQ_DONTWAIT;

	q->n = 0;
	while (more) {
		zmq_msg_init(&m);
		if (zmq_msg_recv(&m, s, flags) < 0) {
			int e = errno;
			zmq_msg_close(&m);
			if (e == EAGAIN && q->n == 0)
				return 0;
			if (e == EINTR)
				continue;
			return -e;
		}
		flags = 0;  /* the rest of a message is already here */
		if (q->n < ZAP_FRAMES) {
			size_t len = zmq_msg_size(&m);
			q->len[q->n] = len;
			len = len < ZAP_FRAME_MAX ? len : ZAP_FRAME_MAX;
			memcpy(q->f[q->n], zmq_msg_data(&m), len);
			q->f[q->n][len] = '\0';
		}
		q->n++;
		more = zmq_msg_more(&m);
		zmq_msg_close(&m);
	}
	return 1;
}

static int zap_reply(void *s, const struct zap_req *q, const char *code, const char *text,
		     const char *user, const char *z85)
{
	unsigned char meta[64];
	size_t mlen = 0;

	if (z85) {
		/* a ZMTP property (name length, name, 4-byte value length, value): every message carries it */
		static const char name[] = "X-Curve-Key";
		meta[mlen++] = sizeof(name) - 1;
		memcpy(meta + mlen, name, sizeof(name) - 1);
		mlen += sizeof(name) - 1;
		meta[mlen++] = 0, meta[mlen++] = 0, meta[mlen++] = 0, meta[mlen++] = AUTH_Z85_LEN;
		memcpy(meta + mlen, z85, AUTH_Z85_LEN);
		mlen += AUTH_Z85_LEN;
	}
	const char *rid = q->n > 1 ? q->f[1] : "";
	size_t rid_len = q->n > 1 && q->len[1] <= ZAP_FRAME_MAX ? q->len[1] : 0;
	if (zmq_send(s, "1.0", 3, ZMQ_SNDMORE) < 0 || zmq_send(s, rid, rid_len, ZMQ_SNDMORE) < 0 ||
	    zmq_send(s, code, strlen(code), ZMQ_SNDMORE) < 0 ||
	    zmq_send(s, text, strlen(text), ZMQ_SNDMORE) < 0 ||
	    zmq_send(s, user, strlen(user), ZMQ_SNDMORE) < 0 || zmq_send(s, meta, mlen, 0) < 0)
		return -errno;
	return 0;
}

static void log_refused(struct auth *a, const char *addr, const char *key, const char *why)
{
	if (ratelimit_ok(&a->rl_refused, mono_ms()))
		log_warn("refused a handshake from %s%s%s: %s", addr[0] ? addr : "an unknown address",
			 key ? " with client key " : "", key ? key : "", why);
}

/* Frames: 0 version, 1 request id, 2 domain, 3 address, 4 routing id, 5 mechanism, 6 credentials. */
static int zap_one(struct auth *a, const struct zap_req *q)
{
	const char *addr = q->n > 3 ? q->f[3] : "";
	const char *mech = q->n > 5 ? q->f[5] : "";
	char z85[AUTH_Z85_LEN + 1];

	if (q->n < 6 || strcmp(q->f[0], "1.0") != 0)
		return zap_reply(a->zap, q, "400", "malformed ZAP request", "", NULL);
	if (!address_allowed(a, addr)) {
		log_refused(a, addr, NULL, "address not in [listen] allow");
		return zap_reply(a->zap, q, "400", "address not allowed", "", NULL);
	}
	if (strcmp(mech, "NULL") == 0 && !a->curve)
		return zap_reply(a->zap, q, "200", "OK", addr, NULL);
	if (strcmp(mech, "CURVE") != 0 || !a->curve || q->n < 7 || q->len[6] != AUTH_KEY_BYTES) {
		log_refused(a, addr, NULL, "not a CURVE handshake");
		return zap_reply(a->zap, q, "400", "CURVE required", "", NULL);
	}
	const struct cert *c = find_key(a, (const uint8_t *)q->f[6]);
	if (!c) {
		zmq_z85_encode(z85, (const uint8_t *)q->f[6], AUTH_KEY_BYTES);
		log_refused(a, addr, z85, a->dir_ok ? "key not in [listen] curve_clients" :
			    "[listen] curve_clients cannot be read: nobody is allowed");
		return zap_reply(a->zap, q, "400", "unknown client key", "", NULL);
	}
	log_debug("handshake from %s: client %s", addr, c->name);
	return zap_reply(a->zap, q, "200", "OK", c->name, c->z85);
}

int auth_zap_serve(struct auth *a, unsigned max)
{
	struct zap_req *q;
	unsigned done = 0;
	int r = 0;

	if (!a || !a->zap)
		return 0;
	q = malloc(sizeof(*q));
	if (!q)
		return -ENOMEM;
	while (done < max) {
		r = zap_recv(a->zap, q);
		if (r <= 0)
			break;
		r = zap_one(a, q);
		if (r < 0)
			break;
		done++;
	}
	free(q);
	return r < 0 ? r : (int)done;
}

/* ==== keygen ==== */

static int write_cert(int dfd, const char *dir, const char *file, mode_t mode, bool secret,
		      const char *zpub, const char *zsec, char *err, size_t errsz)
{
	char text[1024], stamp[64];
	time_t now = time(NULL);
	struct tm tm;
	int fd, r = 0;

	strftime(stamp, sizeof(stamp), "%Y-%m-%d %H:%M:%S", gmtime_r(&now, &tm));
	int len = snprintf(text, sizeof(text),
		"#   ****  Generated on %s UTC by feed keygen  ****\n"
		"#   ZeroMQ CURVE %s Certificate\n"
		"#   %s\n\n"
		"metadata\n"
		"curve\n"
		"    public-key = \"%s\"\n%s%s%s",
		stamp, secret ? "**Secret**" : "Public",
		secret ? "DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions." :
			 "Exchange securely, or use a secure mechanism to verify the contents of this file after exchange.",
		zpub, secret ? "    secret-key = \"" : "", secret ? zsec : "", secret ? "\"\n" : "");
	fd = openat(dfd, file, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
	if (fd < 0) {
		r = -errno;
		snprintf(err, errsz, "%s/%s: cannot create: %s%s", dir, file, strerror(-r),
			 r == -EEXIST ? " (keygen never overwrites a certificate)" : "");
		goto out;
	}
	/* the mode asked for, whatever the umask */
	if (fchmod(fd, mode) < 0 || write(fd, text, (size_t)len) != len || fsync(fd) < 0) {
		r = errno ? -errno : -EIO;
		snprintf(err, errsz, "%s/%s: cannot write: %s", dir, file, strerror(-r));
	}
	if (close(fd) < 0 && !r) {
		r = -errno;
		snprintf(err, errsz, "%s/%s: cannot write: %s", dir, file, strerror(-r));
	}
	if (r < 0)
		unlinkat(dfd, file, 0);
out:
	explicit_bzero(text, sizeof(text));
	return r;
}

int auth_keygen(const char *dir, const char *name, char *err, size_t errsz)
{
	char zpub[AUTH_Z85_LEN + 1], zsec[AUTH_Z85_LEN + 1], file[AUTH_NAME_MAX + 16], check[AUTH_NAME_MAX + 1];
	int dfd, r;

	snprintf(file, sizeof(file), "%s.key", name);
	if (strlen(name) > AUTH_NAME_MAX || !cert_name(file, check)) {
		snprintf(err, errsz, "NAME must be 1..%d characters of A-Z a-z 0-9 . _ - @, not starting with \".\"",
			 AUTH_NAME_MAX);
		return -EINVAL;
	}
	if (zmq_curve_keypair(zpub, zsec) != 0) {
		r = -errno;
		snprintf(err, errsz, "cannot make a key pair: %s", zmq_strerror(errno));
		return r;
	}
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0) {
		r = -errno;
		snprintf(err, errsz, "%s: cannot open the directory: %s", dir, strerror(-r));
		goto out;
	}
	snprintf(file, sizeof(file), "%s.key_secret", name);
	r = write_cert(dfd, dir, file, 0600, true, zpub, zsec, err, errsz);
	if (r == 0) {
		snprintf(file, sizeof(file), "%s.key", name);
		r = write_cert(dfd, dir, file, 0644, false, zpub, NULL, err, errsz);
		if (r < 0) {
			snprintf(file, sizeof(file), "%s.key_secret", name);
			unlinkat(dfd, file, 0);
		}
	}
	close(dfd);
out:
	explicit_bzero(zsec, sizeof(zsec));
	return r;
}
