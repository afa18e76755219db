package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// These tests run real third-party programs from Debian (`make deps`
// installs nginx, socat and python3) in a throwaway network namespace under
// `portsleuth report -- unshare -n sh SCRIPT`, and compare the report with
// what the programs themselves said: their exit codes and output are the truth.
//
// The report is decoded into the local types below, not report.Report: they
// name the JSON contract of issue 9 (culprits, programs, holders,
// in_command), so a field the report lacks shows up as a failure here rather
// than as a compile error.

type tpReport struct {
	Backend   string      `json:"backend"`
	Processes []tpProcess `json:"processes"`
	// Culprits and Programs are pointers so that "absent" differs from "empty".
	Culprits *[]tpCulprit `json:"culprits"`
	Programs *[]tpProgram `json:"programs"`
}

// tpProgram groups the processes of one executable and cgroup.
type tpProgram struct {
	Program  string            `json:"program"`
	Comm     string            `json:"comm"`
	PIDs     []int             `json:"pids"`
	Failures uint64            `json:"failures"`
	Errors   map[string]uint64 `json:"errors"`
}

type tpProcess struct {
	PID       int               `json:"pid"`
	Comm      string            `json:"comm"`
	Cmdline   string            `json:"cmdline"`
	Netns     uint64            `json:"netns"`
	Failures  uint64            `json:"failures"`
	Errors    map[string]uint64 `json:"errors"`
	Patterns  []tpPattern       `json:"patterns"`
	InCommand *bool             `json:"in_command"`
	Examples  []struct {
		Errno  string         `json:"errno"`
		Holder map[string]any `json:"holder"`
	} `json:"examples"`
}

type tpPattern struct {
	Pattern  string           `json:"pattern"`
	Count    uint64           `json:"count"`
	Evidence string           `json:"evidence"`
	Advice   string           `json:"advice"`
	Holders  []map[string]any `json:"holders"`
	Pressure *struct {
		ConnectPool *struct {
			Dest        string `json:"dest"`
			Established int    `json:"established"`
			TimeWait    int    `json:"time_wait"`
			BindOwned   int    `json:"bind_owned"`
			Free        int    `json:"free"`
		} `json:"connect_pool"`
	} `json:"pressure"`
}

type tpCulprit struct {
	PID       int    `json:"pid"`
	Comm      string `json:"comm"`
	Cmdline   string `json:"cmdline"`
	Netns     uint64 `json:"netns"`
	Master    any    `json:"master"`
	PortsHeld struct {
		BindOwner   int `json:"bind_owner"`
		Established int `json:"established"`
		TimeWait    int `json:"time_wait"`
		Other       int `json:"other"`
	} `json:"ports_held"`
	Patterns json.RawMessage `json:"patterns"`
	Victims  []struct {
		PID      int    `json:"pid"`
		Comm     string `json:"comm"`
		Failures uint64 `json:"failures"`
	} `json:"victims"`
}

// debianProgram finds a program as its Debian package installs it, before
// anything earlier on $PATH (a pyenv shim runs other processes and another
// interpreter); the test skips without it, as in the busybox VMs.
func debianProgram(t *testing.T, name string) string {
	t.Helper()
	for _, dir := range []string{"/usr/bin", "/usr/sbin"} {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("needs %s (Debian package installed by `make deps`): %v", name, err)
	}
	return p
}

