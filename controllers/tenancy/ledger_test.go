package tenancy

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	tenancyv1 "github.com/paddock-dev/paddock/api/tenancy/v1alpha1"
)

func list(kv ...string) corev1.ResourceList {
	out := corev1.ResourceList{}
	for i := 0; i < len(kv); i += 2 {
		out[corev1.ResourceName(kv[i])] = resource.MustParse(kv[i+1])
	}
	return out
}

func allocated(a Admission, name string) string {
	q := a.Allocated[corev1.ResourceName(name)]
	return q.String()
}

func admitted(a Admission) map[string]int64 {
	out := map[string]int64{}
	for _, al := range a.Allocations {
		out[al.NamespaceQuota] = al.Generation
	}
	return out
}

// Two claims for the last of a budget: the older one has it, the other is refused with by how
// much it would go over, whatever order they come in.
func TestTheLastOfABudgetGoesToOneClaim(t *testing.T) {
	g := NewWithT(t)
	budget := list("requests.cpu", "10", "pods", "100")
	t0 := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	first := Claim{Name: "team-a-dev", Generation: 1, Created: t0, Hard: list("requests.cpu", "2", "pods", "20"), Clusters: 2}
	second := Claim{Name: "team-a-ci", Generation: 1, Created: t0.Add(time.Second), Hard: list("requests.cpu", "3", "pods", "10"), Clusters: 2}
	third := Claim{Name: "team-a-prod", Generation: 1, Created: t0.Add(2 * time.Second), Hard: list("requests.cpu", "4", "pods", "10"), Clusters: 2}
	for _, order := range [][]Claim{{first, second, third}, {third, second, first}} {
		a := Admit(budget, nil, order)
		g.Expect(admitted(a)).To(Equal(map[string]int64{"team-a-dev": 1, "team-a-ci": 1}))
		g.Expect(a.Refused).To(HaveKeyWithValue("team-a-prod",
			"pods=10, requests.cpu=4 x 2 clusters would take the workspace over its quota: requests.cpu 18 of 10 (8 over)"))
		g.Expect(allocated(a, "requests.cpu")).To(Equal("10"))
		g.Expect(allocated(a, "pods")).To(Equal("60"))
	}
}

// What was admitted stays admitted: a newer claim never evicts it, a change that does not fit
// keeps the previous allocation (the member keeps its quota), a decrease always fits, and a
// NamespaceQuota that is gone frees its share.
func TestAdmittedAllocationsStay(t *testing.T) {
	g := NewWithT(t)
	budget := list("requests.cpu", "10")
	t0 := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	a := Admit(budget, nil, []Claim{{Name: "old", Generation: 1, Created: t0, Hard: list("requests.cpu", "4"), Clusters: 2}})
	g.Expect(a.Refused).To(BeEmpty())
	ledger := a.Allocations

	// A claim created earlier than the admitted one (clock skew, a restored backup) does not
	// evict it.
	early := Claim{Name: "early", Generation: 1, Created: t0.Add(-time.Hour), Hard: list("requests.cpu", "5"), Clusters: 1}
	grow := Claim{Name: "old", Generation: 2, Created: t0, Hard: list("requests.cpu", "6"), Clusters: 2}
	a = Admit(budget, ledger, []Claim{early, grow})
	g.Expect(a.Refused).To(HaveKey("early"))
	g.Expect(a.Refused).To(HaveKey("old"), "12 does not fit")
	g.Expect(a.Allocations).To(Equal([]tenancyv1.Allocation{{NamespaceQuota: "old", Generation: 1, Hard: list("requests.cpu", "4"), Clusters: 2}}),
		"the previous allocation stays")

	shrink := Claim{Name: "old", Generation: 3, Created: t0, Hard: list("requests.cpu", "1"), Clusters: 2}
	a = Admit(budget, ledger, []Claim{early, shrink})
	g.Expect(a.Refused).To(BeEmpty(), "the decrease frees room for the other")
	g.Expect(admitted(a)).To(Equal(map[string]int64{"old": 3, "early": 1}))
	g.Expect(allocated(a, "requests.cpu")).To(Equal("7"))

	a = Admit(budget, a.Allocations, []Claim{early})
	g.Expect(admitted(a)).To(Equal(map[string]int64{"early": 1}), "a NamespaceQuota that is gone frees its share")
	g.Expect(allocated(a, "requests.cpu")).To(Equal("5"))
}

// A claim must set every resource the budget limits: else its namespace would be unlimited in it.
func TestAClaimMustSetWhatTheBudgetLimits(t *testing.T) {
	g := NewWithT(t)
	a := Admit(list("requests.cpu", "10", "requests.memory", "20Gi"), nil,
		[]Claim{{Name: "pods-only", Generation: 1, Hard: list("pods", "10"), Clusters: 1}})
	g.Expect(a.Allocations).To(BeEmpty())
	g.Expect(a.Refused).To(HaveKeyWithValue("pods-only",
		"the workspace's quota limits requests.cpu, requests.memory: spec.hard must set them too"))
	// What the budget does not limit is the namespace's own business.
	a = Admit(list("requests.cpu", "10"), nil,
		[]Claim{{Name: "with-pods", Generation: 1, Hard: list("requests.cpu", "1", "pods", "1000"), Clusters: 3}})
	g.Expect(a.Refused).To(BeEmpty())
	g.Expect(a.Allocations[0].Hard).To(Equal(list("requests.cpu", "1")), "the ledger keeps what the budget counts")
	g.Expect(allocated(a, "requests.cpu")).To(Equal("3"))
}

