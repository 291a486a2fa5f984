package ecommpay

import (
	"encoding/json"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/logging" // the example's log filter
)

func parseDirective(input string) (Handler, error) {
	var h Handler
	err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
	return h, err
}

func TestCaddyfileParses(t *testing.T) {
	p210 := Project{ID: "210", Secrets: []string{"{env.ECOMMPAY_SECRET}"}}
	cases := []struct {
		name  string
		input string
		want  Handler
	}{
		{"minimal gate", `ecommpay gate {
			project 210 {env.ECOMMPAY_SECRET}
		}`, Handler{Mode: modeGate, Projects: []Project{p210}}},

		{"payment_page, every setting", `ecommpay payment_page {
			project 210 {env.ECOMMPAY_SECRET} {file./run/secrets/old} third
			project shop-eu s2
			max_body 64KiB
			max_depth 8
			max_leaves 200
			max_string 4KB
			max_key 512B
			allow 10.0.0.0/8 192.168.1.7 ::1
			base_url https://pp.example.test/sub
			redirect
		}`, Handler{
			Mode: modePaymentPage,
			Projects: []Project{
				{ID: "210", Secrets: []string{"{env.ECOMMPAY_SECRET}", "{file./run/secrets/old}", "third"}},
				{ID: "shop-eu", Secrets: []string{"s2"}},
			},
			MaxBody: 64 << 10, MaxDepth: 8, MaxLeaves: 200, MaxString: 4000, MaxKey: 512,
			Allow:   []string{"10.0.0.0/8", "192.168.1.7", "::1"},
			BaseURL: "https://pp.example.test/sub", Redirect: true,
		}},

		{"callback, every setting", `ecommpay callback {
			project 210 {env.ECOMMPAY_SECRET}
			dedupe memory 5000
			ttl 240h
			forward_timeout 10s
			on_store_error forward
			from 203.0.113.0/24 198.51.100.7
			qr url https://shop.example/qr
			qr_ttl 30m
			qr_size 300
			qr_level H
			qr_cache 8MiB
		}`, Handler{
			Mode: modeCallback, Projects: []Project{p210},
			Dedupe: "memory", MaxKeys: 5000,
			TTL: caddy.Duration(240 * time.Hour), ForwardTimeout: caddy.Duration(10 * time.Second),
			OnStoreError: "forward", From: []string{"203.0.113.0/24", "198.51.100.7"},
			QR: "url", QRBaseURL: "https://shop.example/qr", QRTTL: caddy.Duration(30 * time.Minute),
			QRSize: 300, QRLevel: "H", QRCacheSize: 8 << 20,
		}},

		{"callback, redis and day durations", `ecommpay callback {
			project 210 {env.ECOMMPAY_SECRET}
			dedupe redis {env.REDIS_URL}
			ttl 14d
			on_store_error reject
			qr image
		}`, Handler{
			Mode: modeCallback, Projects: []Project{p210},
			Dedupe: "redis", RedisURL: "{env.REDIS_URL}", TTL: caddy.Duration(14 * 24 * time.Hour),
			OnStoreError: "reject", QR: "image",
		}},

		{"callback, dedupe memory bare", "ecommpay callback {\n project 210 s\n dedupe memory\n qr off\n}",
			Handler{Mode: modeCallback, Projects: []Project{{ID: "210", Secrets: []string{"s"}}}, Dedupe: "memory", QR: "off"}},

		{"callback, dedupe off", "ecommpay callback {\n project 210 s\n dedupe off\n}",
			Handler{Mode: modeCallback, Projects: []Project{{ID: "210", Secrets: []string{"s"}}}, Dedupe: "off"}},

		{"callback, store and journal", `ecommpay callback {
			project 210 s
			store local /var/lib/caddy/ecommpay.db
			journal {
				max_age 7d
				max_size 64MiB
				bodies off
			}
			read_timeout 5s
		}`, Handler{
			Mode: modeCallback, Projects: []Project{{ID: "210", Secrets: []string{"s"}}},
			Store: "local", StorePath: "/var/lib/caddy/ecommpay.db",
			Journal:     JournalConfig{MaxAge: caddy.Duration(7 * 24 * time.Hour), MaxSize: 64 << 20, NoBodies: true},
			ReadTimeout: caddy.Duration(5 * time.Second),
		}},

		{"callback, store redis", "ecommpay callback {\n project 210 s\n store redis {env.REDIS_URL}\n}",
			Handler{Mode: modeCallback, Projects: []Project{{ID: "210", Secrets: []string{"s"}}}, Store: "redis", RedisURL: "{env.REDIS_URL}"}},

		{"gate, store memory, journal off, allow_proxied", "ecommpay gate {\n project 210 s\n store memory 50\n journal off\n allow_proxied\n}",
			Handler{Mode: modeGate, Projects: []Project{{ID: "210", Secrets: []string{"s"}}}, Store: "memory", MaxKeys: 50,
				Journal: JournalConfig{Off: true}, AllowProxied: true}},

		{"qr", "ecommpay qr {\n project 210 s\n qr_size 128\n qr_level l\n qr_cache 1MB\n}",
			Handler{Mode: modeQR, Projects: []Project{{ID: "210", Secrets: []string{"s"}}}, QRSize: 128, QRLevel: "l", QRCacheSize: 1000000}},

		{"quoted secret with spaces", "ecommpay gate {\n project 210 \"a secret; with spaces\"\n}",
			Handler{Mode: modeGate, Projects: []Project{{ID: "210", Secrets: []string{"a secret; with spaces"}}}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := parseDirective(c.input)
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Fatalf("parsed\n %+v\nwant\n %+v", got, c.want)
			}
		})
	}
}

