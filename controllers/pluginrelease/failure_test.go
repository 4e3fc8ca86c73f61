package pluginrelease

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	pluginsv1 "github.com/paddock-dev/paddock/api/plugins/v1alpha1"
	"github.com/paddock-dev/paddock/test/chartrepos"
)

func getRelease(g Gomega, prel *pluginsv1.PluginRelease) *pluginsv1.PluginRelease {
	got := &pluginsv1.PluginRelease{}
	g.Expect(mgmt.Get(ctx, client.ObjectKeyFromObject(prel), got)).To(Succeed())
	return got
}

func clusterStatus(got *pluginsv1.PluginRelease, name string) *pluginsv1.ClusterReleaseStatus {
	for i := range got.Status.Clusters {
		if got.Status.Clusters[i].Name == name {
			return &got.Status.Clusters[i]
		}
	}
	return nil
}

func TestMemberDownDuringAnUpgradeFailsOnlyThereAndIsRetriedWhenItReturns(t *testing.T) {
	g := NewWithT(t)
	members := attachMembers(t)
	_, repo := serveHello(t, "0.1.0", "0.2.0")
	prel := helloRelease("downtime", repo, members)
	createRelease(t, prel)
	waitReleaseReady(t, prel)

	down := env.Members[1]
	g.Expect(down.StopAPIServer()).To(Succeed())
	t.Cleanup(func() { _ = down.StartAPIServer() })
	mergePatchRelease(g, prel, `{"spec":{"chart":{"version":"0.2.0"}}}`)

	// The reachable member is upgraded; the other is Failed (cut off) or Unreachable (seen down
	// first), with the reason, and the release says so without stalling.
	g.Eventually(func(g Gomega) {
		got := getRelease(g, prel)
		up := clusterStatus(got, members[0])
		g.Expect(up.Phase).To(Equal(pluginsv1.PhaseDeployed))
		g.Expect(up.ChartVersion).To(Equal("0.2.0"))
		c := clusterStatus(got, members[1])
		g.Expect(c.Phase).To(BeElementOf(pluginsv1.PhaseFailed, pluginsv1.PhaseUnreachable))
		g.Expect(c.Reason).To(Equal(pluginsv1.ClusterReasonMemberUnreachable))
		g.Expect(c.ChartVersion).To(Equal("0.1.0"), "what runs there is still 0.1.0")
		ready := meta.FindStatusCondition(got.Status.Conditions, pluginsv1.ReadyCondition)
		g.Expect(ready.Status).To(Equal(metav1.ConditionFalse))
		g.Expect(ready.Message).To(ContainSubstring(members[1]))
		g.Expect(meta.IsStatusConditionTrue(got.Status.Conditions, pluginsv1.StalledCondition)).To(BeFalse(), "retried when the member returns: not stalled")
		g.Expect(meta.IsStatusConditionTrue(got.Status.Conditions, pluginsv1.ReconcilingCondition)).To(BeTrue())
	}, eventuallyWait, poll).Should(Succeed())

	g.Expect(down.StartAPIServer()).To(Succeed())
	g.Eventually(func(g Gomega) {
		got := waitReleaseReady(t, prel)
		c := clusterStatus(got, members[1])
		g.Expect(c.ChartVersion).To(Equal("0.2.0"))
		g.Expect(c.Reason).To(BeEmpty())
		g.Expect(configMapIn(g, 1, "downtime").Data["chartVersion"]).To(Equal("0.2.0"))
	}, 2*eventuallyWait, poll).Should(Succeed())
}

