#!/usr/bin/env bash
# bench/run.sh — `make bench`: core_server side by side with nginx, HAProxy and
# Caddy (and, for HTTP/2, nghttpx and h2o) in front of one fast nginx backend,
# plus the backend alone (the ceiling). Prints one markdown table and writes it to
# bench/results-YYYY-MM-DD.md. Not part of CI. Needs root only to install
# missing Debian packages (and to raise the open-file limit).
#
# Fairness: every proxy runs one worker thread pinned to CPU 0 (taskset):
# core_server --workers 1, nginx worker_processes 1, HAProxy nbthread 1,
# Caddy GOMAXPROCS=1, nghttpx workers=1, h2o num-threads 1. The load
# generator and the backend share CPU 1.
# Access logs are off everywhere. The same ECDSA P-256 certificate (one
# mkcert CA) and TLS 1.3 for every TLS listener.
#
# Cases (each proxy interleaved, the order rotated every round, ROUNDS rounds):
#   (a) HTTP/1.1 keep-alive, 100-byte responses     wrk -t1 -c50
#   (b) a new connection per request                 wrk -t1 -c50, Connection: close
#   (c) 1 MiB responses                              wrk -t1 -c50, /1m
#   (d) HTTPS/1.1 keep-alive                         wrk -t1 -c50 https
#   (e) a new TLS connection per request             bench/tlsconn.c (full TLS 1.3
#       handshake each time, no resumption; latency from connect() to last byte)
#   (f) HTTP/2 over TLS                              h2load -t1 -c50 -m10, also against
#       nghttpx and h2o; a target that does not offer h2 in ALPN is reported n/a
#   (f100) the same with -m100                       h2load -t1 -c50 -m100
#   (f1m) HTTP/2, 1 MiB responses                    h2load -t1 -c50 -m10, /1m
#   (fidle) 10,000 idle h2 connections held          bench/idle_h2.py (fresh processes;
#       TLS + preface + SETTINGS exchange + one GET each; VmRSS before/after)
#   (g) 10,000 idle keep-alive connections held      bench/idle_conns.py (fresh
#       processes; VmRSS before/after from /proc)
#   (h) a burst of 10,000 distinct `add`s over UDP   bench/udp_burst.py (core_server
#       only; fresh instance with no routes each round)
#   (i) release mode against pebble: add -> first HTTPS 200, and a request
#       racing the add; Caddy in the same rounds: on-demand TLS with an ask
#       endpoint (first request, racing request) and a site added through its
#       admin API (bench/acme_caddy.py)
#   (j) takeovers under load                         wrk -t1 -c50 on plain HTTP while the
#       proxy is replaced BENCH_TAKEOVERS times: core_server (a new instance with
#       the same flags), nginx (binary upgrade: USR2, WINCH, QUIT to the old
#       master), HAProxy (new process with -x from `expose-fd listeners` and
#       -sf); failed requests = wrk's socket errors + non-2xx/3xx
# Figures: requests/s (MiB/s for (c)), p50/p99 latency, the proxy's CPU
# seconds (utime+stime of its processes, /proc/PID/stat) per 100,000
# requests over the measured run, peak RSS (VmHWM, reset before each run
# with clear_refs), each also as a ratio to nginx in the same run.
#
# Knobs (environment): BENCH_DURATION (s per run, 5), BENCH_ROUNDS (3),
# BENCH_CONNS (50), BENCH_IDLE_CONNS (10000), BENCH_UDP_ADDS (10000),
# BENCH_ACME_ROUNDS (5: rounds of (i), 0 skips it), BENCH_MANY_ROUTES
# (100000), BENCH_CORE_RSA (1: also run (d)/(e) against a core_server that
# makes its own certificate with mkcert, RSA-2048; 0 by default),
# CORE_SERVER (a binary to use instead of building ./core_server),
# BENCH_CASES (which cases to run, e.g. "f f100 f1m fidle j"; default all:
# a b c d e f f100 f1m g fidle h i j), BENCH_H2_STREAMS (10: h2load -m of (f)
# and (f1m)), BENCH_H2_STREAMS_HIGH (100: -m of (f100)), BENCH_IDLE_H2_CONNS
# (BENCH_IDLE_CONNS: connections of (fidle)), BENCH_TAKEOVERS (5 per run of
# (j)), BENCH_TAKEOVER_INTERVAL (1 s between them, and wrk goes on for 1 s
# after the last), BENCH_OUT (report file; default
# bench/results-DATE.md, or bench/results-DATE-CASES.md for a BENCH_CASES
# subset).
# E.g. only the HTTP/2 and takeover rows: BENCH_CASES="f f100 f1m fidle j" make bench
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
BENCH=$ROOT/bench
DURATION=${BENCH_DURATION:-5}
ROUNDS=${BENCH_ROUNDS:-3}
CONNS=${BENCH_CONNS:-50}
IDLE_N=${BENCH_IDLE_CONNS:-10000}
UDP_N=${BENCH_UDP_ADDS:-10000}
# core_server's own mkcert certificates are ECDSA P-256 since 2026-11-25 (they
# were RSA-2048): the extra "own certificate" rows are off by default.
CORE_RSA=${BENCH_CORE_RSA:-0}
# (a) is also run against a core_server holding this many routes (0: not).
MANY_ROUTES=${BENCH_MANY_ROUTES:-100000}
ALL_CASES="a b c d e f f100 f1m g fidle h i j"
read -r -a SEL <<<"$(echo "${BENCH_CASES:-$ALL_CASES}" | tr ',' ' ')"
for c in "${SEL[@]}"; do
    case " $ALL_CASES " in *" $c "*) ;; *) echo "BENCH_CASES: unknown case '$c' (known: $ALL_CASES)" >&2; exit 2 ;; esac
done
want() { local c; for c in "${SEL[@]}"; do [ "$c" = "$1" ] && return 0; done; return 1; }
H2_STREAMS=${BENCH_H2_STREAMS:-10}
H2_STREAMS_HIGH=${BENCH_H2_STREAMS_HIGH:-100}
IDLE_H2_N=${BENCH_IDLE_H2_CONNS:-$IDLE_N}
TAKEOVERS=${BENCH_TAKEOVERS:-5}
TAKEOVER_INTERVAL=${BENCH_TAKEOVER_INTERVAL:-1}
PROXY_CPU=0
LOAD_CPU=1
HOST=localhost          # resolves to 127.0.0.1 from /etc/hosts; the SNI and Host name
PY=/usr/bin/python3

say() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { say "error: $*"; exit 1; }

T0=$(date +%s)

# ---------------------------------------------------------------- packages
# What core_server, its release-mode test (case (i)) and this script need,
# through the project's one installer.
bash "$ROOT/tests/install-deps.sh" bench >&2

[ "$(nproc)" -ge 2 ] || die "needs at least 2 CPUs (proxy on CPU 0, load + backend on CPU 1)"

# 10,000 idle connections: the client and each proxy need more descriptors.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n)
[ "$NOFILE" -ge $((IDLE_N + 1000)) ] || say "warning: ulimit -n is $NOFILE; case (g) may fail"

# ---------------------------------------------------------------- temp dir, cleanup
T=$(mktemp -d /tmp/core-bench.XXXXXX)
declare -A PID=()        # target -> main pid
ALL_PIDS=()
cleanup() {
    local p c
    # bench/acme_caddy.py stops its own processes; should it have been killed,
    # the caddy/pebble PIDs it recorded (only while they still are those)
    if [ -n "${CADDY_PIDS:-}" ] && [ -f "$CADDY_PIDS" ]; then
        while read -r p; do
            c=$( { tr '\0' ' ' <"/proc/$p/cmdline"; } 2>/dev/null) || continue
            case $c in /usr/bin/caddy\ *|/usr/bin/pebble*) ALL_PIDS+=("$p") ;; esac
        done <"$CADDY_PIDS"
    fi
    for p in "${ALL_PIDS[@]}"; do
        kill -TERM "$p" 2>/dev/null || true
    done
    for p in "${ALL_PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
    rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- build
if [ -n "${CORE_SERVER:-}" ]; then
    cp "$CORE_SERVER" "$T/core_server"
else
    say "building core_server"
    make -s core_server >&2
    cp "$ROOT/core_server" "$T/core_server"   # a private copy: the tree may change meanwhile
fi
CORE=$T/core_server
gcc -O2 -o "$T/tlsconn" "$BENCH/tlsconn.c" -lssl -lcrypto

