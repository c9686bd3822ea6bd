#!/bin/bash
# setup.sh - installs what feed needs on Debian 12 (idempotent, non-interactive).
#
#   scripts/setup.sh          build and run dependencies
#   scripts/setup.sh --test   also what the test suite needs (database servers, a Galera
#                             cluster (galera-4, rsync for its state transfers), cmocka,
#                             pyzmq, clang for the fuzzer and the sanitizers,
#                             prometheus and promtool for the metrics tests)
#
# Only missing packages are installed; nothing happens when all are present.
set -euo pipefail

build_pkgs="build-essential cmake pkg-config libzmq3-dev libsqlite3-dev libpq-dev
	libmariadb-dev libinih-dev libbsd-dev libcmocka-dev libmicrohttpd-dev"
test_pkgs="sqlite3 python3 python3-zmq postgresql mariadb-server mariadb-client openssl
	galera-4 rsync iproute2
	clang libclang-rt-14-dev
	logrotate systemd prometheus"

pkgs=$build_pkgs
[ "${1:-}" = "--test" ] && pkgs="$pkgs $test_pkgs"

missing=""
for p in $pkgs; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
	if command -v sudo >/dev/null; then
		SUDO=sudo
	else
		echo "setup.sh: missing packages:$missing; run as root to install them" >&2
		exit 1
	fi
fi
echo "setup.sh: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
${SUDO:-} apt-get update -q
# policy-rc.d keeps the Debian packages from starting their own database
# services: the tests start throwaway servers of their own.
if [ ! -e /usr/sbin/policy-rc.d ]; then
	printf '#!/bin/sh\nexit 101\n' | ${SUDO:-} tee /usr/sbin/policy-rc.d >/dev/null
	${SUDO:-} chmod 755 /usr/sbin/policy-rc.d
	trap '${SUDO:-} rm -f /usr/sbin/policy-rc.d' EXIT
fi
# shellcheck disable=SC2086
${SUDO:-} apt-get install -y -q --no-install-recommends $missing
