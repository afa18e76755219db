// Command portsleuth catches failed bind() and connect() calls and names the
// process and call pattern behind them. See README.md.
package main

import (
	"os"

	"github.com/portsleuth/portsleuth/internal/cli"
)

func main() {
	os.Exit(cli.Run(os.Args[1:], os.Stdout, os.Stderr))
}
