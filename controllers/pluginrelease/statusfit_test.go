package pluginrelease

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
	pluginsv1 "github.com/paddock-dev/paddock/api/plugins/v1alpha1"
)

func TestFitIsIdempotentAndFreeForFewTargets(t *testing.T) {
	g := NewWithT(t)
	long := strings.Repeat("é", 400) // two bytes a rune: cuts land on rune boundaries
	objs := []string{long, "Deployment apps/web: /spec/replicas", long}
	g.Expect(fitDriftObjects(objs, textBudget(100))).To(Equal(objs), "up to fitFreeClusters nothing is trimmed")
	b := textBudget(2000)
	once := fitDriftObjects(objs, b/4)
	g.Expect(fitDriftObjects(once, b/4)).To(Equal(once))
	c := &pluginsv1.ClusterReleaseStatus{Message: long, Drift: &pluginsv1.DriftStatus{Message: long, Objects: objs}}
	fitCluster(c, b)
	again := c.DeepCopy()
	fitCluster(again, b)
	g.Expect(again).To(Equal(c))
	js, err := json.Marshal(c)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(strings.ToValidUTF8(string(js), "?")).To(Equal(string(js)), "valid UTF-8")
	g.Expect(truncate("ab"+long, 3)).To(Equal("ab..."), "never half a rune")
}

// A drift report trimmed for one number of targets is the same report for another number: one
// cluster joining or leaving a large release raises no DriftDetected event on every drifted target.
func TestATrimmedDriftReportIsTheSameForAnotherNumberOfTargets(t *testing.T) {
	g := NewWithT(t)
	var report []string
	for i := range 10 {
		report = append(report, fmt.Sprintf("ConfigMap apps/object-with-a-rather-long-name-%02d: /data/key-%02d", i, i))
	}
	for _, was := range []int{100, 201, 999, 1000, 1001, 1999} {
		stored := fitDriftObjects(report, textBudget(was)/4)
		g.Expect(sameDriftObjects(stored, report)).To(BeTrue(), "trimmed at %d targets", was)
	}
	g.Expect(fitDriftObjects(report, textBudget(1000)/4)).NotTo(Equal(fitDriftObjects(report, textBudget(1001)/4)),
		"the budget does change in steps")
	g.Expect(textBudget(901)).To(Equal(textBudget(1000)), "but not with every cluster")

	changed := slices.Clone(report)
	changed[0] = "Deployment apps/web: /spec/replicas"
	g.Expect(sameDriftObjects(fitDriftObjects(report, textBudget(1000)/4), changed)).To(BeFalse(), "a new first object is new")
	g.Expect(sameDriftObjects(report, report[:9])).To(BeFalse(), "an object fewer, untrimmed, is new")
}

