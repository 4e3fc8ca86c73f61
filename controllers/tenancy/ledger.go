// Package tenancy holds the logic of the tenancy.paddock.dev kinds (Workspace, NamespaceQuota,
// RoleGrant). Issue 8 builds their controllers on it; this file is the workspace budget's
// ledger.
package tenancy

import (
	"fmt"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	tenancyv1 "github.com/paddock-dev/paddock/api/tenancy/v1alpha1"
)

// Claim is a NamespaceQuota asking for its share of its workspace's budget.
type Claim struct {
	Name       string
	UID        types.UID
	Generation int64
	Created    time.Time
	// Hard is the per-cluster hard it asks for; Clusters how many clusters it selects.
	Hard     corev1.ResourceList
	Clusters int32
	// Hold keeps what was admitted for it, without deciding anything (a NamespaceQuota that
	// exists but cannot be decided now: its selector is invalid, or it selects clusters outside
	// the workspace; its quotas may still be in the members).
	Hold bool
}

// amount is what a claim or an allocation takes from the budget: hard times clusters.
func amount(hard corev1.ResourceList, clusters int32) corev1.ResourceList {
	out := corev1.ResourceList{}
	for name, q := range hard {
		t := q.DeepCopy()
		t.Mul(int64(clusters))
		out[name] = t
	}
	return out
}

// Admission is the ledger after one decision: the allocations kept, and why each claim that
// was not admitted at its current generation was refused.
type Admission struct {
	Allocations []tenancyv1.Allocation
	// Refused maps a NamespaceQuota to why its current spec was not admitted (a previous
	// admitted allocation, if any, stays in Allocations).
	Refused map[string]string
	// Allocated is the sum of the allocations.
	Allocated corev1.ResourceList
}

// Admit decides, in one place and one claim at a time, which claims the budget admits, so that
// two NamespaceQuotas racing for the last of a budget can never both have it: the workspace's
// reconciler is the ledger's only writer, and it writes with an optimistic lock.
//
// An allocation already admitted for a claim's current generation stays. Claims that are new or
// changed are decided oldest first (then by name): admitted if the budget still holds them,
// their previous allocation replaced; else refused, the previous allocation kept (the member
// keeps the quota it had). A claim must set every resource the budget limits (else its
// namespace would be unlimited in it). Allocations of NamespaceQuotas that are gone are freed.
func Admit(budget corev1.ResourceList, ledger []tenancyv1.Allocation, claims []Claim) Admission {
	out := Admission{Refused: map[string]string{}, Allocated: corev1.ResourceList{}}
	byName := map[string]tenancyv1.Allocation{}
	for _, a := range ledger {
		byName[a.NamespaceQuota] = a
	}
	claims = append([]Claim(nil), claims...)
	sort.Slice(claims, func(i, j int) bool {
		if !claims[i].Created.Equal(claims[j].Created) {
			return claims[i].Created.Before(claims[j].Created)
		}
		return claims[i].Name < claims[j].Name
	})
	kept := map[string]tenancyv1.Allocation{}
	var pending []Claim
	for _, c := range claims {
		if a, ok := byName[c.Name]; ok && (a.UID == "" || c.UID == "" || a.UID == c.UID) {
			// (An allocation of an earlier object of the name is freed: that object is gone.)
			if a.UID == "" {
				a.UID = c.UID
			}
			kept[c.Name] = a
			addTo(out.Allocated, amount(a.Hard, a.Clusters))
			// Decided again when its spec or the clusters it selects changed, or when what the
			// budget counts of it did (a resource added to the budget: it must set it too).
			if c.Hold || (a.Generation == c.Generation && a.Clusters == c.Clusters && sameCounted(a.Hard, c.Hard, budget)) {
				continue
			}
		}
		if !c.Hold {
			pending = append(pending, c)
		}
	}
	// Decreases first (they always fit, and free room for the rest), then by age.
	sort.SliceStable(pending, func(i, j int) bool {
		return shrinks(kept, pending[i]) && !shrinks(kept, pending[j])
	})
	for _, c := range pending {
		if neg := negativeResources(c.Hard); len(neg) > 0 {
			out.Refused[c.Name] = "spec.hard must not be negative: " + strings.Join(neg, ", ")
			continue
		}
		if _, ok := kept[c.Name]; !ok && len(kept) >= tenancyv1.MaxWorkspaceNamespaces {
			out.Refused[c.Name] = fmt.Sprintf("the workspace holds at most %d NamespaceQuotas with a quota", tenancyv1.MaxWorkspaceNamespaces)
			continue
		}
		if missing := missingResources(budget, c.Hard); len(missing) > 0 {
			out.Refused[c.Name] = fmt.Sprintf("the workspace's quota limits %s: spec.hard must set %s too", strings.Join(missing, ", "),
				map[bool]string{true: "it", false: "them"}[len(missing) == 1])
			continue
		}
		total := out.Allocated.DeepCopy()
		if prev, ok := kept[c.Name]; ok {
			subFrom(total, amount(prev.Hard, prev.Clusters))
		}
		want := amount(budgeted(c.Hard, budget), c.Clusters)
		addTo(total, want)
		// Over the budget only if it grows something that is over: a workspace whose quota was
		// lowered below what it admitted still takes decreases (and edits that change nothing
		// it counts).
		if over := overBudget(budget, total); len(over) > 0 && grows(kept, c, budget, total) {
			out.Refused[c.Name] = fmt.Sprintf("%s x %d clusters would take the workspace over its quota: %s", formatList(c.Hard, budget),
				c.Clusters, strings.Join(over, "; "))
			continue
		}
		out.Allocated = total
		kept[c.Name] = tenancyv1.Allocation{NamespaceQuota: c.Name, UID: c.UID, Generation: c.Generation, Hard: budgeted(c.Hard, budget), Clusters: c.Clusters}
	}
	for _, c := range claims {
		if a, ok := kept[c.Name]; ok {
			out.Allocations = append(out.Allocations, a)
		}
	}
	sort.Slice(out.Allocations, func(i, j int) bool { return out.Allocations[i].NamespaceQuota < out.Allocations[j].NamespaceQuota })
	return out
}

