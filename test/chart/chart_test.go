// Package chart tests the Helm chart that deploys the manager: rendered with the Helm SDK and
// applied with server-side dry-run to a real apiserver, so a broken chart fails CI.
package chart

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart/loader"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/paddock-dev/paddock/test/envs"
)

var env *envs.Env

func TestMain(m *testing.M) {
	var err error
	env, err = envs.Start(envs.Options{SkipCAPICRDs: true})
	if err != nil {
		_, _ = os.Stderr.WriteString(err.Error() + "\n")
		os.Exit(1)
	}
	code := m.Run()
	_ = env.Stop()
	os.Exit(code)
}

func render(t *testing.T, values map[string]any) []*unstructured.Unstructured {
	t.Helper()
	g := NewWithT(t)
	chrt, err := loader.Load(filepath.Join(env.RepoRoot, "charts", "paddock"))
	g.Expect(err).NotTo(HaveOccurred())
	install := action.NewInstall(&action.Configuration{})
	install.DryRun = true
	install.ClientOnly = true
	install.IncludeCRDs = true
	install.ReleaseName = "paddock"
	install.Namespace = "paddock-system"
	rel, err := install.Run(chrt, values)
	g.Expect(err).NotTo(HaveOccurred())

	var objs []*unstructured.Unstructured
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewBufferString(rel.Manifest), 4096)
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			g.Expect(err).NotTo(HaveOccurred())
		}
		if len(u.Object) == 0 {
			continue
		}
		objs = append(objs, u)
	}
	return objs
}

// applyDryRun sends every object to the apiserver with server-side apply and dry-run: schema,
// defaulting and admission all run; nothing is stored.
func applyDryRun(t *testing.T, objs []*unstructured.Unstructured) {
	t.Helper()
	g := NewWithT(t)
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "paddock-system"}}
	if err := env.Management.Client.Create(ctx, ns); err != nil {
		g.Expect(client.IgnoreAlreadyExists(err)).To(Succeed())
	}
	for _, o := range objs {
		err := env.Management.Client.Patch(ctx, o, client.Apply, client.DryRunAll, client.FieldOwner("chart-test"), client.ForceOwnership)
		g.Expect(err).NotTo(HaveOccurred(), "%s %s", o.GetKind(), o.GetName())
	}
}

func kinds(objs []*unstructured.Unstructured) map[string]int {
	out := map[string]int{}
	for _, o := range objs {
		out[o.GetKind()]++
	}
	return out
}

func deployment(t *testing.T, objs []*unstructured.Unstructured) *appsv1.Deployment {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == "Deployment" {
			d := &appsv1.Deployment{}
			NewWithT(t).Expect(runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, d)).To(Succeed())
			return d
		}
	}
	t.Fatal("no Deployment rendered")
	return nil
}

func TestChartDefaultsApplyToARealAPIServer(t *testing.T) {
	g := NewWithT(t)
	objs := render(t, nil)
	k := kinds(objs)
	g.Expect(k).To(HaveKeyWithValue("CustomResourceDefinition", BeNumerically(">=", 1)))
	g.Expect(k).To(HaveKeyWithValue("Deployment", 1))
	g.Expect(k).To(HaveKeyWithValue("ServiceAccount", 1))
	g.Expect(k).To(HaveKeyWithValue("ClusterRole", 4), "the manager's, and paddock-viewer, paddock-workspace-admin, paddock-platform-admin")
	g.Expect(k).To(HaveKeyWithValue("ClusterRoleBinding", 1))
	g.Expect(k).To(HaveKeyWithValue("ValidatingAdmissionPolicy", 4), "the RoleGrant escalation check, the tenancy scope, quantities and finalizers checks")
	var userRoles []string
	for _, o := range objs {
		if o.GetKind() == "ClusterRole" && strings.HasPrefix(o.GetName(), "paddock-") && o.GetLabels()["app.kubernetes.io/part-of"] == "paddock" {
			userRoles = append(userRoles, o.GetName())
		}
	}
	g.Expect(userRoles).To(ConsistOf("paddock-viewer", "paddock-workspace-admin", "paddock-platform-admin"), "fixed names, for docs and bindings")
	g.Expect(k).To(HaveKeyWithValue("Role", 4), "leader election, kubeconfig Secrets, repository Secrets, digest key")
	applyDryRun(t, objs)

	d := deployment(t, objs)
	c := d.Spec.Template.Spec.Containers[0]
	g.Expect(c.Args).To(ContainElement("--leader-elect=true"), "leader election is on by default in the chart")
	g.Expect(c.Args).To(ContainElement("--max-concurrent-probes=500"))
	g.Expect(c.Args).To(ContainElement("--kubeconfig-secret-namespaces="+releaseNamespace(objs)), "the release namespace by default")
	g.Expect(c.Args).To(ContainElements("--repository-secret-namespace="+releaseNamespace(objs), "--max-repository-index-bytes=52428800"))
	g.Expect(c.Args).To(ContainElement("--values-secret-namespaces="), "no PluginRelease reads values Secrets unless the chart says where")
	g.Expect(c.Args).To(ContainElement(MatchRegexp(`^--digest-key-secret=.+-digest-key$`)))
	g.Expect(c.Args).NotTo(ContainElement(HavePrefix("--allow-loopback")), "never in a real deployment")
	g.Expect(c.LivenessProbe).NotTo(BeNil())
	g.Expect(c.ReadinessProbe).NotTo(BeNil())
	g.Expect(c.Resources.Requests).NotTo(BeEmpty())
	g.Expect(*c.SecurityContext.AllowPrivilegeEscalation).To(BeFalse())
	g.Expect(*c.SecurityContext.ReadOnlyRootFilesystem).To(BeTrue())
	g.Expect(c.SecurityContext.Capabilities.Drop).To(ContainElement(corev1.Capability("ALL")))
	g.Expect(*d.Spec.Template.Spec.SecurityContext.RunAsNonRoot).To(BeTrue())

	// The manager's ClusterRole is the one generated from the controllers' RBAC markers.
	for _, o := range objs {
		if o.GetKind() == "ClusterRole" && strings.HasSuffix(o.GetName(), "-manager") {
			rules, _, _ := unstructured.NestedSlice(o.Object, "rules")
			g.Expect(rules).To(ContainElement(HaveKeyWithValue("resources", ContainElement("memberclusters/status"))))
			g.Expect(rules).NotTo(ContainElement(HaveKeyWithValue("resources", ContainElement("secrets"))), "no cluster-wide Secret read")
		}
	}
	g.Expect(secretRoleNamespaces(objs, "get")).To(ConsistOf(releaseNamespace(objs), releaseNamespace(objs)), "kubeconfig and repository Secrets")
	g.Expect(secretRoleNamespaces(objs, "create")).To(ConsistOf(releaseNamespace(objs)), "the digest key, created in the release namespace only")
	for _, o := range objs {
		if o.GetKind() == "Role" && strings.HasSuffix(o.GetName(), "-digest-key") {
			rules, _, _ := unstructured.NestedSlice(o.Object, "rules")
			g.Expect(rules).To(ConsistOf(HaveKeyWithValue("verbs", ConsistOf("create"))), "nothing but create")
		}
	}
}

