#!/usr/bin/env bash
# Load test of the ecommpay module in a real Caddy, against baselines.
#
#   bench/load.sh                 # from anywhere; needs Go and wrk
#
# It builds Caddy with the module from this working tree (xcaddy, Caddy
# v2.11.4) and starts bench/bench.Caddyfile on loopback ports, with
# XDG_DATA_HOME set to a new temporary directory so that the default store
# starts empty in every run. Targets:
#   callback        ecommpay callback with the default configuration (no
#                   store line: the local store, journal on) + reverse_proxy
#   callback_memory the same with `store memory` (de-dup marks and journal
#                   in memory)
#   callback_lean   `store memory` and `journal off`: the least the module
#                   does for a callback (verify, de-duplicate, rewrite,
#                   forward), so that the journal's share is visible
#   reverse_proxy   the same reverse_proxy alone, sent the same bodies
#   reverse_proxy_b an identical copy of reverse_proxy (the A/A control)
#   payment_page    ecommpay payment_page, GET with a typical query; each
#                   request of a wrk run has its own payment_id (a new
#                   order; every run counts from the same number)
#   respond         a static respond of the same JSON answer, sent the same
#                   requests
# All proxying targets forward to one app in the same Caddy (respond "OK").
#
# After a warm-up of WARMUP seconds per target:
# 1. Throughput, closed loop: wrk with identical settings runs each target
#    in turn, ROUNDS times, in the order callback, reverse_proxy,
#    callback_memory, reverse_proxy_b, callback_lean, payment_page, respond
#    in odd rounds and in reverse in even ones, so that drift on the machine
#    falls on all alike.
# 2. Latency, open loop: bench/openloop sends OL_RATE signed callbacks a
#    second to callback, reverse_proxy, callback_memory and reverse_proxy_b
#    in turn, OL_SECONDS each, OL_ROUNDS times (order reversed in even
#    rounds), on a fixed schedule whatever the answers, and reports the
#    median (p50), 99th percentile (p99) and maximum latency of each,
#    counted from when each request was due, and how late the sender itself
#    was at its 99th percentile (if that is large, the machine starved it),
#    and Caddy's CPU time per request during each target's runs: at a fixed
#    rate, targets' CPU per request compare directly.
# 3. With PROFILE=DIR: while wrk loads callback for PROFILE_SECONDS + 4 s,
#    Caddy's CPU profile (admin /debug/pprof/profile) of PROFILE_SECONDS
#    from the run's 2nd second; then the same for reverse_proxy,
#    callback_memory, callback_lean, payment_page and respond, so that each
#    has its baseline's profile beside it. It prints the req/s of each run
#    (a function's share of the profile's seconds, divided by PROFILE_SECONDS
#    and the req/s, is its cost per request) and `go tool pprof -top` (flat,
#    then cumulative) of each, and keeps the profiles in DIR as TARGET.pb.gz.
# Every callback sent to a callback target is a distinct signed event
# (bench/gencallbacks) that neither callback target has seen, so none is
# answered as a cheap duplicate; the script checks that against Caddy's
# metrics (each forwarded once, no other result) and counts non-200 answers.
#
# It prints req/s per run and medians, Caddy's CPU time per request (user +
# system, from /proc, the app included; other jobs on the machine disturb it
# less than req/s), the open-loop latencies, the files the default store
# left under the data directory, and a summary:
#   callback(default)/reverse_proxy  req/s ratio of medians, per-round ratios,
#                                    CPU-per-request ratio; against 0.75
#   callback(memory)/reverse_proxy   the same; against 0.95
#   callback(lean)/reverse_proxy     the same, for reference
#   payment_page/respond             the same; against 0.95
#   A/A reverse_proxy_b/reverse_proxy the same; "steady" when the ratio of
#                                    medians and every round's ratio are
#                                    within 0.95-1.05, else "NOISY" (then no
#                                    ratio of the run is to be trusted)
#   latency lines                    p50 and p99 of each target in
#                                    microseconds, and what callback,
#                                    callback_memory and reverse_proxy_b add
#                                    to reverse_proxy's
#   CPU @rate lines                  Caddy's CPU per request in the open loop,
#                                    of callback, callback_memory and
#                                    reverse_proxy_b against reverse_proxy
#
# Settings (environment): THREADS=2 CONNS=32 DURATION=10 (seconds per wrk
# run) ROUNDS=2 WARMUP=2 (seconds per target) HEADROOM=2.5 (callbacks
# generated per wrk run, as a multiple of the faster callback warm-up rate x
# DURATION, at least 20,000 and at most 600,000) OL_RATE=1000 (requests a
# second) OL_SECONDS=4 OL_ROUNDS=2
# PROFILE= (a directory: profile as in 3.) PROFILE_SECONDS=10
# PORT_BASE=19000 (uses PORT_BASE..+7 and +19 for the admin API, or ADMIN_PORT)
# CADDY=/path/to/caddy (skip the build and use that binary).
# With the defaults it measures for about 4.5 minutes, plus the build (under
# a minute once Go's module cache is warm). It stops itself if measuring
# takes a minute longer than planned (planned: 7 x WARMUP + 7 x ROUNDS x
# (DURATION + 1) + 4 x OL_ROUNDS x (OL_SECONDS + 1) + 60 s for generating
# callbacks, and 6 x (PROFILE_SECONDS + 10) with PROFILE), and kills what
# it started on exit.
set -euo pipefail

