package attrib

// A Claim is what a pattern's advice says one remedy does, in the remedy
// lab's words (`portsleuth lab`): the lab's tests measure every claim on the
// running kernel (and on each kernel of make vmtest), and a report says when
// the lab refuted one on the kernel the failures happened on.
type Claim struct {
	// Remedy and Variant are the lab's names (internal/lab).
	Remedy  string
	Variant string
	// Verdicts are the lab verdicts that bear the advice out.
	Verdicts []string
}

// UDPAutobind is the lab's name for UDP connect() finding no port (EAGAIN):
// attrib files it under ConnectPortExhaustion.
const UDPAutobind = "udp-autobind"

// Lab verdicts the claims use (the lab's JSON contract).
const (
	labFixes   = "fixes"
	labMoves   = "moves-to-connect"
	labPartial = "partial"
	labNone    = "no-effect"
	labGone    = "unavailable"
)

var (
	helps   = []string{labFixes}
	adds    = []string{labFixes, labPartial} // more of a resource: helps up to its own ceiling
	useless = []string{labNone}
)

// bindBeforeConnectClaims are what bindBeforeConnectAdvice says.
var bindBeforeConnectClaims = []Claim{
	{Remedy: "ip_bind_address_no_port", Verdicts: helps},
	{Remedy: "so_reuseaddr", Verdicts: useless},
	{Remedy: "so_reuseaddr+ip_autobind_reuse", Verdicts: []string{labMoves}},
	{Remedy: "tcp_tw_recycle", Verdicts: []string{labGone}},
}

// Claims lists the claims of each pattern's advice, by the lab's pattern name.
var Claims = map[string][]Claim{
	string(BindAnyBeforeConnect): bindBeforeConnectClaims,
	// More source addresses only add range-sized pools.
	string(BindIPBeforeConnect): append(append([]Claim{}, bindBeforeConnectClaims...),
		Claim{Remedy: "more-sources", Verdicts: []string{labPartial}}),
	string(BindPortExhaustion): {
		// Let the kernel pick the port at connect().
		{Remedy: "ip_bind_address_no_port", Verdicts: helps},
		{Remedy: "so_reuseaddr", Verdicts: useless},
		// ip_autobind_reuse=1 shares ports with non-listening SO_REUSEADDR owners.
		{Remedy: "so_reuseaddr+ip_autobind_reuse", Verdicts: helps},
		{Remedy: "wider-range", Verdicts: adds},
	},
	string(PortInUse): {
		{Remedy: "so_reuseaddr", Variant: "time-wait", Verdicts: helps},
		{Remedy: "so_reuseaddr", Variant: "listener", Verdicts: useless},
		{Remedy: "so_reuseport", Variant: "listener", Verdicts: helps},
	},
	string(ConnectPortExhaustion): {
		{Remedy: "keepalive", Verdicts: helps},
		{Remedy: "more-destinations", Verdicts: adds},
		{Remedy: "more-sources", Verdicts: adds},
		{Remedy: "wider-range", Verdicts: adds},
		{Remedy: "tcp_tw_reuse", Verdicts: helps},
		{Remedy: "tcp_tw_reuse-no-timestamps", Verdicts: useless},
		{Remedy: "tcp_tw_recycle", Verdicts: []string{labGone}},
	},
	string(ConnectTupleConflict): {
		{Remedy: "ip_bind_address_no_port", Verdicts: helps},
	},
	UDPAutobind: {
		{Remedy: "keepalive", Verdicts: helps},
		{Remedy: "so_reuseaddr", Verdicts: helps},
		{Remedy: "more-sources", Verdicts: adds},
		{Remedy: "wider-range", Verdicts: adds},
	},
}

// Bears says whether a lab verdict bears the claim out.
func (c Claim) Bears(verdict string) bool {
	for _, v := range c.Verdicts {
		if v == verdict {
			return true
		}
	}
	return false
}