// sameCounted says whether an allocation holds exactly what the budget counts of hard: the same
// resources, the same quantities.
func sameCounted(allocated, hard, budget corev1.ResourceList) bool {
	want := budgeted(hard, budget)
	if len(allocated) != len(want) {
		return false
	}
	for name, q := range want {
		a, ok := allocated[name]
		if !ok || a.Cmp(q) != 0 {
			return false
		}
	}
	return len(missingResources(budget, hard)) == 0
}

// grows says whether claim c, in place of what was kept for it, takes more of a budgeted
// resource that total has over the budget.
func grows(kept map[string]tenancyv1.Allocation, c Claim, budget, total corev1.ResourceList) bool {
	prev, ok := kept[c.Name]
	if !ok {
		return true
	}
	was, want := amount(prev.Hard, prev.Clusters), amount(c.Hard, c.Clusters)
	for name, limit := range budget {
		t := total[name]
		if t.Cmp(limit) <= 0 {
			continue
		}
		w, p := want[name], was[name]
		if w.Cmp(p) > 0 {
			return true
		}
	}
	return false
}

// budgeted is the part of hard the budget counts (what an allocation keeps).
func budgeted(hard, budget corev1.ResourceList) corev1.ResourceList {
	out := corev1.ResourceList{}
	for name, q := range hard {
		if _, ok := budget[name]; ok {
			out[name] = q.DeepCopy()
		}
	}
	return out
}

// negativeResources lists hard's negative quantities, sorted.
func negativeResources(hard corev1.ResourceList) []string {
	var out []string
	for name, q := range hard {
		if q.Sign() < 0 {
			out = append(out, string(name)+"="+q.String())
		}
	}
	sort.Strings(out)
	return out
}

// shrinks says whether claim c asks for no more of anything than its kept allocation.
func shrinks(kept map[string]tenancyv1.Allocation, c Claim) bool {
	prev, ok := kept[c.Name]
	if !ok {
		return false
	}
	was, want := amount(prev.Hard, prev.Clusters), amount(c.Hard, c.Clusters)
	for name, p := range was {
		if q, ok := want[name]; !ok || q.Cmp(p) > 0 {
			return false
		}
	}
	return true
}

func addTo(sum, l corev1.ResourceList) {
	for name, q := range l {
		t := sum[name]
		t.Add(q)
		sum[name] = t
	}
}

func subFrom(sum, l corev1.ResourceList) {
	for name, q := range l {
		t := sum[name]
		t.Sub(q)
		sum[name] = t
	}
}

// missingResources are the budget's resources that hard does not set, sorted.
func missingResources(budget, hard corev1.ResourceList) []string {
	var out []string
	for name := range budget {
		if _, ok := hard[name]; !ok {
			out = append(out, string(name))
		}
	}
	sort.Strings(out)
	return out
}

// overBudget says, for each of the budget's resources that total exceeds, by how much.
func overBudget(budget, total corev1.ResourceList) []string {
	var out []string
	for name, limit := range budget {
		t, ok := total[name]
		if !ok || t.Cmp(limit) <= 0 {
			continue
		}
		excess := t.DeepCopy()
		excess.Sub(limit)
		out = append(out, fmt.Sprintf("%s %s of %s (%s over)", name, t.String(), limit.String(), excess.String()))
	}
	sort.Strings(out)
	return out
}

// formatList shows the budget's resources of hard, sorted ("pods=20, requests.cpu=2").
func formatList(hard, budget corev1.ResourceList) string {
	var parts []string
	for name, q := range hard {
		if _, ok := budget[name]; ok {
			parts = append(parts, string(name)+"="+q.String())
		}
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}