THREADS=${THREADS:-2}
CONNS=${CONNS:-32}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
WARMUP=${WARMUP:-2}
HEADROOM=${HEADROOM:-2.5}
OL_RATE=${OL_RATE:-1000}
OL_SECONDS=${OL_SECONDS:-4}
OL_ROUNDS=${OL_ROUNDS:-2}
PROFILE=${PROFILE:-}
PROFILE_SECONDS=${PROFILE_SECONDS:-10}
PORT_BASE=${PORT_BASE:-19000}
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
for v in THREADS CONNS DURATION ROUNDS WARMUP OL_RATE OL_SECONDS OL_ROUNDS PROFILE_SECONDS PORT_BASE; do
	[[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive whole number, not '${!v}'"
done
if [[ -n $PROFILE ]]; then
	mkdir -p "$PROFILE" && PROFILE=$(cd "$PROFILE" && pwd) || die "cannot use PROFILE=$PROFILE as a directory"
fi

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
P_PAGE=$((PORT_BASE + 3)) P_RESPOND=$((PORT_BASE + 4)) P_CBMEM=$((PORT_BASE + 5))
P_PROXY_B=$((PORT_BASE + 6)) P_CBLEAN=$((PORT_BASE + 7)) P_ADMIN=${ADMIN_PORT:-$((PORT_BASE + 19))}
for p in $P_APP $P_CB $P_PROXY $P_PAGE $P_RESPOND $P_CBMEM $P_PROXY_B $P_CBLEAN $P_ADMIN; do
	if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
		die "port $p on 127.0.0.1 is in use; set PORT_BASE to another range"
	fi
done
declare -A PORT=([callback]=$P_CB [callback_memory]=$P_CBMEM [reverse_proxy]=$P_PROXY
	[reverse_proxy_b]=$P_PROXY_B [callback_lean]=$P_CBLEAN [payment_page]=$P_PAGE [respond]=$P_RESPOND)
TARGETS=(callback reverse_proxy callback_memory reverse_proxy_b callback_lean payment_page respond)

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
(cd "$ROOT" && go build -o "$TMP/gencallbacks" ./bench/gencallbacks && go build -o "$TMP/openloop" ./bench/openloop) ||
	die "building gencallbacks or openloop failed"
echo "   built in $((SECONDS - START)) s"

# From here on the run is bounded: it stops a minute after the time that
# measuring should take with these settings (268 s with the defaults).
PLAN=$((7 * WARMUP + 7 * ROUNDS * (DURATION + 1) + 4 * OL_ROUNDS * (OL_SECONDS + 1) + 60))
[[ -z $PROFILE ]] || PLAN=$((PLAN + 6 * (PROFILE_SECONDS + 10)))
BUDGET=$((PLAN + 60))
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
export BENCH_CALLBACK_MEMORY_PORT=$P_CBMEM BENCH_PROXY_B_PORT=$P_PROXY_B BENCH_CALLBACK_LEAN_PORT=$P_CBLEAN
export ECOMMPAY_BENCH_SECRET=$SECRET
DATA=$TMP/data # Caddy's data dir is $DATA/caddy; the default store lives there
mkdir "$DATA"
XDG_DATA_HOME=$DATA "$CADDY" run --config "$BENCH/bench.Caddyfile" --adapter caddyfile >"$TMP/caddy.log" 2>&1 &
CADDY_PID=$!
for _ in $(seq 100); do
	http_get "$P_ADMIN" /config/ >/dev/null 2>&1 && http_get "$P_RESPOND" / >/dev/null 2>&1 && break
	kill -0 "$CADDY_PID" 2>/dev/null || { tail -20 "$TMP/caddy.log" >&2; die "Caddy did not start"; }
	sleep 0.1
done
http_get "$P_ADMIN" /config/ >/dev/null 2>&1 || { tail -20 "$TMP/caddy.log" >&2; die "Caddy's admin API did not answer"; }

# The payment_page request: a typical order, as the shop's app sends it.
# Under wrk each request is a new order: callbacks.lua numbers {n}.
PAGE_PATH_N="/?project_id=$PROJECT&payment_id=BENCH_ORDER_{n}&payment_amount=129900&payment_currency=EUR&customer_id=customer123&customer_email=customer%40example.com&payment_description=Order%20123456%20from%20the%20shop&language_code=en&force_payment_method=card&merchant_success_url=https%3A%2F%2Fshop.example.com%2Forders%2F123456%2Fpaid&merchant_fail_url=https%3A%2F%2Fshop.example.com%2Forders%2F123456%2Ffailed"
PAGE_PATH=${PAGE_PATH_N/"{n}"/000000123456}
page_answer=$(http_get "$P_PAGE" "$PAGE_PATH")
respond_answer=$(http_get "$P_RESPOND" "$PAGE_PATH")
[[ $page_answer == HTTP/1.?" 200"* ]] || die "payment_page answered: ${page_answer%%$'\r'*}"
[[ $respond_answer == HTTP/1.?" 200"* ]] || die "respond answered: ${respond_answer%%$'\r'*}"
page_len=$(grep -ai '^content-length:' <<<"$page_answer" | tr -dc 0-9)
respond_len=$(grep -ai '^content-length:' <<<"$respond_answer" | tr -dc 0-9)
same_answer="differ: update the respond body in bench.Caddyfile to payment_page's answer"
[[ ${page_answer#*$'\r\n\r\n'} == "${respond_answer#*$'\r\n\r\n'}" ]] && same_answer="identical"

# ---- helpers ----------------------------------------------------------------
RESULTS="forwarded duplicate in_flight invalid_signature malformed unknown_project app_error store_error too_large forbidden_source"
# metrics_snapshot: caddy_ecommpay_callbacks_total for our project, one
# number per result in RESULTS. All callback targets count here, so only
# one of them may be loaded between two snapshots.
metrics_snapshot() {
	local all r
	all=$(http_get "$P_ADMIN" /metrics)
	for r in $RESULTS; do
		awk -v want="caddy_ecommpay_callbacks_total{project=\"$PROJECT\",result=\"$r\"}" \
			'$1 == want { v = $2 } END { printf "%d ", v + 0 }' <<<"$all"
	done
	echo
}
# check_forwarded LABEL ANSWERED MAX_EXTRA NON200 REPEATS BEFORE AFTER: checks
# that between the two snapshots ANSWERED to ANSWERED+MAX_EXTRA callbacks
# were forwarded and none had another result; adds a line to CHECKS.
CHECKS=()
ODD=0
check_forwarded() {
	local label=$1 sent=$2 extra=$3 non200=$4 repeats=$5
	local -a before=($6) after=($7)
	local j=0 d fwd=0 other=0 others="" res ok=yes
	for res in $RESULTS; do
		d=$((after[j] - before[j]))
		if ((j == 0)); then fwd=$d; elif ((d != 0)); then other=$((other + d)); others+=" $res=$d"; fi
		j=$((j + 1))
	done
	((fwd >= sent && fwd <= sent + extra)) || ok=no
	((other == 0 && non200 == 0 && repeats == 0)) || ok=no
	[[ $ok == yes ]] || ODD=1
	CHECKS+=("$label: $sent answered, forwarded +$fwd, other results +$other${others:+ (${others# })}, non-200 $non200, repeated bodies $repeats -> $ok")
}

# caddy_cpu: Caddy's CPU time so far (user + system), in clock ticks.
caddy_cpu() { awk '{ print $14 + $15 }' "/proc/$CADDY_PID/stat"; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))

# caddy_alive: die with the end of Caddy's log if it is gone.
caddy_alive() {
	kill -0 "$CADDY_PID" 2>/dev/null && return 0
	tail -40 "$TMP/caddy.log" >&2
	die "Caddy exited during the run (its log's end is above)"
}

# run_wrk TARGET SECONDS [BODIES]: prints the script's RESULT fields, and
# cpu_us_per_req, Caddy's CPU time per answered request (app included).
run_wrk() {
	caddy_alive
	local port=${PORT[$1]} secs=$2 file=${3:-}
	local args=(-t"$THREADS" -c"$CONNS" -d"${secs}s" --timeout 5s -s "$BENCH/callbacks.lua" "http://127.0.0.1:$port/")
	if [[ -n $file ]]; then
		args+=(-- "$file" "$THREADS")
	elif [[ $1 == payment_page || $1 == respond ]]; then
		args+=(-- "" "$THREADS" "$PAGE_PATH_N")
	fi
	local out res c0 c1 n
	c0=$(caddy_cpu)
	out=$(timeout $((secs + 60)) wrk "${args[@]}" 2>&1) || { echo "$out" >&2; die "wrk failed on $1"; }
	c1=$(caddy_cpu)
	res=$(grep '^RESULT ' <<<"$out" | sed 's/^RESULT //') || { echo "$out" >&2; die "no RESULT line from wrk"; }
	n=$(field requests "$res")
	echo "$res cpu_us_per_req=$(awk -v t=$((c1 - c0)) -v u="$TICK_US" -v n="$n" 'BEGIN { printf "%.1f", n ? t * u / n : 0 }')"
}
field() { sed -n "s/.*\b$1=\([0-9.]*\).*/\1/p" <<<"$2"; }
median() { tr ' ' '\n' | grep . | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.1f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
# gen FILE N: N signed callbacks that no earlier call generated.
NEXT=0
gen() {
	"$TMP/gencallbacks" -secret "$SECRET" -project "$PROJECT" -from "$NEXT" -n "$2" -out "$1"
	NEXT=$((NEXT + $2))
}
# bodies TARGET ROUND: the callbacks a wrk run of TARGET sends, if any. The
# reverse_proxy targets get the same bodies as callback in that round.
bodies() {
	case $1 in
	callback | reverse_proxy | reverse_proxy_b) echo "$TMP/$2.callback.txt" ;;
	callback_memory | callback_lean) echo "$TMP/$2.$1.txt" ;;
	esac
}

# ---- warm-up and sizing -----------------------------------------------------
echo "== warming up ($WARMUP s per target)"
WARM_LINES=40000
gen "$TMP/warm.callback.txt" "$WARM_LINES"
gen "$TMP/warm.callback_memory.txt" "$WARM_LINES"
gen "$TMP/warm.callback_lean.txt" "$WARM_LINES"
warm_rps=0
for t in "${TARGETS[@]}"; do
	w=$(run_wrk "$t" "$WARMUP" "$(bodies "$t" warm)")
	[[ $(field non200 "$w") == 0 ]] || echo "   warning: warm-up of $t got $(field non200 "$w") non-200 answers"
	if [[ $t == callback* ]]; then
		echo "   $t warm-up: $(field rps "$w") req/s"
		warm_rps=$(awk -v a="$warm_rps" -v b="$(field rps "$w")" 'BEGIN { print (b > a) ? b : a }')
	fi
done
PER_RUN=$(awk -v r="$warm_rps" -v d="$DURATION" -v h="$HEADROOM" 'BEGIN { n = int(r * d * h); if (n < 20000) n = 20000; if (n > 600000) n = 600000; print n }')
echo "   generating $PER_RUN distinct callbacks per callback run"
for i in $(seq "$ROUNDS"); do
	gen "$TMP/$i.callback.txt" "$PER_RUN"
	gen "$TMP/$i.callback_memory.txt" "$PER_RUN"
	gen "$TMP/$i.callback_lean.txt" "$PER_RUN"
done
OL_LINES=$((OL_RATE * OL_SECONDS * OL_ROUNDS))
gen "$TMP/ol.callback.txt" "$OL_LINES"
gen "$TMP/ol.callback_memory.txt" "$OL_LINES"

# ---- 1. throughput, closed loop ---------------------------------------------
declare -A RPS CPU
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
echo "== measuring throughput: wrk -t$THREADS -c$CONNS -d${DURATION}s, $ROUNDS rounds"
for i in $(seq "$ROUNDS"); do
	order=("${TARGETS[@]}")
	((i % 2)) || order=($(printf '%s\n' "${TARGETS[@]}" | tac))
	for t in "${order[@]}"; do
		file=$(bodies "$t" "$i")
		[[ $t == callback* ]] && before=$(metrics_snapshot)
		r=$(run_wrk "$t" "$DURATION" "$file")
		RPS[$t]+="$(field rps "$r") "
		CPU[$t]+="$(field cpu_us_per_req "$r") "
		if [[ $t == callback* ]]; then
			sleep 0.3 # let requests cut off at the end of the run finish
			check_forwarded "round $i $t" "$(field requests "$r")" "$CONNS" "$(field non200 "$r")" \
				"$(field repeats "$r")" "$before" "$(metrics_snapshot)"
		elif [[ $(field non200 "$r") != 0 ]]; then
			ODD=1
			CHECKS+=("round $i $t: $(field non200 "$r") non-200")
		fi
	done
	rm -f "$TMP/$i".*.txt
done

# ---- 2. latency, open loop --------------------------------------------------
echo "== measuring latency: $OL_RATE req/s, open loop, $OL_SECONDS s per target, $OL_ROUNDS rounds"
OL_TARGETS=(callback reverse_proxy callback_memory reverse_proxy_b)
ol_args=()
for t in "${OL_TARGETS[@]}"; do
	ol_args+=(-target "$t,http://127.0.0.1:${PORT[$t]}/,$(bodies "$t" ol)")
done
before=$(metrics_snapshot)
ol_out=$(timeout $((4 * OL_ROUNDS * (OL_SECONDS + 5) + 30)) "$TMP/openloop" -rate "$OL_RATE" \
	-seconds "$OL_SECONDS" -rounds "$OL_ROUNDS" -pid "$CADDY_PID" "${ol_args[@]}") || die "openloop failed"
sleep 0.3
after=$(metrics_snapshot)
declare -A OL
for t in "${OL_TARGETS[@]}"; do
	OL[$t]=$(grep "^OPENLOOP target=$t " <<<"$ol_out") || die "openloop printed nothing for $t"
done
ol_sent=$(($(field sent "${OL[callback]}") + $(field sent "${OL[callback_memory]}")))
ol_ok=$(($(field ok "${OL[callback]}") + $(field ok "${OL[callback_memory]}")))
ol_non200=$(($(field non200 "${OL[callback]}") + $(field non200 "${OL[callback_memory]}")))
check_forwarded "open loop callback + callback_memory ($ol_sent sent)" "$ol_ok" 0 "$ol_non200" 0 "$before" "$after"
for t in reverse_proxy reverse_proxy_b; do
	n=$(($(field sent "${OL[$t]}") - $(field ok "${OL[$t]}")))
	((n == 0)) || { ODD=1; CHECKS+=("open loop $t: $n of $(field sent "${OL[$t]}") not answered 200"); }
done
for t in callback callback_memory; do
	n=$(field errors "${OL[$t]}")
	((n == 0)) || { ODD=1; CHECKS+=("open loop $t: $n requests failed or timed out"); }
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- 3. profiles ------------------------------------------------------------
if [[ -n $PROFILE ]]; then
	for t in callback reverse_proxy callback_memory callback_lean payment_page respond; do
		echo "== profiling $t: wrk for $((PROFILE_SECONDS + 4)) s, CPU profile of $PROFILE_SECONDS s from its 2nd"
		file=
		if [[ $t == callback* || $t == reverse_proxy ]]; then
			file=$TMP/prof.txt
			gen "$file" "$(awk -v r="$warm_rps" -v d="$PROFILE_SECONDS" -v h="$HEADROOM" 'BEGIN { print int(r * (d + 4) * h) + 1000 }')"
		fi
		run_wrk "$t" $((PROFILE_SECONDS + 4)) "$file" >"$TMP/prof.out" &
		wrk_pid=$!
		sleep 2
		PPROF_TMPDIR=$TMP timeout $((PROFILE_SECONDS + 60)) go tool pprof -proto -output "$PROFILE/$t.pb.gz" \
			-seconds "$PROFILE_SECONDS" "http://127.0.0.1:$P_ADMIN/debug/pprof/profile" 2>/dev/null ||
			echo "   warning: no profile of $t"
		wait "$wrk_pid" || true
		rm -f "$TMP/prof.txt"
		echo "   $t: $(field rps "$(cat "$TMP/prof.out")") req/s under wrk while profiled"
		if [[ -s $PROFILE/$t.pb.gz ]]; then
			go tool pprof -top -nodecount 25 "$PROFILE/$t.pb.gz" 2>/dev/null | tail -n +4
			echo "   -- cumulative"
			go tool pprof -top -cum -nodecount 40 "$PROFILE/$t.pb.gz" 2>/dev/null | tail -n +6
		fi
	done
fi

# ---- report -----------------------------------------------------------------
echo
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); $(go version | cut -d' ' -f3-); Caddy $("$CADDY" version | cut -d' ' -f1)"
echo "load average: $load_start at start, $load_end after measuring"
echo "answers: payment_page $page_len bytes, respond $respond_len bytes, bodies $same_answer; callbacks $(($(head -1 "$TMP/warm.callback.txt" | wc -c) - 1)) bytes"
store_files=$(cd "$DATA" && find . -type f -printf '%P %s\n' | awk '{ printf "%s%s (%.1f MB)", sep, $1, $2 / 1e6; sep = ", " }')
echo "data dir after the run: ${store_files:-no files (in this build the default store keeps nothing on disk)}"
echo
printf '%-16s' target
for i in $(seq "$ROUNDS"); do printf '%10s' "run$i"; done
printf '%10s\n' median
declare -A MED CMED
for t in "${TARGETS[@]}"; do
	printf '%-16s' "$t"
	for v in ${RPS[$t]}; do printf '%10.0f' "$v"; done
	MED[$t]=$(median <<<"${RPS[$t]}")
	CMED[$t]=$(median <<<"${CPU[$t]}")
	printf '%10.0f   req/s  (Caddy CPU per request:' "${MED[$t]}"
	printf ' %s' ${CPU[$t]}
	printf ' us, median %s)\n' "${CMED[$t]}"
done
echo
echo "open loop, $OL_RATE req/s, $OL_ROUNDS x $OL_SECONDS s per target; microseconds from when each request was due:"
for t in "${OL_TARGETS[@]}"; do
	l=${OL[$t]}
	printf '  %-16s p50 %6d  p99 %6d  max %7d  (%d of %d answered 200; sender late by %d at p99; Caddy CPU %d us a request)\n' "$t" \
		"$(field p50_us "$l")" "$(field p99_us "$l")" "$(field max_us "$l")" "$(field ok "$l")" \
		"$(field sent "$l")" "$(field lag_p99_us "$l")" "$(field cpu_us "$l")"
done
echo
printf '%s\n' "${CHECKS[@]}"
((ODD == 0)) && echo "all callbacks were forwarded once each, no non-200 answers" ||
	echo "WARNING: see the checks above"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b ? a / b : 0 }'; }
paired() { # per-round ratios of two targets' req/s
	local -a a=(${RPS[$1]}) b=(${RPS[$2]}) out=()
	for k in "${!a[@]}"; do out+=("$(ratio "${a[k]}" "${b[k]}")"); done
	echo "${out[*]}"
}
verdict() { awk -v r="$1" -v t="$2" 'BEGIN { print (r >= t) ? "meets" : "BELOW" }'; }
added() { # added p50/p99 of open-loop target $1 over reverse_proxy
	local f
	for f in p50_us p99_us; do
		printf ' %s %+6d' "${f%_us}" $(($(field $f "${OL[$1]}") - $(field $f "${OL[reverse_proxy]}")))
	done
}
aa=$(ratio "${MED[reverse_proxy_b]}" "${MED[reverse_proxy]}")
steady=$(awk -v r="$aa $(paired reverse_proxy_b reverse_proxy)" \
	'BEGIN { n = split(r, a, " "); for (i = 1; i <= n; i++) if (a[i] < 0.95 || a[i] > 1.05) { print "NOISY"; exit } print "steady" }')
echo
echo "== summary (req/s: ratio of medians over $ROUNDS rounds, then each round's; CPU: ratio of median CPU time per request)"
sumline() { # NAME A B VERDICT
	printf '%-34s %6s  [%s]  CPU %sx  %s\n' "$1" "$(ratio "${MED[$2]}" "${MED[$3]}")" "$(paired "$2" "$3")" \
		"$(ratio "${CMED[$2]}" "${CMED[$3]}")" "$4"
}
r=$(ratio "${MED[callback]}" "${MED[reverse_proxy]}")
sumline "callback(default)/reverse_proxy" callback reverse_proxy \
	"$(verdict "$r" 0.75) 0.75"
r=$(ratio "${MED[callback_memory]}" "${MED[reverse_proxy]}")
sumline "callback(memory)/reverse_proxy" callback_memory reverse_proxy "$(verdict "$r" 0.95) 0.95"
sumline "callback(lean)/reverse_proxy" callback_lean reverse_proxy "(store memory, journal off: for reference)"
r=$(ratio "${MED[payment_page]}" "${MED[respond]}")
sumline "payment_page/respond" payment_page respond "$(verdict "$r" 0.95) 0.95"
sumline "A/A reverse_proxy_b/reverse_proxy" reverse_proxy_b reverse_proxy "$steady (steady: all within 0.95-1.05)"
printf '%-34s p50 %6d  p99 %6d us\n' "latency reverse_proxy @$OL_RATE/s" \
	"$(field p50_us "${OL[reverse_proxy]}")" "$(field p99_us "${OL[reverse_proxy]}")"
for t in callback callback_memory reverse_proxy_b; do
	printf '%-34s p50 %6d  p99 %6d us, added:%s us\n' "latency $t @$OL_RATE/s" \
		"$(field p50_us "${OL[$t]}")" "$(field p99_us "${OL[$t]}")" "$(added "$t")"
done
for t in callback callback_memory reverse_proxy_b; do
	printf '%-38s CPU %sx  (%s against %s us a request)\n' "$t/reverse_proxy @$OL_RATE/s" \
		"$(ratio "$(field cpu_us "${OL[$t]}")" "$(field cpu_us "${OL[reverse_proxy]}")")" \
		"$(field cpu_us "${OL[$t]}")" "$(field cpu_us "${OL[reverse_proxy]}")"
done
[[ $steady == steady ]] ||
	echo "NOISY: two identical targets differed by more than 5% (in the medians or in a round); do not trust this run's ratios"
echo "took $((SECONDS - START)) s"
