package tenancy

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
	tenancyv1 "github.com/paddock-dev/paddock/api/tenancy/v1alpha1"
	"github.com/paddock-dev/paddock/internal/scheme"
	"github.com/paddock-dev/paddock/test/envs"
)

// as is a client of the member that impersonates user (in groups): what it may do is what the
// member's own RBAC says.
func as(t *testing.T, m *envs.Member, user string, groups ...string) client.Client {
	t.Helper()
	cfg := rest.CopyConfig(m.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: append(groups, "system:authenticated")}
	c, err := client.New(cfg, client.Options{Scheme: scheme.New()})
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	return c
}

// allowed says whether listing pods in ns (all namespaces for "") is allowed, and fails the
// test on any error but Forbidden.
func canListPods(g Gomega, c client.Client, ns string) bool {
	var opts []client.ListOption
	if ns != "" {
		opts = append(opts, client.InNamespace(ns))
	}
	err := c.List(ctx, &corev1.PodList{}, opts...)
	if apierrors.IsForbidden(err) {
		return false
	}
	g.Expect(err).NotTo(HaveOccurred())
	return true
}

func canCreateConfigMap(g Gomega, c client.Client, ns string) bool {
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, GenerateName: "probe-"}}
	err := c.Create(ctx, cm, client.DryRunAll)
	if apierrors.IsForbidden(err) {
		return false
	}
	g.Expect(err).NotTo(HaveOccurred())
	return true
}

func getGrant(g Gomega, name string) *tenancyv1.RoleGrant {
	rg := &tenancyv1.RoleGrant{}
	g.Expect(mgmt.Get(ctx, client.ObjectKey{Name: name}, rg)).To(Succeed())
	return rg
}

// expectGrantReady waits until the RoleGrant is Ready for its generation, verified in want
// clusters.
func expectGrantReady(t *testing.T, name string, want int) *tenancyv1.RoleGrant {
	t.Helper()
	var out *tenancyv1.RoleGrant
	NewWithT(t).Eventually(func(g Gomega) {
		rg := getGrant(g, name)
		g.Expect(rg.Status.ObservedGeneration).To(Equal(rg.Generation))
		g.Expect(readyReason(rg.Status.Conditions)).To(Equal("True/Succeeded"), "%+v", rg.Status)
		g.Expect(rg.Status.Clusters).To(HaveLen(want))
		for _, c := range rg.Status.Clusters {
			g.Expect(c.Phase).To(Equal(tenancyv1.GrantVerified))
			g.Expect(c.Verified).NotTo(BeNil())
			g.Expect(c.Verified.Allowed).To(BeTrue())
		}
		out = rg
	}, eventuallyWait, poll).Should(Succeed())
	return out
}

func grant(name string, role string, scope tenancyv1.GrantScope, subjects ...tenancyv1.Subject) *tenancyv1.RoleGrant {
	return &tenancyv1.RoleGrant{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: tenancyv1.RoleGrantSpec{Subjects: subjects, RoleRef: tenancyv1.RoleRef{Name: role}, Scope: scope}}
}