// traceScript runs `portsleuth report -o json -- unshare -n sh SCRIPT ARGS...`
// and returns the report and the lines the script printed.
func traceScript(t *testing.T, script string, args ...string) (tpReport, []byte, []string) {
	t.Helper()
	requireRoot(t)
	unshare := debianProgram(t, "unshare")
	dir := t.TempDir()
	path := filepath.Join(dir, "scenario.sh")
	if err := os.WriteFile(path, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "report.json")
	// --duration bounds the whole run should a program hang.
	argv := []string{"report", "-o", "json", "--file", file, "--backend", testBackend(), "--duration", "90s",
		"--", unshare, "-n", "sh", path}
	argv = append(argv, args...)
	var stdout, stderr bytes.Buffer
	if code := Run(argv, &stdout, &stderr); code != 0 {
		t.Fatalf("portsleuth %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(argv, " "), code, stdout.String(), stderr.String())
	}
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var r tpReport
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatalf("report does not decode into the issue 9 contract: %v\n%s", err, raw)
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	t.Logf("the script printed:\n%s", stdout.String())
	logExcerpt(t, raw)
	if stderr.Len() > 0 {
		t.Logf("stderr:\n%s", stderr.String())
	}
	return r, raw, lines
}

// logExcerpt shows the report's issue 9 fields in -v output, pass or fail.
func logExcerpt(t *testing.T, raw []byte) {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return
	}
	for _, k := range []string{"culprits", "programs"} {
		if v, ok := m[k]; ok {
			var b bytes.Buffer
			json.Indent(&b, v, "", "  ")
			t.Logf("report %q:\n%s", k, b.String())
		} else {
			t.Logf("report has no %q", k)
		}
	}
}

// scriptFields reads the key=value words of the script's lines that start with prefix.
func scriptFields(t *testing.T, lines []string, prefix string) []map[string]string {
	t.Helper()
	var out []map[string]string
	for _, l := range lines {
		words := strings.Fields(l)
		if len(words) == 0 || words[0] != prefix {
			continue
		}
		m := map[string]string{}
		for _, w := range words[1:] {
			if k, v, ok := strings.Cut(w, "="); ok {
				m[k] = v
			}
		}
		out = append(out, m)
	}
	if len(out) == 0 {
		t.Fatalf("the script printed no %q line: %q", prefix, lines)
	}
	return out
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("the script printed %q where a number belongs", s)
	}
	return n
}

func (r tpReport) process(pid int) *tpProcess {
	for i := range r.Processes {
		if r.Processes[i].PID == pid {
			return &r.Processes[i]
		}
	}
	return nil
}

// pidIn reads a pid from a JSON value: a number, or an object with "pid".
func pidIn(v any) int {
	switch x := v.(type) {
	case float64:
		return int(x)
	case map[string]any:
		return pidIn(x["pid"])
	}
	return 0
}

// namesProcess says whether a holder (or culprit) names pid as itself or as its master.
func namesProcess(h map[string]any, pid int) bool {
	return pidIn(h["pid"]) == pid || pidIn(h["master"]) == pid
}

// One bind() per run: 3 runs of the http.server module against nginx's port.
const tpServerRuns = 3

const tpNginxConf = `daemon off;
master_process on;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events { worker_connections 16; }
http {
	access_log %[1]s/access.log;
	client_body_temp_path %[1]s/body;
	proxy_temp_path %[1]s/proxy;
	fastcgi_temp_path %[1]s/fastcgi;
	uwsgi_temp_path %[1]s/uwsgi;
	scgi_temp_path %[1]s/scgi;
	server { listen 127.0.0.1:8080; return 204; }
}
`

// The crash loop: nginx (master and worker) holds 127.0.0.1:8080; python3's
// http.server is started on it 3 times and exits at once each time. Every
// wait is a bounded poll; every program has a timeout.
const tpCrashLoopScript = `set -u
nginx=$1 py=$2 dir=$3 runs=$4
ip link set lo up || exit 1
echo "netns $(readlink /proc/self/ns/net | tr -dc 0-9 | sed 's/^/ino=/')"
"$nginx" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" &
i=0; while [ ! -s "$dir/nginx.pid" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
m=$(cat "$dir/nginx.pid") || exit 1
i=0; while [ -z "$(cat /proc/$m/task/$m/children)" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
echo "nginx master=$m workers=$(cat /proc/$m/task/$m/children | tr -s ' ' ',' | sed 's/,$//')"
k=0; while [ $k -lt $runs ]; do
	timeout 20 "$py" -m http.server 8080 --bind 127.0.0.1 >/dev/null 2>"$dir/server.$k.err"
	rc=$?
	echo "server rc=$rc eaddrinuse=$(grep -c 'Address already in use' "$dir/server.$k.err")"
	k=$((k+1))
done
# An incident's namespace outlives the failures: the agent reads events within
# its 200 ms tick and looks at the namespace then.
sleep 1
kill -TERM $m; wait
`