# ---------------------------------------------------------------- ports
read -r -a PORTS <<<"$($PY - <<'EOF'
import socket
socks, ports = [], []
for _ in range(16):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s); ports.append(s.getsockname()[1])
u = []
for _ in range(3):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); socks.append(s); u.append(s.getsockname()[1])
print(" ".join(map(str, ports + u)))
EOF
)"
BACKEND_PORT=${PORTS[0]};  BACKEND_TLS_PORT=${PORTS[1]}
NGINX_PORT=${PORTS[2]};    NGINX_TLS_PORT=${PORTS[3]}
HAPROXY_PORT=${PORTS[4]};  HAPROXY_TLS_PORT=${PORTS[5]}
CADDY_PORT=${PORTS[6]};    CADDY_TLS_PORT=${PORTS[7]}
CORE_PORT=${PORTS[8]};     CORE_TLS_PORT=${PORTS[9]}
CORERSA_PORT=${PORTS[10]}; CORERSA_TLS_PORT=${PORTS[11]}
CORE_UDP=${PORTS[16]}; CORERSA_UDP=${PORTS[17]}; COREH_UDP=${PORTS[18]}
COREH_PORT=${PORTS[12]}; COREH_TLS_PORT=${PORTS[13]}
CORETLS_PORT=${PORTS[14]}; CORETLS_UDP=${PORTS[15]}
read -r CORE100K_PORT CORE100K_TLS_PORT CORE100K_UDP <<<"$($PY - <<'EOF2'
import socket
socks, ports = [], []
for kind in (socket.SOCK_STREAM, socket.SOCK_STREAM, socket.SOCK_DGRAM):
    s = socket.socket(socket.AF_INET, kind); s.bind(("127.0.0.1", 0)); socks.append(s); ports.append(s.getsockname()[1])
print(" ".join(map(str, ports)))
EOF2
)"
free_ports() {   # free_ports NTCP NUDP: that many free loopback ports, TCP ones first
    $PY - "$1" "$2" <<'EOF3'
import socket, sys
socks, ports = [], []
for kind in [socket.SOCK_STREAM] * int(sys.argv[1]) + [socket.SOCK_DGRAM] * int(sys.argv[2]):
    s = socket.socket(socket.AF_INET, kind); s.bind(("127.0.0.1", 0)); socks.append(s); ports.append(s.getsockname()[1])
print(" ".join(map(str, ports)))
EOF3
}
# HTTP/2 peers (f), and nginx for (f100) (see start_target nginx_big). The
# takeover instances of (j) get theirs when (j) starts: by then a port picked
# now may be the local port of one of the many connections made meanwhile.
read -r NGHTTPX_PORT NGHTTPX_TLS_PORT H2O_PORT H2O_TLS_PORT NGINXB_PORT NGINXB_TLS_PORT <<<"$(free_ports 6 0)"

# core_server in local mode serves HTTPS only when mkcert is on its PATH, and
# then answers plain HTTP with a 307 to HTTPS. So it runs as two processes
# (never measured at the same time): "core_server" without mkcert on PATH for
# the plain cases, "core_server_tls" with it for the TLS cases.
declare -A PLAIN=([backend]=$BACKEND_PORT [nginx]=$NGINX_PORT [haproxy]=$HAPROXY_PORT
                  [caddy]=$CADDY_PORT [core_server]=$CORE_PORT [core_server_tls]=$CORETLS_PORT
                  [core_server_rsa]=$CORERSA_PORT [core_server_100k]=$CORE100K_PORT
                  [nghttpx]=$NGHTTPX_PORT [h2o]=$H2O_PORT [nginx_big]=$NGINXB_PORT)
declare -A TLS=([backend]=$BACKEND_TLS_PORT [nginx]=$NGINX_TLS_PORT [haproxy]=$HAPROXY_TLS_PORT
                [caddy]=$CADDY_TLS_PORT [core_server]= [core_server_tls]=$CORE_TLS_PORT
                [core_server_rsa]=$CORERSA_TLS_PORT [core_server_100k]=
                [nghttpx]=$NGHTTPX_TLS_PORT [h2o]=$H2O_TLS_PORT [nginx_big]=$NGINXB_TLS_PORT)
proc_of() {   # proc_of CASE TARGET: the process that serves TARGET in CASE
    case $1-$2 in
    d-core_server|e-core_server|f*-core_server) echo core_server_tls ;;
    f100-nginx) echo nginx_big ;;
    *) echo "$2" ;;
    esac
}

# ---------------------------------------------------------------- files
mkdir -p "$T"/{pki,backend/www,backend/tmp,nginx/tmp,haproxy,caddy/home,core/conf,core/certs,core/nobin,core_tls/conf,core_tls/certs,core_rsa/conf,core_rsa/certs,coreh,raw,nghttpx,h2o}
BODY100=$(printf 'core-bench %0*d' 88 0)     # 100 bytes with the newline below
BODY100="$BODY100\n"
head -c 1048576 /dev/urandom >"$T/backend/www/1m"
# nginx workers run as "nobody" when started as root: let them read the files.
chmod 755 "$T" "$T/backend" "$T/backend/www"
chmod 644 "$T/backend/www/1m"

