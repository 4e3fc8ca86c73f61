package pluginrelease

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/release"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
	pluginsv1 "github.com/paddock-dev/paddock/api/plugins/v1alpha1"
	"github.com/paddock-dev/paddock/test/chartrepos"
	"github.com/paddock-dev/paddock/test/envs"
)

// labelMember sets labels on a MemberCluster for the test's duration.
func labelMember(t *testing.T, name string, labels string) {
	t.Helper()
	g := NewWithT(t)
	mc := &clustersv1.MemberCluster{ObjectMeta: metav1.ObjectMeta{Name: name}}
	g.Expect(mgmt.Patch(ctx, mc, client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"labels":`+labels+`}}`)))).To(Succeed())
	t.Cleanup(func() {
		_ = mgmt.Patch(ctx, mc, client.RawPatch(types.JSONPatchType, []byte(`[{"op":"remove","path":"/metadata/labels"}]`)))
	})
}

func TestACanaryWaveThatFailsHaltsTheRollout(t *testing.T) {
	g := NewWithT(t)
	members := attachMembers(t)
	labelMember(t, members[0], `{"tier":"canary"}`)
	labelMember(t, members[1], `{"tier":"prod"}`)
	_, repo := serveHello(t, "0.1.0")
	prel := helloRelease("canary", repo, nil, func(s *pluginsv1.PluginReleaseSpec) {
		s.Targets.ClusterSelector = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "tier", Operator: metav1.LabelSelectorOpExists}}}
		// Broken on the canary only.
		s.ValuesTemplate = `{{ if eq (index .Cluster.Labels "tier") "canary" }}invalidPort: 70001{{ end }}`
		s.Rollout = &pluginsv1.Rollout{Waves: []pluginsv1.Wave{{Name: "canary",
			ClusterSelector: metav1.LabelSelector{MatchLabels: map[string]string{"tier": "canary"}}}}}
	})
	createRelease(t, prel)

	g.Eventually(func(g Gomega) {
		got := getRelease(g, prel)
		ready := meta.FindStatusCondition(got.Status.Conditions, pluginsv1.ReadyCondition)
		g.Expect(ready).NotTo(BeNil())
		g.Expect(ready.Reason).To(Equal(ReasonRolloutHalted))
		g.Expect(ready.Message).To(ContainSubstring(members[0]))
		g.Expect(meta.IsStatusConditionTrue(got.Status.Conditions, pluginsv1.StalledCondition)).To(BeTrue(), "kstatus: Failed")
		g.Expect(got.Status.Rollout.Wave).To(Equal("canary"))
		g.Expect(got.Status.Rollout.Waiting).To(ContainSubstring("halted"))
		g.Expect(clusterStatus(got, members[0]).Phase).To(Equal(pluginsv1.PhaseFailed))
		g.Expect(clusterStatus(got, members[1]).Phase).To(Equal(pluginsv1.PhaseWaiting))
	}, eventuallyWait, poll).Should(Succeed())
	// Nothing beyond the canary is touched, for as long as the halt lasts.
	g.Consistently(func(g Gomega) {
		g.Expect(helmRevisions(g, 1, "canary")).To(BeZero())
		g.Expect(configMapIn(g, 1, "canary")).To(BeNil())
	}, 3*time.Second, 200*time.Millisecond).Should(Succeed())

	// A fix is a new rollout: the canary first, then the rest.
	mergePatchRelease(g, prel, `{"spec":{"valuesTemplate":null}}`)
	got := waitReleaseReady(t, prel)
	g.Expect(got.Status.ClusterSummary).To(Equal("2/2"))
	g.Expect(got.Status.Rollout.Waves).To(HaveLen(2))
	c0, c1 := got.Status.Rollout.Waves[0].CompletedAt, got.Status.Rollout.Waves[1].CompletedAt
	g.Expect(c0).NotTo(BeNil())
	g.Expect(c1).NotTo(BeNil())
	g.Expect(c0.Time.After(c1.Time)).To(BeFalse(), "the canary wave completed first")
}

// A canary that failed and waits for its remediation retry keeps its wave open: with a failure
// budget and no bake time, the next wave starts only once the canary's retries are spent (before,
// the wait counted as a failure within the budget and the wave as complete).
func TestTheNextWaveWaitsForTheCanarysRetries(t *testing.T) {
	g := NewWithT(t)
	members := attachMembers(t)
	labelMember(t, members[0], `{"tier":"canary"}`)
	labelMember(t, members[1], `{"tier":"prod"}`)
	_, repo := serveHello(t, "0.1.0")
	prel := helloRelease("retried-canary", repo, nil, func(s *pluginsv1.PluginReleaseSpec) {
		s.Targets.ClusterSelector = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "tier", Operator: metav1.LabelSelectorOpExists}}}
		s.ValuesTemplate = `{{ if eq (index .Cluster.Labels "tier") "canary" }}invalidPort: 70001{{ end }}`
		s.Install = &pluginsv1.ActionSpec{Remediation: &pluginsv1.Remediation{Retries: 2}}
		one := intstr.FromInt32(1)
		s.Rollout = &pluginsv1.Rollout{MaxFailures: &one, Waves: []pluginsv1.Wave{{Name: "canary",
			ClusterSelector: metav1.LabelSelector{MatchLabels: map[string]string{"tier": "canary"}}}}}
	})
	createRelease(t, prel)
	var canaryFailures int32 = -1
	g.Eventually(func(g Gomega) {
		got := getRelease(g, prel)
		c := clusterStatus(got, members[0])
		g.Expect(c).NotTo(BeNil())
		g.Expect(helmRevisions(g, 1, "retried-canary")).To(BeNumerically(">", 0))
		canaryFailures = c.Failures
	}, 2*eventuallyWait, 50*time.Millisecond).Should(Succeed())
	g.Expect(canaryFailures).To(Equal(int32(3)), "prod started after the canary's first try and both retries failed")
}

func TestBadChartReferencesGiveClearConditions(t *testing.T) {
	members := attachMembers(t)
	_, repo := serveHello(t, "0.1.0", "0.2.0")
	for name, tc := range map[string]struct {
		chart  pluginsv1.ChartReference
		reason string
		msg    string
	}{
		"no-repo":    {pluginsv1.ChartReference{Repository: "does-not-exist", Name: "hello", Version: "0.1.0"}, ReasonRepositoryNotReady, "does-not-exist"},
		"no-chart":   {pluginsv1.ChartReference{Repository: repo.Name, Name: "nope", Version: "0.1.0"}, pluginsv1.ReasonChartNotFound, "nope"},
		"no-version": {pluginsv1.ChartReference{Repository: repo.Name, Name: "hello", Version: ">=1.0 <2"}, pluginsv1.ReasonVersionNotFound, ">=1.0 <2"},
	} {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			prel := &pluginsv1.PluginRelease{ObjectMeta: metav1.ObjectMeta{Name: "bad-" + name, Namespace: "apps"},
				Spec: pluginsv1.PluginReleaseSpec{Chart: tc.chart, Targets: pluginsv1.Targets{ClusterNames: members[:1]}}}
			g.Expect(mgmt.Create(ctx, prel)).To(Succeed())
			t.Cleanup(func() { _ = mgmt.Delete(ctx, prel) })
			g.Eventually(func(g Gomega) {
				got := getRelease(g, prel)
				ready := meta.FindStatusCondition(got.Status.Conditions, pluginsv1.ReadyCondition)
				g.Expect(ready).NotTo(BeNil())
				g.Expect(ready.Status).To(Equal(metav1.ConditionFalse))
				g.Expect(ready.Reason).To(Equal(tc.reason))
				g.Expect(ready.Message).To(ContainSubstring(tc.msg))
				g.Expect(ready.ObservedGeneration).To(Equal(got.Generation))
				g.Expect(got.Status.Clusters).To(BeEmpty(), "nothing is attempted")
			}, eventuallyWait, poll).Should(Succeed())
		})
	}
}

func TestAReleaseItDidNotInstallIsAConflict(t *testing.T) {
	g := NewWithT(t)
	members := attachMembers(t)
	_, repo := serveHello(t, "0.1.0")
	spec := pluginsv1.PluginReleaseSpec{
		Chart:   pluginsv1.ChartReference{Repository: repo.Name, Name: "hello", Version: "0.1.0"},
		Targets: pluginsv1.Targets{ClusterNames: members[:1]}, ReleaseName: "shared", TargetNamespace: "apps", CreateNamespace: true,
		Values: &apiextensionsv1.JSON{Raw: []byte(`{"greeting":"first"}`)},
	}
	first := &pluginsv1.PluginRelease{ObjectMeta: metav1.ObjectMeta{Name: "first", Namespace: "apps"}, Spec: spec}
	g.Expect(mgmt.Create(ctx, first)).To(Succeed())
	t.Cleanup(func() { _ = mgmt.Delete(ctx, first) })
	waitReleaseReady(t, first)

	spec.Values = &apiextensionsv1.JSON{Raw: []byte(`{"greeting":"second"}`)}
	second := &pluginsv1.PluginRelease{ObjectMeta: metav1.ObjectMeta{Name: "second", Namespace: "apps"}, Spec: spec}
	g.Expect(mgmt.Create(ctx, second)).To(Succeed())
	g.Eventually(func(g Gomega) {
		c := clusterStatus(getRelease(g, second), members[0])
		g.Expect(c).NotTo(BeNil())
		g.Expect(c.Phase).To(Equal(pluginsv1.PhaseConflict))
		g.Expect(c.Reason).To(Equal(pluginsv1.ClusterReasonReleaseConflict))
		g.Expect(c.Message).To(ContainSubstring("spec.adopt"))
	}, eventuallyWait, poll).Should(Succeed())
	g.Expect(configMapIn(g, 0, "shared").Data["greeting"]).To(Equal("first"), "the other release is left alone")
	g.Expect(helmRevisions(g, 0, "shared")).To(Equal(1))

	// Deleting the one in conflict removes nothing.
	g.Expect(mgmt.Delete(ctx, second)).To(Succeed())
	g.Eventually(func() bool {
		return apierrors.IsNotFound(mgmt.Get(ctx, client.ObjectKeyFromObject(second), &pluginsv1.PluginRelease{}))
	}, eventuallyWait, poll).Should(BeTrue())
	g.Expect(configMapIn(g, 0, "shared")).NotTo(BeNil())
	g.Expect(helmRevisions(g, 0, "shared")).To(Equal(1))
}

// A conflict is not final: setting spec.adopt (which changes no digest) takes the release over
// at once.
func TestAConflictIsTakenOverOnceAdoptIsSet(t *testing.T) {
	g := NewWithT(t)
	members := attachMembers(t)
	_, repo := serveHello(t, "0.1.0")
	g.Expect(envs.EnsureNamespace(ctx, env.Members[0].Client, "apps")).To(Succeed())
	// A release of that name that no PluginRelease installed: made by Helm's own storage.
	taker := helloRelease("taker", repo, members[:1], func(s *pluginsv1.PluginReleaseSpec) {
		s.ReleaseName = "taken"
		s.Values = jsonValues(`{"greeting":"taker"}`)
	})
	st := helmStorage(g, 0)
	g.Expect(st.Create(&release.Release{Name: "taken", Namespace: "apps", Version: 1,
		Chart: &chart.Chart{Metadata: &chart.Metadata{Name: "hello", Version: "0.1.0", APIVersion: "v2"}},
		Info:  &release.Info{Status: release.StatusDeployed, Description: "installed by hand"}})).To(Succeed())
	createRelease(t, taker)
	g.Eventually(func(g Gomega) {
		got := getRelease(g, taker)
		c := clusterStatus(got, members[0])
		g.Expect(c).NotTo(BeNil())
		g.Expect(c.Phase).To(Equal(pluginsv1.PhaseConflict))
		g.Expect(meta.IsStatusConditionTrue(got.Status.Conditions, pluginsv1.StalledCondition)).To(BeTrue(), "it waits for someone")
		// Looked at again with a growing delay (1 s, 2 s, ... in this suite): the count grows.
		g.Expect(c.Failures).To(BeNumerically(">=", 2))
	}, eventuallyWait, poll).Should(Succeed())
	mergePatchRelease(g, taker, `{"spec":{"adopt":true}}`)
	waitReleaseReady(t, taker)
	g.Expect(configMapIn(g, 0, "taken").Data["greeting"]).To(Equal("taker"))
	g.Expect(helmRevisions(g, 0, "taken")).To(Equal(2), "upgraded over the adopted record")
}

// A cluster that joins the targets gets the release even while another target stays unreachable
// (here a MemberCluster that is never connected): the pass that froze the targets is settled.
func TestAJoinerDoesNotWaitForAnUnreachableTarget(t *testing.T) {
	g := NewWithT(t)
	members := attachMembers(t)
	_, repo := serveHello(t, "0.1.0")
	labelMember(t, members[0], `{"joiner-test":"yes"}`)
	ghost := &clustersv1.MemberCluster{ObjectMeta: metav1.ObjectMeta{Name: "never-there", Labels: map[string]string{"joiner-test": "yes"}},
		Spec: clustersv1.MemberClusterSpec{Paused: true, Attach: &clustersv1.AttachSpec{
			KubeconfigSecretRef: clustersv1.SecretKeyReference{Namespace: secretNS, Name: "none"}}}}
	g.Expect(mgmt.Create(ctx, ghost)).To(Succeed())
	t.Cleanup(func() { _ = mgmt.Delete(ctx, ghost) })
	prel := helloRelease("joiner", repo, nil, func(s *pluginsv1.PluginReleaseSpec) {
		s.Targets.ClusterSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"joiner-test": "yes"}}
	})
	createRelease(t, prel)
	g.Eventually(func(g Gomega) {
		got := getRelease(g, prel)
		g.Expect(clusterStatus(got, members[0])).NotTo(BeNil())
		g.Expect(clusterStatus(got, members[0]).Phase).To(Equal(pluginsv1.PhaseDeployed))
		g.Expect(clusterStatus(got, "never-there")).NotTo(BeNil())
		g.Expect(clusterStatus(got, "never-there").Phase).To(Equal(pluginsv1.PhaseUnreachable))
	}, eventuallyWait, poll).Should(Succeed())

	labelMember(t, members[1], `{"joiner-test":"yes"}`)
	g.Eventually(func() int { return helmRevisions(g, 1, "joiner") }, eventuallyWait, poll).Should(Equal(1))
	g.Expect(clusterStatus(getRelease(g, prel), "never-there").Phase).To(Equal(pluginsv1.PhaseUnreachable))
}

func TestChartsWithCRDsAndDependencies(t *testing.T) {
	g := NewWithT(t)
	members := attachMembers(t)
	srv := chartrepos.NewHelmRepo(chartrepos.Options{})
	t.Cleanup(srv.Close)
	for _, dir := range []string{"with-crds", "with-dep"} {
		c, err := chartrepos.Package("../../test/testdata/charts/"+dir, "")
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(srv.Add(c)).To(Succeed())
	}
	repo := &pluginsv1.PluginRepository{ObjectMeta: metav1.ObjectMeta{GenerateName: "charts-"},
		Spec: pluginsv1.PluginRepositorySpec{Type: pluginsv1.RepositoryTypeHelm, URL: srv.URL()}}
	g.Expect(mgmt.Create(ctx, repo)).To(Succeed())
	t.Cleanup(func() { _ = mgmt.Delete(ctx, repo) })
	for _, chart := range []string{"with-crds", "with-dep"} {
		prel := &pluginsv1.PluginRelease{ObjectMeta: metav1.ObjectMeta{Name: chart, Namespace: "apps"},
			Spec: pluginsv1.PluginReleaseSpec{Chart: pluginsv1.ChartReference{Repository: repo.Name, Name: chart, Version: "0.1.x"},
				Targets: pluginsv1.Targets{ClusterNames: members[:1]}, CreateNamespace: true}}
		g.Expect(mgmt.Create(ctx, prel)).To(Succeed())
		t.Cleanup(func() { _ = mgmt.Delete(ctx, prel) })
		waitReleaseReady(t, prel)
	}
	crd := &unstructured.Unstructured{}
	crd.SetGroupVersionKind(schema.GroupVersionKind{Group: "apiextensions.k8s.io", Version: "v1", Kind: "CustomResourceDefinition"})
	g.Expect(env.Members[0].Client.Get(ctx, client.ObjectKey{Name: "widgets.test.paddock.dev"}, crd)).To(Succeed(), "the chart's CRD is installed")
	g.Expect(configMapIn(g, 0, "with-dep")).To(BeNil(), "not a hello chart")
	cm := configMapNamed(g, 0, "with-dep-greeter")
	g.Expect(cm).NotTo(BeNil(), "the dependency's objects are installed")
	g.Expect(cm.Data["message"]).To(Equal("from the parent"), "the parent's values reach the subchart")
	g.Expect(configMapNamed(g, 0, "with-dep-parent")).NotTo(BeNil())
}
