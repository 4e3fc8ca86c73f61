package tenancy

import (
	"fmt"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tenancyv1 "github.com/paddock-dev/paddock/api/tenancy/v1alpha1"
)

// realWorkspace is a workspace over both real members (tier=real), with a budget.
func realWorkspace(t *testing.T, name string, hard corev1.ResourceList) *tenancyv1.Workspace {
	t.Helper()
	ws := &tenancyv1.Workspace{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: tenancyv1.WorkspaceSpec{
		Clusters: tenancyv1.ClusterTargets{ClusterSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "real"}}}}}
	if hard != nil {
		ws.Spec.Quota = &tenancyv1.WorkspaceQuota{Hard: tenancyv1.ResourceList(hard)}
	}
	NewWithT(t).Expect(mgmt.Create(ctx, ws)).To(Succeed())
	t.Cleanup(func() { _ = mgmt.Delete(ctx, ws) })
	return ws
}

func getQuota(g Gomega, name string) *tenancyv1.NamespaceQuota {
	nsq := &tenancyv1.NamespaceQuota{}
	g.Expect(mgmt.Get(ctx, client.ObjectKey{Name: name}, nsq)).To(Succeed())
	return nsq
}

func readyReason(conds []metav1.Condition) string {
	c := meta.FindStatusCondition(conds, tenancyv1.ReadyCondition)
	if c == nil {
		return ""
	}
	return string(c.Status) + "/" + c.Reason
}

// expectReady waits until the NamespaceQuota is Ready for its generation.
func expectReady(t *testing.T, name string) *tenancyv1.NamespaceQuota {
	t.Helper()
	var out *tenancyv1.NamespaceQuota
	NewWithT(t).Eventually(func(g Gomega) {
		nsq := getQuota(g, name)
		g.Expect(nsq.Status.ObservedGeneration).To(Equal(nsq.Generation))
		g.Expect(readyReason(nsq.Status.Conditions)).To(Equal("True/Succeeded"), "%+v", nsq.Status)
		out = nsq
	}, eventuallyWait, poll).Should(Succeed())
	return out
}

func qty(s string) resource.Quantity { return resource.MustParse(s) }

// pod is a bare pod (no scheduler runs here: it stays Pending, and the member's quota counts it).
func pod(ns, name string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "registry.invalid/none:1"}}}}
}

func deleteAndWait(t *testing.T, o client.Object) {
	t.Helper()
	g := NewWithT(t)
	g.Expect(client.IgnoreNotFound(mgmt.Delete(ctx, o))).To(Succeed())
	g.Eventually(func() bool {
		return apierrors.IsNotFound(mgmt.Get(ctx, client.ObjectKeyFromObject(o), o.DeepCopyObject().(client.Object)))
	}, eventuallyWait, poll).Should(BeTrue())
}

