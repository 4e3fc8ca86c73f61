package pluginrepository

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	pluginsv1 "github.com/paddock-dev/paddock/api/plugins/v1alpha1"
)

// Bad input is refused at admission (kubectl apply) with a message that says what to fix.
func TestAdmissionValidation(t *testing.T) {
	d := func(s string) *metav1.Duration { v, _ := time.ParseDuration(s); return &metav1.Duration{Duration: v} }
	cases := []struct {
		name string
		spec pluginsv1.PluginRepositorySpec
		want string
	}{
		{"no-type", pluginsv1.PluginRepositorySpec{URL: "https://charts.example.com"}, "spec.type"},
		{"bad-type", pluginsv1.PluginRepositorySpec{Type: "git", URL: "https://charts.example.com"}, "spec.type"},
		{"no-url", pluginsv1.PluginRepositorySpec{Type: pluginsv1.RepositoryTypeHelm}, "spec.url"},
		{"helm-with-oci-url", pluginsv1.PluginRepositorySpec{Type: pluginsv1.RepositoryTypeHelm, URL: "oci://registry.example.com/charts"},
			"a helm repository's url must start with https:// or http://"},
		{"oci-with-https-url", pluginsv1.PluginRepositorySpec{Type: pluginsv1.RepositoryTypeOCI, URL: "https://registry.example.com/charts"},
			"an oci repository's url must start with oci://"},
		{"file-url", pluginsv1.PluginRepositorySpec{Type: pluginsv1.RepositoryTypeHelm, URL: "file:///etc/passwd"},
			"a helm repository's url must start with https:// or http://"},
		{"fragment", pluginsv1.PluginRepositorySpec{Type: pluginsv1.RepositoryTypeHelm, URL: "https://charts.example.com/#x"},
			"the url must not contain a fragment or spaces"},
		{"credentials-in-url", pluginsv1.PluginRepositorySpec{Type: pluginsv1.RepositoryTypeHelm, URL: "https://user:pass@charts.example.com/"},
			"the url must not carry credentials"},
		{"insecure-helm", pluginsv1.PluginRepositorySpec{Type: pluginsv1.RepositoryTypeHelm, URL: "https://charts.example.com", Insecure: true},
			"insecure is for oci registries only"},
		{"interval-too-short", pluginsv1.PluginRepositorySpec{Type: pluginsv1.RepositoryTypeHelm, URL: "https://charts.example.com", Interval: d("10s")},
			"interval must be between 1m and 24h"},
		{"bad-secret-name", pluginsv1.PluginRepositorySpec{Type: pluginsv1.RepositoryTypeHelm, URL: "https://charts.example.com",
			SecretRef: &pluginsv1.LocalSecretReference{Name: "Bad_Name"}}, "secretRef.name"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			repo := &pluginsv1.PluginRepository{ObjectMeta: metav1.ObjectMeta{Name: "invalid-" + tc.name}, Spec: tc.spec}
			err := mgmt.Create(ctx, repo)
			g.Expect(err).To(HaveOccurred())
			g.Expect(err.Error()).To(ContainSubstring(tc.want))
		})
	}

	// Defaults are applied at admission; both kinds of url are accepted.
	g := NewWithT(t)
	for _, spec := range []pluginsv1.PluginRepositorySpec{
		{Type: pluginsv1.RepositoryTypeHelm, URL: "https://charts.example.com/stable"},
		{Type: pluginsv1.RepositoryTypeOCI, URL: "oci://registry.example.com/charts"},
		{Type: pluginsv1.RepositoryTypeOCI, URL: "oci://registry.local:5000/charts", Insecure: true},
	} {
		repo := &pluginsv1.PluginRepository{ObjectMeta: metav1.ObjectMeta{GenerateName: "valid-" + string(spec.Type) + "-"}, Spec: spec}
		g.Expect(mgmt.Create(ctx, repo)).To(Succeed())
		t.Cleanup(func() { _ = mgmt.Delete(ctx, repo) })
		g.Expect(repo.Spec.Interval).NotTo(BeNil())
		g.Expect(repo.Spec.GetInterval()).To(Equal(10 * time.Minute))
	}
}

func TestPrinterColumnsAndShortName(t *testing.T) {
	g := NewWithT(t)
	repo := &pluginsv1.PluginRepository{ObjectMeta: metav1.ObjectMeta{Name: "columns"},
		Spec: pluginsv1.PluginRepositorySpec{Type: pluginsv1.RepositoryTypeHelm, URL: "https://charts.example.com/stable"}}
	g.Expect(mgmt.Create(ctx, repo)).To(Succeed())
	t.Cleanup(func() { _ = mgmt.Delete(ctx, repo) })
	out, err := env.Management.Kubectl("get", "prepo", "columns")
	g.Expect(err).NotTo(HaveOccurred(), string(out))
	g.Expect(string(out)).To(MatchRegexp(`NAME\s+TYPE\s+URL\s+READY\s+CHARTS\s+AGE`))
	g.Expect(string(out)).To(MatchRegexp(`columns\s+helm\s+https://charts\.example\.com/stable`))
}
