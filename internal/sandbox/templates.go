package sandbox

import (
	"bytes"
	"html/template"
	"net/http"
	"time"
)

// message is a short page: a title, a sentence and an optional link.
type message struct{ Title, Text, Link string }

func render(w http.ResponseWriter, status int, t *template.Template, v any) {
	var buf bytes.Buffer
	if err := t.Execute(&buf, v); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	// The pages show payment data: no framing, no foreign scripts.
	w.Header().Set("Content-Security-Policy", "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; form-action *; frame-ancestors 'none'")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

var funcs = template.FuncMap{
	"clock":  func(t time.Time) string { return t.Format("15:04:05.000") },
	"amount": formatAmount,
	"last": func(ds []Delivery) string {
		for _, d := range ds {
			if d.Done {
				return "delivered"
			}
		}
		for _, d := range ds {
			if !d.GaveUp {
				return "retrying"
			}
		}
		if len(ds) == 0 {
			return "not sent"
		}
		return "gave up"
	},
}

const layout = `{{define "head"}}<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{.}} · ecommpay sandbox</title>
<style>
body{font:15px/1.45 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#1d2330;color:#fff;padding:10px 24px;display:flex;gap:16px;align-items:center}
header b{font-size:16px} header span{background:#f5b301;color:#1d2330;border-radius:4px;padding:1px 8px;font-size:12px;font-weight:700}
header a{color:#cfd6e4;margin-left:auto}
main{max-width:980px;margin:24px auto;padding:0 16px}
.card{background:#fff;border-radius:8px;box-shadow:0 1px 3px #0002;padding:20px 24px;margin-bottom:18px}
h1{font-size:22px;margin:0 0 12px} h2{font-size:17px;margin:0 0 10px}
.amount{font-size:30px;font-weight:700}
button{font:inherit;border:0;border-radius:6px;padding:9px 18px;margin:4px 6px 4px 0;cursor:pointer;background:#2f6fed;color:#fff}
button.decline{background:#d6453d} button.plain{background:#e4e7ee;color:#1d2330}
button.small{padding:3px 10px;font-size:13px}
table{border-collapse:collapse;width:100%;font-size:13px} td,th{text-align:left;padding:5px 8px;border-bottom:1px solid #e6e8ee;vertical-align:top}
code,pre{font:12.5px ui-monospace,monospace} pre{white-space:pre-wrap;word-break:break-all;background:#f4f5f7;padding:10px;border-radius:6px}
.ok{color:#1b873f;font-weight:600} .bad{color:#c4332b;font-weight:600} .muted{color:#6b7385}
mark{background:#ffe08a}
label{margin-right:14px}
</style></head><body><header><b>ecommpay</b><span>SANDBOX · TEST ONLY</span><a href="/sandbox/">Delivery log</a></header><main>{{end}}
{{define "foot"}}</main></body></html>{{end}}`

func page(name, body string) *template.Template {
	return template.Must(template.Must(template.New(name).Funcs(funcs).Parse(layout)).Parse(body))
}

var messageTmpl = page("message", `{{template "head" .Title}}<div class="card"><h1>{{.Title}}</h1><p>{{.Text}}</p>
{{if .Link}}<p><a href="{{.Link}}">Continue</a></p>{{end}}</div>{{template "foot"}}`)

var customerTmpl = page("customer", `{{template "head" "Payment"}}
<div class="card" id="payment">
<p class="muted">Payment {{.P.ID}} · project {{.P.ProjectID}}</p>
<div class="amount" id="amount">{{.Amount}}</div>
{{with .P.Description}}<p id="description">{{.}}</p>{{end}}
{{if .Result}}
  <h1 id="result" class="{{if eq .Result "success"}}ok{{else}}bad{{end}}">Payment {{.Result}}</h1>
{{else if .P.Pending}}
  {{if eq .P.Method "wechat"}}
    <h2>Scan with WeChat</h2>
    <img id="qr" src="/sandbox/qr/{{.P.ID}}" alt="WeChat QR code" width="220" height="220">
    <p class="muted">QR payload: <code id="qr-payload">{{.P.QR}}</code></p>
  {{else if .Provider}}
    <h2 id="provider">{{if eq .P.Method "mbway"}}MB WAY: confirm in the app{{else}}Alipay: log in and pay{{end}}</h2>
  {{else}}
    <h2>Waiting for {{.P.Method}}</h2><p><a id="redirect" href="{{.P.Redirect}}">Continue to {{.P.Method}}</a></p>
  {{end}}
  <form method="post" action="/sandbox/pay/{{.P.ID}}">
    <button id="paid" name="action" value="paid">Customer paid</button>
    <button id="decline" class="decline" name="action" value="decline">Customer declined</button>
    <button id="paid-drop" class="plain" name="action" value="paid-drop">Paid, but lose the final callback</button>
  </form>
{{else if eq .P.Status ""}}
  <form method="post" action="/sandbox/pay/{{.P.ID}}">
  {{if .Forced}}<p>Method: <b id="method">{{.P.Method}}</b></p>
  {{else}}<p>Method:
    {{range $i, $m := .Methods}}<label><input type="radio" name="method" value="{{$m}}"{{if eq $i 0}} checked{{end}}> {{$m}}</label>{{end}}</p>
  {{end}}
    <button id="pay" name="action" value="pay">Pay</button>
    <button id="decline" class="decline" name="action" value="decline">Decline</button>
    <button id="leave" class="plain" name="action" value="leave">Leave</button>
  </form>
  <p class="muted">Test project rules: a purchase of 400.00 or 404.00 is declined; any other amount succeeds.</p>
{{else}}
  <h2>Payment {{.P.Status}}</h2>
{{end}}
</div>{{template "foot"}}`)

var wrongSignatureTmpl = page("wrong", `{{template "head" "Wrong signature"}}
<div class="card"><h1 class="bad">Wrong signature</h1>
<p>ecommpay would refuse this Payment Page URL (error 1003: wrong signature). The signature covers every
parameter but <code>signature</code> and <code>frame_mode</code>, with values decoded, sorted by name in
PHP's natural order, as <code>name:value</code> joined by <code>;</code>.</p>
{{if .Cause}}<p id="cause"><b>{{.Cause}}</b></p>{{end}}
{{with .Diff}}<p id="difference">The first difference is at character {{.Pos}}, in parameter <b id="diff-param">{{.Param}}</b>:</p>
<table><tr><th>expected</th><td><code>{{.Expected}}</code></td></tr><tr><th>{{if $.Compared}}pasted{{else}}signed{{end}}</th><td><code>{{.Signed}}</code></td></tr></table>{{end}}
<h2 style="margin-top:16px">The string the sandbox expected{{if .ProjectID}} (project {{.ProjectID}}){{end}}</h2>
<pre id="canonical">{{.Canonical}}</pre>
{{if and .Signed (not .Diff)}}{{else if .Signed}}<h2>The string {{if .Compared}}you pasted{{else}}that was signed{{end}}</h2><pre id="signed">{{.Signed}}</pre>{{end}}
<h2>Compare with the string your code signed</h2>
<p class="muted">Print it with <code>caddy ecommpay sign --canonical</code>, or log it where your code signs.</p>
<form method="post" action="/sandbox/compare"><input type="hidden" name="query" value="{{.Query}}">
<textarea name="signed" rows="4" style="width:100%"></textarea><br><button>Compare</button></form>
</div>{{template "foot"}}`)

var logTmpl = page("log", `{{template "head" "Delivery log"}}
<div class="card"><h1>Payments</h1>
{{if not .Payments}}<p class="muted">None yet. Open a Payment Page URL signed for a test project, or send a Gate sale.</p>{{else}}
<table id="payments"><tr><th>payment</th><th>method</th><th>amount</th><th>source</th><th>status</th><th></th></tr>
{{range .Payments}}<tr><td><a href="/sandbox/pay/{{.ID}}">{{.ID}}</a></td><td>{{.Method}}</td><td>{{amount .Amount .Currency}}</td><td>{{.Source}}</td>
<td>{{if .Pending}}pending{{else if eq .Status ""}}page open{{else}}{{.Status}}{{end}}</td>
<td>{{if .Pending}}<form method="post" action="/sandbox/pay/{{.ID}}"><input type="hidden" name="from" value="log">
<button class="small" name="action" value="paid">paid</button><button class="small decline" name="action" value="decline">declined</button>
<button class="small plain" name="action" value="paid-drop">paid, lose final callback</button>
<button class="small plain" name="action" value="paid-late">paid, final callback late</button></form>{{end}}</td></tr>{{end}}
</table>{{end}}</div>
<div class="card"><h1>Callbacks</h1><p class="muted">Sent to {{range .URLs}}<code>{{.}}</code> {{else}}no URL configured{{end}},
retried on ecommpay's schedule, shortened, until the answer is 200.</p>
{{if not .Callbacks}}<p class="muted">None yet.</p>{{else}}
<table id="callbacks"><tr><th>#</th><th>payment</th><th>callback</th><th>statuses</th><th>deliveries</th><th></th></tr>
{{range .Callbacks}}<tr><td>{{.CB.Seq}}</td><td>{{.CB.PaymentID}}</td><td>{{.CB.Name}}</td><td>{{.CB.OpType}} {{.CB.OpStatus}} / {{.CB.PayStatus}}</td>
<td>{{if .CB.Dropped}}<span class="bad">dropped on purpose</span>{{else}}<b>{{last .Deliveries}}</b>
{{range .Deliveries}}{{range $i, $a := .Attempts}}<br><span class="muted">{{clock $a.At}}</span>
{{if eq $a.Status 200}}<span class="ok">200</span>{{else if $a.Status}}<span class="bad">{{$a.Status}}</span>{{else}}<span class="bad">{{$a.Err}}</span>{{end}}
<code>{{printf "%.80s" $a.Answer}}</code>{{end}}{{end}}{{end}}</td>
<td><form method="post" action="/sandbox/resend/{{.CB.Seq}}"><button class="small plain">send again</button></form></td></tr>{{end}}
</table>{{end}}</div>{{template "foot"}}`)
