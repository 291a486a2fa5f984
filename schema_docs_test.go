package ecommpay

import (
	"os"
	"strings"
	"testing"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/sqlitestore"
)

// The documented schema of the local store (docs/storage.md), a public
// interface, is the one the store creates.
func TestDocumentedSchemaIsTheStores(t *testing.T) {
	readme, err := os.ReadFile("docs/storage.md")
	if err != nil {
		t.Fatal(err)
	}
	_, block, ok := strings.Cut(string(readme), "```sql\nCREATE TABLE events")
	if !ok {
		t.Fatal("docs/storage.md has no schema block")
	}
	block, _, _ = strings.Cut(block, "```")
	if got, want := strings.TrimSpace("CREATE TABLE events"+block), strings.TrimSpace(sqlitestore.Schema); got != want {
		t.Fatalf("docs/storage.md's schema differs from the store's:\n%s\n---- the store's ----\n%s", got, want)
	}
}
