#!/usr/bin/env bash
# Load test of the ecommpay module in a real Caddy, against baselines.
#
#   bench/load.sh                 # from anywhere; needs Go and wrk
#
# It builds Caddy with the module from this working tree (xcaddy, Caddy
# v2.11.4), starts bench/bench.Caddyfile on loopback ports and measures,
# with identical wrk settings, interleaved A/B/A/B:
#   callback      ecommpay callback (dedupe memory, qr off) + reverse_proxy
#   reverse_proxy the same reverse_proxy alone, sent the same bodies
#   payment_page  ecommpay payment_page, GET with a typical query
#   respond       a static respond of the same JSON answer
# Every callback is a distinct signed event (bench/gencallbacks), so none is
# answered as a cheap duplicate; the script checks that against Caddy's
# metrics and counts non-200 answers. It prints req/s per run, medians and
# the ratios callback/reverse_proxy and payment_page/respond.
#
# Settings (environment): THREADS=2 CONNS=32 DURATION=10 (seconds per run)
# ROUNDS=2 WARMUP=2 (seconds per target) PORT_BASE=19000 (uses PORT_BASE..+4
# and +19 for the admin API) HEADROOM=2.5 (callbacks generated per run, as a
# multiple of the warm-up rate x DURATION) CADDY=/path/to/caddy (skip the
# build and use that binary). A run takes about 2.5 minutes with the
# defaults once Go's module cache is warm; it stops itself before 3 minutes
# (unless the build alone took longer), and kills what it started on exit.
# It also prints Caddy's CPU time per request (user + system, from /proc,
# the app included), which other jobs on the machine disturb less than
# req/s.
set -euo pipefail

THREADS=${THREADS:-2}
CONNS=${CONNS:-32}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
WARMUP=${WARMUP:-2}
PORT_BASE=${PORT_BASE:-19000}
HEADROOM=${HEADROOM:-2.5}
CADDY_VERSION=v2.11.4
MODULE=github.com/caddy-ecommpay/caddy-ecommpay
SECRET=bench-secret-not-for-production
PROJECT=238

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH/.." && pwd)
START=$SECONDS

die() { echo "load.sh: $*" >&2; exit 1; }

command -v wrk >/dev/null || die "wrk is not installed: apt-get install wrk"
command -v go >/dev/null || die "Go is not installed (https://go.dev/dl/)"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/ecommpay-bench.XXXXXX")
CADDY_PID=
WATCHDOG_PID=
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	[[ -n $WATCHDOG_PID ]] && kill "$WATCHDOG_PID" 2>/dev/null || true
	if [[ -n $CADDY_PID ]]; then
		kill "$CADDY_PID" 2>/dev/null || true
		wait "$CADDY_PID" 2>/dev/null || true
	fi
	rm -rf "$TMP"
	exit "$rc"
}
trap cleanup EXIT
trap 'echo "load.sh: interrupted" >&2; exit 130' INT TERM

P_APP=$PORT_BASE P_CB=$((PORT_BASE + 1)) P_PROXY=$((PORT_BASE + 2))
P_PAGE=$((PORT_BASE + 3)) P_RESPOND=$((PORT_BASE + 4)) P_ADMIN=$((PORT_BASE + 19))
for p in $P_APP $P_CB $P_PROXY $P_PAGE $P_RESPOND $P_ADMIN; do
	if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
		die "port $p on 127.0.0.1 is in use; set PORT_BASE to another range"
	fi
done

# http_get PORT PATH: the raw HTTP/1.0 answer, headers and body (no curl needed).
http_get() {
	local fd
	exec {fd}<>"/dev/tcp/127.0.0.1/$1" || return 1
	printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1:%s\r\n\r\n' "$2" "$1" >&"$fd"
	timeout 5 cat <&"$fd"
	exec {fd}>&-
}

# ---- build ------------------------------------------------------------------
if [[ -n ${CADDY:-} ]]; then
	[[ -x $CADDY ]] || die "CADDY=$CADDY is not an executable"
	echo "== using $CADDY"
