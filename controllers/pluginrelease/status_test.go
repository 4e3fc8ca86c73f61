package pluginrelease

import (
	"context"
	"errors"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	pluginsv1 "github.com/paddock-dev/paddock/api/plugins/v1alpha1"
	"github.com/paddock-dev/paddock/internal/scheme"
)

// A pass that ends in an error keeps the verdict it could not revisit, but only for the
// generation that verdict was about: for a newer spec, Ready=True would let kubectl wait and
// kstatus take a spec no pass has acted on for done.
func TestAPassThatFailsKeepsOnlyTheVerdictOfItsOwnGeneration(t *testing.T) {
	g := NewWithT(t)
	ready := metav1.Condition{Type: pluginsv1.ReadyCondition, Status: metav1.ConditionTrue, Reason: ReasonSucceeded,
		Message: "hello 0.1.0 deployed to 1 clusters", ObservedGeneration: 1, LastTransitionTime: metav1.Now()}
	prel := &pluginsv1.PluginRelease{ObjectMeta: metav1.ObjectMeta{Name: "failing-pass", Namespace: "apps", UID: "uid-failing-pass", Generation: 1},
		Spec: pluginsv1.PluginReleaseSpec{Chart: pluginsv1.ChartReference{Repository: "charts", Name: "hello", Version: "0.1.0"}},
		Status: pluginsv1.PluginReleaseStatus{ObservedGeneration: 1, Conditions: []metav1.Condition{ready},
			Clusters: []pluginsv1.ClusterReleaseStatus{{Name: "m0", Phase: pluginsv1.PhaseDeployed}}}}
	c := fake.NewClientBuilder().WithScheme(scheme.New()).WithObjects(prel).WithStatusSubresource(prel).Build()
	r := &Reconciler{Client: c, written: map[types.UID][]string{}, secrets: map[types.UID][]string{}}
	pass := func() *pluginsv1.PluginRelease {
		cur := &pluginsv1.PluginRelease{}
		g.Expect(c.Get(context.Background(), client.ObjectKeyFromObject(prel), cur)).To(Succeed())
		s := newScope(cur)
		s.passErr = errors.New("reading the values ConfigMap: the server is currently unable to handle the request")
		g.Expect(r.patchStatus(context.Background(), s)).To(Succeed())
		g.Expect(c.Get(context.Background(), client.ObjectKeyFromObject(prel), cur)).To(Succeed())
		return cur
	}

	// The same generation: Ready stays as it was.
	got := pass()
	g.Expect(meta.IsStatusConditionTrue(got.Status.Conditions, pluginsv1.ReadyCondition)).To(BeTrue())
	g.Expect(meta.FindStatusCondition(got.Status.Conditions, pluginsv1.ReconcilingCondition)).To(BeNil())

	// A new spec, and the pass fails: not Ready, in progress, the error said.
	got.Spec.Chart.Version = "0.2.0"
	got.Generation = 2
	g.Expect(c.Update(context.Background(), got)).To(Succeed())
	got = pass()
	g.Expect(got.Status.ObservedGeneration).To(Equal(got.Generation))
	rc := meta.FindStatusCondition(got.Status.Conditions, pluginsv1.ReadyCondition)
	g.Expect(rc.Status).To(Equal(metav1.ConditionFalse))
	g.Expect(rc.ObservedGeneration).To(Equal(got.Generation))
	g.Expect(rc.Message).To(ContainSubstring("unable to handle the request"))
	g.Expect(meta.IsStatusConditionTrue(got.Status.Conditions, pluginsv1.ReconcilingCondition)).To(BeTrue())
}