func TestCaddyfileErrors(t *testing.T) {
	const proj = "\n project 210 s\n"
	block := func(mode, lines string) string { return "ecommpay " + mode + " {" + proj + lines + "\n}" }
	cases := []struct {
		name, input, want string
	}{
		{"no mode", "ecommpay", "expected a mode"},
		{"no mode, block", "ecommpay {" + proj + "}", "expected a mode"},
		{"unknown mode", "ecommpay sign {" + proj + "}", "unknown mode"},
		{"mode in capitals", "ecommpay Gate {" + proj + "}", "unknown mode"},
		{"extra arg after mode", "ecommpay gate extra {" + proj + "}", "wrong argument count"},
		{"unknown subdirective", block("gate", "signer hmac"), `unrecognized subdirective "signer"`},
		{"no project line", "ecommpay gate {\n allow 10.0.0.0/8\n}", "at least one `project"},
		{"no block", "ecommpay gate", "at least one `project"},
		{"empty block", "ecommpay gate {\n}", "at least one `project"},

		{"project without secret", "ecommpay gate {\n project 210\n}", "wrong argument count"},
		{"store unknown", block("callback", "store disk"), "store takes"},
		{"store redis without url", block("callback", "store redis"), "store takes"},
		{"store memory not a number", block("callback", "store memory many"), `store memory: "many" is not a number of keys`},
		{"journal bad word", block("callback", "journal on"), "journal takes"},
		{"journal off with block", block("callback", "journal off {\n max_age 1d\n }"), "no block"},
		{"journal unknown setting", block("callback", "journal {\n keep 1d\n }"), "unrecognized journal setting"},
		{"journal max_age bad", block("callback", "journal {\n max_age soon\n }"), "not a positive duration"},
		{"journal bodies on", block("callback", "journal {\n bodies on\n }"), "bodies takes off"},
		{"read_timeout zero", block("callback", "read_timeout 0s"), "not a positive duration"},
		{"allow_proxied with arg", block("gate", "allow_proxied yes"), "wrong argument count"},
		{"project without id", "ecommpay gate {\n project\n}", "wrong argument count"},

		{"max_body missing", block("gate", "max_body"), "wrong argument count"},
		{"max_body extra", block("gate", "max_body 1KB 2KB"), "wrong argument count"},
		{"max_body not a size", block("gate", "max_body lots"), "not a size"},
		{"max_body zero", block("gate", "max_body 0"), "not a size"},
		{"max_body negative", block("gate", "max_body -1KB"), "not a size"},
		{"max_string not a size", block("gate", "max_string 1QB"), "not a size"},
		{"qr_cache zero", block("qr", "qr_cache 0B"), "not a size"},
		{"max_body overflows", block("gate", "max_body 9EiB"), "not a size"},
		{"qr_cache overflows", block("qr", "qr_cache 16EB"), "not a size"},

		{"max_depth missing", block("gate", "max_depth"), "wrong argument count"},
		{"max_depth not a number", block("gate", "max_depth deep"), "not a positive number"},
		{"max_depth zero", block("gate", "max_depth 0"), "not a positive number"},
		{"max_leaves negative", block("gate", "max_leaves -5"), "not a positive number"},
		{"max_leaves fraction", block("gate", "max_leaves 1.5"), "not a positive number"},
		{"qr_size extra", block("qr", "qr_size 100 200"), "wrong argument count"},
		{"qr_size not a number", block("qr", "qr_size big"), "not a positive number"},

		{"allow missing", block("gate", "allow"), "wrong argument count"},
		{"allow bad prefix", block("gate", "allow 10.0.0.0/33"), "allow:"},
		{"allow not an address", block("gate", "allow localhost"), "neither a CIDR nor an address"},
		{"allow one bad of two", block("gate", "allow 10.0.0.0/8 300.1.1.1"), "allow:"},
		{"from bad", block("callback", "from 1.2.3.4/"), "from:"},
		{"from missing", block("callback", "from"), "wrong argument count"},

		{"base_url missing", block("payment_page", "base_url"), "wrong argument count"},
		{"base_url extra", block("payment_page", "base_url https://a https://b"), "wrong argument count"},
		{"redirect with an argument", block("payment_page", "redirect yes"), "wrong argument count"},

		{"dedupe missing", block("callback", "dedupe"), "wrong argument count"},
		{"dedupe three args", block("callback", "dedupe memory 5 6"), "wrong argument count"},
		{"dedupe unknown store", block("callback", "dedupe disk"), "dedupe takes"},
		{"dedupe redis without url", block("callback", "dedupe redis"), "dedupe takes"},
		{"dedupe off with an argument", block("callback", "dedupe off 5"), "dedupe takes"},
		{"dedupe memory not a number", block("callback", "dedupe memory many"), "not a number of keys"},
		{"dedupe memory zero", block("callback", "dedupe memory 0"), "not a number of keys"},
		{"dedupe memory negative", block("callback", "dedupe memory -3"), "not a number of keys"},

		{"ttl missing", block("callback", "ttl"), "wrong argument count"},
		{"ttl not a duration", block("callback", "ttl forever"), "not a positive duration"},
		{"ttl zero", block("callback", "ttl 0s"), "not a positive duration"},
		{"ttl negative", block("callback", "ttl -1h"), "not a positive duration"},
		{"forward_timeout extra", block("callback", "forward_timeout 1s 2s"), "wrong argument count"},
		{"forward_timeout bare number", block("callback", "forward_timeout 30"), "not a positive duration"},
		{"qr_ttl bad", block("callback", "qr_ttl 1y"), "not a positive duration"},

		{"on_store_error missing", block("callback", "on_store_error"), "wrong argument count"},
		{"on_store_error unknown", block("callback", "on_store_error drop"), "reject or forward"},

		{"qr missing", block("callback", "qr"), "wrong argument count"},
		{"qr unknown", block("callback", "qr svg"), "qr takes"},
		{"qr url without base", block("callback", "qr url"), "qr takes"},
		{"qr image with an argument", block("callback", "qr image 256"), "qr takes"},
		{"qr off with an argument", block("callback", "qr off now"), "qr takes"},
		{"qr three args", block("callback", "qr url https://a x"), "wrong argument count"},

		{"qr_level missing", block("qr", "qr_level"), "wrong argument count"},
		{"qr_level unknown", block("qr", "qr_level X"), "qr_level"},
		{"qr_level word", block("qr", "qr_level high"), "qr_level"},
		{"qr_level extra", block("qr", "qr_level L M"), "wrong argument count"},
	}
	// Every subdirective but project may appear only once.
	for _, line := range []string{
		"max_body 1KB", "max_depth 4", "max_leaves 9", "max_string 1KB", "allow 10.0.0.0/8", "from 10.0.0.0/8",
		"base_url https://a.example", "redirect", "dedupe off", "ttl 1h", "forward_timeout 1s",
		"on_store_error forward", "qr image", "qr_ttl 1m", "qr_size 99", "qr_level Q", "qr_cache 1MB",
	} {
		name := strings.Fields(line)[0]
		cases = append(cases, struct{ name, input, want string }{
			"duplicate " + name, block("callback", line+"\n"+line), name + " is set twice",
		})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := parseDirective(c.input)
			if err == nil {
				t.Fatalf("parsed %q without an error", c.input)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not say %q", err, c.want)
			}
			if !strings.Contains(err.Error(), "Testfile:") {
				t.Fatalf("error %q does not point at the Caddyfile line", err)
			}
		})
	}
}

