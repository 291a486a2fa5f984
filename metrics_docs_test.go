package ecommpay

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// Every metric the alerting rules and the dashboard use is one the module
// registers, so neither can silently watch nothing.
func TestAlertsAndDashboardUseRegisteredMetrics(t *testing.T) {
	registered := map[string]bool{}
	descName := regexp.MustCompile(`fqName: "([^"]+)"`)
	for _, c := range collectors {
		ch := make(chan *prometheus.Desc, 16)
		c.Describe(ch)
		close(ch)
		for d := range ch {
			if m := descName.FindStringSubmatch(d.String()); m != nil {
				registered[m[1]] = true
			}
		}
	}
	if len(registered) < len(collectors) {
		t.Fatalf("read %d metric names from %d collectors", len(registered), len(collectors))
	}
	used := regexp.MustCompile(`caddy_ecommpay_[a-z_]+`)
	for _, file := range []string{"docs/prometheus-alerts.yml", "docs/grafana-dashboard.json"} {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		names := used.FindAllString(string(data), -1)
		if len(names) == 0 {
			t.Fatalf("%s uses no metric", file)
		}
		for _, n := range names {
			base := n
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				if trimmed := strings.TrimSuffix(n, suffix); trimmed != n && registered[trimmed] {
					base = trimmed
				}
			}
			if !registered[base] {
				t.Errorf("%s uses %s, which the module does not register", file, n)
			}
		}
	}
}
