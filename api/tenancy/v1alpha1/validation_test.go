package v1alpha1_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tenancyv1 "github.com/paddock-dev/paddock/api/tenancy/v1alpha1"
	"github.com/paddock-dev/paddock/internal/scheme"
	"github.com/paddock-dev/paddock/test/envs"
)

var (
	env  *envs.Env
	mgmt client.Client
	ctx  = context.Background()
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	var err error
	env, err = envs.Start(envs.Options{SkipCAPICRDs: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = env.Stop() }()
	mgmt = env.Management.Client
	return m.Run()
}

func q(s string) resource.Quantity { return resource.MustParse(s) }

// rawObject is an object as a user writes it (JSON), for input the Go types cannot hold.
func rawObject(g Gomega, data []byte) *unstructured.Unstructured {
	u := &unstructured.Unstructured{}
	g.Expect(u.UnmarshalJSON(data)).To(Succeed())
	return u
}

func names(n ...string) tenancyv1.ClusterTargets { return tenancyv1.ClusterTargets{ClusterNames: n} }

// refused says whether creating o is refused with a message containing want.
func refused(g Gomega, o client.Object, want string) {
	err := mgmt.Create(ctx, o)
	g.Expect(err).To(HaveOccurred(), "%s was accepted", o.GetName())
	g.Expect(err.Error()).To(ContainSubstring(want))
}

// refusedByPolicy is refused for a ValidatingAdmissionPolicy's check, which takes effect a
// moment after the policy is created.
func refusedByPolicy(g Gomega, o client.Object, want string) {
	g.Eventually(func(g Gomega) {
		c := o.DeepCopyObject().(client.Object)
		err := mgmt.Create(ctx, c)
		if err == nil {
			_ = mgmt.Delete(ctx, c)
		}
		g.Expect(err).To(HaveOccurred(), "%s was accepted", o.GetName())
		g.Expect(err.Error()).To(ContainSubstring(want))
	}, 30*time.Second, 200*time.Millisecond).Should(Succeed())
}

func TestWorkspaceValidation(t *testing.T) {
	g := NewWithT(t)
	ws := func(name string, spec tenancyv1.WorkspaceSpec) *tenancyv1.Workspace {
		return &tenancyv1.Workspace{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: spec}
	}
	refused(g, ws("no-clusters", tenancyv1.WorkspaceSpec{}), "set clusterNames, clusterSelector, or both")
	refused(g, ws("empty-quota", tenancyv1.WorkspaceSpec{Clusters: names("a"), Quota: &tenancyv1.WorkspaceQuota{Hard: nil}}), "spec.quota.hard")
	refusedByPolicy(g, ws("negative-quota", tenancyv1.WorkspaceSpec{Clusters: names("a"), Quota: &tenancyv1.WorkspaceQuota{Hard: tenancyv1.ResourceList{"pods": q("-5")}}}),
		"quantities must not be negative: spec.quota.hard.pods=-5")
	ok := ws("team-a", tenancyv1.WorkspaceSpec{DisplayName: "Team A", Clusters: tenancyv1.ClusterTargets{ClusterSelector: &metav1.LabelSelector{}},
		Quota: &tenancyv1.WorkspaceQuota{Hard: tenancyv1.ResourceList{"requests.cpu": q("10"), "pods": q("100")}}})
	g.Expect(mgmt.Create(ctx, ok)).To(Succeed())
	t.Cleanup(func() { _ = mgmt.Delete(ctx, ok) })

	// An invalid quantity, as a user writes it.
	bad := []byte(`{"apiVersion":"tenancy.paddock.dev/v1alpha1","kind":"Workspace","metadata":{"name":"bad-quantity"},
		"spec":{"clusters":{"clusterNames":["a"]},"quota":{"hard":{"pods":"lots"}}}}`)
	err := mgmt.Create(ctx, rawObject(g, bad))
	g.Expect(err).To(HaveOccurred())
	g.Expect(err.Error()).To(ContainSubstring("spec.quota.hard.pods"))
}

func TestNamespaceQuotaValidation(t *testing.T) {
	g := NewWithT(t)
	nsq := func(name string, edit func(*tenancyv1.NamespaceQuotaSpec)) *tenancyv1.NamespaceQuota {
		spec := tenancyv1.NamespaceQuotaSpec{Namespace: "team-a-dev", Workspace: "team-a", Clusters: names("a", "b"),
			Hard: tenancyv1.ResourceList{"requests.cpu": q("2"), "pods": q("20")}}
		if edit != nil {
			edit(&spec)
		}
		return &tenancyv1.NamespaceQuota{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: spec}
	}
	refused(g, nsq("system", func(s *tenancyv1.NamespaceQuotaSpec) { s.Namespace = "kube-system" }), "cannot be managed by a NamespaceQuota")
	refused(g, nsq("kube-prefix", func(s *tenancyv1.NamespaceQuotaSpec) { s.Namespace = "kube-extra" }), "cannot be managed by a NamespaceQuota")
	refused(g, nsq("default-ns", func(s *tenancyv1.NamespaceQuotaSpec) { s.Namespace = "default" }), "cannot be managed by a NamespaceQuota")
	refused(g, nsq("paddock-ns", func(s *tenancyv1.NamespaceQuotaSpec) { s.Namespace = "paddock-system" }), "a system namespace")
	// An empty list, as a user may write it (the Go type would leave it out).
	err := mgmt.Create(ctx, rawObject(g, []byte(`{"apiVersion":"tenancy.paddock.dev/v1alpha1","kind":"NamespaceQuota",
		"metadata":{"name":"empty-names"},"spec":{"namespace":"x","workspace":"w","clusters":{"clusterNames":[]},"hard":{"pods":"1"}}}`)))
	g.Expect(err).To(HaveOccurred())
	g.Expect(err.Error()).To(ContainSubstring("set clusterNames, clusterSelector, or both"))
	refused(g, nsq("bad-name", func(s *tenancyv1.NamespaceQuotaSpec) { s.Namespace = "Team_A" }), "spec.namespace")
	refused(g, nsq("no-workspace", func(s *tenancyv1.NamespaceQuotaSpec) { s.Workspace = "" }), "spec.workspace")
	refused(g, nsq("no-hard", func(s *tenancyv1.NamespaceQuotaSpec) { s.Hard = tenancyv1.ResourceList{} }), "hard lists between 1 and 64 resources")
	refusedByPolicy(g, nsq("negative", func(s *tenancyv1.NamespaceQuotaSpec) {
		s.Hard = tenancyv1.ResourceList{"pods": q("-1"), "requests.cpu": q("2")}
	}), "quantities must not be negative: spec.hard.pods=-1")
	refusedByPolicy(g, nsq("negative-limits", func(s *tenancyv1.NamespaceQuotaSpec) {
		s.LimitRange = &tenancyv1.LimitRangeDefaults{Max: tenancyv1.ResourceList{"cpu": q("-500m")}}
	}), "quantities must not be negative: spec.limitRange.max.cpu=-500m")
	refused(g, nsq("no-clusters", func(s *tenancyv1.NamespaceQuotaSpec) { s.Clusters = tenancyv1.ClusterTargets{} }), "set clusterNames, clusterSelector, or both")
	refused(g, nsq("empty-limitrange", func(s *tenancyv1.NamespaceQuotaSpec) { s.LimitRange = &tenancyv1.LimitRangeDefaults{} }),
		"set at least one of default, defaultRequest, max, min")
	refused(g, nsq("bad-policy", func(s *tenancyv1.NamespaceQuotaSpec) { s.DeletionPolicy = "Keep" }), "spec.deletionPolicy")

	ok := nsq("team-a-dev", nil)
	g.Expect(mgmt.Create(ctx, ok)).To(Succeed())
	t.Cleanup(func() { _ = mgmt.Delete(ctx, ok) })
	g.Expect(ok.Spec.DeletionPolicy).To(Equal(tenancyv1.NamespaceOrphan), "the default keeps workloads")
	// The namespace is its identity: another one is another NamespaceQuota.
	ok.Spec.Namespace = "team-a-prod"
	err = mgmt.Update(ctx, ok)
	g.Expect(err).To(HaveOccurred())
	g.Expect(err.Error()).To(ContainSubstring("namespace is immutable"))
}

func TestRoleGrantValidation(t *testing.T) {
	g := NewWithT(t)
	user := tenancyv1.Subject{Kind: "User", Name: "alice@example.com"}
	rg := func(name string, subjects []tenancyv1.Subject, scope tenancyv1.GrantScope) *tenancyv1.RoleGrant {
		return &tenancyv1.RoleGrant{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: tenancyv1.RoleGrantSpec{Subjects: subjects, RoleRef: tenancyv1.RoleRef{Name: "view"}, Scope: scope}}
	}
	ws := tenancyv1.GrantScope{Workspace: "team-a"}
	refused(g, rg("no-scope", []tenancyv1.Subject{user}, tenancyv1.GrantScope{}), "set exactly one of scope.workspace, scope.cluster, scope.clusterSelector")
	refused(g, rg("two-scopes", []tenancyv1.Subject{user}, tenancyv1.GrantScope{Workspace: "team-a", Cluster: "a"}), "set exactly one of")
	refused(g, rg("ns-without-cluster", []tenancyv1.Subject{user}, tenancyv1.GrantScope{Workspace: "team-a", Namespace: "x"}), "scope.namespace goes with scope.cluster")
	refused(g, rg("no-subjects", nil, ws), "spec.subjects")
	refused(g, rg("sa-without-ns", []tenancyv1.Subject{{Kind: "ServiceAccount", Name: "ci"}}, ws), "namespace is required for a ServiceAccount and only for one")
	refused(g, rg("user-with-ns", []tenancyv1.Subject{{Kind: "User", Name: "bob", Namespace: "x"}}, ws), "namespace is required for a ServiceAccount and only for one")
	refused(g, rg("bad-kind", []tenancyv1.Subject{{Kind: "Robot", Name: "r2"}}, ws), "spec.subjects[0].kind")

	for i, scope := range []tenancyv1.GrantScope{ws, {Cluster: "a"}, {Cluster: "a", Namespace: "team-a-dev"}, {ClusterSelector: &metav1.LabelSelector{}}} {
		o := rg(fmt.Sprintf("ok-%d", i), []tenancyv1.Subject{user, {Kind: "Group", Name: "devs"}, {Kind: "ServiceAccount", Name: "ci", Namespace: "ci"}}, scope)
		g.Expect(mgmt.Create(ctx, o)).To(Succeed(), "scope %+v", scope)
		t.Cleanup(func() { _ = mgmt.Delete(ctx, o) })
	}
}

// Kubernetes' own escalation rule, at admission and without a webhook: a RoleGrant of a
// ClusterRole needs the bind verb on that ClusterRole in the management cluster.
func TestARoleGrantNeedsBindOnItsRole(t *testing.T) {
	g := NewWithT(t)
	// alice may write RoleGrants, and bind view, but not cluster-admin.
	writer := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "rolegrant-writer"}, Rules: []rbacv1.PolicyRule{
		{APIGroups: []string{"tenancy.paddock.dev"}, Resources: []string{"rolegrants"}, Verbs: []string{"get", "list", "create", "update", "patch", "delete"}},
		{APIGroups: []string{"rbac.authorization.k8s.io"}, Resources: []string{"clusterroles"}, Verbs: []string{"bind"}, ResourceNames: []string{"view"}},
		// Its grants are by cluster selector (the scope check: tenancy-scope.yaml).
		{APIGroups: []string{"clusters.paddock.dev"}, Resources: []string{"memberclusters"}, Verbs: []string{"use"}},
	}}
	binding := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "rolegrant-writer-alice"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: writer.Name},
		Subjects: []rbacv1.Subject{{Kind: "User", Name: "alice"}}}
	for _, o := range []client.Object{writer, binding} {
		g.Expect(mgmt.Create(ctx, o)).To(Succeed())
		t.Cleanup(func() { _ = mgmt.Delete(ctx, o) })
	}
	cfg := rest.CopyConfig(env.Management.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "alice"}
	alice, err := client.New(cfg, client.Options{Scheme: scheme.New()})
	g.Expect(err).NotTo(HaveOccurred())

	grant := func(name, role string) *tenancyv1.RoleGrant {
		return &tenancyv1.RoleGrant{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: tenancyv1.RoleGrantSpec{
			Subjects: []tenancyv1.Subject{{Kind: "User", Name: "mallory"}}, RoleRef: tenancyv1.RoleRef{Name: role},
			Scope: tenancyv1.GrantScope{ClusterSelector: &metav1.LabelSelector{}}}}
	}
	// The policy takes effect a moment after it is created.
	g.Eventually(func(g Gomega) {
		err := alice.Create(ctx, grant("escalate", "cluster-admin"))
		g.Expect(err).To(HaveOccurred(), "alice granted cluster-admin")
		g.Expect(err.Error()).To(ContainSubstring("granting ClusterRole cluster-admin needs the bind verb on it in the management cluster"))
	}, 30*time.Second, 200*time.Millisecond).Should(Succeed())

	viewer := grant("view-for-mallory", "view")
	g.Expect(alice.Create(ctx, viewer)).To(Succeed(), "alice may bind view")
	t.Cleanup(func() { _ = mgmt.Delete(ctx, viewer) })
	// Nor by an edit: switching the role is granting it.
	viewer.Spec.RoleRef.Name = "cluster-admin"
	err = alice.Update(ctx, viewer)
	g.Expect(err).To(HaveOccurred())
	g.Expect(err.Error()).To(ContainSubstring("needs the bind verb"))
	// A change that grants nothing new (metadata: the controller's finalizer) needs no bind.
	g.Expect(alice.Get(ctx, client.ObjectKeyFromObject(viewer), viewer)).To(Succeed())
	viewer.Labels = map[string]string{"team": "a"}
	g.Expect(alice.Update(ctx, viewer)).To(Succeed())
	// Whoever may bind cluster-admin may grant it.
	admin := grant("admin-for-mallory", "cluster-admin")
	g.Expect(mgmt.Create(ctx, admin)).To(Succeed())
	t.Cleanup(func() { _ = mgmt.Delete(ctx, admin) })
}

