#!/usr/bin/env bash
# Go benchmarks of callback verification against a bare HMAC, interleaved.
#
#   bench/gobench.sh [COUNT]       # default 6; needs Go
#
# Compiles the package's test binary once, then runs COUNT rounds of
#   -test.run '^$' -test.bench 'VerifyCallback|BareHMAC|SignCanonical'
#   -test.benchmem -test.cpu 1 -test.count 1
# so each round measures all three back to back and drift falls on all
# alike. Prints every line, the median ns/op of each benchmark and the ratio
# VerifyCallback/BareHMAC (target: at most 3). With PROFILE=1 it also
# profiles VerifyCallback and shows where its time goes.
set -euo pipefail
COUNT=${1:-6}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TMP=$(mktemp -d "${TMPDIR:-/tmp}/ecommpay-gobench.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

(cd "$ROOT" && go test -c -o "$TMP/ecommpay.test" ./internal/canon)
cd "$ROOT/internal/canon" # the benchmarks run in their package directory
for i in $(seq "$COUNT"); do
	"$TMP/ecommpay.test" -test.run '^$' -test.bench 'VerifyCallback|BareHMAC|SignCanonical' \
		-test.benchmem -test.cpu 1 -test.count 1 | grep '^Benchmark' | tee -a "$TMP/all.txt"
done
echo
awk '{ n[$1]++; v[$1, n[$1]] = $3 }
END {
	for (b in n) {
		k = n[b]
		for (i = 1; i <= k; i++) a[i] = v[b, i]
		for (i = 2; i <= k; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
		m[b] = (k % 2) ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2
		printf "%-26s median %8.0f ns/op over %d runs\n", b, m[b], k
	}
	printf "VerifyCallback/BareHMAC = %.2f (target <= 3)\n", m["BenchmarkVerifyCallback"] / m["BenchmarkBareHMAC"]
	printf "SignCanonical/BareHMAC  = %.2f\n", m["BenchmarkSignCanonical"] / m["BenchmarkBareHMAC"]
}' "$TMP/all.txt"
echo "$(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(go version | cut -d' ' -f3-)"

if [[ ${PROFILE:-} == 1 ]]; then
	"$TMP/ecommpay.test" -test.run '^$' -test.bench 'VerifyCallback' -test.cpu 1 \
		-test.benchtime 3s -test.cpuprofile "$TMP/verify.prof" >/dev/null
	echo
	go tool pprof -top -nodecount 25 "$TMP/ecommpay.test" "$TMP/verify.prof" 2>/dev/null | tail -n +5
	echo
	go tool pprof -top -cum -nodecount 25 "$TMP/ecommpay.test" "$TMP/verify.prof" 2>/dev/null | tail -n +6
fi
