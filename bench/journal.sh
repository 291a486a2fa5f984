#!/usr/bin/env bash
# The journal at size: console and API speed, start-up time and memory of a
# default-configured Caddy whose local store holds 100,000 and then 400,000
# callbacks.
#
#   bench/journal.sh              # from anywhere; needs Go and curl
#   SIZES="100000 400000" REPEAT=7 CADDY=/path/to/caddy bench/journal.sh
#   KEEP=<dir> bench/journal.sh   # keeps the filled data directories in <dir>
#
# For each size it fills a new store file through the store's own code
# (go test -run TestJournalBenchFill: per payment a Payment Page request and
# two callbacks over the last 20 days, a third of the payments left
# `awaiting customer`, 1% of callbacks refused by the app), starts Caddy
# (built with xcaddy from this working tree unless CADDY is set) on it with
# the default journal settings, and reports:
#   ready      seconds from starting Caddy to the first answer of the API
#   RssAnon    Caddy's anonymous memory after the requests below
#   a line per route (status=decline matches no payment: the filter reads
#              every payment's entry in the index it walks, its worst case):
#              the median of REPEAT requests' times (curl's
#              time_total, after one unmeasured request), measured from
#              SETTLE seconds (default 1) after ready, once start-up's
#              background work (building the de-dup filter from every
#              delivered mark) is done, so that it does not fall on the
#              first routes measured only
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CADDY_VERSION=${CADDY_VERSION:-v2.11.4}
MODULE=github.com/caddy-ecommpay/caddy-ecommpay
SIZES=${SIZES:-"100000 400000"}
REPEAT=${REPEAT:-7}
SETTLE=${SETTLE:-1}
PORT=${BENCH_JOURNAL_PORT:-19101}
ADMIN=${BENCH_JOURNAL_ADMIN:-19102}
TMP=$(mktemp -d)
CADDY_PID=
cleanup() {
	[[ -n $CADDY_PID ]] && kill "$CADDY_PID" 2>/dev/null && wait "$CADDY_PID" 2>/dev/null
	if [[ -n ${KEEP:-} ]]; then
		mkdir -p "$KEEP" && cp -r "$TMP"/data-* "$KEEP"/
	fi
	rm -rf "$TMP"
}
trap cleanup EXIT
die() { echo "journal.sh: $*" >&2; exit 1; }
command -v curl >/dev/null || die "needs curl"

if [[ -n ${CADDY:-} ]]; then
	[[ -x $CADDY ]] || die "CADDY=$CADDY is not an executable"
else
	CADDY=$TMP/caddy
	echo "== building Caddy $CADDY_VERSION with the module from $ROOT"
	(cd "$ROOT" && go tool xcaddy build "$CADDY_VERSION" --output "$CADDY" \
		--with "$MODULE@v0.0.0-00010101000000-000000000000=$ROOT") >"$TMP/build.log" 2>&1 ||
		{ tail -30 "$TMP/build.log" >&2; die "the build failed"; }
fi
(cd "$ROOT" && go test -c -o "$TMP/ecommpay.test" .) || die "building the fill helper failed"

cat >"$TMP/Caddyfile" <<EOF
{
	admin 127.0.0.1:$ADMIN
	auto_https off
	persist_config off
	log default {
		output stderr
		level WARN
	}
}
http://127.0.0.1:$PORT {
	handle /callback {
		ecommpay callback {
			project 238 bench-secret
		}
		respond "OK" 200
	}
	handle_path /ecommpay/* {
		ecommpay console
	}
}
EOF

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(go version | cut -d' ' -f3), Caddy $CADDY_VERSION"
for n in $SIZES; do
	data=$TMP/data-$n
	db=$data/caddy/ecommpay/ecommpay.db
	mkdir -p "$(dirname "$db")"
	fill_start=$(date +%s.%N)
	sample=$(cd "$ROOT" && ECOMMPAY_BENCH_FILL=$db ECOMMPAY_BENCH_CALLBACKS=$n \
		"$TMP/ecommpay.test" -test.run '^TestJournalBenchFill$' -test.count=1 | awk '/^SAMPLE/ {print $2, $3}')
	[[ -n $sample ]] || die "the fill printed no sample"
	read -r pid key <<<"$sample"
	fill_end=$(date +%s.%N)
	echo
	echo "== $n callbacks: filled in $(echo "$fill_end - $fill_start" | bc) s; file $(du -m "$db" | cut -f1) MiB"

	start=$(date +%s.%N)
	XDG_DATA_HOME=$data XDG_CONFIG_HOME=$TMP/config HOME=$TMP \
		"$CADDY" run --config "$TMP/Caddyfile" --adapter caddyfile 2>"$TMP/caddy-$n.log" &
	CADDY_PID=$!
	until curl -fs -o /dev/null "http://127.0.0.1:$PORT/ecommpay/api/payments?limit=1"; do
		kill -0 "$CADDY_PID" 2>/dev/null || { tail -20 "$TMP/caddy-$n.log" >&2; die "Caddy exited"; }
		sleep 0.01
	done
	ready=$(echo "$(date +%s.%N) - $start" | bc)
	kept=$(sqlite3 "file:$db?mode=ro" "SELECT count(*) FROM events WHERE kind = 'callback'" 2>/dev/null || echo "?")
	printf "ready after %.2f s; callbacks kept in the journal: %s\n" "$ready" "$kept"
	sleep "$SETTLE"
	printf "%-58s %s\n" "route" "median ms"
	for route in \
		"/api/payments" \
		"/api/payments?status=success" \
		"/api/payments?status=decline" \
		"/api/payments?method=wechat" \
		"/api/payments?open=1" \
		"/api/payments?project_id=238&payment_id=$pid" \
		"/api/payments/238/$pid" \
		"/api/events?project_id=238&payment_id=$pid" \
		"/api/events/$(printf %s "$key" | sed 's/ /%20/g')" \
		"/api/events?result=app_error" \
		"/payments" \
		"/attention"; do
		url="http://127.0.0.1:$PORT/ecommpay$route"
		code=$(curl -s -o /dev/null -w '%{http_code}' "$url")
		[[ $code == 200 ]] || die "$route answered $code"
		ms=$(for _ in $(seq "$REPEAT"); do curl -s -o /dev/null -w '%{time_total}\n' "$url"; done |
			median | awk '{printf "%.1f", $1 * 1000}')
		printf "%-58s %s\n" "$route" "$ms"
	done
	echo "RssAnon: $(awk '/RssAnon/ {printf "%.0f MB", $2 / 1024}' "/proc/$CADDY_PID/status")"
	kill "$CADDY_PID"
	wait "$CADDY_PID" 2>/dev/null || true
	CADDY_PID=
done
