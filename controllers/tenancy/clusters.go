package tenancy

import (
	"context"
	"sort"

	"sigs.k8s.io/controller-runtime/pkg/client"

	tenancyv1 "github.com/paddock-dev/paddock/api/tenancy/v1alpha1"
	"github.com/paddock-dev/paddock/internal/fleet"
)

// selectClusters lists the names of the MemberClusters t selects (not being deleted), sorted.
// A selector that does not parse is a *fleet.SelectorError.
func selectClusters(ctx context.Context, c client.Reader, t tenancyv1.ClusterTargets, field string) ([]string, error) {
	selected, err := fleet.Select(ctx, c, t.ClusterNames, t.ClusterSelector, field)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(selected))
	for n := range selected {
		out = append(out, n)
	}
	sort.Strings(out)
	return out, nil
}

// outside lists the names of some that are not in all.
func outside(some, all []string) []string {
	in := map[string]bool{}
	for _, n := range all {
		in[n] = true
	}
	var out []string
	for _, n := range some {
		if !in[n] {
			out = append(out, n)
		}
	}
	return out
}