render() {   # render TEMPLATE OUT: replaces @NAME@ with $NAME
    local s
    s=$(<"$1")
    local v
    for v in T HOST LOADCPU BACKEND_PORT BACKEND_TLS_PORT NGINX_PORT NGINX_TLS_PORT HAPROXY_PORT \
             HAPROXY_TLS_PORT CADDY_PORT CADDY_TLS_PORT BODY100 NOFILE CONNS_MAX \
             NGHTTPX_PORT NGHTTPX_TLS_PORT H2O_PORT H2O_TLS_PORT; do
        s=${s//@$v@/${!v}}
    done
    printf '%s\n' "$s" >"$2"
}
LOADCPU=$LOAD_CPU
# nginx preallocates worker_connections and HAProxy sizes its tables by
# maxconn: 4096 for cases (a)-(f) (50 connections), enough for 10,000 in (g).
CONNS_MAX=$NOFILE
render "$BENCH/nginx-backend.conf.in" "$T/backend/nginx.conf"
render "$BENCH/nginx-proxy.conf.in" "$T/nginx/nginx-g.conf"
render "$BENCH/haproxy.cfg.in" "$T/haproxy/haproxy-g.cfg"
render "$BENCH/h2o.conf.in" "$T/h2o/h2o-g.conf"
CONNS_MAX=4096
render "$BENCH/nginx-proxy.conf.in" "$T/nginx/nginx.conf"
render "$BENCH/haproxy.cfg.in" "$T/haproxy/haproxy.cfg"
render "$BENCH/h2o.conf.in" "$T/h2o/h2o.conf"
render "$BENCH/nghttpx.conf.in" "$T/nghttpx/nghttpx.conf"
render "$BENCH/Caddyfile.in" "$T/caddy/Caddyfile"
CONF_SUFFIX=""   # "-g" for case (g)

# One mkcert CA, one ECDSA P-256 certificate for $HOST, used by every TLS listener.
export CAROOT=$T/pki/ca
mkdir -p "$CAROOT"
mkcert -ecdsa -cert-file "$T/pki/$HOST-cert.pem" -key-file "$T/pki/$HOST-key.pem" "$HOST" >"$T/pki/mkcert.log" 2>&1 \
    || { cat "$T/pki/mkcert.log" >&2; die "mkcert failed"; }
cat "$T/pki/$HOST-cert.pem" "$T/pki/$HOST-key.pem" >"$T/pki/$HOST.pem"
# core_server loads DOMAIN-cert.pem/DOMAIN-key.pem from --certs-dir when they
# exist (it runs mkcert only when they do not): give it the same P-256 pair.
cp "$T/pki/$HOST-cert.pem" "$T/pki/$HOST-key.pem" "$T/core_tls/certs/"

# ---------------------------------------------------------------- processes
wait_port() {   # wait_port PORT [SECONDS]
    local i
    for i in $(seq $((${2:-10} * 20))); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}

show_logs() { local f; for f in "$T"/*/out.log "$T"/*/error.log; do [ -s "$f" ] && { echo "== $f"; tail -n 15 "$f"; }; done >&2 || true; }

start_target() {   # start_target NAME: starts it (pinned) and records PID[NAME]
    local n=$1 p
    case $n in
    backend)
        taskset -c "$LOAD_CPU" nginx -p "$T/backend" -c "$T/backend/nginx.conf" -g 'daemon off;' \
            >"$T/backend/out.log" 2>&1 &
        p=$! ;;
    nginx)
        taskset -c "$PROXY_CPU" nginx -p "$T/nginx" -c "$T/nginx/nginx$CONF_SUFFIX.conf" -g 'daemon off;' \
            >"$T/nginx/out.log" 2>&1 &
        p=$! ;;
    haproxy)
        taskset -c "$PROXY_CPU" haproxy -db -f "$T/haproxy/haproxy$CONF_SUFFIX.cfg" >"$T/haproxy/out.log" 2>&1 &
        p=$! ;;
    caddy)
        HOME=$T/caddy/home XDG_DATA_HOME=$T/caddy/home XDG_CONFIG_HOME=$T/caddy/home GOMAXPROCS=1 \
            taskset -c "$PROXY_CPU" caddy run --config "$T/caddy/Caddyfile" --adapter caddyfile \
            >"$T/caddy/out.log" 2>&1 &
        p=$! ;;
    nginx_big)         # nginx for (f100): -m100 x 50 connections is 5,000 requests in flight, and
                       # nginx holds a backend connection for each: worker_connections 4096
                       # would fail requests, so this one has room for them (the others
                       # keep 4096, not to count a larger preallocated table in their RSS)
        mkdir -p "$T/nginx_big/tmp"
        NGINX_PORT=$NGINXB_PORT NGINX_TLS_PORT=$NGINXB_TLS_PORT \
            CONNS_MAX=$(( 2 * CONNS * H2_STREAMS_HIGH + 1024 > NOFILE ? NOFILE : 2 * CONNS * H2_STREAMS_HIGH + 1024 )) \
            render "$BENCH/nginx-proxy.conf.in" "$T/nginx_big/nginx.conf.tmp"
        sed "s#$T/nginx/#$T/nginx_big/#g" "$T/nginx_big/nginx.conf.tmp" >"$T/nginx_big/nginx.conf"
        taskset -c "$PROXY_CPU" nginx -p "$T/nginx_big" -c "$T/nginx_big/nginx.conf" -g 'daemon off;' \
            >"$T/nginx_big/out.log" 2>&1 &
        p=$! ;;
    nghttpx)           # the master process; its worker process is its child
        taskset -c "$PROXY_CPU" nghttpx --conf="$T/nghttpx/nghttpx.conf" >"$T/nghttpx/out.log" 2>&1 &
        p=$! ;;
    h2o)               # drops root for nobody; its neverbleed key process is its child
        taskset -c "$PROXY_CPU" h2o -c "$T/h2o/h2o$CONF_SUFFIX.conf" >"$T/h2o/out.log" 2>&1 &
        p=$! ;;
    core_server)       # plain HTTP only: no mkcert on its PATH
        taskset -c "$PROXY_CPU" env PATH="$T/core/nobin" "$CORE" --http-port "$CORE_PORT" \
            --https-port "$CORE_TLS_PORT" --udp-port "$CORE_UDP" --config-dir "$T/core/conf" \
            --certs-dir "$T/core/certs" --workers 1 --no-access-log >"$T/core/out.log" 2>&1 &
        p=$! ;;
    core_server_tls)   # HTTPS with the bench's P-256 pair, found in its --certs-dir
        taskset -c "$PROXY_CPU" "$CORE" --http-port "$CORETLS_PORT" --https-port "$CORE_TLS_PORT" \
            --udp-port "$CORETLS_UDP" --config-dir "$T/core_tls/conf" --certs-dir "$T/core_tls/certs" \
            --workers 1 --no-access-log >"$T/core_tls/out.log" 2>&1 &
        p=$! ;;
    core_server_100k)  # plain HTTP, MANY_ROUTES routes in its routes file: lookup cost and start-up
        mkdir -p "$T/core100k/conf" "$T/core100k/certs"
        $PY -c "import sys; n=int(sys.argv[1]); sys.stdout.write(''.join('r%06d.bench.test %d\n' % (i, 1024 + i % 60000) for i in range(n)))" \
            "$MANY_ROUTES" >"$T/core100k/conf/forward_targets.txt"
        echo "$HOST $BACKEND_PORT" >>"$T/core100k/conf/forward_targets.txt"
        local t0 t1
        t0=$(date +%s.%N)
        taskset -c "$PROXY_CPU" env PATH="$T/core/nobin" "$CORE" --http-port "$CORE100K_PORT" \
            --https-port "$CORE100K_TLS_PORT" --udp-port "$CORE100K_UDP" --config-dir "$T/core100k/conf" \
            --certs-dir "$T/core100k/certs" --workers 1 --no-access-log >"$T/core100k/out.log" 2>&1 &
        p=$!
        # Start-up: until the command port answers, which is after the routes are loaded.
        for _ in $(seq 400); do
            "$CORE" status "$HOST" --udp-port "$CORE100K_UDP" >/dev/null 2>&1 && break
            sleep 0.005
        done
        t1=$(date +%s.%N)
        NOTES+=("core_server start-up with $MANY_ROUTES routes in its routes file: $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}') s until the command port answered (routes loaded)")
        ;;
    core_server_rsa)
        taskset -c "$PROXY_CPU" "$CORE" --http-port "$CORERSA_PORT" --https-port "$CORERSA_TLS_PORT" \
            --udp-port "$CORERSA_UDP" --config-dir "$T/core_rsa/conf" --certs-dir "$T/core_rsa/certs" \
            --workers 1 --no-access-log >"$T/core_rsa/out.log" 2>&1 &
        p=$! ;;
    *) die "unknown target $n" ;;
    esac
    PID[$n]=$p
    ALL_PIDS+=("$p")
    wait_port "${PLAIN[$n]}" 15 || { show_logs; die "$n did not start"; }
    [ -z "${TLS[$n]}" ] || wait_port "${TLS[$n]}" 15 || die "$n: no TLS listener"
    case $n in
    core_server) "$CORE" add "$HOST" "$BACKEND_PORT" --udp-port "$CORE_UDP" >/dev/null ;;
    core_server_tls) "$CORE" add "$HOST" "$BACKEND_PORT" --udp-port "$CORETLS_UDP" >/dev/null ;;
    core_server_rsa) "$CORE" add "$HOST" "$BACKEND_PORT" --udp-port "$CORERSA_UDP" >/dev/null ;;
    esac
}

stop_target() {   # stop_target NAME
    local p=${PID[$1]:-}
    [ -n "$p" ] || return 0
    kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    unset "PID[$1]"
}

pids_of() {   # the target's processes: the main one and its children (nginx's worker)
    local p=${PID[$1]}
    echo "$p" $(pgrep -P "$p" || true)
}

cpu_ticks() {   # utime+stime summed over the given pids, in clock ticks
    local t=0 p line f
    for p in "$@"; do
        line=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        read -r -a f <<<"${line##*) }"   # f[0] is field 3 (state): utime is 14, stime 15
        t=$((t + f[11] + f[12]))
    done
    echo "$t"
}

status_sum() {   # status_sum FIELD PIDS...: sum of a /proc/PID/status field (kB)
    local field=$1 t=0 p v
    shift
    for p in "$@"; do
        v=$(awk -v f="$field:" '$1==f {print $2}' "/proc/$p/status" 2>/dev/null) || v=0
        t=$((t + ${v:-0}))
    done
    echo "$t"
}

reset_hwm() { local p; for p in "$@"; do echo 5 >"/proc/$p/clear_refs" 2>/dev/null || true; done; }

CLK_TCK=$(getconf CLK_TCK)

# ---------------------------------------------------------------- start everything
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
say "tmp dir $T; load average $LOAD_BEFORE"
# Only what the selected cases (BENCH_CASES) measure; (g), (fidle), (h), (j)
# start their own fresh processes.
PROCS=(backend)
H2CASES=()
for c in f f100 f1m; do if want "$c"; then H2CASES+=("$c"); fi; done
if want a || want b || want c || want d || want e || [ "${#H2CASES[@]}" -gt 0 ]; then PROCS+=(nginx haproxy caddy); fi
if want a || want b || want c; then PROCS+=(core_server); fi
if want d || want e || [ "${#H2CASES[@]}" -gt 0 ]; then PROCS+=(core_server_tls); fi
if [ "${#H2CASES[@]}" -gt 0 ]; then PROCS+=(nghttpx h2o); fi
if want f100; then PROCS+=(nginx_big); fi
if [ "$CORE_RSA" = 1 ] && { want d || want e; }; then PROCS+=(core_server_rsa); fi
if [ "$MANY_ROUTES" -gt 0 ] && want a; then PROCS+=(core_server_100k); fi
NOTES=()
for n in "${PROCS[@]}"; do start_target "$n"; done