// The worst status of a PluginRelease at the limit of targets (MaxTargetClusters): every target
// failed with a long message and drifted in ten objects, and a rollout of all their names frozen.
// Written twice, as passes do (all new texts, so managedFields grow too), through a real
// apiserver. At 2,000 targets the second write is refused by etcd (request is too large).
func TestStatusOfTheMostFailingDriftedTargetsFitsInOneObject(t *testing.T) {
	g := NewWithT(t)
	const n = pluginsv1.MaxTargetClusters
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("prod-eu-west-cluster-%05d-%s", i, strings.Repeat("x", 36)) // 63 characters, the longest
	}
	prel := &pluginsv1.PluginRelease{ObjectMeta: metav1.ObjectMeta{Name: "fleet-max", Namespace: "apps"},
		Spec: pluginsv1.PluginReleaseSpec{
			Chart:   pluginsv1.ChartReference{Repository: "nowhere", Name: "hello", Version: "0.1.0"},
			Targets: pluginsv1.Targets{ClusterNames: names},
			Suspend: true, // the controller leaves it alone
		}}
	g.Expect(mgmt.Create(ctx, prel)).To(Succeed())
	t.Cleanup(func() { _ = mgmt.Delete(ctx, prel) })

	write := func(round int) int {
		cur := &pluginsv1.PluginRelease{}
		g.Expect(mgmt.Get(ctx, client.ObjectKeyFromObject(prel), cur)).To(Succeed())
		orig := cur.DeepCopy()
		budget := textBudget(n)
		now := metav1.Time{Time: time.Now().Truncate(time.Second)}
		cur.Status.Clusters = nil
		for i, name := range names {
			c := pluginsv1.ClusterReleaseStatus{Name: name, Phase: pluginsv1.PhaseFailed, Reason: pluginsv1.ClusterReasonUpgradeFailed,
				ChartVersion: "13.100.2", AppVersion: "v2.31.4-rc.1", Revision: 12345, Failures: 3,
				ConfigDigest: digestPrefix + strings.Repeat("a", 22), ManifestDigest: digestPrefix + strings.Repeat("b", 22),
				LastOperation: "drift-corrected", LastTransitionTime: &now,
				Message: truncate(fmt.Sprintf("round %d cluster %d: %s", round, i, strings.Repeat("upgrade failed: context deadline exceeded; ", 20)), 512),
				Drift:   &pluginsv1.DriftStatus{DetectedAt: now, Message: strings.Repeat("m", 512)}}
			for j := range maxDriftObjects {
				c.Drift.Objects = append(c.Drift.Objects, truncate(fmt.Sprintf("Deployment kube-system/component-%d-%d: %s", round, j, strings.Repeat("/spec/template/spec/containers/0/env/1/value, ", 10)), 300))
			}
			fitCluster(&c, budget)
			cur.Status.Clusters = append(cur.Status.Clusters, c)
		}
		cur.Status.Rollout = &pluginsv1.RolloutStatus{ConfigDigest: digestPrefix + strings.Repeat("c", 22), StartedAt: &now,
			Waves: []pluginsv1.WaveStatus{{Name: "canary", Clusters: names[:20]}, {Name: "rest", Clusters: names[20:]}}}
		cur.Status.History = nil
		for i := range pluginsv1.MaxHistoryEntries {
			cur.Status.History = append(cur.Status.History, pluginsv1.HistoryEntry{Time: now, Cluster: names[i], Action: "upgrade",
				FromVersion: "13.100.1", ToVersion: "13.100.2", Revision: 12345, Result: "Failed", Duration: "4m59.9s", Message: strings.Repeat("h", 256)})
		}
		g.Expect(mgmt.Status().Patch(ctx, cur, client.MergeFrom(orig), client.FieldOwner("paddock-manager"))).To(Succeed())
		got := &pluginsv1.PluginRelease{}
		g.Expect(mgmt.Get(ctx, client.ObjectKeyFromObject(prel), got)).To(Succeed())
		js, err := json.Marshal(got)
		g.Expect(err).NotTo(HaveOccurred())
		return len(js)
	}
	write(1)
	size := write(2)
	t.Logf("the stored object is %d KiB (etcd's limit: 1536 KiB)", size>>10)
	g.Expect(size).To(BeNumerically("<", 1300<<10), "room below etcd's 1.5 MiB")
}