// The four modes as a Caddyfile would deploy them. reverse_proxy comes
// first in the text on purpose: the directive order must put ecommpay
// before it without an `order` line.
const fourModes = `{
	admin off
}

shop.example.test {
	handle /pay {
		ecommpay payment_page {
			project 210 {env.ECOMMPAY_SECRET}
			redirect
		}
	}
	handle /v2/* {
		reverse_proxy https://api.ecommpay.com {
			header_up Host {upstream_hostport}
		}
		ecommpay gate {
			project 210 {env.ECOMMPAY_SECRET}
		}
	}
	handle /callback {
		reverse_proxy 127.0.0.1:9000
		ecommpay callback {
			project 210 {env.ECOMMPAY_SECRET} {file./run/secrets/ecommpay-old}
			dedupe redis {env.REDIS_URL}
			qr url https://shop.example.test/qr
		}
	}
	handle /qr/* {
		ecommpay qr {
			project 210 {env.ECOMMPAY_SECRET}
		}
	}
}
`

// adapt turns a Caddyfile into JSON config.
func adapt(t *testing.T, body []byte) []byte {
	t.Helper()
	a := caddyconfig.GetAdapter("caddyfile")
	if a == nil {
		t.Fatal("no caddyfile adapter registered")
	}
	out, warnings, err := a.Adapt(body, map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatalf("adapt: %v", err)
	}
	for _, w := range warnings {
		t.Logf("adapt warning: %s", w.String())
	}
	return out
}