# Sanity: every target answers 200 through the proxy, on HTTP and HTTPS.
for n in "${PROCS[@]}"; do
    case $n in core_server_tls|core_server_rsa|nginx_big) ;; *)
        code=$(curl -s -o /dev/null -w '%{http_code}' "http://$HOST:${PLAIN[$n]}/") || true
        [ "$code" = 200 ] || { show_logs; die "$n: GET / gave $code"; }
        size=$(curl -s -o /dev/null -w '%{size_download}' "http://$HOST:${PLAIN[$n]}/1m")
        [ "$size" = 1048576 ] || die "$n: /1m gave $size bytes" ;;
    esac
    [ -n "${TLS[$n]}" ] || continue
    code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$CAROOT/rootCA.pem" "https://$HOST:${TLS[$n]}/") || true
    [ "$code" = 200 ] || { show_logs; die "$n: HTTPS GET / gave $code"; }
done
# What each one serves: certificate key type, TLS version, ALPN h2.
tls_info() {   # tls_info PORT: one line from openssl s_client
    openssl s_client -connect "127.0.0.1:$1" -servername "$HOST" -alpn h2,http/1.1 \
           -CAfile "$CAROOT/rootCA.pem" </dev/null 2>&1 \
           | grep -aE 'Peer signature type|Server Temp Key|Server public key is|Cipher is|ALPN protocol|No ALPN|Verify return code' \
           | tr -s ' ' | sed 's/^ //' | awk '!seen[$0]++' | paste -sd ';' - || true
}
offers_h2() { case $(tls_info "$1") in *"ALPN protocol: h2"*) return 0 ;; *) return 1 ;; esac; }
declare -A H2=()
for n in "${PROCS[@]}"; do
    [ -n "${TLS[$n]}" ] || continue
    info=$(tls_info "${TLS[$n]}")
    case $info in *"ALPN protocol: h2"*) H2[$n]=1 ;; *) H2[$n]=0 ;; esac
    NOTES+=("$n TLS: $info")
done
# An h2 request through each one that offers h2 (curl --http2): the status.
for n in "${PROCS[@]}"; do
    [ "${H2[$n]:-0}" = 1 ] || continue
    code=$(curl -s -o /dev/null -w '%{http_version} %{http_code}' --http2 --cacert "$CAROOT/rootCA.pem" \
           "https://$HOST:${TLS[$n]}/") || true
    [ "$code" = "2 200" ] || { NOTES+=("$n: an h2 GET / gave '$code' (HTTP version, status): h2 rows n/a"); H2[$n]=0; }
done

# ---------------------------------------------------------------- measuring
RAW=$T/raw/runs.tsv
printf 'round\tcase\ttarget\trequests\tseconds\tbytes\tp50_us\tp99_us\tcpu_s\thwm_kib\terrors\n' >"$RAW"

# A load generator that has not finished DURATION + 15 s after its start is
# stopped (h2load -D sometimes waits on its last streams forever): the run
# has no result (n/a) and OUTFILE.timedout says so.
lg() { timeout -k 5 $((DURATION + 15)) "$@"; local rc=$?; [ "$rc" != 124 ] && [ "$rc" != 137 ] || : >"$out.timedout"; return "$rc"; }
run_load() {   # run_load CASE PROC OUTFILE: prints "requests seconds bytes p50 p99 errors"
    local c=$1 n=$2 out=$3 url port
    rm -f "$out.timedout"
    port=${PLAIN[$n]}
    case $c in d|e|f*) port=${TLS[$n]} ;; esac
    case $c in
    a)  lg taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s "$BENCH/wrk-report.lua" \
            "http://$HOST:$port/" >"$out" 2>&1 ;;
    b)  lg taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s "$BENCH/wrk-report.lua" \
            -H 'Connection: close' "http://$HOST:$port/" >"$out" 2>&1 ;;
    c)  lg taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s "$BENCH/wrk-report.lua" \
            "http://$HOST:$port/1m" >"$out" 2>&1 ;;
    d)  lg taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s "$BENCH/wrk-report.lua" \
            "https://$HOST:$port/" >"$out" 2>&1 ;;
    e)  lg taskset -c "$LOAD_CPU" "$T/tlsconn" 127.0.0.1 "$port" "$HOST" / "$CONNS" "$DURATION" \
            >"$out" 2>&1 ;;
    f)  lg taskset -c "$LOAD_CPU" h2load -t1 -c"$CONNS" -m"$H2_STREAMS" -D "$DURATION" --log-file="$out.reqlog" \
            "https://$HOST:$port/" >"$out" 2>&1 ;;
    f100) lg taskset -c "$LOAD_CPU" h2load -t1 -c"$CONNS" -m"$H2_STREAMS_HIGH" -D "$DURATION" --log-file="$out.reqlog" \
            "https://$HOST:$port/" >"$out" 2>&1 ;;
    f1m) lg taskset -c "$LOAD_CPU" h2load -t1 -c"$CONNS" -m"$H2_STREAMS" -D "$DURATION" --log-file="$out.reqlog" \
            "https://$HOST:$port/1m" >"$out" 2>&1 ;;
    esac
    case $c in
    a|b|c|d)
        awk '/^BENCH /{for(i=2;i<=NF;i++){split($i,kv,"=");v[kv[1]]=kv[2]}
             printf "%s %.3f %s %s %s %d\n", v["requests"], v["duration_us"]/1e6, v["bytes"],
                    v["p50_us"], v["p99_us"],
                    v["err_connect"]+v["err_read"]+v["err_write"]+v["err_status"]+v["err_timeout"]}' "$out" ;;
    e)
        awk '/^requests=/{for(i=1;i<=NF;i++){split($i,kv,"=");v[kv[1]]=kv[2]}
             printf "%s %s 0 %s %s %d\n", v["requests"], v["seconds"], v["p50_us"], v["p99_us"],
                    v["errors"]+v["non2xx"]}' "$out" ;;
    f*)
        [ -f "$out.reqlog" ] || : >"$out.reqlog"
        $PY - "$out" "$out.reqlog" <<'EOF'
import re, sys
txt = open(sys.argv[1]).read()
m = re.search(r"finished in ([\d.]+)(m?s)", txt)
secs = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1) if m else 0
m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", txt)
done, ok, failed, errored, timeout = (int(m.group(i)) for i in (3, 4, 5, 6, 7)) if m else (0, 0, 0, 0, 0)
m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", txt)
bad = int(m.group(3)) + int(m.group(4)) if m else 0
lat = []
for line in open(sys.argv[2]):
    f = line.split()
    if len(f) >= 3 and f[1].startswith("2"):
        lat.append(int(f[2]))
lat.sort()
pc = lambda p: lat[min(len(lat) - 1, int(len(lat) * p / 100))] if lat else 0
m = re.search(r"traffic: [\d.]+\w* \((\d+)\) total", txt)
print(ok, f"{secs:.3f}", m.group(1) if m else 0, pc(50), pc(99), failed + errored + timeout + bad)
EOF
        rm -f "$out.reqlog" ;;
    esac
}