func TestThirdPartyCrashLoopNamesNginxMaster(t *testing.T) {
	requireRoot(t)
	nginx, py := debianProgram(t, "nginx"), debianProgram(t, "python3")
	debianProgram(t, "timeout")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte(fmt.Sprintf(tpNginxConf, dir)), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { killFromPidFile(filepath.Join(dir, "nginx.pid")) })

	r, raw, lines := traceScript(t, tpCrashLoopScript, nginx, py, dir, strconv.Itoa(tpServerRuns))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("report:\n%s", raw)
		}
	})
	netns := uint64(atoi(t, scriptFields(t, lines, "netns")[0]["ino"]))
	ng := scriptFields(t, lines, "nginx")[0]
	master := atoi(t, ng["master"])
	if ng["workers"] == "" {
		t.Fatalf("nginx master %d started no worker", master)
	}
	var failedRuns int
	for _, s := range scriptFields(t, lines, "server") {
		if s["rc"] == "1" && s["eaddrinuse"] == "1" {
			failedRuns++
		}
	}
	// python3 itself says how many runs failed on the port: the truth to count against.
	if failedRuns != tpServerRuns {
		t.Fatalf("%d of %d http.server runs failed with EADDRINUSE by their own account", failedRuns, tpServerRuns)
	}

	var servers []*tpProcess
	var serverPids []int
	var eaddrinuse uint64
	for i := range r.Processes {
		p := &r.Processes[i]
		if p.Netns == netns && strings.Contains(p.Cmdline, "http.server") {
			servers = append(servers, p)
			serverPids = append(serverPids, p.PID)
			eaddrinuse += p.Errors["EADDRINUSE"]
		}
	}
	if len(servers) != tpServerRuns || eaddrinuse != tpServerRuns {
		t.Errorf("%d http.server processes with %d EADDRINUSE in the report, want %d with 1 each", len(servers), eaddrinuse, tpServerRuns)
	}
	for _, p := range servers {
		t.Run(fmt.Sprintf("pid %d", p.PID), func(t *testing.T) { checkCrashLoopServer(t, p, master) })
	}
	t.Run("program", func(t *testing.T) { checkProgram(t, r, netns, serverPids, "EADDRINUSE", tpServerRuns) })
}

// checkCrashLoopServer asserts one failed http.server run: one EADDRINUSE,
// pattern port-in-use, held by nginx's master.
func checkCrashLoopServer(t *testing.T, p *tpProcess, master int) {
	if !strings.HasPrefix(p.Comm, "python3") || p.Failures != 1 || p.Errors["EADDRINUSE"] != 1 {
		t.Errorf("comm %q failures %d errors %v; want python3 with 1 EADDRINUSE", p.Comm, p.Failures, p.Errors)
	}
	if len(p.Patterns) != 1 || p.Patterns[0].Pattern != "port-in-use" || p.Patterns[0].Count != 1 {
		t.Fatalf("patterns %+v; want only port-in-use x1", p.Patterns)
	}
	pat := p.Patterns[0]
	if p.InCommand == nil || !*p.InCommand {
		t.Errorf("in_command %v; want true: the server ran inside the traced command", p.InCommand)
	}
	if !strings.Contains(pat.Evidence, "nginx") {
		t.Errorf("evidence %q does not name nginx", pat.Evidence)
	}
	if len(p.Examples) > 0 {
		if h := p.Examples[0].Holder; h == nil || h["comm"] != "nginx" {
			t.Errorf("example holder %v; want nginx", h)
		}
	}
	if len(pat.Holders) == 0 {
		t.Fatalf("pattern port-in-use has no holders (the contract's per-pattern holders)")
	}
	if !slices.ContainsFunc(pat.Holders, func(h map[string]any) bool { return h["comm"] == "nginx" }) {
		t.Errorf("holders %v do not name nginx", pat.Holders)
	}
	// Killing the worker only gets it respawned: the master is the one to name.
	if !slices.ContainsFunc(pat.Holders, func(h map[string]any) bool { return namesProcess(h, master) }) {
		t.Errorf("holders %v do not name nginx's master %d, as pid or master", pat.Holders, master)
	}
}

