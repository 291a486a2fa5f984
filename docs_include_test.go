package ecommpay

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// includeMarker precedes a fenced block that must equal a repository file:
// <!-- include path/to/file -->, then ```lang, the file, ```.
var includeMarker = regexp.MustCompile("(?m)^<!-- include (\\S+) -->\n```[a-z]*\n")

// checkIncludes asserts that every included block of doc equals its file,
// and that the blocks include at least the files in want.
func checkIncludes(t *testing.T, doc string, want ...string) {
	t.Helper()
	text, err := os.ReadFile(doc)
	if err != nil {
		t.Fatal(err)
	}
	s := string(text)
	seen := map[string]bool{}
	for _, m := range includeMarker.FindAllStringSubmatchIndex(s, -1) {
		path := s[m[2]:m[3]]
		rest := s[m[1]:]
		end := strings.Index(rest, "\n```\n")
		if end < 0 {
			t.Errorf("%s: the block of %s is not closed", doc, path)
			continue
		}
		block := rest[:end+1]
		file, err := os.ReadFile(path)
		if err != nil {
			t.Errorf("%s includes %s: %v", doc, path, err)
			continue
		}
		if block != string(file) {
			t.Errorf("%s: the block of %s differs from the file; copy the file into the block", doc, path)
		}
		seen[path] = true
	}
	for _, p := range want {
		if !seen[p] {
			t.Errorf("%s does not include %s", doc, p)
		}
	}
}

// The app guide prints the receivers the integration tests run.
func TestAppGuideIncludes(t *testing.T) {
	checkIncludes(t, "docs/app-guide.md", "examples/app/receiver.php", "examples/app/receiver.py", "examples/app/verify.php")
}

// The signature guide prints the signature package's example, which
// go test runs.
func TestSignatureDocIncludes(t *testing.T) {
	checkIncludes(t, "docs/signature.md", "signature/example_test.go")
}