// A selector that matches more clusters than one PluginRelease serves is refused before anything
// is done anywhere, with a condition that says how to fix it; below the limit again, it proceeds.
func TestMoreTargetsThanOnePluginReleaseServesAreRefused(t *testing.T) {
	g := NewWithT(t)
	members := attachMembers(t)
	_, repo := serveHello(t, "0.1.0")
	// A real member plus paused MemberClusters (never connected) up to one over the limit.
	real := &clustersv1.MemberCluster{}
	g.Expect(mgmt.Get(ctx, client.ObjectKey{Name: members[0]}, real)).To(Succeed())
	mergePatch(g, real, `{"metadata":{"labels":{"fleet-big":"true"}}}`)
	t.Cleanup(func() { mergePatch(NewWithT(t), real, `{"metadata":{"labels":{"fleet-big":null}}}`) })
	t.Cleanup(func() {
		_ = mgmt.DeleteAllOf(ctx, &clustersv1.MemberCluster{}, client.MatchingLabels{"fleet-big": "paused"})
	})
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, pluginsv1.MaxTargetClusters)
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < pluginsv1.MaxTargetClusters; i += 8 {
				mc := &clustersv1.MemberCluster{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("big-%04d", i), Labels: map[string]string{"fleet-big": "paused"}},
					Spec: clustersv1.MemberClusterSpec{Paused: true, Attach: &clustersv1.AttachSpec{
						KubeconfigSecretRef: clustersv1.SecretKeyReference{Namespace: secretNS, Name: "none"}}}}
				if err := mgmt.Create(ctx, mc); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		g.Expect(err).NotTo(HaveOccurred())
	}
	t.Logf("created %d MemberClusters in %s", pluginsv1.MaxTargetClusters, time.Since(start))
	prel := helloRelease("too-many", repo, nil, func(s *pluginsv1.PluginReleaseSpec) {
		s.Targets.ClusterSelector = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "fleet-big", Operator: metav1.LabelSelectorOpExists}}}
	})
	createRelease(t, prel)
	got := &pluginsv1.PluginRelease{}
	g.Eventually(func(g Gomega) {
		g.Expect(mgmt.Get(ctx, client.ObjectKeyFromObject(prel), got)).To(Succeed())
		c := meta.FindStatusCondition(got.Status.Conditions, pluginsv1.ReadyCondition)
		g.Expect(c).NotTo(BeNil())
		g.Expect(c.Reason).To(Equal(ReasonTooManyTargets))
		g.Expect(c.Message).To(ContainSubstring("spec.targets selects 1001 clusters; one PluginRelease serves at most 1000"))
		g.Expect(meta.IsStatusConditionTrue(got.Status.Conditions, pluginsv1.StalledCondition)).To(BeTrue())
	}, eventuallyWait, poll).Should(Succeed())
	g.Expect(got.Status.Clusters).To(BeEmpty())
	g.Consistently(func() int { return helmRevisions(g, 0, "too-many") }, 2*time.Second, poll).Should(BeZero(), "nothing installed anywhere")

	// One fewer: it proceeds, and the real member gets the release.
	g.Expect(mgmt.Delete(ctx, &clustersv1.MemberCluster{ObjectMeta: metav1.ObjectMeta{Name: "big-0000"}})).To(Succeed())
	g.Eventually(func() int { return helmRevisions(g, 0, "too-many") }, eventuallyWait, poll).Should(Equal(1))
	g.Eventually(func() int { return len(getRelease(g, prel).Status.Clusters) }, eventuallyWait, poll).Should(Equal(pluginsv1.MaxTargetClusters))

	// All but one replaced by a new target: the 999 that left keep their entries until they are
	// uninstalled (here: given up after the grace period, their members never connected), and the
	// new one waits for room instead of growing status past what etcd stores.
	mergePatchRelease(g, prel, fmt.Sprintf(`{"spec":{"targets":{"clusterSelector":null,"clusterNames":[%q,%q]}}}`, members[0], members[1]))
	waited, most := false, 0
	g.Eventually(func(g Gomega) {
		got := getRelease(g, prel)
		most = max(most, len(got.Status.Clusters))
		if c := clusterStatus(got, members[1]); c == nil {
			g.Expect(helmRevisions(g, 1, "too-many")).To(BeZero())
			if r := meta.FindStatusCondition(got.Status.Conditions, pluginsv1.ReadyCondition); r != nil &&
				strings.Contains(r.Message, "1 new clusters wait until the clusters that left are uninstalled") {
				waited = true
			}
		}
		g.Expect(got.Status.Clusters).To(HaveLen(2), "the clusters that left are gone")
	}, 2*eventuallyWait, poll).Should(Succeed())
	g.Expect(most).To(BeNumerically("<=", pluginsv1.MaxTargetClusters), "status never held more than the limit")
	g.Expect(waited).To(BeTrue(), "the new target waited for room, and Ready said so")
	waitReleaseReady(t, prel)
	g.Expect(helmRevisions(g, 1, "too-many")).To(Equal(1))
	t.Logf("done %s after the creates", time.Since(start))
}