// A negative quantity would free budget for others: refused.
func TestANegativeClaimIsRefused(t *testing.T) {
	g := NewWithT(t)
	a := Admit(list("requests.cpu", "10"), nil, []Claim{
		{Name: "negative", Generation: 1, Hard: list("requests.cpu", "-100"), Clusters: 1},
		{Name: "big", Generation: 1, Created: time.Now(), Hard: list("requests.cpu", "10"), Clusters: 1}})
	g.Expect(a.Refused).To(HaveKeyWithValue("negative", "spec.hard must not be negative: requests.cpu=-100"))
	g.Expect(admitted(a)).To(Equal(map[string]int64{"big": 1}))
}

// A claim is decided again when the clusters it selects change, its spec unchanged; one held
// (it cannot be decided now) keeps its share; a workspace over its lowered budget still takes
// decreases and edits that grow nothing.
func TestClaimsAreDecidedAgainWhenTheirClustersChange(t *testing.T) {
	g := NewWithT(t)
	budget := list("requests.cpu", "10")
	a := Admit(budget, nil, []Claim{{Name: "q", Generation: 1, Hard: list("requests.cpu", "2"), Clusters: 2}})
	g.Expect(allocated(a, "requests.cpu")).To(Equal("4"))
	a = Admit(budget, a.Allocations, []Claim{{Name: "q", Generation: 1, Hard: list("requests.cpu", "2"), Clusters: 6}})
	g.Expect(a.Refused).To(HaveKey("q"), "12 does not fit")
	g.Expect(allocated(a, "requests.cpu")).To(Equal("4"), "the 2 clusters' share stays")
	a = Admit(budget, a.Allocations, []Claim{{Name: "q", Generation: 1, Hard: list("requests.cpu", "2"), Clusters: 5}})
	g.Expect(a.Refused).To(BeEmpty())
	g.Expect(allocated(a, "requests.cpu")).To(Equal("10"))
	held := Admit(budget, a.Allocations, []Claim{{Name: "q", Hold: true}})
	g.Expect(held.Allocations).To(Equal(a.Allocations), "held: kept as it was")

	// The budget lowered to 6: over, yet a decrease, and an edit that grows nothing, are taken.
	low := list("requests.cpu", "6")
	a = Admit(low, a.Allocations, []Claim{{Name: "q", Generation: 2, Hard: list("requests.cpu", "2", "pods", "5"), Clusters: 5}})
	g.Expect(a.Refused).To(BeEmpty(), "an edit of what the budget does not count")
	g.Expect(admitted(a)).To(Equal(map[string]int64{"q": 2}))
	a = Admit(low, a.Allocations, []Claim{{Name: "q", Generation: 3, Hard: list("requests.cpu", "1.5"), Clusters: 5}})
	g.Expect(a.Refused).To(BeEmpty(), "a decrease, still over")
	g.Expect(allocated(a, "requests.cpu")).To(Equal("7500m"))
	a = Admit(low, a.Allocations, []Claim{{Name: "q", Generation: 4, Hard: list("requests.cpu", "1.6"), Clusters: 5}})
	g.Expect(a.Refused).To(HaveKey("q"), "growing while over")
}

// An allocation belongs to one object: a NamespaceQuota deleted and created again under the
// same name, at the same generation, is decided anew (before the workspace saw the deletion).
func TestAnAllocationOfAnEarlierObjectOfTheNameIsNotKept(t *testing.T) {
	g := NewWithT(t)
	budget := list("pods", "10")
	t0 := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	ledger := []tenancyv1.Allocation{{NamespaceQuota: "a", UID: "old", Generation: 1, Hard: list("pods", "2"), Clusters: 1}}
	adm := Admit(budget, ledger, []Claim{{Name: "a", UID: "new", Generation: 1, Created: t0, Hard: list("pods", "20"), Clusters: 1}})
	g.Expect(adm.Allocations).To(BeEmpty(), "20 pods were never admitted")
	g.Expect(adm.Refused).To(HaveKey("a"))
	adm = Admit(budget, ledger, []Claim{{Name: "a", UID: "new", Generation: 1, Created: t0, Hard: list("pods", "3"), Clusters: 1}})
	g.Expect(adm.Allocations).To(HaveLen(1))
	g.Expect(adm.Allocations[0].UID).To(BeEquivalentTo("new"))
	g.Expect(adm.Allocations[0].Hard.Pods().String()).To(Equal("3"))
}

// A resource added to the budget later: every claim is decided again, and one that does not
// set it is refused (its namespace would be unlimited in it, and uncounted).
func TestAResourceAddedToTheBudgetDecidesClaimsAgain(t *testing.T) {
	g := NewWithT(t)
	t0 := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	claims := []Claim{
		{Name: "sets-it", UID: "1", Generation: 1, Created: t0, Hard: list("pods", "2", "requests.cpu", "1"), Clusters: 2},
		{Name: "lacks-it", UID: "2", Generation: 1, Created: t0.Add(time.Minute), Hard: list("pods", "2"), Clusters: 2},
	}
	adm := Admit(list("pods", "10"), nil, claims)
	g.Expect(admitted(adm)).To(HaveLen(2))
	adm = Admit(list("pods", "10", "requests.cpu", "4"), adm.Allocations, claims)
	g.Expect(adm.Refused).To(HaveKeyWithValue("lacks-it", ContainSubstring("spec.hard must set it too")))
	var counted []string
	for _, a := range adm.Allocations {
		if _, ok := a.Hard[corev1.ResourceRequestsCPU]; ok {
			counted = append(counted, a.NamespaceQuota)
		}
	}
	g.Expect(counted).To(ConsistOf("sets-it"), "its cpu is now counted")
	g.Expect(allocated(adm, "requests.cpu")).To(Equal("2"))
}
