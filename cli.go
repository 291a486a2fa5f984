package ecommpay

import (
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/cli"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
)

// The "caddy ecommpay" command is internal/cli's; Caddy knows where its
// data directory, and so the local store's default file, is.
func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:      cli.Name,
		Usage:     cli.Usage,
		Short:     cli.Short,
		Long:      cli.Long,
		CobraFunc: cli.Setup(cli.Options{DefaultStorePath: defaultLocalPath}),
	})
}
