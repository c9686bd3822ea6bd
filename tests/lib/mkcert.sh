#!/bin/sh
# mkcert.sh - makes throwaway TLS certificates with openssl for the tests.
#
#   mkcert.sh ca DIR NAME
#       DIR/NAME.key, DIR/NAME.crt: a self-signed certificate authority
#   mkcert.sh server DIR NAME CA SAN
#       DIR/NAME.key, DIR/NAME.crt: a server certificate signed by DIR/CA.crt
#       (key DIR/CA.key), subjectAltName SAN (e.g. IP:127.0.0.1,DNS:localhost),
#       its common name the first DNS name of SAN.
#
# P-256 keys (fast to make), valid for 30 days from now. Keys are 0600 and
# belong to the caller: a server that reads its key gets it chown'ed by the
# caller. Used by with-postgres.sh / with-mariadb.sh (FEED_TEST_TLS=1) and by
# tests/e2e/test_tls.py (a second CA, a certificate for another host).
set -eu

usage() {
	echo "usage: $0 ca DIR NAME | server DIR NAME CA SAN" >&2
	exit 2
}

newkey() {
	(umask 077 && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
		-out "$1" 2>/dev/null) || { echo "mkcert.sh: openssl genpkey $1 failed" >&2; exit 1; }
}

[ $# -ge 3 ] || usage
kind=$1 dir=$2 name=$3
case $kind in
ca)
	[ $# -eq 3 ] || usage
	newkey "$dir/$name.key"
	cat >"$dir/$name.ext" <<-EOF
		basicConstraints = critical, CA:TRUE
		keyUsage = critical, keyCertSign, cRLSign
		subjectKeyIdentifier = hash
	EOF
	openssl req -new -key "$dir/$name.key" -subj "/CN=feed test CA $name" \
		-out "$dir/$name.csr"
	openssl x509 -req -in "$dir/$name.csr" -signkey "$dir/$name.key" -days 30 \
		-extfile "$dir/$name.ext" -out "$dir/$name.crt" 2>/dev/null
	;;
server)
	[ $# -eq 5 ] || usage
	ca=$4 san=$5
	cn=$(printf '%s\n' "$san" | tr ',' '\n' | sed -n 's/^DNS://p' | head -n 1)
	[ -n "$cn" ] || cn=$name
	newkey "$dir/$name.key"
	cat >"$dir/$name.ext" <<-EOF
		basicConstraints = critical, CA:FALSE
		keyUsage = critical, digitalSignature, keyEncipherment
		extendedKeyUsage = serverAuth
		subjectAltName = $san
	EOF
	openssl req -new -key "$dir/$name.key" -subj "/CN=$cn" -out "$dir/$name.csr"
	openssl x509 -req -in "$dir/$name.csr" -CA "$dir/$ca.crt" -CAkey "$dir/$ca.key" \
		-set_serial "0x$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')" -days 30 \
		-extfile "$dir/$name.ext" -out "$dir/$name.crt" 2>/dev/null
	;;
*)
	usage
	;;
esac
rm -f "$dir/$name.csr" "$dir/$name.ext"
chmod 0644 "$dir/$name.crt"
