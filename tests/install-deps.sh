#!/usr/bin/env bash
# install-deps.sh — installs from Debian what core_server needs and is missing.
#   bash tests/install-deps.sh build   compiler, make, pkg-config, OpenSSL headers
#   bash tests/install-deps.sh test    the above, plus what the tests use
#   bash tests/install-deps.sh bench   the above, plus the peers and load
#                                      generators of `make bench`
# Idempotent: checks each package with dpkg first, runs `apt-get update` once
# and `apt-get install` only when something is missing. Needs root (or sudo)
# only in that case. Never reads stdin.
set -euo pipefail

mode="${1:-build}"

build_pkgs=(gcc make pkg-config libssl-dev libjansson-dev libcurl4-openssl-dev libnghttp2-dev)
# curl, pytest, websockets: the integration tests' clients and runner;
# mkcert + libnss3-tools: local-mode HTTPS certificates; openssl: s_client in
# the TLS tests; iproute2: network namespaces for the non-loopback UDP test;
# util-linux: setpriv (dropping CAP_NET_BIND_SERVICE in the CLI tests);
# clang: libFuzzer targets (make fuzz); pebble: the test ACME CA (release mode);
# nghttp2-client (nghttp, h2load) and python3-h2: the HTTP/2 tests' clients;
# systemd: systemd-socket-activate for the socket-activation test.
# etcd-server (/usr/bin/etcd) and etcd-client (etcdctl): the 3-member etcd
# cluster the shared-store client (src/etcd.c) is tested against, and the
# tool those tests use to write and read it behind the client's back.
test_pkgs=(curl openssl python3 python3-pytest python3-websockets mkcert libnss3-tools
           iproute2 util-linux clang pebble nghttp2-client python3-h2 systemd
           etcd-server etcd-client)
# bench/run.sh: the proxies compared, wrk and h2load, procps (pgrep),
# libc6-dev for its C client (bench/tlsconn.c).
# nghttp2-proxy (nghttpx) and h2o: the HTTP/2 peers of case (f).
bench_pkgs=(nginx haproxy caddy wrk nghttp2-client nghttp2-proxy h2o procps libc6-dev)

case "$mode" in
  build) want=("${build_pkgs[@]}") ;;
  test)  want=("${build_pkgs[@]}" "${test_pkgs[@]}") ;;
  bench) want=("${build_pkgs[@]}" "${test_pkgs[@]}" "${bench_pkgs[@]}") ;;
  *) echo "usage: $0 build|test|bench" >&2; exit 2 ;;
esac

missing=()
for p in "${want[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps ($mode): all packages present"
  exit 0
fi

echo "install-deps ($mode): installing ${missing[*]}"
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    sudo=(sudo -n)
  else
    echo "install-deps: missing ${missing[*]} and not root (run as root, or install them)" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq </dev/null
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