// checkProgram asserts that the programs list has one entry for all of
// pids, with their failures of errno added up. The report covers the host:
// the entry may also hold processes of the same program outside netns
// (another test run's), whose failures are taken out before comparing.
func checkProgram(t *testing.T, r tpReport, netns uint64, pids []int, errno string, failures uint64) {
	t.Helper()
	if r.Programs == nil {
		t.Errorf("the report has no \"programs\" field (issue 9: one entry per program, with its pids)")
		return
	}
	var found []tpProgram
	for _, p := range *r.Programs {
		if slices.ContainsFunc(pids, func(pid int) bool { return slices.Contains(p.PIDs, pid) }) {
			found = append(found, p)
		}
	}
	if len(found) != 1 {
		t.Fatalf("pids %v are in %d program entries %+v, want one", pids, len(found), found)
	}
	p := found[0]
	mine, all, errs := 0, p.Failures, p.Errors[errno]
	for _, pid := range p.PIDs {
		if slices.Contains(pids, pid) {
			mine++
			continue
		}
		other := r.process(pid)
		if other == nil || other.Netns == netns {
			t.Errorf("program %+v lists pid %d, which is neither one of %v nor another namespace's process in the report", p, pid, pids)
			continue
		}
		all -= other.Failures
		errs -= other.Errors[errno]
	}
	if mine != len(pids) || all != failures || errs != failures {
		t.Errorf("program %+v; want pids %v with %d %s (other namespaces' processes taken out: %d failures, %d %s)",
			p, pids, failures, errno, all, errs, errno)
	}
}

// killFromPidFile stops a server the script could not (a failed test).
func killFromPidFile(path string) {
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
		if p, err := os.FindProcess(pid); err == nil {
			p.Kill()
		}
	}
}

// Cross-process starvation: tpHolders socat clients each bind(127.0.0.1:0)
// before connect() and hold their connection, leaving 64-tpHolders ports;
// python3 then connect()s plainly tpVictimTries times to another
// destination, keeping what it gets.
const (
	tpHolders     = 60
	tpVictimTries = 10
)

// The listener keeps both ports without accepting: the backlog holds the
// connections, ESTABLISHED on the client side, and outside the port range.
const tpListenerPy = `import socket, sys, time
held = []
for port in (8080, 8081):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(128)
    held.append(s)
open(sys.argv[1], "w").close()
time.sleep(60)
`

const tpVictimPy = `import errno, os, socket, sys
held, ok, notavail, other = [], 0, 0, 0
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", 8081))
        held.append(s)
        ok += 1
    except OSError as e:
        s.close()
        if e.errno == errno.EADDRNOTAVAIL:
            notavail += 1
        else:
            other += 1
print(f"victim pid={os.getpid()} ok={ok} eaddrnotavail={notavail} other={other}", flush=True)
`

