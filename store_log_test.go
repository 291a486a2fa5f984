package ecommpay

import (
	"path/filepath"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// Operators find the journal's file from the start-up log: opening the
// local store says where it is, once, and a second handler sharing the
// file does not say it again.
func TestLocalStoreLogsItsPath(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	logger := zap.New(core)
	path := filepath.Join(t.TempDir(), "sub", "journal.db")
	opts := backendOptions{Kind: "local", Path: path}
	_, release, err := acquireBackend(opts, logger)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	_, release2, err := acquireBackend(opts, logger)
	if err != nil {
		t.Fatal(err)
	}
	defer release2()
	opened := logs.FilterMessage("local store opened").All()
	if len(opened) != 1 {
		t.Fatalf("%d 'local store opened' lines for two handlers on one file, want 1: %v", len(opened), logs.All())
	}
	if got := opened[0].ContextMap()["path"]; got != path {
		t.Errorf("logged path %v, want %s", got, path)
	}
}
