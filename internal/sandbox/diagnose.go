package sandbox

import (
	"net/http"
	"net/url"
	"strings"
)

// A wrong Payment Page signature gets a page that shows the canonical
// string the sandbox expected and, when it can tell, what the shop did
// differently: it tries the common mistakes (a parameter added after
// signing, values signed URL-encoded, frame_mode signed, a secret with a
// trailing newline, another project's secret) and names the first
// difference between the string that matches and the expected one. A form
// compares the expected string with one the developer pastes.

// diagnosis is what the wrong-signature page shows.
type diagnosis struct {
	Query     string      // the raw query, for the compare form
	Canonical string      // the string the sandbox signed and expected
	Params    [][2]string // the signed parameters, decoded
	ProjectID string
	Cause     string // the mistake found, if one
	Signed    string // the string the signature matches or the developer pasted
	Diff      *difference
	Compared  bool // the developer pasted a string
}

// difference is the first place two canonical strings differ.
type difference struct {
	Pos      int    // byte offset
	Param    string // the parameter of the expected string there
	Expected string // the expected string around Pos
	Signed   string // the signed string around Pos
}

func (s *Sandbox) diagnose(rawQuery string, pairs [][2]string, sig, projectID string) diagnosis {
	d := diagnosis{Query: rawQuery, Canonical: s.signer.CanonicalPairs(pairs), Params: pairs, ProjectID: projectID}
	secret := s.secretOf(projectID)
	if secret == "" {
		secret = s.secretOf(s.only)
	}
	matches := func(canonical, secret string) bool { return secret != "" && s.signer.Sign(canonical, secret) == sig }
	found := func(cause, signed string) diagnosis {
		d.Cause, d.Signed = cause, signed
		if signed != d.Canonical {
			d.Diff = firstDifference(d.Canonical, signed)
		}
		return d
	}
	for i, p := range pairs {
		without := append(append([][2]string(nil), pairs[:i]...), pairs[i+1:]...)
		if c := s.signer.CanonicalPairs(without); matches(c, secret) {
			return found("The parameter "+p[0]+" is in the URL but not in the string that was signed: it was added after signing.", c)
		}
	}
	if raw := rawPairs(rawQuery); raw != nil {
		if c := s.signer.CanonicalPairs(raw); c != d.Canonical && matches(c, secret) {
			return found("The values were signed URL-encoded. Sign the values themselves, then encode them for the URL.", c)
		}
	}
	if q, err := url.ParseQuery(rawQuery); err == nil && q.Get("frame_mode") != "" {
		with := append(append([][2]string(nil), pairs...), [2]string{"frame_mode", q.Get("frame_mode")})
		if c := s.signer.CanonicalPairs(with); matches(c, secret) {
			return found("frame_mode was signed; ecommpay leaves it out of the signature.", c)
		}
	}
	for _, tail := range []string{"\n", "\r\n", " "} {
		if matches(d.Canonical, secret+tail) {
			return found("The string is right but the secret ends with a stray "+strings.NewReplacer("\n", `\n`, "\r", `\r`, " ", "space").Replace(tail)+
				" (a secret read from a file without trimming it).", d.Canonical)
		}
	}
	for id, other := range s.projects {
		if id != projectID && matches(d.Canonical, other) {
			return found("The string is right but it was signed with the secret of project "+id+", while project_id is "+projectID+".", d.Canonical)
		}
	}
	return d
}

// rawPairs are the query's parameters with their values still
// URL-encoded, as a shop that signs the encoded URL has them.
func rawPairs(rawQuery string) [][2]string {
	var out [][2]string
	for part := range strings.SplitSeq(rawQuery, "&") {
		k, v, _ := strings.Cut(part, "=")
		key, err := url.QueryUnescape(k)
		if err != nil {
			return nil
		}
		if key == "signature" || key == "frame_mode" || key == "" {
			continue
		}
		out = append(out, [2]string{key, v})
	}
	return out
}

// firstDifference finds where signed first differs from expected.
func firstDifference(expected, signed string) *difference {
	pos := 0
	for pos < len(expected) && pos < len(signed) && expected[pos] == signed[pos] {
		pos++
	}
	if pos == len(expected) && pos == len(signed) {
		return nil
	}
	d := &difference{Pos: pos, Expected: around(expected, pos), Signed: around(signed, pos)}
	// The item of the expected string at pos: from the ';' before it.
	start := strings.LastIndexByte(expected[:min(pos, len(expected))], ';') + 1
	item := expected[start:]
	if end := strings.IndexByte(item, ';'); end >= 0 {
		item = item[:end]
	}
	d.Param, _, _ = strings.Cut(item, ":")
	return d
}

// around is s near pos, with the difference marked by "⟦".
func around(s string, pos int) string {
	lo, hi := max(0, pos-40), min(len(s), pos+40)
	out := s[lo:min(pos, len(s))] + "⟦" + s[min(pos, len(s)):hi]
	if lo > 0 {
		out = "…" + out
	}
	if hi < len(s) {
		out += "…"
	}
	return out
}

// handleCompare compares the expected string of a Payment Page query with
// the one the developer's code signed.
func (s *Sandbox) handleCompare(w http.ResponseWriter, r *http.Request) {
	rawQuery := r.FormValue("query")
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		render(w, http.StatusBadRequest, messageTmpl, message{Title: "Not a query string", Text: err.Error()})
		return
	}
	pairs, repeated := pagePairs(q)
	if repeated != "" {
		render(w, http.StatusBadRequest, messageTmpl, message{Title: "Repeated parameter", Text: "ecommpay refuses a parameter given twice: " + repeated})
		return
	}
	d := s.diagnose(rawQuery, pairs, q.Get("signature"), q.Get("project_id"))
	d.Compared = true
	d.Signed = strings.TrimRight(r.FormValue("signed"), "\r\n")
	d.Diff = firstDifference(d.Canonical, d.Signed)
	if d.Diff == nil {
		d.Cause = "The strings are the same, so the secret differs: check that the shop signs with the test project's secret the sandbox has."
	} else {
		d.Cause = ""
	}
	render(w, http.StatusOK, wrongSignatureTmpl, d)
}