// RoleGrants at each scope, proven by impersonated requests against the member apiservers that
// succeed and fail exactly as RBAC says; a workspace grant follows the workspace's namespaces;
// deleting a grant takes the access away.
func TestRoleGrantsAtEachScopeAreProvenByTheMembersAuthorizers(t *testing.T) {
	g := NewWithT(t)
	clusters := attachMembers(t)
	m1, m2 := env.Members[0], env.Members[1]
	realWorkspace(t, "team-g", nil)
	nsq := namespaceQuota("g-ns", "team-g", clusters, list("pods", "10"))
	g.Expect(mgmt.Create(ctx, nsq)).To(Succeed())
	t.Cleanup(func() { deleteAndWait(t, nsq) })
	expectReady(t, "g-ns")

	alice := tenancyv1.Subject{Kind: "User", Name: "alice"}
	bob := tenancyv1.Subject{Kind: "User", Name: "bob"}
	auditors := tenancyv1.Subject{Kind: "Group", Name: "auditors"}
	deployer := tenancyv1.Subject{Kind: "ServiceAccount", Name: "deployer", Namespace: "ci"}
	grants := []*tenancyv1.RoleGrant{
		grant("g-workspace", "view", tenancyv1.GrantScope{Workspace: "team-g"}, alice),
		grant("g-namespace", "edit", tenancyv1.GrantScope{Cluster: m1.Name, Namespace: "g-ns"}, bob),
		grant("g-cluster", "view", tenancyv1.GrantScope{Cluster: m2.Name}, auditors),
		grant("g-selector", "cluster-admin", tenancyv1.GrantScope{ClusterSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "real"}}}, deployer),
	}
	for _, rg := range grants {
		g.Expect(mgmt.Create(ctx, rg)).To(Succeed())
		t.Cleanup(func() { deleteAndWait(t, rg) })
	}
	ws := expectGrantReady(t, "g-workspace", 2)
	for _, c := range ws.Status.Clusters {
		g.Expect(c.Bindings).To(Equal(int32(1)))
		g.Expect(c.Verified.Check).To(ContainSubstring("User alice"))
		g.Expect(c.Verified.Check).To(ContainSubstring("in namespace g-ns"))
	}
	expectGrantReady(t, "g-namespace", 1)
	expectGrantReady(t, "g-cluster", 1)
	expectGrantReady(t, "g-selector", 2)

	// What each subject may do, asked of the members themselves.
	rb := &rbacv1.RoleBinding{}
	g.Expect(m1.Client.Get(ctx, client.ObjectKey{Namespace: "g-ns", Name: "paddock-g-workspace"}, rb)).To(Succeed())
	g.Expect(rb.Labels).To(HaveKeyWithValue(tenancyv1.RoleGrantLabel, "g-workspace"))
	g.Expect(rb.Labels).To(HaveKey(tenancyv1.RoleGrantUIDLabel))
	g.Eventually(func(g Gomega) {
		for _, m := range env.Members {
			a := as(t, m, "alice")
			g.Expect(canListPods(g, a, "g-ns")).To(BeTrue(), "alice views g-ns in %s", m.Name)
			g.Expect(canCreateConfigMap(g, a, "g-ns")).To(BeFalse(), "view does not write")
			g.Expect(canListPods(g, a, "default")).To(BeFalse(), "only the workspace's namespaces")
		}
		b1, b2 := as(t, m1, "bob"), as(t, m2, "bob")
		g.Expect(canCreateConfigMap(g, b1, "g-ns")).To(BeTrue(), "bob edits g-ns in member-1")
		g.Expect(canCreateConfigMap(g, b1, "default")).To(BeFalse())
		g.Expect(canCreateConfigMap(g, b2, "g-ns")).To(BeFalse(), "and only in member-1")
		c1, c2 := as(t, m1, "carol", "auditors"), as(t, m2, "carol", "auditors")
		g.Expect(canListPods(g, c2, "")).To(BeTrue(), "auditors view all of member-2")
		g.Expect(canListPods(g, c1, "")).To(BeFalse(), "and nothing of member-1")
		for _, m := range env.Members {
			sa := as(t, m, "system:serviceaccount:ci:deployer", "system:serviceaccounts", "system:serviceaccounts:ci")
			g.Expect(canCreateConfigMap(g, sa, "kube-system")).To(BeTrue(), "the deployer is cluster-admin in %s", m.Name)
		}
	}, eventuallyWait, poll).Should(Succeed())

	// The workspace grows a namespace: alice follows it there; it leaves: so does she.
	more := namespaceQuota("g-ns2", "team-g", clusters, list("pods", "10"))
	g.Expect(mgmt.Create(ctx, more)).To(Succeed())
	expectReady(t, "g-ns2")
	g.Eventually(func(g Gomega) {
		rg := getGrant(g, "g-workspace")
		g.Expect(rg.Status.Clusters).To(HaveLen(2))
		for _, c := range rg.Status.Clusters {
			g.Expect(c.Bindings).To(Equal(int32(2)))
		}
		for _, m := range env.Members {
			g.Expect(canListPods(g, as(t, m, "alice"), "g-ns2")).To(BeTrue())
		}
	}, eventuallyWait, poll).Should(Succeed())
	deleteAndWait(t, more)
	g.Eventually(func(g Gomega) {
		for _, m := range env.Members {
			g.Expect(canListPods(g, as(t, m, "alice"), "g-ns2")).To(BeFalse(), "the namespace left the workspace (Orphan: it stays)")
			g.Expect(apierrors.IsNotFound(m.Client.Get(ctx, client.ObjectKey{Namespace: "g-ns2", Name: "paddock-g-workspace"}, &rbacv1.RoleBinding{}))).To(BeTrue())
		}
	}, eventuallyWait, poll).Should(Succeed())

	// Deleting a grant removes its bindings (and nothing else), and says the member's
	// authorizer no longer allows it.
	deleteAndWait(t, grants[0])
	for _, m := range env.Members {
		g.Expect(canListPods(g, as(t, m, "alice"), "g-ns")).To(BeFalse())
		var rbs rbacv1.RoleBindingList
		g.Expect(m.Client.List(ctx, &rbs, client.MatchingLabels{tenancyv1.RoleGrantLabel: "g-workspace"})).To(Succeed())
		g.Expect(rbs.Items).To(BeEmpty())
	}
	g.Expect(m1.Client.Get(ctx, client.ObjectKey{Namespace: "g-ns", Name: "paddock-g-namespace"}, rb)).To(Succeed(), "another grant's binding stays")
	g.Eventually(func(g Gomega) []string { return eventNotes(g, "g-workspace", "Revoked") }, eventuallyWait, poll).Should(
		ContainElement(ContainSubstring("the member's authorizer no longer allows User alice")))
}

