package cli

import (
	"errors"
	"fmt"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/sqlitestore"
	"github.com/spf13/cobra"
)

// newBackupCommand is "caddy ecommpay backup"; defaultPath gives the
// store's file when --db is not set.
func newBackupCommand(defaultPath func() string) *cobra.Command {
	var db string
	cmd := &cobra.Command{
		Use:   "backup [--db <path>] <file>",
		Short: "Writes a consistent copy of the local store's file, while Caddy runs",
		Long: `
Writes a consistent copy of the local store (journal, payment views and
delivered marks) to <file>, which must not exist, with SQLite's VACUUM INTO:
Caddy may keep running. --db names the store's file; the default is
ecommpay/ecommpay.db in Caddy's data directory, as for "store local" without
a path (run it as the user Caddy runs as, with the same environment).

To restore: stop Caddy, put the copy in place of the store's file (and
remove its -wal and -shm files), and start Caddy.
`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			src := db
			switch {
			case src == "" && defaultPath == nil:
				return errors.New("backup: --db <path> is required")
			case src == "":
				src = defaultPath()
			}
			if err := sqlitestore.Backup(cmd.Context(), src, args[0]); err != nil {
				return fmt.Errorf("backup: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "copied %s to %s\n", src, args[0])
			return nil
		},
	}
	cmd.Flags().StringVar(&db, "db", "", "The store's file (default ecommpay/ecommpay.db in Caddy's data directory)")
	return cmd
}