// handlerSequences lists, for every handle list and subroute in a JSON
// config, the handler names of its routes in order.
func handlerSequences(v any, out *[][]string) {
	switch v := v.(type) {
	case map[string]any:
		if routes, ok := v["routes"].([]any); ok {
			var seq []string
			for _, r := range routes {
				rm, _ := r.(map[string]any)
				hs, _ := rm["handle"].([]any)
				for _, h := range hs {
					hm, _ := h.(map[string]any)
					name, _ := hm["handler"].(string)
					seq = append(seq, name)
				}
			}
			*out = append(*out, seq)
		}
		for _, c := range v {
			handlerSequences(c, out)
		}
	case []any:
		for _, c := range v {
			handlerSequences(c, out)
		}
	}
}

// proxiedAfterEcommpay checks that in every route list holding both,
// ecommpay runs before reverse_proxy, and returns how many there are.
func proxiedAfterEcommpay(t *testing.T, cfg any) int {
	t.Helper()
	var seqs [][]string
	handlerSequences(cfg, &seqs)
	proxied := 0
	for _, seq := range seqs {
		e, p := -1, -1
		for i, name := range seq {
			switch name {
			case "ecommpay":
				e = i
			case "reverse_proxy":
				p = i
			}
		}
		if e >= 0 && p >= 0 {
			proxied++
			if e > p {
				t.Fatalf("ecommpay comes after reverse_proxy in %v", seq)
			}
		}
	}
	return proxied
}