func TestFailingChartIsRemediated(t *testing.T) {
	g := NewWithT(t)
	members := attachMembers(t)
	srv, repo := serveHello(t, "0.1.0")
	failing, err := chartrepos.Package("../../test/testdata/charts/failing", "0.1.0")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(srv.Add(failing)).To(Succeed())
	// The repository refetches on its interval; poke it so that it sees the new chart now.
	g.Expect(mgmt.Patch(ctx, repo, client.RawPatch("application/merge-patch+json",
		[]byte(`{"metadata":{"annotations":{"test/poke":"1"}}}`)))).To(Succeed())

	// A first install that fails is uninstalled, retried as many times as remediation says, then
	// left Failed: Stalled, with the error, and nothing left in the member.
	inst := &pluginsv1.PluginRelease{ObjectMeta: metav1.ObjectMeta{Name: "broken", Namespace: "apps"},
		Spec: pluginsv1.PluginReleaseSpec{
			Chart:           pluginsv1.ChartReference{Repository: repo.Name, Name: "failing", Version: "0.1.0"},
			Targets:         pluginsv1.Targets{ClusterNames: members[:1]},
			CreateNamespace: true,
			Install:         &pluginsv1.ActionSpec{Remediation: &pluginsv1.Remediation{Retries: 1}},
		}}
	g.Expect(mgmt.Create(ctx, inst)).To(Succeed())
	t.Cleanup(func() { _ = mgmt.Delete(ctx, inst) })
	g.Eventually(func(g Gomega) {
		got := getRelease(g, inst)
		c := clusterStatus(got, members[0])
		g.Expect(c).NotTo(BeNil())
		g.Expect(c.Phase).To(Equal(pluginsv1.PhaseFailed))
		g.Expect(c.Reason).To(Equal(pluginsv1.ClusterReasonInstallFailed))
		g.Expect(c.Failures).To(Equal(int32(2)), "the first attempt and one retry")
		g.Expect(c.Message).To(ContainSubstring("install failed"))
		stalled := meta.FindStatusCondition(got.Status.Conditions, pluginsv1.StalledCondition)
		g.Expect(stalled).NotTo(BeNil())
		g.Expect(stalled.Reason).To(Equal(ReasonClustersFailed))
		ready := meta.FindStatusCondition(got.Status.Conditions, pluginsv1.ReadyCondition)
		g.Expect(ready.Reason).To(Equal(ReasonClustersFailed))
		g.Expect(ready.Message).To(ContainSubstring("70000"), "the apiserver's error is in the condition")
	}, eventuallyWait, poll).Should(Succeed())
	g.Expect(helmRevisions(g, 0, "broken")).To(BeZero(), "a failed install is uninstalled")
	g.Consistently(func(g Gomega) {
		g.Expect(clusterStatus(getRelease(g, inst), members[0]).Failures).To(Equal(int32(2)), "no retry beyond remediation.retries")
	}, 3*time.Second, 200*time.Millisecond).Should(Succeed())
	g.Expect(eventNotes(inst)).To(ContainElement(MatchRegexp(`^install of failing 0\.1\.0 on ` + members[0] + ` failed after .*70000`)))

	// An upgrade that fails (bad values) is rolled back: the member runs the previous revision.
	up := helloRelease("rollback", repo, members[:1], func(s *pluginsv1.PluginReleaseSpec) {
		s.Upgrade = &pluginsv1.ActionSpec{Remediation: &pluginsv1.Remediation{Strategy: pluginsv1.RemediationRollback}}
	})
	createRelease(t, up)
	waitReleaseReady(t, up)
	mergePatchRelease(g, up, `{"spec":{"values":{"invalidPort":70000}}}`)
	g.Eventually(func(g Gomega) {
		c := clusterStatus(getRelease(g, up), members[0])
		g.Expect(c.Phase).To(Equal(pluginsv1.PhaseFailed))
		g.Expect(c.Reason).To(Equal(pluginsv1.ClusterReasonUpgradeFailed))
		g.Expect(c.Message).To(ContainSubstring("rolled back to revision 1 (remediation)"))
		g.Expect(c.Message).To(ContainSubstring("70000"))
	}, eventuallyWait, poll).Should(Succeed())
	g.Expect(configMapIn(g, 0, "rollback")).NotTo(BeNil(), "the rolled-back revision's objects are there")
	g.Expect(helmRevisions(g, 0, "rollback")).To(Equal(3), "install, the failed upgrade, the rollback")
	// The rollback is an operation of its own in history (after the failed upgrade) and an event.
	h := getRelease(g, up).Status.History
	g.Expect(len(h)).To(BeNumerically(">=", 3))
	g.Expect(h[0].Action).To(Equal("rollback"))
	g.Expect(h[0].Result).To(Equal("Succeeded"))
	g.Expect(h[0].Revision).To(Equal(int32(3)))
	g.Expect(h[0].Message).To(Equal("rolled back to revision 1 after the failed upgrade"))
	g.Expect(h[1].Action).To(Equal("upgrade"))
	g.Expect(h[1].Result).To(Equal("Failed"))
	g.Eventually(func() []string { return eventNotes(up) }, eventuallyWait, poll).Should(
		ContainElement(HavePrefix("rolled back hello 0.1.0 → 0.1.0 on " + members[0] + ", revision 3")))

	// An upgrade that fails before Helm writes a revision (the chart does not render) left the
	// running one alone: nothing is rolled back.
	mergePatchRelease(g, up, `{"spec":{"values":{"invalidPort":null,"failRender":true}}}`)
	g.Eventually(func(g Gomega) {
		c := clusterStatus(getRelease(g, up), members[0])
		g.Expect(c.Message).To(ContainSubstring("refused by the chart"))
		g.Expect(c.Message).To(ContainSubstring("nothing to remediate (the upgrade wrote no revision"))
	}, eventuallyWait, poll).Should(Succeed())
	g.Expect(helmRevisions(g, 0, "rollback")).To(Equal(3))
	g.Expect(getRelease(g, up).Status.History[0].Action).To(Equal("upgrade"), "no rollback recorded")
}