// secretRoleNamespaces lists the namespaces of the Roles that grant verb on Secrets.
func secretRoleNamespaces(objs []*unstructured.Unstructured, verb string) []string {
	var out []string
	for _, o := range objs {
		if o.GetKind() != "Role" {
			continue
		}
		rules, _, _ := unstructured.NestedSlice(o.Object, "rules")
		for _, r := range rules {
			rule := r.(map[string]any)
			verbs, _ := rule["verbs"].([]any)
			if res, ok := rule["resources"].([]any); ok && len(res) == 1 && res[0] == "secrets" && slices.Contains(verbs, any(verb)) {
				out = append(out, o.GetNamespace())
			}
		}
	}
	return out
}

func releaseNamespace(objs []*unstructured.Unstructured) string {
	for _, o := range objs {
		if o.GetKind() == "Deployment" {
			return o.GetNamespace()
		}
	}
	return ""
}

func TestChartVariantsApply(t *testing.T) {
	g := NewWithT(t)
	objs := render(t, map[string]any{
		"leaderElection": map[string]any{"enabled": false},
		"rbac":           map[string]any{"create": true, "userRoles": false},
		"metrics":        map[string]any{"secure": true},
		"manager": map[string]any{"concurrency": []any{"membercluster=100"},
			"kubeconfigSecretNamespaces": []any{releaseNamespace(render(t, nil)), "default"},
			"memberDeniedCIDRs":          []any{"10.96.0.0/12", "10.244.0.0/16"},
			"repositoryDeniedCIDRs":      []any{"10.96.0.0/12"},
			"valuesSecretNamespaces":     []any{"default", "kube-public"}},
	})
	k := kinds(objs)
	g.Expect(k).To(HaveKeyWithValue("Role", 6), "kubeconfig Secrets in two namespaces, repository Secrets, values Secrets in two, digest key; no leader election Role")
	g.Expect(secretRoleNamespaces(objs, "get")).To(ConsistOf(releaseNamespace(objs), "default", releaseNamespace(objs), "default", "kube-public"))
	for _, o := range objs {
		if o.GetKind() == "Role" && strings.HasSuffix(o.GetName(), "-values-secrets") {
			rules, _, _ := unstructured.NestedSlice(o.Object, "rules")
			g.Expect(rules).To(ConsistOf(HaveKeyWithValue("verbs", ConsistOf("get"))), "values Secrets are read one by one, never listed or watched")
		}
	}
	g.Expect(k).To(HaveKeyWithValue("ClusterRole", 3), "manager, metrics-auth, metrics-reader (no user roles)")
	applyDryRun(t, objs)
	c := deployment(t, objs).Spec.Template.Spec.Containers[0]
	g.Expect(c.Args).To(ContainElements("--leader-elect=false", "--metrics-secure=true", "--concurrency=membercluster=100",
		"--kubeconfig-secret-namespaces="+releaseNamespace(objs)+",default", "--member-denied-cidrs=10.96.0.0/12,10.244.0.0/16",
		"--repository-denied-cidrs=10.96.0.0/12", "--values-secret-namespaces=default,kube-public"))
}

// A chart that renders something the apiserver rejects must fail the dry-run: proves the check
// above can fail.
func TestDryRunRejectsABrokenObject(t *testing.T) {
	g := NewWithT(t)
	bad := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apps/v1", "kind": "Deployment",
		"metadata": map[string]any{"name": "broken", "namespace": "paddock-system"},
		"spec":     map[string]any{"replicas": "one"},
	}}
	err := env.Management.Client.Patch(context.Background(), bad, client.Apply, client.DryRunAll, client.FieldOwner("chart-test"))
	g.Expect(err).To(HaveOccurred())
}