else
	CADDY=$TMP/caddy
	echo "== building Caddy $CADDY_VERSION with the module from $ROOT"
	(cd "$ROOT" && go tool xcaddy build "$CADDY_VERSION" --output "$CADDY" \
		--with "$MODULE@v0.0.0-00010101000000-000000000000=$ROOT") >"$TMP/build.log" 2>&1 ||
		{ tail -30 "$TMP/build.log" >&2; die "the build failed"; }
fi
(cd "$ROOT" && go build -o "$TMP/gencallbacks" ./bench/gencallbacks) || die "building gencallbacks failed"
echo "   built in $((SECONDS - START)) s"

# From here on the run is bounded: it stops 178 s after it started (measuring
# takes about 110 s with the defaults), or 90 s after the build if that is
# later (a first build downloads Go modules).
BUDGET=$((178 - (SECONDS - START)))
((BUDGET >= 90)) || BUDGET=90
(
	trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
	sleep "$BUDGET" &
	sleeper=$!
	wait "$sleeper"
	echo "load.sh: over $BUDGET s, stopping" >&2
	kill -TERM $$
) 2>/dev/null &
WATCHDOG_PID=$!

# ---- Caddy ------------------------------------------------------------------
export BENCH_APP_PORT=$P_APP BENCH_CALLBACK_PORT=$P_CB BENCH_PROXY_PORT=$P_PROXY
export BENCH_PAYPAGE_PORT=$P_PAGE BENCH_RESPOND_PORT=$P_RESPOND BENCH_ADMIN_PORT=$P_ADMIN
export ECOMMPAY_BENCH_SECRET=$SECRET
"$CADDY" run --config "$BENCH/bench.Caddyfile" --adapter caddyfile >"$TMP/caddy.log" 2>&1 &
CADDY_PID=$!
for _ in $(seq 100); do
	http_get "$P_ADMIN" /config/ >/dev/null 2>&1 && http_get "$P_RESPOND" / >/dev/null 2>&1 && break
	kill -0 "$CADDY_PID" 2>/dev/null || { tail -20 "$TMP/caddy.log" >&2; die "Caddy did not start"; }
	sleep 0.1
done
http_get "$P_ADMIN" /config/ >/dev/null 2>&1 || { tail -20 "$TMP/caddy.log" >&2; die "Caddy's admin API did not answer"; }

