// Command openloop measures latency at a fixed request rate (open loop) for
// bench/load.sh: it POSTs one JSON body per line of a file to each target on
// a fixed schedule, whether or not earlier requests have been answered, so
// a slow answer cannot slow the sender down and hide itself. Each latency is
// counted from the moment the request was due, not from when it went out.
//
//	go run ./bench/openloop -rate 1000 -seconds 4 -rounds 2 \
//	    -target NAME,URL,BODIES [-target ...]
//
// Rounds run the targets one after another, in the given order in odd
// rounds and in reverse in even ones, so that drift on the machine falls on
// all alike. Each target takes rate x seconds lines of its file per round,
// in order, and never a line twice. At the end it prints one line per
// target, in the order given:
//
//	OPENLOOP target=NAME sent=N ok=N non200=N errors=N p50_us=N p99_us=N max_us=N lag_p99_us=N [cpu_us=N]
//
// ok counts 200 answers, errors transport failures and timeouts (5 s);
// latencies are over answered requests; lag_p99_us is how late the sender
// itself was in sending, which should be small next to the latencies. With
// -pid PID, cpu_us is that process's CPU time (user + system, from /proc)
// per request sent, over the target's runs: at a fixed rate each target's
// figure is comparable with another's, and it moves less with the
// machine's other work than latencies do.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

type target struct {
	name, url string
	bodies    [][]byte
	next      int // first unused line

	mu        sync.Mutex
	latencies []time.Duration
	lags      []time.Duration
	sent      int
	ok        int
	non200    int
	errors    int
	cpu       time.Duration // of -pid, over this target's runs
}

func main() {
	rate := flag.Int("rate", 1000, "requests per second to each target")
	seconds := flag.Float64("seconds", 4, "seconds per target and round")
	rounds := flag.Int("rounds", 2, "rounds")
	pid := flag.Int("pid", 0, "a process (the server) whose CPU time per request to report")
	var targets []*target
	flag.Func("target", "NAME,URL,BODIES_FILE (repeatable)", func(s string) error {
		parts := strings.SplitN(s, ",", 3)
		if len(parts) != 3 || parts[0] == "" || !strings.HasPrefix(parts[1], "http://") {
			return errors.New("want NAME,http://HOST:PORT/PATH,FILE")
		}
		targets = append(targets, &target{name: parts[0], url: parts[1]})
		return readBodies(targets[len(targets)-1], parts[2])
	})
	flag.Parse()
	perRound := int(float64(*rate) * *seconds)
	if len(targets) == 0 || *rate <= 0 || *rate > 20000 || perRound <= 0 || perRound > 200000 || *rounds <= 0 || *rounds > 10 {
		flag.Usage()
		os.Exit(2)
	}
	for _, t := range targets {
		if len(t.bodies) < perRound**rounds {
			log.Fatalf("%s: %d bodies, need %d (rate x seconds x rounds)", t.name, len(t.bodies), perRound**rounds)
		}
	}

	client := &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			MaxIdleConnsPerHost: 256,
			DisableCompression:  true,
		},
	}
	interval := time.Second / time.Duration(*rate)
	for r := 0; r < *rounds; r++ {
		order := slices.Clone(targets)
		if r%2 == 1 {
			slices.Reverse(order)
		}
		for _, t := range order {
			before := cpuTime(*pid)
			run(client, t, perRound, interval)
			t.cpu += cpuTime(*pid) - before
		}
	}
	for _, t := range targets {
		t.report(*pid != 0)
	}
}

func readBodies(t *target, file string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		if len(sc.Bytes()) > 0 {
			t.bodies = append(t.bodies, bytes.Clone(sc.Bytes()))
		}
	}
	return sc.Err()
}

// run sends n requests to t, one every interval from now, and waits for
// their answers.
func run(client *http.Client, t *target, n int, interval time.Duration) {
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < n; i++ {
		due := start.Add(time.Duration(i) * interval)
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		body := t.bodies[t.next]
		t.next++
		wg.Add(1)
		go func() {
			defer wg.Done()
			t.send(client, body, due)
		}()
	}
	wg.Wait()
}

func (t *target) send(client *http.Client, body []byte, due time.Time) {
	lag := time.Since(due)
	status := 0
	resp, err := client.Post(t.url, "application/json", bytes.NewReader(body))
	if err == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		status = resp.StatusCode
	}
	latency := time.Since(due)
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sent++
	t.lags = append(t.lags, lag)
	switch {
	case err != nil:
		t.errors++
		return
	case status == http.StatusOK:
		t.ok++
	default:
		t.non200++
	}
	t.latencies = append(t.latencies, latency)
}

// cpuTime is pid's user + system CPU time, or 0 for pid 0.
func cpuTime(pid int) time.Duration {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		log.Fatalf("-pid %d: %v", pid, err)
	}
	// Fields 14 and 15 (utime, stime, in clock ticks of 1/100 s on Linux)
	// follow the command name, which is in parentheses and may hold spaces.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		log.Fatalf("-pid %d: unexpected /proc stat %q", pid, b)
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			log.Fatalf("-pid %d: %v", pid, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * 10 * time.Millisecond
}

func (t *target) report(withCPU bool) {
	slices.Sort(t.latencies)
	slices.Sort(t.lags)
	us := func(d time.Duration) int64 { return d.Microseconds() }
	fmt.Printf("OPENLOOP target=%s sent=%d ok=%d non200=%d errors=%d p50_us=%d p99_us=%d max_us=%d lag_p99_us=%d",
		t.name, t.sent, t.ok, t.non200, t.errors,
		us(quantile(t.latencies, 0.50)), us(quantile(t.latencies, 0.99)),
		us(quantile(t.latencies, 1)), us(quantile(t.lags, 0.99)))
	if withCPU && t.sent > 0 {
		fmt.Printf(" cpu_us=%d", (t.cpu / time.Duration(t.sent)).Microseconds())
	}
	fmt.Println()
}

// quantile of sorted values, nearest rank; 0 for none.
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}