// A NamespaceQuota over two real members: the namespace, its quota and its limits in both; the
// pods a member's quota counts show in the totals (the workspace's too); a change of hard limits
// reaches both members; a spec the budget cannot hold places nothing, at any moment; and
// deleting it (Orphan) removes the quota objects and leaves the namespace with its workloads.
func TestANamespaceQuotaIsPlacedInBothMembersAndCountsTheirPods(t *testing.T) {
	g := NewWithT(t)
	clusters := attachMembers(t)
	realWorkspace(t, "team-q", list("pods", "20", "requests.cpu", "4"))
	nsq := &tenancyv1.NamespaceQuota{ObjectMeta: metav1.ObjectMeta{Name: "q-one"}, Spec: tenancyv1.NamespaceQuotaSpec{
		Namespace: "q-one", Workspace: "team-q",
		Clusters:   tenancyv1.ClusterTargets{ClusterSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "real"}}},
		Hard:       tenancyv1.ResourceList(list("pods", "5", "requests.cpu", "1")),
		LimitRange: &tenancyv1.LimitRangeDefaults{DefaultRequest: tenancyv1.ResourceList(list("cpu", "100m")), Default: tenancyv1.ResourceList(list("cpu", "200m"))}}}
	g.Expect(mgmt.Create(ctx, nsq)).To(Succeed())
	t.Cleanup(func() { _ = mgmt.Delete(ctx, nsq) })

	got := expectReady(t, "q-one")
	g.Expect(got.Status.ClusterSummary).To(Equal("2/2"))
	g.Expect(got.Finalizers).To(ContainElement(tenancyv1.NamespaceQuotaFinalizer))
	for _, m := range env.Members {
		ns := &corev1.Namespace{}
		g.Expect(m.Client.Get(ctx, client.ObjectKey{Name: "q-one"}, ns)).To(Succeed())
		g.Expect(ns.Labels).To(HaveKeyWithValue(tenancyv1.WorkspaceLabel, "team-q"))
		g.Expect(ns.Labels).To(HaveKeyWithValue(tenancyv1.NamespaceQuotaLabel, "q-one"))
		g.Expect(ns.Annotations).To(HaveKeyWithValue(CreatedByAnnotation, string(got.UID)))
		rq := &corev1.ResourceQuota{}
		g.Expect(m.Client.Get(ctx, client.ObjectKey{Namespace: "q-one", Name: QuotaName}, rq)).To(Succeed())
		g.Expect(rq.Spec.Hard.Pods().String()).To(Equal("5"))
		lr := &corev1.LimitRange{}
		g.Expect(m.Client.Get(ctx, client.ObjectKey{Namespace: "q-one", Name: LimitRangeName}, lr)).To(Succeed())
		g.Expect(lr.Spec.Limits[0].DefaultRequest.Cpu().String()).To(Equal("100m"))
	}
	for _, c := range got.Status.Clusters {
		g.Expect(c.Created).To(BeTrue())
		g.Expect(c.Hard.Pods().String()).To(Equal("5"), "what the member's quota enforces")
	}
	g.Expect(got.Status.Hard.Pods().String()).To(Equal("10"))

	// Pods in member-1, counted by its quota (the LimitRange gives them a cpu request): the
	// totals follow, here and in the workspace.
	m1 := env.Members[0].Client
	for i := range 2 {
		g.Expect(m1.Create(ctx, pod("q-one", fmt.Sprintf("p%d", i)))).To(Succeed())
	}
	g.Eventually(func(g Gomega) {
		nsq := getQuota(g, "q-one")
		g.Expect(nsq.Status.Used.Pods().String()).To(Equal("2"))
		used := nsq.Status.Used[corev1.ResourceRequestsCPU]
		g.Expect(used.String()).To(Equal("200m"))
		ws := getWorkspace(g, "team-q")
		g.Expect(ws.Status.Quota).NotTo(BeNil())
		g.Expect(ws.Status.Quota.Used.Pods().String()).To(Equal("2"))
	}, eventuallyWait, poll).Should(Succeed())
	// The member enforces it: a pod over its 5 is refused by the member's own admission.
	for i := 2; i < 5; i++ {
		g.Expect(m1.Create(ctx, pod("q-one", fmt.Sprintf("p%d", i)))).To(Succeed())
	}
	g.Eventually(func() error { return m1.Create(ctx, pod("q-one", "p-over")) }, eventuallyWait, poll).Should(
		MatchError(ContainSubstring("exceeded quota")))

	// A change of hard limits reaches both members.
	g.Expect(mgmt.Get(ctx, client.ObjectKey{Name: "q-one"}, nsq)).To(Succeed())
	nsq.Spec.Hard = tenancyv1.ResourceList(list("pods", "6", "requests.cpu", "1"))
	g.Expect(mgmt.Update(ctx, nsq)).To(Succeed())
	got = expectReady(t, "q-one")
	g.Expect(got.Status.Hard.Pods().String()).To(Equal("12"))
	for _, m := range env.Members {
		rq := &corev1.ResourceQuota{}
		g.Expect(m.Client.Get(ctx, client.ObjectKey{Namespace: "q-one", Name: QuotaName}, rq)).To(Succeed())
		g.Expect(rq.Spec.Hard.Pods().String()).To(Equal("6"))
	}

	// 12 of the budget's 20 pods are admitted; 5 more in each cluster would take it to 22. The
	// refused NamespaceQuota places nothing in either member, at any moment.
	over := namespaceQuota("q-two", "team-q", clusters, list("pods", "5", "requests.cpu", "1"))
	g.Expect(mgmt.Create(ctx, over)).To(Succeed())
	t.Cleanup(func() { _ = mgmt.Delete(ctx, over) })
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, m := range env.Members {
			err := m.Client.Get(ctx, client.ObjectKey{Name: "q-two"}, &corev1.Namespace{})
			g.Expect(apierrors.IsNotFound(err)).To(BeTrue(), "a refused NamespaceQuota's namespace appeared in %s", m.Name)
		}
		time.Sleep(poll)
	}
	g.Eventually(func(g Gomega) {
		n := getQuota(g, "q-two")
		g.Expect(readyReason(n.Status.Conditions)).To(Equal("False/" + tenancyv1.ReasonExceedsWorkspaceQuota))
		g.Expect(meta.IsStatusConditionTrue(n.Status.Conditions, tenancyv1.StalledCondition)).To(BeTrue())
		g.Expect(meta.FindStatusCondition(n.Status.Conditions, tenancyv1.ReadyCondition).Message).To(ContainSubstring("pods 22 of 20"))
	}, eventuallyWait, poll).Should(Succeed())

	// Deleted with the default Orphan: the quota objects go; the namespace and its pods stay,
	// out of Paddock's hands.
	deleteAndWait(t, nsq)
	for _, m := range env.Members {
		ns := &corev1.Namespace{}
		g.Expect(m.Client.Get(ctx, client.ObjectKey{Name: "q-one"}, ns)).To(Succeed())
		g.Expect(ns.DeletionTimestamp.IsZero()).To(BeTrue())
		g.Expect(ns.Labels).NotTo(HaveKey(tenancyv1.NamespaceQuotaLabel))
		g.Expect(ns.Labels).To(HaveKeyWithValue(tenancyv1.WorkspaceLabel, "team-q"), "still offered to its workspace")
		g.Expect(ns.Annotations).NotTo(HaveKey(CreatedByAnnotation))
		g.Expect(apierrors.IsNotFound(m.Client.Get(ctx, client.ObjectKey{Namespace: "q-one", Name: QuotaName}, &corev1.ResourceQuota{}))).To(BeTrue())
		g.Expect(apierrors.IsNotFound(m.Client.Get(ctx, client.ObjectKey{Namespace: "q-one", Name: LimitRangeName}, &corev1.LimitRange{}))).To(BeTrue())
	}
	g.Expect(m1.Get(ctx, client.ObjectKey{Namespace: "q-one", Name: "p0"}, &corev1.Pod{})).To(Succeed())
	// The budget it held is free again: the refused one is admitted and placed.
	expectReady(t, "q-two")
}

