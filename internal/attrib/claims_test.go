package attrib

import (
	"strings"
	"testing"

	"github.com/portsleuth/portsleuth/internal/event"
)

// The words by which an advice text names a remedy of the lab.
var remedyWords = map[string]string{
	"ip_bind_address_no_port":        "IP_BIND_ADDRESS_NO_PORT",
	"so_reuseaddr":                   "SO_REUSEADDR",
	"so_reuseaddr+ip_autobind_reuse": "ip_autobind_reuse",
	"so_reuseport":                   "SO_REUSEPORT",
	"tcp_tw_reuse":                   "tcp_tw_reuse",
	"tcp_tw_reuse-no-timestamps":     "timestamps",
	"tcp_tw_recycle":                 "tcp_tw_recycle",
	"more-sources":                   "source address",
	"more-destinations":              "destination",
	"wider-range":                    "ip_local_port_range",
	"keepalive":                      "euse",
}

// namedWithin are remedies an advice names only as part of another claim:
// connect exhaustion's more source addresses are bound with
// IP_BIND_ADDRESS_NO_PORT, as the lab's more-sources does.
var namedWithin = map[string]map[string]string{
	string(ConnectPortExhaustion): {"ip_bind_address_no_port": "more-sources"},
}

// adviceOf is the advice of a plain finding of the lab's pattern, with no
// options set and no measurement: the text that says the most.
func adviceOf(pattern string) string {
	f := &Finding{Pattern: Pattern(pattern), Count: 1}
	if pattern == UDPAutobind {
		f.Pattern = ConnectPortExhaustion
		f.Classes = map[event.Class]uint64{{Op: "connect", Proto: "udp"}: 1}
	}
	return f.Advice()
}

// Every claim the lab tests is one the advice text makes, and every option
// or sysctl the advice text names is a claim the lab tests: the advice says
// nothing about those remedies that the lab does not measure.
func TestClaimsAreWhatTheAdviceSays(t *testing.T) {
	for pattern, claims := range Claims {
		advice := adviceOf(pattern)
		claimed := map[string]bool{}
		for _, c := range claims {
			claimed[c.Remedy] = true
			if w := remedyWords[c.Remedy]; !strings.Contains(advice, w) {
				t.Errorf("%s: claim on %s, but the advice never says %q: %s", pattern, c.Remedy, w, advice)
			}
		}
		// The options and sysctls named in the advice, each a claim.
		for _, remedy := range []string{"ip_bind_address_no_port", "so_reuseaddr+ip_autobind_reuse", "so_reuseport", "tcp_tw_reuse", "tcp_tw_recycle"} {
			if strings.Contains(advice, remedyWords[remedy]) && !claimed[remedy] && !claimed[namedWithin[pattern][remedy]] {
				t.Errorf("%s: the advice names %s, which no claim (so no lab test) covers: %s", pattern, remedyWords[remedy], advice)
			}
		}
	}
}