// A binding deleted or edited by hand in a member is restored within the documented 30 s.
func TestAHandDeletedOrEditedBindingIsRestored(t *testing.T) {
	g := NewWithT(t)
	attachMembers(t)
	m2 := env.Members[1]
	rg := grant("h-grant", "view", tenancyv1.GrantScope{ClusterSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "real"}}},
		tenancyv1.Subject{Kind: "User", Name: "dave"})
	g.Expect(mgmt.Create(ctx, rg)).To(Succeed())
	t.Cleanup(func() { deleteAndWait(t, rg) })
	expectGrantReady(t, "h-grant", 2)

	crb := &rbacv1.ClusterRoleBinding{}
	g.Expect(m2.Client.Get(ctx, client.ObjectKey{Name: "paddock-h-grant"}, crb)).To(Succeed())
	start := time.Now()
	g.Expect(m2.Client.Delete(ctx, crb)).To(Succeed())
	g.Eventually(func(g Gomega) {
		got := &rbacv1.ClusterRoleBinding{}
		g.Expect(m2.Client.Get(ctx, client.ObjectKey{Name: "paddock-h-grant"}, got)).To(Succeed())
		g.Expect(got.UID).NotTo(Equal(crb.UID))
		g.Expect(canListPods(g, as(t, m2, "dave"), "")).To(BeTrue())
	}, 30*time.Second, poll).Should(Succeed())
	t.Logf("a hand-deleted ClusterRoleBinding was restored (and dave's access with it) in %s", time.Since(start).Round(time.Millisecond))

	g.Expect(m2.Client.Get(ctx, client.ObjectKey{Name: "paddock-h-grant"}, crb)).To(Succeed())
	crb.Subjects = []rbacv1.Subject{{Kind: "User", APIGroup: rbacv1.GroupName, Name: "mallory"}}
	start = time.Now()
	g.Expect(m2.Client.Update(ctx, crb)).To(Succeed())
	g.Eventually(func(g Gomega) {
		got := &rbacv1.ClusterRoleBinding{}
		g.Expect(m2.Client.Get(ctx, client.ObjectKey{Name: "paddock-h-grant"}, got)).To(Succeed())
		g.Expect(got.Subjects).To(HaveLen(1))
		g.Expect(got.Subjects[0].Name).To(Equal("dave"))
	}, 30*time.Second, poll).Should(Succeed())
	t.Logf("a hand-edited ClusterRoleBinding was restored in %s", time.Since(start).Round(time.Millisecond))
	g.Eventually(func(g Gomega) []string { return eventReasons(g, "h-grant") }, eventuallyWait, poll).Should(ContainElement("DriftCorrected"))
}