// deletionPolicy Delete deletes the namespace only where Paddock created it: an adopted one
// stays.
func TestDeletePolicyDeletesOnlyTheNamespacesPaddockCreated(t *testing.T) {
	g := NewWithT(t)
	clusters := attachMembers(t)
	realWorkspace(t, "team-d", nil)
	m1, m2 := env.Members[0].Client, env.Members[1].Client
	// Offered to the workspace by the member's admin: adopted (never deleted by Paddock).
	existing := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "d-ns", Labels: map[string]string{"owner": "someone", tenancyv1.WorkspaceLabel: "team-d"}}}
	g.Expect(m1.Create(ctx, existing)).To(Succeed())
	g.Expect(m1.Create(ctx, pod("d-ns", "theirs"))).To(Succeed())

	nsq := namespaceQuota("d-quota", "team-d", clusters, list("pods", "10"))
	nsq.Spec.Namespace, nsq.Spec.DeletionPolicy = "d-ns", tenancyv1.NamespaceDelete
	g.Expect(mgmt.Create(ctx, nsq)).To(Succeed())
	got := expectReady(t, "d-quota")
	created := map[string]bool{}
	for _, c := range got.Status.Clusters {
		created[c.Name] = c.Created
	}
	g.Expect(created).To(Equal(map[string]bool{env.Members[0].Name: false, env.Members[1].Name: true}))
	ns := &corev1.Namespace{}
	g.Expect(m1.Get(ctx, client.ObjectKey{Name: "d-ns"}, ns)).To(Succeed())
	g.Expect(ns.Labels).To(HaveKeyWithValue("owner", "someone"), "adopting keeps the namespace's own labels")
	g.Expect(ns.Labels).To(HaveKeyWithValue(tenancyv1.WorkspaceLabel, "team-d"))

	deleteAndWait(t, nsq)
	// member-2's namespace, which Paddock created, is deleted (the member's namespace
	// controller finishes it); member-1's, adopted, stays with its pod.
	g.Eventually(func() bool {
		return apierrors.IsNotFound(m2.Get(ctx, client.ObjectKey{Name: "d-ns"}, &corev1.Namespace{}))
	}, eventuallyWait, poll).Should(BeTrue())
	g.Expect(m1.Get(ctx, client.ObjectKey{Name: "d-ns"}, ns)).To(Succeed())
	g.Expect(ns.DeletionTimestamp.IsZero()).To(BeTrue())
	g.Expect(m1.Get(ctx, client.ObjectKey{Namespace: "d-ns", Name: "theirs"}, &corev1.Pod{})).To(Succeed())
	g.Expect(apierrors.IsNotFound(m1.Get(ctx, client.ObjectKey{Namespace: "d-ns", Name: QuotaName}, &corev1.ResourceQuota{}))).To(BeTrue())
}

