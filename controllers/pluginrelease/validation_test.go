package pluginrelease

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	pluginsv1 "github.com/paddock-dev/paddock/api/plugins/v1alpha1"
)

func validSpec() pluginsv1.PluginReleaseSpec {
	return pluginsv1.PluginReleaseSpec{
		Chart:   pluginsv1.ChartReference{Repository: "stable", Name: "metrics-server", Version: "3.13.x"},
		Targets: pluginsv1.Targets{ClusterNames: []string{"prod-a"}},
	}
}

func newRelease(spec pluginsv1.PluginReleaseSpec) *pluginsv1.PluginRelease {
	return &pluginsv1.PluginRelease{ObjectMeta: metav1.ObjectMeta{GenerateName: "rel-", Namespace: "apps"}, Spec: spec}
}

// Bad input is refused at admission (kubectl apply) with a message that says what to fix.
func TestAdmissionValidation(t *testing.T) {
	num := intstr.FromInt32
	pct := intstr.FromString
	cases := []struct {
		name string
		edit func(*pluginsv1.PluginReleaseSpec)
		want string
	}{
		{"no targets", func(s *pluginsv1.PluginReleaseSpec) { s.Targets = pluginsv1.Targets{} }, "targets needs clusterNames or clusterSelector"},
		{"no chart name", func(s *pluginsv1.PluginReleaseSpec) { s.Chart.Name = "" }, "spec.chart.name"},
		{"no version", func(s *pluginsv1.PluginReleaseSpec) { s.Chart.Version = "" }, "spec.chart.version"},
		{"path in chart name", func(s *pluginsv1.PluginReleaseSpec) { s.Chart.Name = "../etc" }, "spec.chart.name"},
		{"long release name", func(s *pluginsv1.PluginReleaseSpec) {
			s.ReleaseName = "a123456789012345678901234567890123456789012345678901234"
		}, "spec.releaseName"},
		{"bad namespace", func(s *pluginsv1.PluginReleaseSpec) { s.TargetNamespace = "Kube_System" }, "spec.targetNamespace"},
		{"zero concurrency", func(s *pluginsv1.PluginReleaseSpec) {
			s.Rollout = &pluginsv1.Rollout{MaxConcurrency: ptrTo(num(0))}
		}, "maxConcurrency must be a number >= 1 or a percentage"},
		{"bad percentage", func(s *pluginsv1.PluginReleaseSpec) {
			s.Rollout = &pluginsv1.Rollout{MaxConcurrency: ptrTo(pct("150%"))}
		}, "maxConcurrency must be a number >= 1 or a percentage"},
		{"bad failures", func(s *pluginsv1.PluginReleaseSpec) {
			s.Rollout = &pluginsv1.Rollout{MaxFailures: ptrTo(pct("lots"))}
		}, "maxFailures must be a number >= 0 or a percentage"},
		{"duplicate waves", func(s *pluginsv1.PluginReleaseSpec) {
			s.Rollout = &pluginsv1.Rollout{Waves: []pluginsv1.Wave{{Name: "canary"}, {Name: "canary"}}}
		}, "Duplicate value"},
		{"wave concurrency", func(s *pluginsv1.PluginReleaseSpec) {
			s.Rollout = &pluginsv1.Rollout{Waves: []pluginsv1.Wave{{Name: "canary", MaxConcurrency: ptrTo(pct("0%"))}}}
		}, "maxConcurrency must be a number >= 1 or a percentage"},
		{"bake too long", func(s *pluginsv1.PluginReleaseSpec) {
			s.Rollout = &pluginsv1.Rollout{BakeTime: &metav1.Duration{Duration: 1000 * 60 * 60 * 1e9}}
		}, "bakeTime must be between 0s and 168h"},
		{"bad timeout", func(s *pluginsv1.PluginReleaseSpec) {
			s.Install = &pluginsv1.ActionSpec{Timeout: &metav1.Duration{Duration: 2 * 60 * 60 * 1e9}}
		}, "timeout must be between 1s and 1h"},
		{"bad strategy", func(s *pluginsv1.PluginReleaseSpec) {
			s.Upgrade = &pluginsv1.ActionSpec{Remediation: &pluginsv1.Remediation{Strategy: "pray"}}
		}, "spec.upgrade.remediation.strategy"},
		{"too many retries", func(s *pluginsv1.PluginReleaseSpec) {
			s.Upgrade = &pluginsv1.ActionSpec{Remediation: &pluginsv1.Remediation{Retries: 11}}
		}, "spec.upgrade.remediation.retries"},
		{"bad drift mode", func(s *pluginsv1.PluginReleaseSpec) { s.DriftDetection = &pluginsv1.DriftDetection{Mode: "sometimes"} }, "spec.driftDetection.mode"},
		{"bad pointer", func(s *pluginsv1.PluginReleaseSpec) {
			s.DriftDetection = &pluginsv1.DriftDetection{Ignore: []pluginsv1.DriftIgnoreRule{{Paths: []string{"spec.replicas"}}}}
		}, "spec.driftDetection.ignore[0].paths[0]"},
		{"bad values kind", func(s *pluginsv1.PluginReleaseSpec) {
			s.ValuesFrom = []pluginsv1.ValuesReference{{Kind: "Pod", Name: "x"}}
		}, "spec.valuesFrom[0].kind"},
		{"max history", func(s *pluginsv1.PluginReleaseSpec) { s.MaxHistory = ptrTo(int32(0)) }, "spec.maxHistory"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			spec := validSpec()
			tc.edit(&spec)
			err := mgmt.Create(ctx, newRelease(spec))
			g.Expect(err).To(HaveOccurred())
			g.Expect(err.Error()).To(ContainSubstring(tc.want))
		})
	}
}