// impersonate returns a management client acting as user.
func impersonate(t *testing.T, user string) client.Client {
	t.Helper()
	cfg := rest.CopyConfig(env.Management.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user}
	c, err := client.New(cfg, client.Options{Scheme: scheme.New()})
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	return c
}

func bindTo(t *testing.T, user, role string) {
	t.Helper()
	b := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: role + "-" + user},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role},
		Subjects: []rbacv1.Subject{{Kind: "User", Name: user}}}
	NewWithT(t).Expect(mgmt.Create(ctx, b)).To(Succeed())
	t.Cleanup(func() { _ = mgmt.Delete(ctx, b) })
}

// The ClusterRoles the chart ships, with the scope check: a workspace admin places namespaces
// and grants admin, edit or view only in the workspaces it may use; never cluster-wide, never
// cluster-admin; a viewer reads and writes nothing.
func TestTheShippedRolesKeepAWorkspaceAdminInItsWorkspace(t *testing.T) {
	g := NewWithT(t)
	// carol administers workspace team-a: the shipped role, and use on team-a only.
	useTeamA := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "paddock-workspace:team-a"}, Rules: []rbacv1.PolicyRule{
		{APIGroups: []string{"tenancy.paddock.dev"}, Resources: []string{"workspaces"}, Verbs: []string{"use"}, ResourceNames: []string{"team-a"}}}}
	g.Expect(mgmt.Create(ctx, useTeamA)).To(Succeed())
	t.Cleanup(func() { _ = mgmt.Delete(ctx, useTeamA) })
	bindTo(t, "carol", "paddock-workspace-admin")
	bindTo(t, "carol", useTeamA.Name)
	bindTo(t, "victor", "paddock-viewer")
	carol, victor := impersonate(t, "carol"), impersonate(t, "victor")

	quota := func(name, ws string) *tenancyv1.NamespaceQuota {
		return &tenancyv1.NamespaceQuota{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: tenancyv1.NamespaceQuotaSpec{
			Namespace: name, Workspace: ws, Clusters: tenancyv1.ClusterTargets{ClusterNames: []string{"a"}},
			Hard: tenancyv1.ResourceList{corev1.ResourcePods: resource.MustParse("1")}}}
	}
	grantIn := func(name, role string, scope tenancyv1.GrantScope) *tenancyv1.RoleGrant {
		return &tenancyv1.RoleGrant{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: tenancyv1.RoleGrantSpec{
			Subjects: []tenancyv1.Subject{{Kind: "User", Name: "dev"}}, RoleRef: tenancyv1.RoleRef{Name: role}, Scope: scope}}
	}
	// The policy takes effect a moment after it is created.
	g.Eventually(func(g Gomega) {
		err := carol.Create(ctx, quota("b-ns", "team-b"))
		g.Expect(err).To(HaveOccurred(), "carol placed a namespace in team-b")
		g.Expect(err.Error()).To(ContainSubstring("placing a namespace in workspace team-b needs the use verb on workspaces/team-b"))
	}, 30*time.Second, 200*time.Millisecond).Should(Succeed())
	mine := quota("a-ns", "team-a")
	g.Expect(carol.Create(ctx, mine)).To(Succeed())
	t.Cleanup(func() { _ = mgmt.Delete(ctx, mine) })
	mine.Spec.Hard[corev1.ResourcePods] = resource.MustParse("2")
	g.Expect(carol.Update(ctx, mine)).To(Succeed(), "carol edits her own")
	mine.Spec.Workspace = "team-b"
	err := carol.Update(ctx, mine)
	g.Expect(err).To(HaveOccurred())
	g.Expect(err.Error()).To(ContainSubstring("placing a namespace in workspace team-b"))
	// Someone else's, in team-b: carol cannot move it into hers either (out of team-b).
	theirs := quota("b-theirs", "team-b")
	g.Expect(mgmt.Create(ctx, theirs)).To(Succeed())
	t.Cleanup(func() { _ = mgmt.Delete(ctx, theirs) })
	theirs.Spec.Workspace = "team-a"
	err = carol.Update(ctx, theirs)
	g.Expect(err).To(HaveOccurred())
	g.Expect(err.Error()).To(ContainSubstring("moving a namespace out of workspace team-b needs the use verb on workspaces/team-b"))

	ok := grantIn("a-edit", "edit", tenancyv1.GrantScope{Workspace: "team-a"})
	g.Expect(carol.Create(ctx, ok)).To(Succeed(), "carol grants edit in her workspace")
	t.Cleanup(func() { _ = mgmt.Delete(ctx, ok) })
	for _, c := range []struct {
		rg  *tenancyv1.RoleGrant
		msg string
	}{
		{grantIn("b-edit", "edit", tenancyv1.GrantScope{Workspace: "team-b"}), "granting a role in workspace team-b needs the use verb"},
		{grantIn("a-root", "cluster-admin", tenancyv1.GrantScope{Workspace: "team-a"}), "granting ClusterRole cluster-admin needs the bind verb"},
		{grantIn("a-cluster", "view", tenancyv1.GrantScope{Cluster: "a"}), "granting a role in cluster a needs the use verb on memberclusters/a"},
		{grantIn("a-fleet", "view", tenancyv1.GrantScope{ClusterSelector: &metav1.LabelSelector{}}), "granting a role by cluster selector needs the use verb on all memberclusters"},
	} {
		err := carol.Create(ctx, c.rg)
		g.Expect(err).To(HaveOccurred(), "carol created %s", c.rg.Name)
		g.Expect(err.Error()).To(ContainSubstring(c.msg))
	}

	// Nor delete or re-scope another workspace's objects.
	err = carol.Delete(ctx, theirs)
	g.Expect(err).To(HaveOccurred(), "carol deleted team-b's namespace")
	g.Expect(err.Error()).To(ContainSubstring("deleting a namespace of workspace team-b needs the use verb on workspaces/team-b"))
	bGrant := grantIn("b-view", "view", tenancyv1.GrantScope{Workspace: "team-b"})
	g.Expect(mgmt.Create(ctx, bGrant)).To(Succeed())
	t.Cleanup(func() { _ = mgmt.Delete(ctx, bGrant) })
	bGrant.Spec.Scope.Workspace = "team-a"
	err = carol.Update(ctx, bGrant)
	g.Expect(err).To(HaveOccurred(), "carol took team-b's grant")
	g.Expect(err.Error()).To(ContainSubstring("changing a RoleGrant's scope needs the use verb on its old scope too"))
	g.Expect(mgmt.Get(ctx, client.ObjectKeyFromObject(bGrant), bGrant)).To(Succeed())
	err = carol.Delete(ctx, bGrant)
	g.Expect(err).To(HaveOccurred())
	g.Expect(err.Error()).To(ContainSubstring("deleting a grant of workspace team-b"))

	// Nor strip the controller's finalizer from her own (its quotas would stay in the members,
	// untracked); she deletes it and the controller cleans up.
	g.Expect(mgmt.Get(ctx, client.ObjectKeyFromObject(mine), mine)).To(Succeed())
	mine.Finalizers = []string{tenancyv1.NamespaceQuotaFinalizer}
	g.Expect(mgmt.Update(ctx, mine)).To(Succeed())
	t.Cleanup(func() {
		o := &tenancyv1.NamespaceQuota{}
		if mgmt.Get(ctx, client.ObjectKeyFromObject(mine), o) == nil {
			o.Finalizers = nil
			_ = mgmt.Update(ctx, o)
		}
	})
	g.Eventually(func(g Gomega) {
		o := &tenancyv1.NamespaceQuota{}
		g.Expect(carol.Get(ctx, client.ObjectKeyFromObject(mine), o)).To(Succeed())
		o.Finalizers = nil
		err := carol.Update(ctx, o)
		g.Expect(err).To(HaveOccurred(), "carol removed the finalizer")
		g.Expect(err.Error()).To(ContainSubstring("removing a tenancy.paddock.dev finalizer needs update on namespacequotas/finalizers"))
	}, 30*time.Second, 200*time.Millisecond).Should(Succeed())
	g.Expect(carol.Delete(ctx, mine)).To(Succeed(), "carol deletes her own")

	// The viewer reads, and writes nothing.
	g.Expect(victor.List(ctx, &tenancyv1.NamespaceQuotaList{})).To(Succeed())
	g.Expect(victor.List(ctx, &tenancyv1.RoleGrantList{})).To(Succeed())
	err = victor.Create(ctx, quota("v-ns", "team-a"))
	g.Expect(apierrors.IsForbidden(err)).To(BeTrue(), "%v", err)
	g.Expect(apierrors.IsForbidden(victor.List(ctx, &corev1.SecretList{}))).To(BeTrue())
}