// A quota deleted or edited by hand in a member is restored within the documented 30 s, by the
// watches (here well under it), with a DriftCorrected event.
func TestAHandDeletedOrEditedQuotaIsRestored(t *testing.T) {
	g := NewWithT(t)
	clusters := attachMembers(t)
	realWorkspace(t, "team-r", nil)
	nsq := namespaceQuota("r-quota", "team-r", clusters, list("pods", "7"))
	g.Expect(mgmt.Create(ctx, nsq)).To(Succeed())
	t.Cleanup(func() { deleteAndWait(t, nsq) })
	expectReady(t, "r-quota")
	m2 := env.Members[1].Client

	rq := &corev1.ResourceQuota{}
	g.Expect(m2.Get(ctx, client.ObjectKey{Namespace: "r-quota", Name: QuotaName}, rq)).To(Succeed())
	start := time.Now()
	g.Expect(m2.Delete(ctx, rq)).To(Succeed())
	g.Eventually(func(g Gomega) {
		got := &corev1.ResourceQuota{}
		g.Expect(m2.Get(ctx, client.ObjectKey{Namespace: "r-quota", Name: QuotaName}, got)).To(Succeed())
		g.Expect(got.UID).NotTo(Equal(rq.UID))
		g.Expect(got.Spec.Hard.Pods().String()).To(Equal("7"))
	}, 30*time.Second, poll).Should(Succeed())
	t.Logf("a hand-deleted ResourceQuota was restored in %s", time.Since(start).Round(time.Millisecond))

	start = time.Now()
	// (The member's quota controller writes the quota's status too: retried on a conflict.)
	g.Expect(retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := m2.Get(ctx, client.ObjectKey{Namespace: "r-quota", Name: QuotaName}, rq); err != nil {
			return err
		}
		rq.Spec.Hard[corev1.ResourcePods] = qty("700")
		return m2.Update(ctx, rq)
	})).To(Succeed())
	g.Eventually(func(g Gomega) {
		got := &corev1.ResourceQuota{}
		g.Expect(m2.Get(ctx, client.ObjectKey{Namespace: "r-quota", Name: QuotaName}, got)).To(Succeed())
		g.Expect(got.Spec.Hard.Pods().String()).To(Equal("7"))
	}, 30*time.Second, poll).Should(Succeed())
	t.Logf("a hand-edited ResourceQuota was restored in %s", time.Since(start).Round(time.Millisecond))
	g.Eventually(func(g Gomega) []string { return eventReasons(g, "r-quota") }, eventuallyWait, poll).Should(ContainElement("DriftCorrected"))
}