func TestAdmissionAcceptsAFullSpecAndDefaults(t *testing.T) {
	g := NewWithT(t)
	spec := validSpec()
	spec.Targets.ClusterSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"env": "prod"}}
	spec.Values = &apiextensionsv1.JSON{Raw: []byte(`{"replicas":2,"args":["--kubelet-insecure-tls"]}`)}
	spec.ValuesFrom = []pluginsv1.ValuesReference{{Kind: "Secret", Name: "creds", Optional: true}}
	spec.ValuesTemplate = `region: {{ index .Cluster.Labels "region" }}`
	spec.Upgrade = &pluginsv1.ActionSpec{Wait: true, Remediation: &pluginsv1.Remediation{Retries: 2}}
	spec.DriftDetection = &pluginsv1.DriftDetection{Ignore: []pluginsv1.DriftIgnoreRule{{Paths: []string{"/spec/replicas"},
		Target: &pluginsv1.DriftTarget{Group: "apps", Kind: "Deployment"}}}}
	spec.Rollout = &pluginsv1.Rollout{MaxConcurrency: ptrTo(intstr.FromString("20%")), MaxFailures: ptrTo(intstr.FromInt32(1)),
		BakeTime: &metav1.Duration{Duration: 5 * 60 * 1e9},
		Waves:    []pluginsv1.Wave{{Name: "canary", ClusterSelector: metav1.LabelSelector{MatchLabels: map[string]string{"canary": "true"}}}}}
	rel := newRelease(spec)
	g.Expect(mgmt.Create(ctx, rel)).To(Succeed())
	t.Cleanup(func() { _ = mgmt.Delete(ctx, rel) })
	g.Expect(rel.Spec.GetMaxHistory()).To(Equal(10))
	g.Expect(*rel.Spec.MaxHistory).To(Equal(int32(10)), "defaulted at admission")
	g.Expect(rel.Spec.Upgrade.Remediation.Strategy).To(Equal(pluginsv1.RemediationRollback))
	g.Expect(rel.GetReleaseName()).To(Equal(rel.Name))
	g.Expect(rel.GetTargetNamespace()).To(Equal("apps"))

	// releaseName and targetNamespace are immutable, from unset too.
	for _, edit := range []func(*pluginsv1.PluginRelease){
		func(p *pluginsv1.PluginRelease) { p.Spec.ReleaseName = "other" },
		func(p *pluginsv1.PluginRelease) { p.Spec.TargetNamespace = "other" },
	} {
		// The controller adds its finalizer meanwhile: retry conflicts, expect the refusal.
		g.Eventually(func() error {
			cur := &pluginsv1.PluginRelease{}
			g.Expect(mgmt.Get(ctx, client.ObjectKeyFromObject(rel), cur)).To(Succeed())
			edit(cur)
			return mgmt.Update(ctx, cur)
		}, 10*time.Second, 100*time.Millisecond).Should(MatchError(ContainSubstring("is immutable")))
	}
	// The version is not.
	g.Eventually(func() error {
		cur := &pluginsv1.PluginRelease{}
		g.Expect(mgmt.Get(ctx, client.ObjectKeyFromObject(rel), cur)).To(Succeed())
		cur.Spec.Chart.Version = "3.14.0"
		return mgmt.Update(ctx, cur)
	}, 10*time.Second, 100*time.Millisecond).Should(Succeed())
}

func TestPrinterColumns(t *testing.T) {
	g := NewWithT(t)
	rel := newRelease(validSpec())
	g.Expect(mgmt.Create(ctx, rel)).To(Succeed())
	t.Cleanup(func() { _ = mgmt.Delete(ctx, rel) })
	out, err := env.Management.Kubectl("get", "prel", "-n", "apps", rel.Name)
	g.Expect(err).NotTo(HaveOccurred(), string(out))
	g.Expect(string(out)).To(MatchRegexp(`NAME\s+CHART\s+VERSION\s+READY\s+CLUSTERS\s+WAVE\s+AGE`))
	g.Expect(string(out)).To(ContainSubstring("metrics-server"))
}
