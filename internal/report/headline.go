package report

import (
	"cmp"
	"fmt"
)

// Headline is who starved whom: one sentence per culprit (or per program
// of several culprits), the lines the text report opens with. The strings
// are not escaped: the caller escapes for its medium.
func (r Report) Headline() []string {
	var groups [][]Culprit
	at := map[string]int{}
	for _, cu := range r.Culprits {
		key := cmp.Or(cu.group, fmt.Sprintf("pid:%d", cu.PID))
		if i, ok := at[key]; ok {
			groups[i] = append(groups[i], cu)
			continue
		}
		at[key] = len(groups)
		groups = append(groups, []Culprit{cu})
	}
	out := make([]string, 0, len(groups))
	for _, g := range groups {
		out = append(out, culpritSentence(g))
	}
	return out
}