// A member down: the other still gets a change, the down one is Unreachable (Ready=False,
// Reconciling), and it catches up when it is back.
func TestAMemberDownThenBackCatchesUp(t *testing.T) {
	g := NewWithT(t)
	clusters := attachMembers(t)
	realWorkspace(t, "team-u", nil)
	nsq := namespaceQuota("u-quota", "team-u", clusters, list("pods", "3"))
	g.Expect(mgmt.Create(ctx, nsq)).To(Succeed())
	t.Cleanup(func() { deleteAndWait(t, nsq) })
	expectReady(t, "u-quota")

	down := env.Members[1]
	g.Expect(down.StopAPIServer()).To(Succeed())
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			_ = down.StartAPIServer()
		}
	})
	g.Expect(mgmt.Get(ctx, client.ObjectKey{Name: "u-quota"}, nsq)).To(Succeed())
	nsq.Spec.Hard = tenancyv1.ResourceList(list("pods", "4"))
	g.Expect(mgmt.Update(ctx, nsq)).To(Succeed())
	g.Eventually(func(g Gomega) {
		n := getQuota(g, "u-quota")
		g.Expect(n.Status.ObservedGeneration).To(Equal(n.Generation))
		g.Expect(readyReason(n.Status.Conditions)).To(Equal("False/" + tenancyv1.ReasonProgressing))
		g.Expect(meta.IsStatusConditionTrue(n.Status.Conditions, tenancyv1.ReconcilingCondition)).To(BeTrue())
		phases := map[string]tenancyv1.NamespacePhase{}
		for _, c := range n.Status.Clusters {
			phases[c.Name] = c.Phase
		}
		g.Expect(phases).To(Equal(map[string]tenancyv1.NamespacePhase{
			env.Members[0].Name: tenancyv1.NamespaceActive, down.Name: tenancyv1.NamespaceUnreachable}))
	}, eventuallyWait, poll).Should(Succeed())
	rq := &corev1.ResourceQuota{}
	g.Expect(env.Members[0].Client.Get(ctx, client.ObjectKey{Namespace: "u-quota", Name: QuotaName}, rq)).To(Succeed())
	g.Expect(rq.Spec.Hard.Pods().String()).To(Equal("4"))

	g.Expect(down.StartAPIServer()).To(Succeed())
	restarted = true
	expectReady(t, "u-quota")
	g.Expect(down.Client.Get(ctx, client.ObjectKey{Namespace: "u-quota", Name: QuotaName}, rq)).To(Succeed())
	g.Expect(rq.Spec.Hard.Pods().String()).To(Equal("4"))
}

// Bad references get a clear condition and place nothing: a missing workspace, clusters outside
// the workspace, a namespace another NamespaceQuota (created earlier) holds.
func TestBadReferencesAreRefusedWithAClearCondition(t *testing.T) {
	g := NewWithT(t)
	clusters := attachMembers(t)
	memberCluster(t, "not-real", nil)
	realWorkspace(t, "team-b", nil)

	cases := []struct {
		nsq    *tenancyv1.NamespaceQuota
		reason string
		msg    string
	}{
		{namespaceQuota("b-nows", "no-such-workspace", clusters, list("pods", "1")), tenancyv1.ReasonWorkspaceNotFound, `workspace "no-such-workspace" does not exist`},
		{namespaceQuota("b-outside", "team-b", append([]string{"not-real"}, clusters...), list("pods", "1")), tenancyv1.ReasonClustersOutsideWorkspace, "not-real, outside workspace team-b"},
	}
	for _, c := range cases {
		g.Expect(mgmt.Create(ctx, c.nsq)).To(Succeed())
		t.Cleanup(func() { deleteAndWait(t, c.nsq) })
	}
	for _, c := range cases {
		g.Eventually(func(g Gomega) {
			n := getQuota(g, c.nsq.Name)
			g.Expect(readyReason(n.Status.Conditions)).To(Equal("False/" + c.reason))
			g.Expect(meta.IsStatusConditionTrue(n.Status.Conditions, tenancyv1.StalledCondition)).To(BeTrue())
			g.Expect(meta.FindStatusCondition(n.Status.Conditions, tenancyv1.ReadyCondition).Message).To(ContainSubstring(c.msg))
		}, eventuallyWait, poll).Should(Succeed())
		for _, m := range env.Members {
			g.Expect(apierrors.IsNotFound(m.Client.Get(ctx, client.ObjectKey{Name: c.nsq.Name}, &corev1.Namespace{}))).To(BeTrue())
		}
	}

	first := namespaceQuota("b-first", "team-b", clusters[:1], list("pods", "1"))
	first.Spec.Namespace = "b-shared"
	g.Expect(mgmt.Create(ctx, first)).To(Succeed())
	t.Cleanup(func() { deleteAndWait(t, first) })
	expectReady(t, "b-first")
	second := namespaceQuota("b-second", "team-b", clusters, list("pods", "9"))
	second.Spec.Namespace = "b-shared"
	g.Expect(mgmt.Create(ctx, second)).To(Succeed())
	t.Cleanup(func() { deleteAndWait(t, second) })
	g.Eventually(func(g Gomega) {
		n := getQuota(g, "b-second")
		g.Expect(readyReason(n.Status.Conditions)).To(Equal("False/" + tenancyv1.ReasonNamespaceConflict))
		phases := map[string]tenancyv1.NamespacePhase{}
		for _, c := range n.Status.Clusters {
			phases[c.Name] = c.Phase
		}
		// Where the first holds it, a conflict; elsewhere it is placed.
		g.Expect(phases).To(Equal(map[string]tenancyv1.NamespacePhase{clusters[0]: tenancyv1.NamespaceFailed, clusters[1]: tenancyv1.NamespaceActive}))
	}, eventuallyWait, poll).Should(Succeed())
	rq := &corev1.ResourceQuota{}
	g.Expect(env.Members[0].Client.Get(ctx, client.ObjectKey{Namespace: "b-shared", Name: QuotaName}, rq)).To(Succeed())
	g.Expect(rq.Spec.Hard.Pods().String()).To(Equal("1"), "the first keeps its quota")
	g.Expect(rq.Labels).To(HaveKeyWithValue(tenancyv1.NamespaceQuotaLabel, "b-first"))
}