func TestPrinterColumns(t *testing.T) {
	g := NewWithT(t)
	sch := scheme.New()
	g.Expect(apiextensionsv1.AddToScheme(sch)).To(Succeed())
	crds, err := client.New(env.Management.Config, client.Options{Scheme: sch})
	g.Expect(err).NotTo(HaveOccurred())
	want := map[string][]string{
		"workspaces.tenancy.paddock.dev":      {"Clusters", "Namespaces", "Ready", "Age"},
		"namespacequotas.tenancy.paddock.dev": {"Namespace", "Workspace", "Clusters", "Ready", "Reason", "Age"},
		"rolegrants.tenancy.paddock.dev":      {"Role", "Clusters", "Ready", "Reason", "Age"},
	}
	for name, cols := range want {
		crd := &apiextensionsv1.CustomResourceDefinition{}
		g.Expect(crds.Get(ctx, client.ObjectKey{Name: name}, crd)).To(Succeed())
		var got []string
		for _, c := range crd.Spec.Versions[0].AdditionalPrinterColumns {
			got = append(got, c.Name)
		}
		g.Expect(got).To(Equal(cols), name)
		g.Expect(crd.Spec.Scope).To(Equal(apiextensionsv1.ClusterScoped), name)
		g.Expect(strings.Join(crd.Spec.Names.ShortNames, ",")).To(Equal(map[string]string{
			"workspaces.tenancy.paddock.dev": "ws", "namespacequotas.tenancy.paddock.dev": "nsq", "rolegrants.tenancy.paddock.dev": "rg"}[name]))
	}
}
