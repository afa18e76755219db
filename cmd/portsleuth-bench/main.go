// Command portsleuth-bench prints what portsleuth costs on this machine
// (`make bench`). See internal/bench.
package main

import (
	"fmt"
	"os"
	"strconv"

	"github.com/spf13/pflag"

	"github.com/portsleuth/portsleuth/internal/bench"
	"github.com/portsleuth/portsleuth/internal/scenario"
)

func main() {
	if os.Getenv(scenario.Env) != "" {
		os.Exit(scenario.Main(os.Stdout, os.Stderr))
	}
	if n := os.Getenv(bench.StormEnv); n != "" {
		count, err := strconv.Atoi(n)
		if err == nil {
			err = bench.StormMain(count)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "storm:", err)
			os.Exit(1)
		}
		return
	}
	var o bench.Options
	pflag.IntVar(&o.Loops, "loops", 20000, "iterations of each bind/connect loop")
	pflag.IntVar(&o.Syscalls, "syscalls", 5000000, "getppid calls per measurement")
	pflag.IntVar(&o.Rounds, "rounds", 7, "pairs of runs without/with the agent, in ABBA order (fastest kept)")
	pflag.IntVar(&o.StormSize, "storm", 1000000, "failing binds in the storm")
	pflag.StringVar(&o.StormProfile, "storm-cpuprofile", "", "write a CPU profile of the agent during the storm here")
	pflag.BoolVar(&o.StormOnly, "storm-only", false, "measure only launch, the storm and RSS")
	pflag.BoolVar(&o.BPFOnly, "bpf-only", false, "measure only the BPF time per program and backend (the first table)")
	pflag.Parse()
	if err := bench.Run(os.Stdout, o); err != nil {
		fmt.Fprintln(os.Stderr, "portsleuth-bench:", err)
		os.Exit(1)
	}
}