// eventReasons lists the reasons of the events about the object named name.
func eventReasons(g Gomega, name string) []string {
	var list eventsv1.EventList
	g.Expect(mgmt.List(ctx, &list)).To(Succeed())
	var out []string
	for _, e := range list.Items {
		if e.Regarding.Name == name {
			out = append(out, e.Reason)
		}
	}
	return out
}

// A namespace that exists in a member and was not offered to the workspace (by its label) is
// not adopted: else a workspace admin could bind roles in any namespace of the member.
func TestANamespaceNotOfferedToTheWorkspaceIsNotAdopted(t *testing.T) {
	g := NewWithT(t)
	clusters := attachMembers(t)
	realWorkspace(t, "team-o", nil)
	m1 := env.Members[0].Client
	sys := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "o-system", Labels: map[string]string{"owner": "platform"}}}
	g.Expect(m1.Create(ctx, sys)).To(Succeed())
	nsq := namespaceQuota("o-quota", "team-o", clusters, list("pods", "1"))
	nsq.Spec.Namespace = "o-system"
	g.Expect(mgmt.Create(ctx, nsq)).To(Succeed())
	t.Cleanup(func() { deleteAndWait(t, nsq) })
	g.Eventually(func(g Gomega) {
		n := getQuota(g, "o-quota")
		g.Expect(readyReason(n.Status.Conditions)).To(Equal("False/" + tenancyv1.ReasonClustersFailed))
		for _, c := range n.Status.Clusters {
			if c.Name == env.Members[0].Name {
				g.Expect(c.Phase).To(Equal(tenancyv1.NamespaceFailed))
				g.Expect(c.Placed).To(BeFalse())
				g.Expect(c.Message).To(ContainSubstring("is not offered to workspace team-o: to let Paddock adopt it, a member admin labels it tenancy.paddock.dev/workspace=team-o"))
			} else {
				g.Expect(c.Phase).To(Equal(tenancyv1.NamespaceActive), "created where it did not exist")
			}
		}
	}, eventuallyWait, poll).Should(Succeed())
	got := &corev1.Namespace{}
	g.Expect(m1.Get(ctx, client.ObjectKey{Name: "o-system"}, got)).To(Succeed())
	g.Expect(got.Labels).To(Equal(map[string]string{"owner": "platform", "kubernetes.io/metadata.name": "o-system"}), "untouched")
	g.Expect(apierrors.IsNotFound(m1.Get(ctx, client.ObjectKey{Namespace: "o-system", Name: QuotaName}, &corev1.ResourceQuota{}))).To(BeTrue())

	// Offered by the member's admin: adopted.
	got.Labels[tenancyv1.WorkspaceLabel] = "team-o"
	g.Expect(m1.Update(ctx, got)).To(Succeed())
	g.Eventually(func(g Gomega) string { return readyReason(getQuota(g, "o-quota").Status.Conditions) }, retryMax, poll).Should(Equal("True/Succeeded"))
}