measure() {   # measure ROUND CASE TARGET
    local r=$1 c=$2 n=$3 pids cpu0 cpu1 hwm res out proc
    proc=$(proc_of "$c" "$n")
    pids=$(pids_of "$proc")
    out=$T/raw/$r-$c-$n.out
    reset_hwm $pids
    cpu0=$(cpu_ticks $pids)
    res=$(run_load "$c" "$proc" "$out") || true
    cpu1=$(cpu_ticks $pids)
    hwm=$(status_sum VmHWM $pids)
    for p in $pids; do kill -0 "$p" 2>/dev/null || { NOTES+=("round $r case $c: $n process $p died"); }; done
    [ -n "$res" ] || { res="0 0 0 0 0 1"; NOTES+=("round $r case $c $n: no result: $(tail -3 "$out" | tr '\n' ' ')"); }
    if [ -e "$out.timedout" ]; then
        # No figures from a load generator that had to be stopped; the target
        # is restarted, so that a process still busy with the aborted load
        # does not share CPU 0 with the next runs.
        res="0 0 0 0 0 1"
        NOTES+=("round $r case $c $n: the load generator had not finished $((DURATION + 15)) s after its start and was stopped (no result); $proc restarted")
        say "round $r ($c) $n: load generator timed out; restarting $proc"
        stop_target "$proc"; start_target "$proc"
    fi
    set -- $res
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$c" "$n" "$1" "$2" "$3" "$4" "$5" \
        "$(awk -v a="$cpu0" -v b="$cpu1" -v h="$CLK_TCK" 'BEGIN{printf "%.2f", (b-a)/h}')" "$hwm" "$6" >>"$RAW"
    # Keep the load generator's complaints (non-2xx, socket errors) for the report.
    if grep -qE 'Non-2xx|Socket errors' "$out"; then
        NOTES+=("round $r case $c $n: $(grep -E 'Non-2xx|Socket errors' "$out" | tr -s ' ' | paste -sd ';' -)")
    fi
    cp "$out" "$T/raw/keep-$r-$c-$n.out"
    say "round $r ($c) $n: $res cpu $(awk -v a="$cpu0" -v b="$cpu1" -v h="$CLK_TCK" 'BEGIN{printf "%.2f", (b-a)/h}')s"
    sleep 0.3
}

CASES=()
for c in a b c d e f f100 f1m; do if want "$c"; then CASES+=("$c"); fi; done
NA=$T/raw/na.tsv
: >"$NA"
is_h2case() { case $1 in f|f100|f1m) return 0 ;; *) return 1 ;; esac; }
# HTTP/2 rows of a target that does not offer h2: reported n/a, not measured.
for c in "${H2CASES[@]}"; do
    for n in backend nginx haproxy caddy nghttpx h2o core_server; do
        [ "${H2[$(proc_of "$c" "$n")]:-0}" = 1 ] || printf '%s\t%s\t%s\n' "$c" "$n" "no h2 in ALPN" >>"$NA"
    done
