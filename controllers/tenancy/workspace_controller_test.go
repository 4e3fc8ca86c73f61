package tenancy

import (
	"sync"
	"testing"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
	tenancyv1 "github.com/paddock-dev/paddock/api/tenancy/v1alpha1"
)

// memberCluster creates a MemberCluster (no controller connects it here) with labels.
func memberCluster(t *testing.T, name string, labels map[string]string) *clustersv1.MemberCluster {
	t.Helper()
	mc := &clustersv1.MemberCluster{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: clustersv1.MemberClusterSpec{Attach: &clustersv1.AttachSpec{KubeconfigSecretRef: clustersv1.SecretKeyReference{
			Namespace: secretNS, Name: name + "-kubeconfig", Key: "value"}}}}
	NewWithT(t).Expect(mgmt.Create(ctx, mc)).To(Succeed())
	t.Cleanup(func() { _ = mgmt.Delete(ctx, mc) })
	return mc
}

func namespaceQuota(name, workspace string, clusters []string, hard corev1.ResourceList) *tenancyv1.NamespaceQuota {
	return &tenancyv1.NamespaceQuota{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: tenancyv1.NamespaceQuotaSpec{Namespace: name, Workspace: workspace, Clusters: tenancyv1.ClusterTargets{ClusterNames: clusters}, Hard: tenancyv1.ResourceList(hard)}}
}

func getWorkspace(g Gomega, name string) *tenancyv1.Workspace {
	ws := &tenancyv1.Workspace{}
	g.Expect(mgmt.Get(ctx, client.ObjectKey{Name: name}, ws)).To(Succeed())
	return ws
}

func allocatedIn(ws *tenancyv1.Workspace, name corev1.ResourceName) string {
	if ws.Status.Quota == nil {
		return ""
	}
	q := ws.Status.Quota.Allocated[name]
	return q.String()
}

func admittedIn(ws *tenancyv1.Workspace) []string {
	var out []string
	for _, a := range ws.Status.Allocations {
		out = append(out, a.NamespaceQuota)
	}
	return out
}