// While a newer spec is refused by the budget, the members are kept at the admitted one: a
// quota deleted by hand comes back with the admitted limits, not the refused ones.
func TestTheAdmittedSpecIsEnforcedWhileANewerOneIsRefused(t *testing.T) {
	g := NewWithT(t)
	clusters := attachMembers(t)
	realWorkspace(t, "team-e", list("pods", "10"))
	nsq := namespaceQuota("e-quota", "team-e", clusters, list("pods", "4"))
	g.Expect(mgmt.Create(ctx, nsq)).To(Succeed())
	t.Cleanup(func() { deleteAndWait(t, nsq) })
	expectReady(t, "e-quota")
	g.Expect(mgmt.Get(ctx, client.ObjectKey{Name: "e-quota"}, nsq)).To(Succeed())
	nsq.Spec.Hard = tenancyv1.ResourceList(list("pods", "6")) // 12 of 10
	g.Expect(mgmt.Update(ctx, nsq)).To(Succeed())
	g.Eventually(func(g Gomega) string { return readyReason(getQuota(g, "e-quota").Status.Conditions) }, eventuallyWait, poll).
		Should(Equal("False/" + tenancyv1.ReasonExceedsWorkspaceQuota))
	m2 := env.Members[1].Client
	rq := &corev1.ResourceQuota{}
	g.Expect(m2.Get(ctx, client.ObjectKey{Namespace: "e-quota", Name: QuotaName}, rq)).To(Succeed())
	g.Expect(m2.Delete(ctx, rq)).To(Succeed())
	g.Eventually(func(g Gomega) {
		got := &corev1.ResourceQuota{}
		g.Expect(m2.Get(ctx, client.ObjectKey{Namespace: "e-quota", Name: QuotaName}, got)).To(Succeed())
		g.Expect(got.UID).NotTo(Equal(rq.UID))
		g.Expect(got.Spec.Hard.Pods().String()).To(Equal("4"), "the admitted spec, not the refused one")
	}, 30*time.Second, poll).Should(Succeed())
	n := getQuota(g, "e-quota")
	g.Expect(n.Status.Applied).NotTo(BeNil())
	g.Expect(n.Status.Applied.Generation).To(Equal(n.Generation - 1))
}

// Moving a namespace to another workspace is an edit of spec.workspace; one the new budget
// refuses stays where it was, counted in its old budget and granted by its old workspace only.
func TestMovingANamespaceToAWorkspaceThatRefusesItKeepsItWhereItWas(t *testing.T) {
	g := NewWithT(t)
	clusters := attachMembers(t)
	realWorkspace(t, "team-from", list("pods", "10"))
	to := realWorkspace(t, "team-to", list("pods", "2"))
	nsq := namespaceQuota("mv-quota", "team-from", clusters, list("pods", "3"))
	g.Expect(mgmt.Create(ctx, nsq)).To(Succeed())
	t.Cleanup(func() { deleteAndWait(t, nsq) })
	expectReady(t, "mv-quota")
	fromGrant := grant("mv-from", "view", tenancyv1.GrantScope{Workspace: "team-from"}, tenancyv1.Subject{Kind: "User", Name: "from-user"})
	toGrant := grant("mv-to", "view", tenancyv1.GrantScope{Workspace: "team-to"}, tenancyv1.Subject{Kind: "User", Name: "to-user"})
	for _, rg := range []*tenancyv1.RoleGrant{fromGrant, toGrant} {
		g.Expect(mgmt.Create(ctx, rg)).To(Succeed())
		t.Cleanup(func() { deleteAndWait(t, rg) })
	}
	expectGrantReady(t, "mv-from", 2)

	g.Expect(mgmt.Get(ctx, client.ObjectKey{Name: "mv-quota"}, nsq)).To(Succeed())
	nsq.Spec.Workspace = "team-to" // 6 of team-to's 2
	g.Expect(mgmt.Update(ctx, nsq)).To(Succeed())
	g.Eventually(func(g Gomega) string { return readyReason(getQuota(g, "mv-quota").Status.Conditions) }, eventuallyWait, poll).
		Should(Equal("False/" + tenancyv1.ReasonExceedsWorkspaceQuota))
	// Still counted in team-from (nothing freed for others to take), still labelled and granted
	// as team-from's; team-to's grant has nothing there.
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		g.Expect(admittedIn(getWorkspace(g, "team-from"))).To(ContainElement("mv-quota"))
		for _, m := range env.Members {
			ns := &corev1.Namespace{}
			g.Expect(m.Client.Get(ctx, client.ObjectKey{Name: "mv-quota"}, ns)).To(Succeed())
			g.Expect(ns.Labels).To(HaveKeyWithValue(tenancyv1.WorkspaceLabel, "team-from"))
			g.Expect(apierrors.IsNotFound(m.Client.Get(ctx, client.ObjectKey{Namespace: "mv-quota", Name: "paddock-mv-to"}, &rbacv1.RoleBinding{}))).To(BeTrue())
			g.Expect(m.Client.Get(ctx, client.ObjectKey{Namespace: "mv-quota", Name: "paddock-mv-from"}, &rbacv1.RoleBinding{})).To(Succeed())
		}
		time.Sleep(200 * time.Millisecond)
	}

	// team-to's budget grows: the move happens, and the grants follow it.
	g.Expect(mgmt.Get(ctx, client.ObjectKeyFromObject(to), to)).To(Succeed())
	to.Spec.Quota.Hard = tenancyv1.ResourceList(list("pods", "20"))
	g.Expect(mgmt.Update(ctx, to)).To(Succeed())
	expectReady(t, "mv-quota")
	g.Eventually(func(g Gomega) {
		g.Expect(admittedIn(getWorkspace(g, "team-from"))).NotTo(ContainElement("mv-quota"))
		for _, m := range env.Members {
			ns := &corev1.Namespace{}
			g.Expect(m.Client.Get(ctx, client.ObjectKey{Name: "mv-quota"}, ns)).To(Succeed())
			g.Expect(ns.Labels).To(HaveKeyWithValue(tenancyv1.WorkspaceLabel, "team-to"))
			g.Expect(m.Client.Get(ctx, client.ObjectKey{Namespace: "mv-quota", Name: "paddock-mv-to"}, &rbacv1.RoleBinding{})).To(Succeed())
			g.Expect(apierrors.IsNotFound(m.Client.Get(ctx, client.ObjectKey{Namespace: "mv-quota", Name: "paddock-mv-from"}, &rbacv1.RoleBinding{}))).To(BeTrue())
		}
	}, eventuallyWait, poll).Should(Succeed())
}