// A ClusterRole missing from one member is that cluster's error; the other is granted.
func TestAMissingClusterRoleIsAPerClusterError(t *testing.T) {
	g := NewWithT(t)
	attachMembers(t)
	m1, m2 := env.Members[0], env.Members[1]
	role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "only-in-member-1"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"get", "list"}}}}
	g.Expect(m1.Client.Create(ctx, role)).To(Succeed())
	t.Cleanup(func() { _ = m1.Client.Delete(ctx, role) })
	rg := grant("m-grant", "only-in-member-1", tenancyv1.GrantScope{ClusterSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "real"}}},
		tenancyv1.Subject{Kind: "User", Name: "erin"})
	g.Expect(mgmt.Create(ctx, rg)).To(Succeed())
	t.Cleanup(func() { deleteAndWait(t, rg) })
	g.Eventually(func(g Gomega) {
		got := getGrant(g, "m-grant")
		g.Expect(readyReason(got.Status.Conditions)).To(Equal("False/" + tenancyv1.ReasonClustersFailed))
		g.Expect(meta.IsStatusConditionTrue(got.Status.Conditions, tenancyv1.StalledCondition)).To(BeTrue())
		phases := map[string]tenancyv1.GrantPhase{}
		for _, c := range got.Status.Clusters {
			phases[c.Name] = c.Phase
			if c.Name == m1.Name {
				g.Expect(c.Verified).NotTo(BeNil())
				g.Expect(c.Verified.Check).To(Equal("User erin get configmaps in all namespaces"))
			} else {
				g.Expect(c.Message).To(ContainSubstring(`ClusterRole "only-in-member-1" does not exist in ` + m2.Name))
			}
		}
		g.Expect(phases).To(Equal(map[string]tenancyv1.GrantPhase{m1.Name: tenancyv1.GrantVerified, m2.Name: tenancyv1.GrantFailed}))
	}, eventuallyWait, poll).Should(Succeed())
	g.Expect(apierrors.IsNotFound(m2.Client.Get(ctx, client.ObjectKey{Name: "paddock-m-grant"}, &rbacv1.ClusterRoleBinding{}))).To(BeTrue())

	// Created in member-2, it is granted there too (the retry finds it).
	role2 := role.DeepCopy()
	role2.ResourceVersion, role2.UID = "", ""
	g.Expect(m2.Client.Create(ctx, role2)).To(Succeed())
	t.Cleanup(func() { _ = m2.Client.Delete(ctx, role2) })
	g.Eventually(func(g Gomega) {
		got := getGrant(g, "m-grant")
		g.Expect(readyReason(got.Status.Conditions)).To(Equal("True/Succeeded"))
	}, retryMax, poll).Should(Succeed(), "retried with a backoff of at most %s", retryMax)
}

// Changing a grant to a role a member lacks removes the old role's binding there at once (fail
// closed), and says why the new one is not granted.
func TestADowngradeToAMissingRoleRemovesTheOldBinding(t *testing.T) {
	g := NewWithT(t)
	attachMembers(t)
	m1 := env.Members[0]
	rg := grant("dg-grant", "cluster-admin", tenancyv1.GrantScope{Cluster: m1.Name}, tenancyv1.Subject{Kind: "User", Name: "frank"})
	g.Expect(mgmt.Create(ctx, rg)).To(Succeed())
	t.Cleanup(func() { deleteAndWait(t, rg) })
	expectGrantReady(t, "dg-grant", 1)
	g.Eventually(func(g Gomega) bool { return canCreateConfigMap(g, as(t, m1, "frank"), "kube-system") }, eventuallyWait, poll).Should(BeTrue())

	g.Expect(mgmt.Get(ctx, client.ObjectKeyFromObject(rg), rg)).To(Succeed())
	rg.Spec.RoleRef.Name = "no-such-role"
	g.Expect(mgmt.Update(ctx, rg)).To(Succeed())
	g.Eventually(func(g Gomega) {
		got := getGrant(g, "dg-grant")
		g.Expect(got.Status.ObservedGeneration).To(Equal(got.Generation))
		g.Expect(readyReason(got.Status.Conditions)).To(Equal("False/" + tenancyv1.ReasonClustersFailed))
		g.Expect(got.Status.Clusters[0].Message).To(ContainSubstring(`ClusterRole "no-such-role" does not exist`))
		g.Expect(got.Status.Clusters[0].Bindings).To(BeZero())
		g.Expect(canCreateConfigMap(g, as(t, m1, "frank"), "kube-system")).To(BeFalse(), "cluster-admin is gone")
	}, eventuallyWait, poll).Should(Succeed())
	g.Expect(apierrors.IsNotFound(m1.Client.Get(ctx, client.ObjectKey{Name: "paddock-dg-grant"}, &rbacv1.ClusterRoleBinding{}))).To(BeTrue())
}