# The payment_page request: a typical order, as the shop's app sends it.
PAGE_PATH="/?project_id=$PROJECT&payment_id=BENCH_ORDER_000000123456&payment_amount=129900&payment_currency=EUR&customer_id=customer123&customer_email=customer%40example.com&payment_description=Order%20123456%20from%20the%20shop&language_code=en&force_payment_method=card&merchant_success_url=https%3A%2F%2Fshop.example.com%2Forders%2F123456%2Fpaid&merchant_fail_url=https%3A%2F%2Fshop.example.com%2Forders%2F123456%2Ffailed"
page_answer=$(http_get "$P_PAGE" "$PAGE_PATH")
respond_answer=$(http_get "$P_RESPOND" "$PAGE_PATH")
[[ $page_answer == HTTP/1.?" 200"* ]] || die "payment_page answered: ${page_answer%%$'\r'*}"
[[ $respond_answer == HTTP/1.?" 200"* ]] || die "respond answered: ${respond_answer%%$'\r'*}"
page_len=$(grep -ai '^content-length:' <<<"$page_answer" | tr -dc 0-9)
respond_len=$(grep -ai '^content-length:' <<<"$respond_answer" | tr -dc 0-9)
same_answer="differ: update the respond body in bench.Caddyfile to payment_page's answer"
[[ ${page_answer#*$'\r\n\r\n'} == "${respond_answer#*$'\r\n\r\n'}" ]] && same_answer="identical"

# ---- helpers ----------------------------------------------------------------
# metric RESULT: caddy_ecommpay_callbacks_total for our project and result.
metric() {
	http_get "$P_ADMIN" /metrics |
		awk -v want="caddy_ecommpay_callbacks_total{project=\"$PROJECT\",result=\"$1\"}" \
			'$1 == want { v = $2 } END { printf "%d\n", v + 0 }'
}
RESULTS="forwarded duplicate in_flight invalid_signature malformed unknown_project app_error store_error too_large forbidden_source"
metrics_snapshot() {
	local all r
	all=$(http_get "$P_ADMIN" /metrics)
	for r in $RESULTS; do
		awk -v want="caddy_ecommpay_callbacks_total{project=\"$PROJECT\",result=\"$r\"}" \
			'$1 == want { v = $2 } END { printf "%d ", v + 0 }' <<<"$all"
	done
	echo
}

# caddy_cpu: Caddy's CPU time so far (user + system), in clock ticks.
caddy_cpu() { awk '{ print $14 + $15 }' "/proc/$CADDY_PID/stat"; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))

# run_wrk PORT SECONDS [BODIES]: prints the script's RESULT fields, and
# cpu_us_per_req, Caddy's CPU time per answered request (app included).
run_wrk() {
	local port=$1 secs=$2 file=${3:-}
	local args=(-t"$THREADS" -c"$CONNS" -d"${secs}s" --timeout 5s -s "$BENCH/callbacks.lua" "http://127.0.0.1:$port/")
	if [[ -n $file ]]; then
		args+=(-- "$file" "$THREADS")
	elif [[ $port == "$P_PAGE" || $port == "$P_RESPOND" ]]; then
		args[${#args[@]} - 1]="http://127.0.0.1:$port$PAGE_PATH"
	fi
	local out res c0 c1 n
	c0=$(caddy_cpu)
	out=$(timeout $((secs + 60)) wrk "${args[@]}" 2>&1) || { echo "$out" >&2; die "wrk failed on port $port"; }
	c1=$(caddy_cpu)
	res=$(grep '^RESULT ' <<<"$out" | sed 's/^RESULT //') || { echo "$out" >&2; die "no RESULT line from wrk"; }
	n=$(field requests "$res")
	echo "$res cpu_us_per_req=$(awk -v t=$((c1 - c0)) -v u="$TICK_US" -v n="$n" 'BEGIN { printf "%.1f", n ? t * u / n : 0 }')"
}
field() { sed -n "s/.*\b$1=\([0-9.]*\).*/\1/p" <<<"$2"; }
median() { tr ' ' '\n' | grep . | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.1f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
gen() { "$TMP/gencallbacks" -secret "$SECRET" -project "$PROJECT" -from "$1" -n "$2" -out "$3"; }

# ---- warm-up and sizing -----------------------------------------------------
echo "== warming up ($WARMUP s per target)"
WARM_LINES=40000
gen 0 "$WARM_LINES" "$TMP/warm.txt"
NEXT=$WARM_LINES
run_wrk "$P_PROXY" "$WARMUP" "$TMP/warm.txt" >/dev/null
w=$(run_wrk "$P_CB" "$WARMUP" "$TMP/warm.txt")
run_wrk "$P_PAGE" "$WARMUP" >/dev/null
run_wrk "$P_RESPOND" "$WARMUP" >/dev/null
warm_rps=$(field rps "$w")
[[ $(field non200 "$w") == 0 ]] || echo "   warning: warm-up callbacks got $(field non200 "$w") non-200 answers"
PER_RUN=$(awk -v r="$warm_rps" -v d="$DURATION" -v h="$HEADROOM" 'BEGIN { n = int(r * d * h); if (n < 20000) n = 20000; if (n > 600000) n = 600000; print n }')
echo "   callback warm-up: $warm_rps req/s; generating $PER_RUN distinct callbacks per run"
for i in $(seq "$ROUNDS"); do
	gen "$NEXT" "$PER_RUN" "$TMP/cb$i.txt"
	NEXT=$((NEXT + PER_RUN))
done

# ---- measured runs ----------------------------------------------------------
declare -A RPS CPU
CHECKS=()
ODD=0
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
echo "== measuring: wrk -t$THREADS -c$CONNS -d${DURATION}s, $ROUNDS rounds"
for i in $(seq "$ROUNDS"); do
	before=($(metrics_snapshot))
	r=$(run_wrk "$P_CB" "$DURATION" "$TMP/cb$i.txt")
	sleep 0.3 # let requests cut off at the end of the run finish
	after=($(metrics_snapshot))
	sent=$(field requests "$r")
	RPS[callback]+="$(field rps "$r") "
	CPU[callback]+="$(field cpu_us_per_req "$r") "
	delta=() j=0 other=0 others=""
	for res in $RESULTS; do
		d=$((after[j] - before[j]))
		delta+=("$d")
		if ((j > 0 && d != 0)); then other=$((other + d)); others+=" $res=$d"; fi
		j=$((j + 1))
	done
	fwd=${delta[0]}
	ok=yes
	((fwd >= sent && fwd <= sent + CONNS)) || ok=no
	((other == 0)) || ok=no
	[[ $(field non200 "$r") == 0 && $(field repeats "$r") == 0 ]] || ok=no
	[[ $ok == yes ]] || ODD=1
	CHECKS+=("round $i callback: $sent answered, forwarded +$fwd, other results +$other${others:+ (${others# })}, non-200 $(field non200 "$r"), repeated bodies $(field repeats "$r"), socket errors $(field errors "$r") -> $ok")
	r=$(run_wrk "$P_PROXY" "$DURATION" "$TMP/cb$i.txt")
	RPS[reverse_proxy]+="$(field rps "$r") "
	CPU[reverse_proxy]+="$(field cpu_us_per_req "$r") "
	[[ $(field non200 "$r") == 0 ]] || { ODD=1; CHECKS+=("round $i reverse_proxy: $(field non200 "$r") non-200"); }

	r=$(run_wrk "$P_PAGE" "$DURATION")
	RPS[payment_page]+="$(field rps "$r") "
	CPU[payment_page]+="$(field cpu_us_per_req "$r") "
	[[ $(field non200 "$r") == 0 ]] || { ODD=1; CHECKS+=("round $i payment_page: $(field non200 "$r") non-200"); }
	r=$(run_wrk "$P_RESPOND" "$DURATION")
	RPS[respond]+="$(field rps "$r") "
	CPU[respond]+="$(field cpu_us_per_req "$r") "
	[[ $(field non200 "$r") == 0 ]] || { ODD=1; CHECKS+=("round $i respond: $(field non200 "$r") non-200"); }
	rm -f "$TMP/cb$i.txt"
done

# ---- report -----------------------------------------------------------------
echo
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); $(go version | cut -d' ' -f3-); Caddy $("$CADDY" version | cut -d' ' -f1)"
echo "load average: $load_start at start, $(cut -d' ' -f1-3 /proc/loadavg) at end"
echo "answers: payment_page $page_len bytes, respond $respond_len bytes, bodies $same_answer; callbacks $(($(head -1 "$TMP/warm.txt" | wc -c) - 1)) bytes"
echo
printf '%-14s' target
for i in $(seq "$ROUNDS"); do printf '%10s' "run$i"; done
printf '%10s\n' median
declare -A MED CMED
for t in callback reverse_proxy payment_page respond; do
	printf '%-14s' "$t"
	for v in ${RPS[$t]}; do printf '%10.0f' "$v"; done
	MED[$t]=$(median <<<"${RPS[$t]}")
	CMED[$t]=$(median <<<"${CPU[$t]}")
	printf '%10.0f   req/s  (Caddy CPU per request:' "${MED[$t]}"
	printf ' %s' ${CPU[$t]}
	printf ' us, median %s)\n' "${CMED[$t]}"
done
echo
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }
paired() { # per-round ratios of two lists
	local -a a=(${RPS[$1]}) b=(${RPS[$2]}) out=()
	for k in "${!a[@]}"; do out+=("$(ratio "${a[k]}" "${b[k]}")"); done
	echo "${out[*]}"
}
for pair in "callback reverse_proxy" "payment_page respond"; do
	set -- $pair
	r=$(ratio "${MED[$1]}" "${MED[$2]}")
	verdict=$(awk -v r="$r" 'BEGIN { print (r >= 0.85) ? "meets" : "BELOW" }')
	echo "$1/$2: $r of baseline req/s (medians; per round: $(paired "$1" "$2")) - $verdict the 0.85 target;" \
		"CPU per request $(ratio "${CMED[$1]}" "${CMED[$2]}")x the baseline's"
done
echo
printf '%s\n' "${CHECKS[@]}"
((ODD == 0)) && echo "all callbacks were forwarded once each, no non-200 answers" ||
	echo "WARNING: see the checks above"
echo "took $((SECONDS - START)) s"
