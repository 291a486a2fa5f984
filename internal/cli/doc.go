// Package cli owns the "caddy ecommpay" command: its cobra subcommands
// (sign, verify, events, replay, backup, trigger), their flags, help,
// output and exit statuses, and where the secret and the input come from.
// It does not import Caddy: the root package registers the command with
// Caddy's command system (Name, Usage, Short, Long and Setup) and passes
// in, through Options, what only Caddy knows. events and replay speak to
// the console through its public JSON API.
package cli