// Failures counts the failures of a change in a row, of one kind: a conflict's rechecks grow it
// (their backoff), but once the conflict clears, even by way of a cut-off, a failing upgrade has
// all its remediation retries; install and upgrade failures of one change count together, so
// alternating between them never resets the count.
func TestFailuresCountOneKindOfFailureInARow(t *testing.T) {
	g := NewWithT(t)
	uid := types.UID("uid-failures")
	key := actionKey{uid: uid, cluster: "m0"}
	r := &Reconciler{done: map[actionKey][]outcome{}, secrets: map[types.UID][]string{},
		uninstallAfter: map[actionKey]time.Time{}, uninstallFailing: map[actionKey]uninstallFailure{}, rechecked: map[actionKey]time.Time{}}
	prel := &pluginsv1.PluginRelease{ObjectMeta: metav1.ObjectMeta{Name: "failures", Namespace: "apps", UID: uid}}
	s := newScope(prel)
	fold := func(os ...outcome) int32 {
		for i := range os {
			os[i].digest, os[i].failed, os[i].finished = "d1", true, time.Now()
		}
		r.done[key] = os
		r.fold(s)
		r.forgetFolded(s)
		s.folded = nil
		return s.clusters["m0"].Failures
	}
	conflict := outcome{action: opUpgrade, phase: pluginsv1.PhaseConflict, msg: "a release exists"}
	upgrade := outcome{action: opUpgrade, phase: pluginsv1.PhaseFailed, msg: "upgrade failed"}
	install := outcome{action: opInstall, phase: pluginsv1.PhaseFailed, msg: "install failed"}
	cutOff := outcome{action: opUpgrade, phase: pluginsv1.PhaseFailed, unreachable: true, msg: "cut off"}

	g.Expect(fold(conflict, conflict, conflict)).To(Equal(int32(3)), "rechecks back off")
	g.Expect(fold(cutOff)).To(Equal(int32(0)), "a cut-off ends the conflict's count")
	g.Expect(fold(upgrade)).To(Equal(int32(1)))
	g.Expect(fold(cutOff)).To(Equal(int32(1)), "a cut-off spends none")
	g.Expect(fold(install, upgrade, install)).To(Equal(int32(4)), "one change, whichever action")
	g.Expect(fold(conflict)).To(Equal(int32(1)), "a conflict counts afresh")
	g.Expect(fold(upgrade)).To(Equal(int32(1)), "so does a failure after it")
}

// The uninstall grace after a restart counts from the failures status recorded, but a target is
// given up only once this process saw an attempt fail too; and never from before the target
// entered Uninstalling (an earlier removal, then a rejoin, says nothing about this one).
func TestTheUninstallGraceSurvivesARestartAndARejoin(t *testing.T) {
	g := NewWithT(t)
	uid := types.UID("uid-grace")
	key := actionKey{uid: uid, cluster: "m0"}
	grace := 10 * time.Minute
	hour := metav1.NewTime(time.Now().Add(-time.Hour))
	prel := &pluginsv1.PluginRelease{ObjectMeta: metav1.ObjectMeta{Name: "grace", Namespace: "apps", UID: uid},
		Status: pluginsv1.PluginReleaseStatus{History: []pluginsv1.HistoryEntry{
			{Time: hour, Cluster: "m0", Action: opUninstall, Result: "Failed"},
			{Time: metav1.NewTime(hour.Add(-time.Minute)), Cluster: "m0", Action: opUpgrade, Result: "Succeeded"}}}}
	r := &Reconciler{done: map[actionKey][]outcome{}, secrets: map[types.UID][]string{},
		uninstallAfter: map[actionKey]time.Time{}, uninstallFailing: map[actionKey]uninstallFailure{}, rechecked: map[actionKey]time.Time{}}
	s := newScope(prel)
	c := &pluginsv1.ClusterReleaseStatus{Name: "m0", Phase: pluginsv1.PhaseUninstalling,
		LastTransitionTime: &metav1.Time{Time: hour.Add(-time.Minute)}}
	g.Expect(r.failingLonger(s, "m0", c, grace)).To(BeFalse(), "this process has not tried yet")
	r.done[key] = []outcome{{action: opUninstall, failed: true, phase: pluginsv1.PhaseUninstalling, finished: time.Now()}}
	r.fold(s)
	g.Expect(r.failingLonger(s, "m0", c, grace)).To(BeTrue(), "failing since an hour ago, and again now")

	c.LastTransitionTime = &metav1.Time{Time: time.Now().Add(-time.Minute)}
	g.Expect(r.failingLonger(s, "m0", c, grace)).To(BeFalse(), "uninstalling again only since a minute ago")
}
