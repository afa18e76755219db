// Package gen holds the bpf2go output for bpf/: the compiled object and the Go
// types generated from bpf/common.h. Regenerate with `make generate`.
package gen

//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -Wpadded" -target amd64 -type ps_event -type ps_fail_key -type ps_proc_key -type ps_proc_stats -type ps_proc_meta -type ps_netns -type ps_op -type ps_opt -type ps_flag -type ps_source -type ps_meta_flag -type ps_sweep_ns -type pending Portsleuth ../bpf/portsleuth.bpf.c -- -isystem ../bpf/include -I../bpf
//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -Wpadded" -target amd64 -type ps_sock -type ps_closer Ports ../bpf/ports.bpf.c -- -isystem ../bpf/include -I../bpf
//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror" -target amd64 Floor ../bpf/floor.bpf.c -- -isystem ../bpf/include -I../bpf