// A MemberCluster being deleted waits until the grants in it are removed: a cluster leaving the
// fleet does not keep Paddock's bindings. (A second MemberCluster over member-1's apiserver, so
// that deleting it leaves the shared members attached.)
func TestDeletingAMemberClusterRemovesTheGrantsInIt(t *testing.T) {
	g := NewWithT(t)
	attachMembers(t)
	m1 := env.Members[0]
	mc := &clustersv1.MemberCluster{ObjectMeta: metav1.ObjectMeta{Name: "leaving"},
		Spec: clustersv1.MemberClusterSpec{Attach: &clustersv1.AttachSpec{KubeconfigSecretRef: clustersv1.SecretKeyReference{
			Namespace: secretNS, Name: envs.KubeconfigSecretName(m1.Name)}},
			HealthCheck: clustersv1.HealthCheckSpec{Period: &metav1.Duration{Duration: time.Second}}}}
	g.Expect(mgmt.Create(ctx, mc)).To(Succeed())
	t.Cleanup(func() { _ = mgmt.Delete(ctx, mc) })
	rg := grant("lv-grant", "view", tenancyv1.GrantScope{Cluster: "leaving"}, tenancyv1.Subject{Kind: "User", Name: "gina"})
	g.Expect(mgmt.Create(ctx, rg)).To(Succeed())
	t.Cleanup(func() { deleteAndWait(t, rg) })
	expectGrantReady(t, "lv-grant", 1)
	g.Eventually(func(g Gomega) []string {
		got := &clustersv1.MemberCluster{}
		g.Expect(mgmt.Get(ctx, client.ObjectKey{Name: "leaving"}, got)).To(Succeed())
		return got.Finalizers
	}, eventuallyWait, poll).Should(ContainElement(MemberFinalizer))

	deleteAndWait(t, mc)
	g.Expect(apierrors.IsNotFound(m1.Client.Get(ctx, client.ObjectKey{Name: "paddock-lv-grant"}, &rbacv1.ClusterRoleBinding{}))).To(BeTrue(),
		"the binding went before the MemberCluster did")
	g.Eventually(func(g Gomega) {
		got := getGrant(g, "lv-grant")
		g.Expect(readyReason(got.Status.Conditions)).To(Equal("False/" + ReasonClusterNotFound))
		g.Expect(got.Status.Clusters).To(BeEmpty())
	}, eventuallyWait, poll).Should(Succeed())
}

// A cluster taken out of a workspace loses the workspace's quota and grants there at once, even
// while the NamespaceQuota that lists it is refused for selecting it (nothing is applied for
// it, but nothing is left behind either).
func TestAClusterTakenOutOfTheWorkspaceLosesItsQuotaAndGrants(t *testing.T) {
	g := NewWithT(t)
	clusters := attachMembers(t)
	m2 := env.Members[1]
	realWorkspace(t, "team-x", nil)
	nsq := namespaceQuota("x-quota", "team-x", clusters, list("pods", "3"))
	g.Expect(mgmt.Create(ctx, nsq)).To(Succeed())
	t.Cleanup(func() { deleteAndWait(t, nsq) })
	expectReady(t, "x-quota")
	rg := grant("x-view", "view", tenancyv1.GrantScope{Workspace: "team-x"}, tenancyv1.Subject{Kind: "User", Name: "xu"})
	g.Expect(mgmt.Create(ctx, rg)).To(Succeed())
	t.Cleanup(func() { deleteAndWait(t, rg) })
	expectGrantReady(t, "x-view", 2)

	relabel := func(tier string) {
		mc := &clustersv1.MemberCluster{}
		g.Expect(mgmt.Get(ctx, client.ObjectKey{Name: m2.Name}, mc)).To(Succeed())
		mc.Labels["tier"] = tier
		g.Expect(mgmt.Update(ctx, mc)).To(Succeed())
	}
	relabel("elsewhere")
	t.Cleanup(func() { relabel("real") })
	g.Eventually(func(g Gomega) {
		n := getQuota(g, "x-quota")
		g.Expect(readyReason(n.Status.Conditions)).To(Equal("False/" + tenancyv1.ReasonClustersOutsideWorkspace))
		g.Expect(apierrors.IsNotFound(m2.Client.Get(ctx, client.ObjectKey{Namespace: "x-quota", Name: QuotaName}, &corev1.ResourceQuota{}))).To(BeTrue())
		g.Expect(apierrors.IsNotFound(m2.Client.Get(ctx, client.ObjectKey{Namespace: "x-quota", Name: "paddock-x-view"}, &rbacv1.RoleBinding{}))).To(BeTrue())
		g.Expect(canListPods(g, as(t, m2, "xu"), "x-quota")).To(BeFalse())
	}, eventuallyWait, poll).Should(Succeed())
	// The cluster still in the workspace keeps both.
	m1 := env.Members[0]
	g.Expect(m1.Client.Get(ctx, client.ObjectKey{Namespace: "x-quota", Name: QuotaName}, &corev1.ResourceQuota{})).To(Succeed())
	g.Expect(m1.Client.Get(ctx, client.ObjectKey{Namespace: "x-quota", Name: "paddock-x-view"}, &rbacv1.RoleBinding{})).To(Succeed())

	relabel("real")
	expectReady(t, "x-quota")
	expectGrantReady(t, "x-view", 2)
}