func mergePatch(g Gomega, o client.Object, patch string) {
	g.Expect(mgmt.Patch(ctx, o, client.RawPatch(types.MergePatchType, []byte(patch)))).To(Succeed())
}

// A drift report that grows by an object is new (an event, a new detectedAt), even where status
// trims it to what it held before; the same report again is not.
func TestAGrownDriftReportIsNew(t *testing.T) {
	g := NewWithT(t)
	prel := &pluginsv1.PluginRelease{ObjectMeta: metav1.ObjectMeta{UID: "u", Name: "p", Namespace: "apps"},
		Status: pluginsv1.PluginReleaseStatus{Clusters: []pluginsv1.ClusterReleaseStatus{{Name: "c", Phase: pluginsv1.PhaseDeployed, ConfigDigest: "d"}}}}
	r := &Reconciler{drift: map[actionKey]*driftState{{uid: "u", cluster: "c"}: {}}}
	s := newScope(prel)
	events := func(objs ...string) int {
		before := len(s.events)
		r.foldDrift(s, "c", outcome{action: opDriftCheck, digest: "d", driftObjects: objs, finished: time.Now()})
		return len(s.events) - before
	}
	a := "ConfigMap apps/a: /x" // short enough to be all that some budget keeps
	g.Expect(events(a)).To(Equal(1))
	g.Expect(events(a)).To(Equal(0), "the same report")
	g.Expect(events(a, "ConfigMap apps/b: /data/y")).To(Equal(1), "an object more")
	g.Expect(events(a, "ConfigMap apps/b: /data/y")).To(Equal(0))
}

// A grown drift report folded in a pass whose status write failed (a conflict: the optimistic
// lock makes them routine) is still new when the next pass folds it again: one event, not none.
func TestAGrownDriftReportIsNewAgainAfterAFailedWrite(t *testing.T) {
	g := NewWithT(t)
	a, b := "ConfigMap apps/a: /x", "ConfigMap apps/b: /data/y"
	key := actionKey{uid: "u", cluster: "c"}
	r := &Reconciler{drift: map[actionKey]*driftState{key: {reportSig: a}}, done: map[actionKey][]outcome{}}
	written := func(objs ...string) *pluginsv1.PluginRelease {
		return &pluginsv1.PluginRelease{ObjectMeta: metav1.ObjectMeta{UID: "u", Name: "p", Namespace: "apps"},
			Status: pluginsv1.PluginReleaseStatus{Clusters: []pluginsv1.ClusterReleaseStatus{{Name: "c", Phase: pluginsv1.PhaseDeployed,
				ConfigDigest: "d", Drift: &pluginsv1.DriftStatus{Objects: objs}}}}}
	}
	fold := func(s *scope, objs ...string) int {
		r.mu.Lock()
		defer r.mu.Unlock()
		before := len(s.events)
		r.foldDrift(s, "c", outcome{action: opDriftCheck, digest: "d", driftObjects: objs, finished: time.Now()})
		return len(s.events) - before
	}
	g.Expect(fold(newScope(written(a)), a, b)).To(Equal(1))
	// That pass's write failed: status still holds [a].
	s := newScope(written(a))
	g.Expect(fold(s, a, b)).To(Equal(1), "still new")
	r.forgetFolded(s)
	g.Expect(fold(newScope(written(a, b)), a, b)).To(Equal(0), "written: the same report")
}