func TestCaddyfileAdapt(t *testing.T) {
	t.Setenv("ECOMMPAY_SECRET", "resolved-secret-must-not-appear")
	out := adapt(t, []byte(fourModes))
	js := string(out)
	if n := strings.Count(js, `"handler":"ecommpay"`); n != 4 {
		t.Fatalf("%d ecommpay handlers in the JSON, want 4:\n%s", n, js)
	}
	if strings.Contains(js, "resolved-secret-must-not-appear") || !strings.Contains(js, `"{env.ECOMMPAY_SECRET}"`) {
		t.Fatalf("the secret placeholder was resolved at adapt time:\n%s", js)
	}
	if !strings.Contains(js, `"{file./run/secrets/ecommpay-old}"`) || !strings.Contains(js, `"{env.REDIS_URL}"`) {
		t.Fatalf("placeholders not kept literally:\n%s", js)
	}

	var cfg any
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	if n := proxiedAfterEcommpay(t, cfg); n != 2 {
		t.Fatalf("found %d routes with ecommpay and reverse_proxy, want 2", n)
	}

	// The JSON decodes back to the handlers the Caddyfile describes.
	var modes []string
	for _, raw := range findHandlers(cfg, "ecommpay") {
		b, _ := json.Marshal(raw)
		var h Handler
		if err := json.Unmarshal(b, &h); err != nil {
			t.Fatalf("decoding %s: %v", b, err)
		}
		if len(h.Projects) != 1 || h.Projects[0].ID != "210" || h.Projects[0].Secrets[0] != "{env.ECOMMPAY_SECRET}" {
			t.Fatalf("mode %s: projects %+v", h.Mode, h.Projects)
		}
		if err := h.Validate(); err != nil {
			t.Fatalf("mode %s: %v", h.Mode, err)
		}
		modes = append(modes, h.Mode)
	}
	slices.Sort(modes)
	if strings.Join(modes, ",") != "callback,gate,payment_page,qr" {
		t.Fatalf("modes in the JSON: %v", modes)
	}
}

// findHandlers returns every handler object named name in a JSON config.
func findHandlers(v any, name string) []map[string]any {
	var out []map[string]any
	switch v := v.(type) {
	case map[string]any:
		if v["handler"] == name {
			out = append(out, v)
		}
		for _, c := range v {
			out = append(out, findHandlers(c, name)...)
		}
	case []any:
		for _, c := range v {
			out = append(out, findHandlers(c, name)...)
		}
	}
	return out
}

func TestCaddyfileAdaptRejects(t *testing.T) {
	a := caddyconfig.GetAdapter("caddyfile")
	_, _, err := a.Adapt([]byte("example.test {\n\tecommpay gate {\n\t\tallow 10.0.0.0/8\n\t}\n}\n"), map[string]any{"filename": "Caddyfile"})
	if err == nil || !strings.Contains(err.Error(), "project") {
		t.Fatalf("a directive without a project adapted: %v", err)
	}
}