// A LimitRange of max only (the apiserver fills in default and defaultRequest from it) is left
// alone once in place: no write on every pass.
func TestAPartialLimitRangeIsNotRewrittenOnEveryPass(t *testing.T) {
	g := NewWithT(t)
	clusters := attachMembers(t)
	realWorkspace(t, "team-l", nil)
	nsq := namespaceQuota("l-quota", "team-l", clusters[:1], list("pods", "3"))
	nsq.Spec.LimitRange = &tenancyv1.LimitRangeDefaults{Max: tenancyv1.ResourceList(list("cpu", "1", "memory", "1Gi"))}
	g.Expect(mgmt.Create(ctx, nsq)).To(Succeed())
	t.Cleanup(func() { deleteAndWait(t, nsq) })
	expectReady(t, "l-quota")
	m1 := env.Members[0].Client
	lr := &corev1.LimitRange{}
	g.Expect(m1.Get(ctx, client.ObjectKey{Namespace: "l-quota", Name: LimitRangeName}, lr)).To(Succeed())
	g.Expect(lr.Spec.Limits[0].Default.Cpu().String()).To(Equal("1"), "defaulted by the apiserver")
	// Passes happen (a pod changes the quota's usage), and the LimitRange stays as it is.
	g.Expect(m1.Create(ctx, pod("l-quota", "p"))).To(Succeed())
	g.Eventually(func(g Gomega) string {
		return getQuota(g, "l-quota").Status.Used.Pods().String()
	}, eventuallyWait, poll).Should(Equal("1"))
	got := &corev1.LimitRange{}
	g.Expect(m1.Get(ctx, client.ObjectKey{Namespace: "l-quota", Name: LimitRangeName}, got)).To(Succeed())
	g.Expect(got.ResourceVersion).To(Equal(lr.ResourceVersion))
	// A hand edit of what Paddock set is drift, and restored.
	got.Spec.Limits[0].Max[corev1.ResourceCPU] = qty("64")
	g.Expect(m1.Update(ctx, got)).To(Succeed())
	g.Eventually(func(g Gomega) string {
		lr := &corev1.LimitRange{}
		g.Expect(m1.Get(ctx, client.ObjectKey{Namespace: "l-quota", Name: LimitRangeName}, lr)).To(Succeed())
		return lr.Spec.Limits[0].Max.Cpu().String()
	}, 30*time.Second, poll).Should(Equal("1"))
}

// eventNotes lists the notes of the events of reason about the object named name.
func eventNotes(g Gomega, name, reason string) []string {
	var list eventsv1.EventList
	g.Expect(mgmt.List(ctx, &list)).To(Succeed())
	var out []string
	for _, e := range list.Items {
		if e.Regarding.Name == name && e.Reason == reason {
			out = append(out, e.Note)
		}
	}
	return out
}