// A workspace over labelled clusters: its status follows the fleet and its NamespaceQuotas, and
// its budget is decided one claim at a time, so two racing for the last of it never both have
// it, at any moment.
func TestAWorkspaceKeepsItsClustersNamespacesAndBudget(t *testing.T) {
	g := NewWithT(t)
	memberCluster(t, "ws-a", map[string]string{"env": "prod"})
	memberCluster(t, "ws-b", map[string]string{"env": "prod"})
	dev := memberCluster(t, "ws-c", map[string]string{"env": "dev"})
	ws := &tenancyv1.Workspace{ObjectMeta: metav1.ObjectMeta{Name: "team-a"}, Spec: tenancyv1.WorkspaceSpec{
		Clusters: tenancyv1.ClusterTargets{ClusterSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"env": "prod"}}},
		Quota:    &tenancyv1.WorkspaceQuota{Hard: tenancyv1.ResourceList(list("requests.cpu", "10", "pods", "100"))}}}
	g.Expect(mgmt.Create(ctx, ws)).To(Succeed())
	t.Cleanup(func() { _ = mgmt.Delete(ctx, ws) })
	g.Eventually(func(g Gomega) {
		got := getWorkspace(g, "team-a")
		g.Expect(got.Status.ObservedGeneration).To(Equal(got.Generation))
		g.Expect(meta.IsStatusConditionTrue(got.Status.Conditions, tenancyv1.ReadyCondition)).To(BeTrue())
		g.Expect(got.Status.ClusterCount).To(Equal(int32(2)))
	}, eventuallyWait, poll).Should(Succeed())

	dev1 := namespaceQuota("team-a-dev", "team-a", []string{"ws-a", "ws-b"}, list("requests.cpu", "2", "pods", "20"))
	g.Expect(mgmt.Create(ctx, dev1)).To(Succeed())
	t.Cleanup(func() { _ = mgmt.Delete(ctx, dev1) })
	// One that selects a cluster outside the workspace claims nothing and places nothing.
	stray := namespaceQuota("team-a-stray", "team-a", []string{"ws-a", "ws-c"}, list("requests.cpu", "1", "pods", "1"))
	g.Expect(mgmt.Create(ctx, stray)).To(Succeed())
	t.Cleanup(func() { _ = mgmt.Delete(ctx, stray) })
	g.Eventually(func(g Gomega) {
		got := getWorkspace(g, "team-a")
		g.Expect(admittedIn(got)).To(Equal([]string{"team-a-dev"}))
		g.Expect(allocatedIn(got, "requests.cpu")).To(Equal("4"))
		g.Expect(got.Status.NamespaceCount).To(Equal(int32(2)))
		g.Expect(got.Status.Clusters).To(Equal([]tenancyv1.WorkspaceCluster{
			{Name: "ws-a", Namespaces: []string{"team-a-dev"}, NamespaceCount: 1},
			{Name: "ws-b", Namespaces: []string{"team-a-dev"}, NamespaceCount: 1}}))
	}, eventuallyWait, poll).Should(Succeed())

	// Three at once for the 6 CPUs left, each wanting 3 x 2 clusters: one has them.
	racers := []*tenancyv1.NamespaceQuota{
		namespaceQuota("team-a-ci", "team-a", []string{"ws-a", "ws-b"}, list("requests.cpu", "3", "pods", "10")),
		namespaceQuota("team-a-qa", "team-a", []string{"ws-a", "ws-b"}, list("requests.cpu", "3", "pods", "10")),
		namespaceQuota("team-a-perf", "team-a", []string{"ws-a", "ws-b"}, list("requests.cpu", "3", "pods", "10")),
	}
	var wg sync.WaitGroup
	for _, r := range racers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g.Expect(mgmt.Create(ctx, r)).To(Succeed())
		}()
		t.Cleanup(func() { _ = mgmt.Delete(ctx, r) })
	}
	wg.Wait()
	most := 0
	g.Eventually(func(g Gomega) {
		got := getWorkspace(g, "team-a")
		most = max(most, len(got.Status.Allocations))
		g.Expect(got.Status.Allocations).To(HaveLen(2), "team-a-dev and one of the racers")
		g.Expect(allocatedIn(got, "requests.cpu")).To(Equal("10"))
	}, eventuallyWait, poll).Should(Succeed())
	g.Consistently(func(g Gomega) {
		got := getWorkspace(g, "team-a")
		most = max(most, len(got.Status.Allocations))
		g.Expect(allocatedIn(got, "requests.cpu")).To(Equal("10"))
	}, "1s", poll).Should(Succeed())
	g.Expect(most).To(Equal(2), "never more admitted than the budget holds")

	// Lowered below what was admitted: nothing is taken back, and the workspace says so.
	mergePatch(g, ws, `{"spec":{"quota":{"hard":{"requests.cpu":"8","pods":"100"}}}}`)
	g.Eventually(func(g Gomega) {
		got := getWorkspace(g, "team-a")
		r := meta.FindStatusCondition(got.Status.Conditions, tenancyv1.ReadyCondition)
		g.Expect(r).NotTo(BeNil())
		g.Expect(r.Reason).To(Equal(ReasonOverQuota))
		g.Expect(r.Message).To(ContainSubstring("requests.cpu 10 of 8 (2 over)"))
		g.Expect(got.Status.Allocations).To(HaveLen(2))
	}, eventuallyWait, poll).Should(Succeed())

	// The fleet moves: a cluster relabelled into the workspace joins it, and the NamespaceQuota
	// that selected it now claims its share; over the lowered budget, it is refused and places
	// nothing.
	mergePatch(g, dev, `{"metadata":{"labels":{"env":"prod"}}}`)
	g.Eventually(func(g Gomega) {
		got := getWorkspace(g, "team-a")
		g.Expect(got.Status.ClusterCount).To(Equal(int32(3)))
		g.Expect(got.Status.Clusters[2]).To(Equal(tenancyv1.WorkspaceCluster{Name: "ws-c"}))
	}, eventuallyWait, poll).Should(Succeed())
	g.Expect(admittedIn(getWorkspace(g, "team-a"))).NotTo(ContainElement("team-a-stray"))
	// Raised again: it fits, and is placed.
	mergePatch(g, ws, `{"spec":{"quota":{"hard":{"requests.cpu":"12","pods":"100"}}}}`)
	g.Eventually(func(g Gomega) {
		got := getWorkspace(g, "team-a")
		g.Expect(admittedIn(got)).To(ContainElement("team-a-stray"))
		g.Expect(got.Status.Clusters[2]).To(Equal(tenancyv1.WorkspaceCluster{Name: "ws-c", Namespaces: []string{"team-a-stray"}, NamespaceCount: 1}))
		g.Expect(meta.IsStatusConditionTrue(got.Status.Conditions, tenancyv1.ReadyCondition)).To(BeTrue())
	}, eventuallyWait, poll).Should(Succeed())
}

func mergePatch(g Gomega, o client.Object, patch string) {
	g.Expect(mgmt.Patch(ctx, o, client.RawPatch("application/merge-patch+json", []byte(patch)))).To(Succeed())
}