// The example Caddyfile shipped with the module must adapt, keep its
// secrets as placeholders and put ecommpay before reverse_proxy.
func TestExampleCaddyfileAdapts(t *testing.T) {
	body, err := os.ReadFile("example.Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("ECOMMPAY_SECRET", "resolved-secret-must-not-appear")
	out := adapt(t, body)
	js := string(out)
	if strings.Contains(js, "resolved-secret-must-not-appear") {
		t.Fatalf("example.Caddyfile bakes the secret into the JSON:\n%s", js)
	}
	var cfg any
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	handlers := findHandlers(cfg, "ecommpay")
	if len(handlers) == 0 {
		t.Fatalf("example.Caddyfile uses no ecommpay handler:\n%s", js)
	}
	for _, raw := range handlers {
		b, _ := json.Marshal(raw)
		var h Handler
		if err := json.Unmarshal(b, &h); err != nil {
			t.Fatal(err)
		}
		if err := h.Validate(); err != nil {
			t.Fatalf("example mode %s: %v", h.Mode, err)
		}
		for _, p := range h.Projects {
			for _, s := range p.Secrets {
				if !strings.HasPrefix(s, "{env.") && !strings.HasPrefix(s, "{file.") {
					t.Fatalf("example mode %s: project %s has a literal secret", h.Mode, p.ID)
				}
			}
		}
	}
	proxiedAfterEcommpay(t, cfg)
}

// FuzzCaddyfile feeds arbitrary text to the directive's parser, which
// must return an error or a handler, never panic.
func FuzzCaddyfile(f *testing.F) {
	for _, seed := range []string{
		fourModes,
		"ecommpay gate {\n project 210 s\n}",
		"ecommpay callback {\n project 210 s\n dedupe memory 5\n qr url https://x\n ttl 1d\n}",
		"ecommpay payment_page {\n project 1 a b c\n allow ::1 10.0.0.0/8\n base_url http://x\n redirect\n}",
		"ecommpay qr {\n project 1 s\n qr_level H\n qr_size 64\n qr_cache 1MiB\n}",
		"ecommpay gate {\n project 210 s {\n nested\n }\n}",
		"ecommpay",
		"",
		"ecommpay gate {\n max_body 9EiB\n}",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, input string) {
		// NewTestDispenser exits the process on input the lexer refuses
		// and substitutes {$ENV} variables; keep to what it can take.
		if strings.Contains(input, "{$") {
			return
		}
		if _, err := caddyfile.Tokenize([]byte(input), "Testfile"); err != nil {
			return
		}
		h, err := parseDirective(input)
		if err != nil {
			return
		}
		if len(h.Projects) == 0 {
			t.Fatalf("parsed without a project: %q", input)
		}
		switch h.Mode {
		case modePaymentPage, modeGate, modeCallback, modeQR:
		default:
			t.Fatalf("parsed an unknown mode %q", h.Mode)
		}
		for _, p := range h.Projects {
			if len(p.Secrets) == 0 {
				t.Fatalf("project %q parsed without a secret", p.ID)
			}
		}
	})
}

// reconcile is a bare word or a block, in callback mode only.
func TestCaddyfileReconcile(t *testing.T) {
	h, err := parseDirective("ecommpay callback {\n project 210 s\n reconcile\n}")
	if err != nil || h.Reconcile == nil || *h.Reconcile != (ReconcileConfig{}) {
		t.Fatalf("bare reconcile: %+v %v", h.Reconcile, err)
	}
	h, err = parseDirective(`ecommpay callback {
		project 210 s
		reconcile {
			after 20m
			every 30s
			give_up 48h
			status_url https://api.example.test/v2/payment/status
		}
	}`)
	want := ReconcileConfig{After: caddy.Duration(20 * time.Minute), Every: caddy.Duration(30 * time.Second),
		GiveUp: caddy.Duration(48 * time.Hour), StatusURL: "https://api.example.test/v2/payment/status"}
	if err != nil || h.Reconcile == nil || *h.Reconcile != want {
		t.Fatalf("reconcile block: %+v %v", h.Reconcile, err)
	}
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
	const proj = "\n project 210 s\n"
	for _, c := range []struct{ name, input, want string }{
		{"argument", "ecommpay callback {" + proj + " reconcile on\n}", "wrong argument count"},
		{"unknown setting", "ecommpay callback {" + proj + " reconcile {\n often 1m\n }\n}", "unrecognized reconcile setting"},
		{"bad duration", "ecommpay callback {" + proj + " reconcile {\n after soon\n }\n}", "not a positive duration"},
		{"bad url", "ecommpay callback {" + proj + " reconcile {\n status_url api.ecommpay.com\n }\n}", "status_url"},
		{"twice", "ecommpay callback {" + proj + " reconcile\n reconcile\n}", "set twice"},
	} {
		if _, err := parseDirective(c.input); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.name, err, c.want)
		}
	}
	h, _ = parseDirective("ecommpay gate {" + proj + " reconcile\n}")
	if err := h.Validate(); err == nil || !strings.Contains(err.Error(), "reconcile does not apply") {
		t.Errorf("reconcile in gate mode: %v", err)
	}
}