done
targets_for() {   # targets_for CASE ROUND: the targets of a case, rotated by round
    local c=$1 r=$2 list=() n all=(backend nginx haproxy caddy core_server)
    is_h2case "$c" && all=(backend nginx haproxy caddy nghttpx h2o core_server)
    for n in "${all[@]}"; do
        is_h2case "$c" && [ "${H2[$(proc_of "$c" "$n")]:-0}" != 1 ] && continue
        list+=("$n")
    done
    if [ "$CORE_RSA" = 1 ] && { [ "$c" = d ] || [ "$c" = e ]; }; then list+=(core_server_rsa); fi
    if [ "$MANY_ROUTES" -gt 0 ] && [ "$c" = a ]; then list+=(core_server_100k); fi
    [ "${#list[@]}" -gt 0 ] || return 0
    local k=$(( (r - 1) % ${#list[@]} ))
    echo "${list[@]:k}" "${list[@]:0:k}"
}

# Warm-up: a short run of each case against each target (upstream pools,
# certificate load, allocator), not measured.
say "warm-up"
for c in "${CASES[@]}"; do
    for n in $(targets_for "$c" 1); do
        DURATION=1 run_load "$c" "$(proc_of "$c" "$n")" "$T/raw/warm.out" >/dev/null || true
        if [ -e "$T/raw/warm.out.timedout" ]; then
            NOTES+=("warm-up case $c $n: the load generator timed out; $(proc_of "$c" "$n") restarted")
            say "warm-up ($c) $n: load generator timed out; restarting $(proc_of "$c" "$n")"
            stop_target "$(proc_of "$c" "$n")"; start_target "$(proc_of "$c" "$n")"
        fi
    done
done

for r in $(seq "$ROUNDS"); do
    for c in "${CASES[@]}"; do
        for n in $(targets_for "$c" "$r"); do
            measure "$r" "$c" "$n"
        done
    done
done

# ---------------------------------------------------------------- (g) idle connections
# Fresh processes, so that memory freed by earlier cases does not hide growth.
G=$T/raw/idle.jsonl
: >"$G"
for n in "${PROCS[@]}"; do [ "$n" = backend ] || stop_target "$n"; done
CONF_SUFFIX=-g
if want g; then
for n in backend nginx haproxy caddy core_server; do
    if [ "$n" = backend ]; then stop_target backend; fi
    start_target "$n"
    curl -s -o /dev/null "http://$HOST:${PLAIN[$n]}/"
    sleep 0.5
    res=$(taskset -c "$LOAD_CPU" $PY "$BENCH/idle_conns.py" 127.0.0.1 "${PLAIN[$n]}" "$HOST:${PLAIN[$n]}" \
          "$IDLE_N" --pids "$(pids_of "$n" | tr ' ' ',')")
    echo "{\"target\": \"$n\", \"result\": $res}" >>"$G"
    say "(g) $n: $res"
    [ "$n" = backend ] || stop_target "$n"
    sleep 1
done
fi

# ---------------------------------------------------------------- (fidle) idle h2 connections
# The same over HTTP/2 on TLS: fresh processes (the -g configurations, sized
# for many connections), IDLE_H2_N connections each set up to an idle h2
# connection by bench/idle_h2.py, VmRSS before and after. A target that does
# not offer h2 (or whose client run gives no result) is reported n/a.
GH=$T/raw/idle_h2.jsonl
: >"$GH"
if want fidle; then
for n in nginx haproxy caddy nghttpx h2o core_server_tls; do
    start_target "$n"
    curl -s -o /dev/null --cacert "$CAROOT/rootCA.pem" "https://$HOST:${TLS[$n]}/" || true
    sleep 0.5
    if ! offers_h2 "${TLS[$n]}"; then
        echo "{\"target\": \"$n\", \"na\": \"no h2 in ALPN\"}" >>"$GH"
        say "(fidle) $n: n/a (no h2 in ALPN)"
    else
        res=$(timeout -k 5 300 taskset -c "$LOAD_CPU" $PY "$BENCH/idle_h2.py" 127.0.0.1 "${TLS[$n]}" "$HOST" "$IDLE_H2_N" \
              --cafile "$CAROOT/rootCA.pem" --pids "$(pids_of "$n" | tr ' ' ',')" 2>"$T/raw/idle_h2-$n.err") || true
        if [ -n "$res" ]; then
            echo "{\"target\": \"$n\", \"result\": $res}" >>"$GH"
        else
            echo "{\"target\": \"$n\", \"na\": \"client failed: $(tail -1 "$T/raw/idle_h2-$n.err" | tr -d '"\\')\"}" >>"$GH"
        fi
        say "(fidle) $n: ${res:-no result}"
    fi
    stop_target "$n"
    sleep 1
done
fi

# ---------------------------------------------------------------- (h) UDP add burst
H=$T/raw/udp.jsonl
: >"$H"
start_coreh() {   # a fresh core_server with no routes, for (h)
    rm -rf "$T/coreh"; mkdir -p "$T/coreh/conf" "$T/coreh/certs"
    taskset -c "$PROXY_CPU" "$CORE" --http-port "$COREH_PORT" --https-port "$COREH_TLS_PORT" \
        --udp-port "$COREH_UDP" --config-dir "$T/coreh/conf" --certs-dir "$T/coreh/certs" \
        --workers 1 --no-access-log >>"$T/coreh.log" 2>&1 &
    hp=$!
    ALL_PIDS+=("$hp")
    wait_port "$COREH_PORT" 15 || die "core_server for (h) did not start"
    "$CORE" list --udp-port "$COREH_UDP" >/dev/null || true   # the command loop is up
}
H_ROUNDS=$ROUNDS; want h || H_ROUNDS=0
for r in $(seq "$H_ROUNDS"); do
    # A burst (everything at once), then at most 128 without a reply (a
    # client that paces itself); each on a fresh instance with no routes.
    for mode in burst window128; do
        start_coreh
        win=0; [ "$mode" = window128 ] && win=128
        reset_hwm "$hp"
        cpu0=$(cpu_ticks "$hp")
        drops0=$(awk '/^Udp:/ && $2 ~ /^[0-9]/ {print $6}' /proc/net/snmp)
        res=$(taskset -c "$LOAD_CPU" $PY "$BENCH/udp_burst.py" 127.0.0.1 "$COREH_UDP" "$UDP_N" "r$r-$mode" \
              "$BACKEND_PORT" --window "$win")
        cpu1=$(cpu_ticks "$hp")
        drops1=$(awk '/^Udp:/ && $2 ~ /^[0-9]/ {print $6}' /proc/net/snmp)
        hwm=$(status_sum VmHWM "$hp")
        routes=$(wc -l <"$T/coreh/conf/forward_targets.txt" 2>/dev/null || echo 0)
        echo "{\"round\": $r, \"mode\": \"$mode\", \"cpu_s\": $(awk -v a="$cpu0" -v b="$cpu1" -v h="$CLK_TCK" 'BEGIN{printf "%.2f", (b-a)/h}'), \"hwm_kib\": $hwm, \"routes_in_file\": $routes, \"udp_rcvbuf_errors\": $((drops1 - drops0)), \"result\": $res}" >>"$H"
        say "(h) round $r $mode: $res; routes in file: $routes; UDP RcvbufErrors +$((drops1 - drops0))"
        kill -TERM "$hp" 2>/dev/null || true
        wait "$hp" 2>/dev/null || true
    done
done

# ---------------------------------------------------------------- (i) release mode: add -> first HTTPS
# Issue 3's figures: against Debian's pebble (validation sleeps off, its
# 5 % badNonce rejection on), the time from `add` to the first verified
# HTTPS 200 for the new domain, and for a first request that races the add.
# Taken by the release-mode integration test that prints them (it starts
# pebble, its fake DNS and core_server --release on free loopback ports);
# BENCH_ACME_ROUNDS times (0: skip).
# Issue 9: Caddy measured in the same rounds, by bench/acme_caddy.py: its own
# fresh pebble (the same class, tests/integration/pebble.py, and the same
# settings: PEBBLE_VA_NOSLEEP=1, the default 5 % badNonce rejection) whose
# httpPort/tlsPort are Caddy's ports, the same kind of backend; then Caddy
# with on-demand TLS and an `ask` endpoint (bench/caddy-ondemand.Caddyfile.in:
# the first request for a newly registered name, and one racing the
# registration), then a fresh Caddy with a JSON config to which a site (route
# + automation policy for the name) is added through its admin API, POST /load
# (what `caddy reload` does): the POST -> the first verified 200. core_server
# and Caddy run one after the other (the order alternates by round), never at
# once; each server gets its own pebble pointing at its ports. Caddy's
# traffic stays on loopback: one issuer (pebble), no OCSP stapling, admin off
# or on 127.0.0.1, every listener on 127.0.0.1.
ACME_N=${BENCH_ACME_ROUNDS:-5}
want i || ACME_N=0
acme_add=(); acme_race=(); caddy_od=(); caddy_odr=(); caddy_adm=(); fleet_first=(); fleet_last=()
ACME=$T/raw/acme.jsonl
: >"$ACME"
CADDY_PIDS=$T/raw/acme-caddy.pids
acme_json() { echo "{\"round\": $1, \"target\": \"$2\", \"measure\": \"$3\", \"ms\": $4}" >>"$ACME"; }
acme_core_round() {
    local out a b
    out=$(cd "$ROOT/tests/integration" && CORE_SERVER_BIN="$CORE" timeout -k 10 300 $PY -m pytest -q -s -p no:cacheprovider \
          test_release_acme.py -k test_first_request_to_just_added_domain 2>&1) || {
        say "(i) round $1 core_server failed: $(echo "$out" | tail -3 | tr '\n' ' ')"; return 0; }
    a=$(echo "$out" | sed -n 's/^FIGURE add -> first HTTPS 200 for a new domain: \([0-9]*\) ms$/\1/p')
    b=$(echo "$out" | sed -n 's/^FIGURE first request racing the add -> HTTPS 200: \([0-9]*\) ms$/\1/p')
    [ -n "$a" ] && { acme_add+=("$a"); acme_json "$1" core_server add "$a"; }
    [ -n "$b" ] && { acme_race+=("$b"); acme_json "$1" core_server race "$b"; }
    say "(i) round $1 core_server: add -> first HTTPS ${a:-?} ms; racing the add ${b:-?} ms"
}
# Issue 10: three core_server nodes on a real 3-member etcd (loopback), in
# the same rounds, by tests/integration/test_bench_fleet_figure.py (skipped
# unless CORE_BENCH_FIGURES=1; fleet.py, etcd.py, the same pebble settings):
# `add` of a new name on all three at once -> the first verified HTTPS 200
# from the first node and from the last; pebble validates through the
# router at a node other than the one that orders.
acme_fleet_round() {
    local out a b v
    out=$(cd "$ROOT/tests/integration" && CORE_BENCH_FIGURES=1 CORE_SERVER_BIN="$CORE" timeout -k 10 300 $PY -m pytest -q -s -p no:cacheprovider \
          test_bench_fleet_figure.py 2>&1) || {
        say "(i) round $1 core_server fleet failed: $(echo "$out" | tail -3 | tr '\n' ' ')"; return 0; }
    a=$(echo "$out" | sed -n 's/^FIGURE fleet add on 3 nodes -> first node HTTPS 200: \([0-9]*\) ms$/\1/p')
    b=$(echo "$out" | sed -n 's/^FIGURE fleet add on 3 nodes -> all 3 nodes HTTPS 200: \([0-9]*\) ms$/\1/p')
    v=$(echo "$out" | sed -n 's/^FLEET //p')
    [ -n "$a" ] && { fleet_first+=("$a"); acme_json "$1" core_server_fleet first "$a"; }
    [ -n "$b" ] && { fleet_last+=("$b"); acme_json "$1" core_server_fleet last "$b"; }
    say "(i) round $1 core_server 3 nodes: add on all -> first node HTTPS ${a:-?} ms, all three ${b:-?} ms ($v)"
}
acme_caddy_round() {
    local out a b c
    mkdir -p "$T/caddy_acme"
    out=$(timeout -k 10 180 $PY "$BENCH/acme_caddy.py" --tmp "$T/caddy_acme" --round "$1" \
          --pidfile "$CADDY_PIDS" --keep-logs "$T/caddy_acme/logs" 2>&1) || {
        say "(i) round $1 Caddy failed: $(echo "$out" | tail -3 | tr '\n' ' ')"; return 0; }
    a=$(echo "$out" | sed -n 's/^FIGURE caddy on-demand first request for a new name -> HTTPS 200: \([0-9]*\) ms$/\1/p')
    b=$(echo "$out" | sed -n 's/^FIGURE caddy on-demand first request racing the registration -> HTTPS 200: \([0-9]*\) ms$/\1/p')
    c=$(echo "$out" | sed -n 's/^FIGURE caddy admin API POST \/load (route + policy) -> HTTPS 200: \([0-9]*\) ms$/\1/p')
    [ -n "$a" ] && { caddy_od+=("$a"); acme_json "$1" caddy ondemand "$a"; }
    [ -n "$b" ] && { caddy_odr+=("$b"); acme_json "$1" caddy ondemand_race "$b"; }
    [ -n "$c" ] && { caddy_adm+=("$c"); acme_json "$1" caddy admin "$c"; }
    say "(i) round $1 Caddy: on-demand first request ${a:-?} ms; racing the registration ${b:-?} ms; admin API POST /load -> 200 ${c:-?} ms"
}
for r in $(seq "$ACME_N"); do
    if [ $((r % 2)) = 1 ]; then acme_core_round "$r"; acme_fleet_round "$r"; acme_caddy_round "$r"
    else acme_caddy_round "$r"; acme_fleet_round "$r"; acme_core_round "$r"; fi
done
summary_ms() {   # "median N ms (min-max over K)" of the arguments
    printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {if (NR) printf "median %d ms (%d-%d ms over %d)", v[int((NR+1)/2)], v[1], v[NR], NR; else printf "no result"}'
}
if [ "$ACME_N" -gt 0 ]; then
    NOTES+=("(i) release mode against pebble: add -> first HTTPS 200 for a new domain: $(summary_ms "${acme_add[@]}"); a first request racing the add -> HTTPS 200: $(summary_ms "${acme_race[@]}"). core_server, three nodes on a 3-member etcd, add on all three at once -> the first node serves: $(summary_ms "${fleet_first[@]}"), all three serve: $(summary_ms "${fleet_last[@]}"). Caddy 2.6 against the same pebble settings, same rounds: on-demand first request for a newly allowed name -> HTTPS 200: $(summary_ms "${caddy_od[@]}"); on-demand first request racing the registration: $(summary_ms "${caddy_odr[@]}"); a site added through the admin API (POST /load) -> HTTPS 200: $(summary_ms "${caddy_adm[@]}")")
    if grep -qiE 'zerossl|letsencrypt|ocsp' "$T"/caddy_acme/logs/*caddy.log 2>/dev/null; then
        NOTES+=("(i) Caddy's logs mention ZeroSSL, Let's Encrypt or OCSP: $(grep -hiE 'zerossl|letsencrypt|ocsp' "$T"/caddy_acme/logs/*caddy.log | head -3 | cut -c1-200 | tr -d '"' | paste -sd ';' -)")
    fi
fi

# ---------------------------------------------------------------- (j) takeovers under load
# wrk -t1 -c$CONNS on plain HTTP; every TAKEOVER_INTERVAL s (or as soon as
# the previous one is done, if it took longer) the proxy is replaced by a new
# process, TAKEOVERS times; wrk stops TAKEOVER_INTERVAL s after the last:
#   core_server: a new instance started with the same flags (it listens beside
#     the old one, SO_REUSEPORT, and takes the command port from it, which
#     then drains), done when the new process holds both ports;
#   nginx (daemon, as in production): binary upgrade, USR2 to the master,
#     once the new master has a worker WINCH to the old master, once the old
#     workers are gone QUIT to it, done when it has exited;
#   HAProxy: a new `haproxy -x ADMIN.SOCK -sf OLDPID` (the listening sockets
#     passed through the old process's `stats socket ... expose-fd
#     listeners`), done when the new process holds the listener.
# Failed requests = wrk's socket errors (connect, read, write, timeout) +
# non-2xx/3xx responses. Fresh instances on their own ports, ROUNDS runs each.
J=$T/raw/takeover.jsonl
: >"$J"
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
running() {   # running PID: exists and is not a zombie (a daemon's zombie waits for init to reap it)
    local st
    st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    st=${st##*) }
    [ "${st%% *}" != Z ]
}
holds_port() {   # holds_port PID PORT [u]: PID has a listening socket on PORT (TCP; UDP with u)
    ss -Hl"${3:-t}"np "sport = :$2" 2>/dev/null | grep -q "pid=$1,"
}
wait_for() {   # wait_for SECONDS COMMAND...: polls COMMAND every 20 ms
    local i
    for i in $(seq $(( $1 * 50 ))); do "${@:2}" && return 0; sleep 0.02; done
    return 1
}
declare -A TKPID=()
TK_REASON=""
tk_core_run() {   # one core_server instance for (j), same flags each time; sets TK_NEW
    taskset -c "$PROXY_CPU" env PATH="$T/core/nobin" "$CORE" --http-port "$TK_CORE_PORT" \
        --https-port "$TK_CORE_TLS_PORT" --udp-port "$TK_CORE_UDP" --config-dir "$T/core_tk/conf" \
        --certs-dir "$T/core_tk/certs" --workers 1 --no-access-log >>"$T/core_tk/out.log" 2>&1 &
    TK_NEW=$!
    ALL_PIDS+=("$TK_NEW")
}
nginx_tk_pid() { cat "$T/nginx_tk/nginx.pid" 2>/dev/null || true; }
tk_start() {   # tk_start TARGET: the first instance of TARGET for (j)
    case $1 in
    core_server)
        mkdir -p "$T/core_tk/conf" "$T/core_tk/certs"
        tk_core_run
        wait_port "$TK_CORE_PORT" 15 || die "(j) core_server did not start"
        "$CORE" add "$HOST" "$BACKEND_PORT" --udp-port "$TK_CORE_UDP" >/dev/null
        TKPID[core_server]=$TK_NEW ;;
    nginx)
        mkdir -p "$T/nginx_tk/tmp"
        NGINX_PORT=$TK_NGINX_PORT NGINX_TLS_PORT=$TK_NGINX_TLS_PORT CONNS_MAX=4096 \
            render "$BENCH/nginx-proxy.conf.in" "$T/nginx_tk/nginx.conf.tmp"
        sed "s#$T/nginx/#$T/nginx_tk/#g" "$T/nginx_tk/nginx.conf.tmp" >"$T/nginx_tk/nginx.conf"
        # By its absolute path: USR2 re-executes argv[0].
        taskset -c "$PROXY_CPU" /usr/sbin/nginx -p "$T/nginx_tk" -c "$T/nginx_tk/nginx.conf" \
            >"$T/nginx_tk/out.log" 2>&1 || { show_logs; die "(j) nginx did not start"; }
        wait_port "$TK_NGINX_PORT" 15 || die "(j) nginx did not start"
        TKPID[nginx]=$(nginx_tk_pid)
        ALL_PIDS+=("${TKPID[nginx]}") ;;
    haproxy)
        mkdir -p "$T/haproxy_tk"
        HAPROXY_PORT=$TK_HAPROXY_PORT HAPROXY_TLS_PORT=$TK_HAPROXY_TLS_PORT CONNS_MAX=4096 \
            render "$BENCH/haproxy.cfg.in" "$T/haproxy_tk/haproxy.cfg.tmp"
        sed "/^global/a\\    stats socket $T/haproxy_tk/admin.sock mode 600 level admin expose-fd listeners" \
            "$T/haproxy_tk/haproxy.cfg.tmp" >"$T/haproxy_tk/haproxy.cfg"
        taskset -c "$PROXY_CPU" haproxy -db -f "$T/haproxy_tk/haproxy.cfg" >>"$T/haproxy_tk/out.log" 2>&1 &
        TKPID[haproxy]=$!
        ALL_PIDS+=("${TKPID[haproxy]}")
        wait_port "$TK_HAPROXY_PORT" 15 || die "(j) HAProxy did not start"
        wait_for 5 test -S "$T/haproxy_tk/admin.sock" || die "(j) HAProxy: no admin socket" ;;
    esac
}
nginx_old_workers_gone() {   # the old master's children other than the new master
    local c
    for c in $(pgrep -P "$1" || true); do [ "$c" = "$2" ] || return 1; done
    return 0
}
tk_takeover() {   # tk_takeover TARGET: replaces the running instance; 0 when the new one serves
    local old=${TKPID[$1]} new
    TK_REASON=""
    case $1 in
    core_server)
        tk_core_run
        new=$TK_NEW
        if wait_for 15 holds_port "$new" "$TK_CORE_UDP" u && holds_port "$new" "$TK_CORE_PORT"; then
            TKPID[core_server]=$new
        else
            TK_REASON="new instance did not take both ports"; kill -0 "$new" 2>/dev/null || TK_REASON="new instance exited"
            return 1
        fi ;;
    nginx)
        kill -USR2 "$old" || { TK_REASON="USR2 failed"; return 1; }
        new=""
        getnew() { new=$(nginx_tk_pid); [ -n "$new" ] && [ "$new" != "$old" ] && [ -f "$T/nginx_tk/nginx.pid.oldbin" ] \
                   && [ -n "$(pgrep -P "$new" || true)" ]; }
        local s0 s1 s2
        s0=$(now_ms)
        wait_for 10 getnew || { TK_REASON="no new master with a worker after USR2"; return 1; }
        ALL_PIDS+=("$new")
        s1=$(now_ms)
        kill -WINCH "$old" || true
        wait_for 10 nginx_old_workers_gone "$old" "$new" || TK_REASON="old workers still there 10 s after WINCH"
        s2=$(now_ms)
        kill -QUIT "$old" || true
        wait_for 10 eval '! running '"$old" || { TK_REASON="old master still there 10 s after QUIT"; return 1; }
        TK_STAGES+=("$((s1 - s0))/$((s2 - s1))/$(( $(now_ms) - s2 ))")
        TKPID[nginx]=$new ;;
    haproxy)
        taskset -c "$PROXY_CPU" haproxy -db -f "$T/haproxy_tk/haproxy.cfg" -x "$T/haproxy_tk/admin.sock" \
            -sf "$old" >>"$T/haproxy_tk/out.log" 2>&1 &
        new=$!
        ALL_PIDS+=("$new")
        wait_for 10 holds_port "$new" "$TK_HAPROXY_PORT" || { TK_REASON="new process does not hold the listener"; return 1; }
        TKPID[haproxy]=$new ;;
    esac
    return 0
}
tk_stop() {   # tk_stop TARGET: the last instance and any old one still draining
    local p=${TKPID[$1]:-}
    [ -n "$p" ] || return 0
    kill -TERM "$p" 2>/dev/null || true
    wait_for 5 eval '! running '"$p" || kill -KILL "$p" 2>/dev/null || true
    unset "TKPID[$1]"
}
TK_TARGETS=(core_server nginx haproxy)
J_ROUNDS=$ROUNDS; want j || J_ROUNDS=0
if [ "$J_ROUNDS" -gt 0 ]; then
    read -r TK_CORE_PORT TK_CORE_TLS_PORT TK_NGINX_PORT TK_NGINX_TLS_PORT TK_HAPROXY_PORT TK_HAPROXY_TLS_PORT \
            TK_CORE_UDP <<<"$(free_ports 6 1)"
    for n in "${TK_TARGETS[@]}"; do tk_start "$n"; done
    declare -A TKPORT=([core_server]=$TK_CORE_PORT [nginx]=$TK_NGINX_PORT [haproxy]=$TK_HAPROXY_PORT)
    for n in "${TK_TARGETS[@]}"; do
        code=$(curl -s -o /dev/null -w '%{http_code}' "http://$HOST:${TKPORT[$n]}/") || true
        [ "$code" = 200 ] || { show_logs; die "(j) $n: GET / gave $code"; }
    done
fi
# wrk runs until INTERVAL s after the last takeover is done (then SIGINT,
# on which it reports), so that a slow takeover is under load as well.
JDUR=$(( (TAKEOVERS + 1) * TAKEOVER_INTERVAL * 10 + 60 ))
for r in $(seq "$J_ROUNDS"); do
    k=$(( (r - 1) % ${#TK_TARGETS[@]} ))
    for n in "${TK_TARGETS[@]:k}" "${TK_TARGETS[@]:0:k}"; do
        out=$T/raw/$r-j-$n.out
        olds=()
        timeout -k 5 $((JDUR + 30)) taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${JDUR}s" --latency -s "$BENCH/wrk-report.lua" \
            "http://$HOST:${TKPORT[$n]}/" >"$out" 2>&1 &
        wpid=$!
        t0=$(now_ms); done_n=0; ms=(); reasons=(); TK_STAGES=()
        for i in $(seq "$TAKEOVERS"); do
            # at t0 + i x INTERVAL
            dt=$(( t0 + i * TAKEOVER_INTERVAL * 1000 - $(now_ms) ))
            [ "$dt" -le 0 ] || sleep "$(awk -v d="$dt" 'BEGIN{printf "%.3f", d/1000}')"
            olds+=("${TKPID[$n]}")
            a=$(now_ms)
            if tk_takeover "$n"; then
                done_n=$((done_n + 1)); ms+=($(( $(now_ms) - a )))
                [ -z "$TK_REASON" ] || reasons+=("$TK_REASON")
            else
                reasons+=("$TK_REASON")
                say "(j) $n takeover $i failed: $TK_REASON"
            fi
        done
        sleep "$TAKEOVER_INTERVAL"
        kill -INT "$wpid" 2>/dev/null || true
        wait "$wpid" || true
        # Old instances still alive 2 s after the run (draining, or stuck).
        sleep 2
        alive=0
        for p in "${olds[@]}"; do
            if [ "$p" != "${TKPID[$n]}" ] && running "$p"; then alive=$((alive + 1)); fi
        done
        res=$(awk '/^BENCH /{for(i=2;i<=NF;i++){split($i,kv,"=");v[kv[1]]=kv[2]}
                 printf "{\"requests\": %d, \"seconds\": %.3f, \"p50_us\": %d, \"p99_us\": %d, \"errors\": {\"connect\": %d, \"read\": %d, \"write\": %d, \"timeout\": %d, \"status\": %d}}",
                        v["requests"], v["duration_us"]/1e6, v["p50_us"], v["p99_us"],
                        v["err_connect"], v["err_read"], v["err_write"], v["err_timeout"], v["err_status"]}' "$out")
        [ -n "$res" ] || res='{"requests": 0, "seconds": 0, "p50_us": 0, "p99_us": 0, "errors": null}'
        rs=$(printf '%s\n' "${reasons[@]}" | awk 'NF' | sort | uniq -c | sed 's/^ *//' | paste -sd ';' - | tr -d '"\\')
        echo "{\"round\": $r, \"target\": \"$n\", \"takeovers\": $TAKEOVERS, \"done\": $done_n, \"ms\": [$(IFS=,; echo "${ms[*]}")], \"old_alive_after_2s\": $alive, \"stages_ms\": \"${TK_STAGES[*]}\", \"notes\": \"$rs\", \"wrk\": $res}" >>"$J"
        grep -E 'Non-2xx|Socket errors' "$out" >/dev/null && \
            NOTES+=("round $r case j $n: $(grep -E 'Non-2xx|Socket errors' "$out" | tr -s ' ' | paste -sd ';' -)")
        cp "$out" "$T/raw/keep-$r-j-$n.out"
        say "(j) round $r $n: $done_n/$TAKEOVERS takeovers (ms: ${ms[*]}), $alive old alive after 2 s; $res"
        sleep 0.5
    done
done
for n in "${TK_TARGETS[@]}"; do tk_stop "$n"; done

# ---------------------------------------------------------------- report
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
ELAPSED=$(( $(date +%s) - T0 ))
# core_server errors/warnings in its own log
for f in core/out.log core_tls/out.log core_rsa/out.log coreh.log; do
    if grep -qiE 'error|warn|crit|fatal' "$T/$f" 2>/dev/null; then
        NOTES+=("core_server log ($f): $(grep -iE 'error|warn|crit|fatal' "$T/$f" | cut -c26- | sort | uniq -c | sort -rn | head -5 | tr -s ' ' | paste -sd ';' -)")
    fi
done
[ -f "$T/core_rsa/certs/$HOST-cert.pem" ] && \
    NOTES+=("core_server_rsa made its own certificate: $(openssl x509 -in "$T/core_rsa/certs/$HOST-cert.pem" -noout -text | grep -E 'Public Key Algorithm|Public-Key' | tr -s ' ' | paste -sd ';' -)")

VERSIONS="nginx $(nginx -v 2>&1 | sed 's/.*nginx\///'); HAProxy $(haproxy -v | head -1 | awk '{print $3}'); Caddy $(caddy version | awk '{print $1}'); nghttpx $(nghttpx --version | awk '{print $NF}'); h2o $(h2o --version | head -1 | awk '{print $3}'); core_server $("$CORE" --version 2>&1 | head -1); wrk $(wrk -v 2>&1 | head -1 | awk '{print $2}'); h2load $(h2load --version | awk '{print $NF}'); OpenSSL $(openssl version | awk '{print $2}')"
DATE=$(date +%Y-%m-%d)
# A run of selected cases (BENCH_CASES) does not overwrite the day's full
# report: bench/results-DATE-CASES.md; BENCH_OUT names the file outright.
if [ -n "${BENCH_CASES:-}" ] && [ "${SEL[*]}" != "$ALL_CASES" ]; then
    OUT=$BENCH/results-$DATE-$(IFS=-; echo "${SEL[*]}").md
else
    OUT=$BENCH/results-$DATE.md
fi
OUT=${BENCH_OUT:-$OUT}
printf '%s\n' "${NOTES[@]}" >"$T/raw/notes.txt"
$PY "$BENCH/report.py" "$RAW" "$G" "$H" "$T/raw/notes.txt" \
    --idle-h2 "$GH" --takeover "$J" --acme "$ACME" --na "$NA" --idle-h2-n "$IDLE_H2_N" --h2-streams "$H2_STREAMS" \
    --h2-streams-high "$H2_STREAMS_HIGH" --takeovers "$TAKEOVERS" --takeover-interval "$TAKEOVER_INTERVAL" \
    --cases "${SEL[*]}" \
    --date "$(date '+%Y-%m-%d %H:%M %Z')" --nproc "$(nproc)" \
    --cpu "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')" \
    --load-before "$LOAD_BEFORE" --load-after "$LOAD_AFTER" --elapsed "$ELAPSED" \
    --duration "$DURATION" --rounds "$ROUNDS" --conns "$CONNS" --idle "$IDLE_N" --adds "$UDP_N" \
    --versions "$VERSIONS" --kernel "$(uname -r)" >"$OUT"
cat "$OUT"
say "wrote $OUT in ${ELAPSED}s"
