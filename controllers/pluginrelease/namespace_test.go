package pluginrelease

import (
	"bytes"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/gomega"
	"helm.sh/helm/v3/pkg/chart/loader"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/paddock-dev/paddock/internal/clustercache"
	"github.com/paddock-dev/paddock/internal/helm"
	"github.com/paddock-dev/paddock/internal/scheme"
	"github.com/paddock-dev/paddock/test/chartrepos"
	"github.com/paddock-dev/paddock/test/envs"
)

// Member credentials that may not create namespaces: createNamespace still installs into a
// namespace that exists, and into one that does not it fails with the member's refusal.
func TestCreateNamespaceWithCredentialsThatMayNotCreateNamespaces(t *testing.T) {
	g := NewWithT(t)
	m := env.Members[1]
	user, err := m.Env.ControlPlane.AddUser(envtest.User{Name: "no-namespace-create"}, nil)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(envs.EnsureNamespace(ctx, m.Client, "limited-existing")).To(Succeed())
	objs := []client.Object{
		&rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "namespace-reader"},
			Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"namespaces"}, Verbs: []string{"get", "list", "watch"}}}},
		// envtest runs no controller-manager, so the aggregated admin role is empty: an own one.
		&rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "namespace-everything"},
			Rules: []rbacv1.PolicyRule{{APIGroups: []string{"*"}, Resources: []string{"*"}, Verbs: []string{"*"}}}},
		&rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "no-namespace-create"},
			RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "namespace-reader"},
			Subjects: []rbacv1.Subject{{Kind: rbacv1.UserKind, Name: "no-namespace-create"}}},
		&rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "no-namespace-create", Namespace: "limited-existing"},
			RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "namespace-everything"},
			Subjects: []rbacv1.Subject{{Kind: rbacv1.UserKind, Name: "no-namespace-create"}}},
	}
	for _, o := range objs {
		g.Expect(m.Client.Create(ctx, o)).To(Succeed())
	}

	c := clustercache.New(clustercache.Options{Scheme: scheme.New(), Timeout: 10 * time.Second})
	acc, err := c.Connect("limited", "v1", user.Config())
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(c.Admit(acc, "test")).To(BeTrue())
	defer c.Disconnect("limited")
	packaged, err := chartrepos.Package("../../test/testdata/charts/hello", "0.1.0")
	g.Expect(err).NotTo(HaveOccurred())
	ch, err := loader.LoadArchive(bytes.NewReader(packaged.Archive))
	g.Expect(err).NotTo(HaveOccurred())

	install := func(namespace string) error {
		hc, err := helm.New(acc, "hello", namespace, logr.Discard(), func(s string) string { return s })
		g.Expect(err).NotTo(HaveOccurred())
		_, err = hc.Install(ctx, ch, map[string]any{}, helm.Options{CreateNamespace: true, Timeout: time.Minute})
		return err
	}
	g.Expect(install("limited-existing")).To(Succeed(), "the namespace exists: the refused create is not an error")
	cm := &corev1.ConfigMapList{}
	g.Expect(m.Client.List(ctx, cm, client.InNamespace("limited-existing"), client.MatchingLabels{"app.kubernetes.io/instance": "hello"})).To(Succeed())
	g.Expect(cm.Items).NotTo(BeEmpty(), "installed")

	err = install("limited-missing")
	g.Expect(err).To(MatchError(And(ContainSubstring("creating namespace limited-missing"), ContainSubstring("forbidden"))))
}