// 8080 is 1F90 in /proc/net/tcp; state 01 is ESTABLISHED.
const tpStarvationScript = `set -u
socat=$1 py=$2 dir=$3 n=$4 tries=$5
ip link set lo up || exit 1
echo "40000 40063" > /proc/sys/net/ipv4/ip_local_port_range || exit 1
echo "netns $(readlink /proc/self/ns/net | tr -dc 0-9 | sed 's/^/ino=/')"
"$py" "$dir/listener.py" "$dir/listening" &
lpid=$!
i=0; while [ ! -e "$dir/listening" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
pids=""
k=0; while [ $k -lt $n ]; do
	"$socat" -T 60 -u TCP:127.0.0.1:8080,bind=127.0.0.1 STDOUT >/dev/null 2>>"$dir/socat.err" &
	pids="$pids,$!"
	k=$((k+1))
done
held() { awk '$3 ~ /:1F90$/ && $4 == "01"' /proc/net/tcp | wc -l; }
i=0; while [ "$(held)" -lt $n ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done
echo "socat held=$(held) pids=${pids#,}"
"$py" "$dir/victim.py" "$tries"
sleep 1 # the namespace outlives the failures, as an incident's does (see above)
kill $(echo "$pids" | tr ',' ' ') $lpid; wait
`

func TestThirdPartySocatStarvesPython(t *testing.T) {
	requireRoot(t)
	socat, py := debianProgram(t, "socat"), debianProgram(t, "python3")
	debianProgram(t, "awk")
	dir := t.TempDir()
	for name, src := range map[string]string{"listener.py": tpListenerPy, "victim.py": tpVictimPy} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	r, raw, lines := traceScript(t, tpStarvationScript, socat, py, dir, strconv.Itoa(tpHolders), strconv.Itoa(tpVictimTries))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("report:\n%s", raw)
		}
	})
	netns := uint64(atoi(t, scriptFields(t, lines, "netns")[0]["ino"]))
	sc := scriptFields(t, lines, "socat")[0]
	holderPids := map[int]bool{}
	for _, s := range strings.Split(sc["pids"], ",") {
		holderPids[atoi(t, s)] = true
	}
	v := scriptFields(t, lines, "victim")[0]
	victim, ok, failed := atoi(t, v["pid"]), atoi(t, v["ok"]), atoi(t, v["eaddrnotavail"])
	// What the programs saw, before anything about the report: socat held its
	// ports through bind(), so python3 got only the rest of the range.
	if atoi(t, sc["held"]) != tpHolders || ok != 64-tpHolders || failed != tpVictimTries-ok || v["other"] != "0" {
		t.Fatalf("socat held %s connections, python3 connected %d times and failed %d (other errors %s); want %d, %d, %d, 0",
			sc["held"], ok, failed, v["other"], tpHolders, 64-tpHolders, tpVictimTries-64+tpHolders)
	}

	t.Run("victim", func(t *testing.T) { checkStarvedVictim(t, r, victim, netns, ok, failed) })
	t.Run("culprits", func(t *testing.T) { checkSocatCulprits(t, r, holderPids, victim, netns, failed) })
	t.Run("program", func(t *testing.T) { checkProgram(t, r, netns, []int{victim}, "EADDRNOTAVAIL", uint64(failed)) })
}

// checkStarvedVictim asserts python3's exact failures, its pattern, the
// measured pool, and that its pattern names socat, not TIME_WAIT.
func checkStarvedVictim(t *testing.T, r tpReport, victim int, netns uint64, ok, failed int) {
	p := r.process(victim)
	if p == nil {
		t.Fatalf("the victim python3 pid %d is not in the report", victim)
	}
	if !strings.HasPrefix(p.Comm, "python3") || p.Netns != netns || p.Failures != uint64(failed) || p.Errors["EADDRNOTAVAIL"] != uint64(failed) {
		t.Errorf("comm %q netns %d failures %d errors %v; want python3 in %d with %d EADDRNOTAVAIL", p.Comm, p.Netns, p.Failures, p.Errors, netns, failed)
	}
	if len(p.Patterns) != 1 || p.Patterns[0].Pattern != "connect-port-exhaustion" || p.Patterns[0].Count != uint64(failed) {
		t.Fatalf("patterns %+v; want only connect-port-exhaustion x%d", p.Patterns, failed)
	}
	if p.InCommand == nil || !*p.InCommand {
		t.Errorf("in_command %v; want true", p.InCommand)
	}
	pat := p.Patterns[0]
	// There was no TIME_WAIT at all: the advice must not send the reader there.
	if strings.Contains(pat.Advice, "usually by TIME_WAIT") || strings.Contains(pat.Advice, "tcp_tw_reuse=1") {
		t.Errorf("advice %q blames TIME_WAIT, of which there was none", pat.Advice)
	}
	if !strings.Contains(pat.Evidence+" "+pat.Advice, "socat") {
		t.Errorf("neither evidence %q nor advice %q names socat", pat.Evidence, pat.Advice)
	}
	if ps := pat.Pressure; ps == nil || ps.ConnectPool == nil {
		t.Errorf("no connect pool measured at the first failure")
	} else if cp := ps.ConnectPool; cp.Dest != "127.0.0.1:8081" || cp.BindOwned != tpHolders || cp.TimeWait+cp.Established != ok || cp.Free != 0 {
		// The victim's own connections may be closed (TIME_WAIT) by the
		// time the agent looks, a moment after the first failure.
		t.Errorf("connect pool %+v; want to 127.0.0.1:8081 %d bind-owned, the victim's %d connections, 0 free", *cp, tpHolders, ok)
	}
	if !slices.ContainsFunc(pat.Holders, func(h map[string]any) bool { return h["comm"] == "socat" }) {
		t.Errorf("pattern holders %v do not name socat", pat.Holders)
	}
}

// checkSocatCulprits asserts that socat ranks first among the culprits of
// the script's namespace with every port it held through bind(), and python3
// among its victims. The report covers the host: culprits elsewhere (another
// test run's scenario) may rank anywhere.
func checkSocatCulprits(t *testing.T, r tpReport, holderPids map[int]bool, victim int, netns uint64, failed int) {
	if r.Culprits == nil {
		t.Fatalf("the report has no \"culprits\" field (issue 9: who holds the pool, and whom it starved)")
	}
	var cs []tpCulprit
	for _, c := range *r.Culprits {
		if c.Netns == netns {
			cs = append(cs, c)
		} else if holderPids[c.PID] {
			t.Errorf("culprit socat pid %d placed in netns %d, want %d", c.PID, c.Netns, netns)
		}
	}
	if len(cs) == 0 || cs[0].Comm != "socat" {
		t.Fatalf("culprits in netns %d %+v; want socat first", netns, cs)
	}
	// One entry per socat process, or one for the program: either way the
	// socat entries add up to every port held, each bind-owned.
	var bindOwned, other int
	victimNamed := false
	for _, c := range cs {
		if c.Comm != "socat" {
			continue
		}
		if !holderPids[c.PID] {
			t.Errorf("culprit socat pid %d is not one the script started", c.PID)
		}
		bindOwned += c.PortsHeld.BindOwner
		other += c.PortsHeld.Established + c.PortsHeld.TimeWait + c.PortsHeld.Other
		if !strings.Contains(c.Cmdline, "bind=127.0.0.1") {
			t.Errorf("culprit pid %d cmdline %q; want socat's command line", c.PID, c.Cmdline)
		}
		if !bytes.Contains(c.Patterns, []byte("bind-ip-before-connect")) {
			t.Errorf("culprit pid %d patterns %s; want bind-ip-before-connect", c.PID, c.Patterns)
		}
		for _, v := range c.Victims {
			if v.PID == victim && strings.HasPrefix(v.Comm, "python3") && v.Failures == uint64(failed) {
				victimNamed = true
			}
		}
	}
	if bindOwned != tpHolders || other != 0 {
		t.Errorf("socat culprits hold %d bind-owned ports and %d others; want %d and 0", bindOwned, other, tpHolders)
	}
	if !victimNamed {
		t.Errorf("no socat culprit lists python3 pid %d with %d failures among its victims", victim, failed)
	}
}
