package membercluster

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
	"github.com/paddock-dev/paddock/internal/clustercache"
	"github.com/paddock-dev/paddock/internal/scheme"
	"github.com/paddock-dev/paddock/test/envs"
)

// handOuts watches what a Reader hands out for one member, both when a subscriber is told of a
// change and by polling in between, and counts every accessor whose server is forbidden.
type handOuts struct {
	bad    atomic.Int32
	checks atomic.Int32
	stop   chan struct{}
	done   sync.WaitGroup
}

func watchHandOuts(r clustercache.Reader, member, forbiddenHost string) *handOuts {
	h := &handOuts{stop: make(chan struct{})}
	check := func() {
		h.checks.Add(1)
		if acc, err := r.Get(context.Background(), member); err == nil && acc.Config.Host == forbiddenHost {
			h.bad.Add(1)
		}
		if acc, err := r.GetForCleanup(context.Background(), member); err == nil && acc.Config.Host == forbiddenHost {
			h.bad.Add(1)
		}
	}
	sub := r.Subscribe()
	h.done.Add(1)
	go func() {
		defer h.done.Done()
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-h.stop:
				return
			case e := <-sub:
				if e.Object.GetName() == member {
					check()
				}
			case <-tick.C:
				check()
			}
		}
	}()
	return h
}

// finish stops watching and returns how many forbidden hand-outs were seen.
func (h *handOuts) finish() (bad, checks int32) {
	close(h.stop)
	h.done.Wait()
	return h.bad.Load(), h.checks.Load()
}

// The worst window: the kubeconfig Secret is re-pointed at another cluster. The new connection
// must never be handed out, not even for the moment between connecting and its first probe.
func TestRotatedSecretIsNeverHandedOutBeforeStalled(t *testing.T) {
	g := NewWithT(t)
	m1, m2 := env.Members[0], env.Members[1]
	attach(t, "rot-window", m1.Kubeconfig())
	waitCondition(t, "rot-window", clustersv1.ReadyCondition, metav1.ConditionTrue, "", eventuallyWait)
	acc, err := cache.Get(ctx, "rot-window")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(acc.Config.Host).To(Equal(m1.Server()))

	w := watchHandOuts(cache, "rot-window", m2.Server())
	_, err = writeSecret("rot-window", m2.Kubeconfig())
	g.Expect(err).NotTo(HaveOccurred())
	waitCondition(t, "rot-window", clustersv1.StalledCondition, metav1.ConditionTrue, clustersv1.ReasonClusterIdentityChanged, eventuallyWait)
	g.Consistently(func() error { _, err := cache.Get(ctx, "rot-window"); return err }, time.Second, poll).Should(HaveOccurred())
	bad, checks := w.finish()
	g.Expect(checks).To(BeNumerically(">", 100))
	g.Expect(bad).To(BeZero(), "the connection to the other cluster was handed out before its identity was checked")

	// A manager restart on the Stalled member: a fresh Reconciler (its own cache, no memory) must
	// keep it Stalled and never hand it out, not even before its first probe.
	fresh, freshCache := freshReconciler(t)
	w = watchHandOuts(freshCache, "rot-window", m2.Server())
	req := ctrl.Request{NamespacedName: types.NamespacedName{Name: "rot-window"}}
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		_, _ = fresh.Reconcile(ctx, req)
		mc := get(g, "rot-window")
		g.Expect(meta.IsStatusConditionTrue(mc.Status.Conditions, clustersv1.StalledCondition)).To(BeTrue(), "Stalled all along")
		g.Expect(meta.FindStatusCondition(mc.Status.Conditions, clustersv1.ReadyCondition).Status).To(Equal(metav1.ConditionFalse))
		select {
		case <-fresh.probeDone:
		case <-time.After(100 * time.Millisecond):
		}
	}
	bad, _ = w.finish()
	g.Expect(bad).To(BeZero(), "a restarted manager handed out a member whose identity had changed")
	fresh.mu.Lock()
	st := fresh.health[get(g, "rot-window").UID]
	fresh.mu.Unlock()
	g.Expect(st).NotTo(BeNil())
	g.Expect(st.identityMismatch).To(Equal(kubeSystemUID(t, m2)), "the fresh Reconciler probed and found the other cluster")
}

// freshReconciler is a second Reconciler with its own cache and no memory, as after a manager
// restart. The test drives it by calling Reconcile; it stops with the test.
func freshReconciler(t *testing.T) (*Reconciler, *clustercache.ClusterCache) {
	c := clustercache.New(clustercache.Options{Scheme: scheme.New(), Timeout: 5 * time.Second})
	r := &Reconciler{
		Client: mgmt, APIReader: mgmt, Cache: c,
		Policy:              clustercache.Policy{AllowLoopback: true},
		Recorder:            events.NewFakeRecorder(100),
		DeletionGracePeriod: deletionGrace,
		StatusHeartbeat:     2 * time.Second,
	}
	rctx, cancel := context.WithCancel(ctx)
	t.Cleanup(cancel)
	r.init(rctx, logr.Discard())
	return r, c
}

func writeSecret(name string, kubeconfig []byte) (*corev1.Secret, error) {
	return envs.WriteKubeconfigSecret(ctx, mgmt, secretNS, name, kubeconfig)
}

// Unpausing a member whose Secret was re-pointed while it was paused must not hand out the new
// connection: pausing drops the connection, and unpausing proves the identity again.
func TestUnpauseProvesTheIdentityAgain(t *testing.T) {
	g := NewWithT(t)
	m1, m2 := env.Members[0], env.Members[1]
	mc := attach(t, "unpause-window", m1.Kubeconfig())
	waitCondition(t, "unpause-window", clustersv1.ReadyCondition, metav1.ConditionTrue, "", eventuallyWait)
	// Status lands first, admission right after it.
	var before *clustercache.Accessor
	g.Eventually(func() (err error) { before, err = cache.Get(ctx, "unpause-window"); return err }, eventuallyWait, poll).Should(Succeed())
	var err error
	// Pause and unpause with the same Secret: the connection is rebuilt and proven again (the
	// cluster behind an unchanged kubeconfig may have changed while nobody looked).
	setPaused(t, mc.Name, true)
	waitCondition(t, "unpause-window", clustersv1.ReadyCondition, metav1.ConditionUnknown, clustersv1.ReasonPaused, eventuallyWait)
	_, err = cache.Get(ctx, "unpause-window")
	g.Expect(err).To(HaveOccurred())
	setPaused(t, mc.Name, false)
	g.Eventually(func(g Gomega) {
		acc, err := cache.Get(ctx, "unpause-window")
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(acc.Generation).NotTo(Equal(before.Generation), "a new connection")
	}, eventuallyWait, poll).Should(Succeed())

	// Pause again, and re-point the Secret at another cluster while paused.
	setPaused(t, mc.Name, true)
	waitCondition(t, "unpause-window", clustersv1.ReadyCondition, metav1.ConditionUnknown, clustersv1.ReasonPaused, eventuallyWait)

	_, err = writeSecret("unpause-window", m2.Kubeconfig())
	g.Expect(err).NotTo(HaveOccurred())
	w := watchHandOuts(cache, "unpause-window", m2.Server())
	setPaused(t, mc.Name, false)
	waitCondition(t, "unpause-window", clustersv1.StalledCondition, metav1.ConditionTrue, clustersv1.ReasonClusterIdentityChanged, eventuallyWait)
	bad, _ := w.finish()
	g.Expect(bad).To(BeZero())

	// Pointing it back at the pinned cluster makes it usable again, through a new, proven connection.
	_, err = writeSecret("unpause-window", m1.Kubeconfig())
	g.Expect(err).NotTo(HaveOccurred())
	waitCondition(t, "unpause-window", clustersv1.ReadyCondition, metav1.ConditionTrue, clustersv1.ReasonReady, eventuallyWait)
	g.Eventually(func() error { _, err := cache.Get(ctx, "unpause-window"); return err }, eventuallyWait, poll).Should(Succeed())
	g.Expect(meta.FindStatusCondition(get(g, "unpause-window").Status.Conditions, clustersv1.StalledCondition)).To(BeNil())
}

func setPaused(t *testing.T, name string, paused bool) {
	g := NewWithT(t)
	g.Eventually(func() error {
		mc := &clustersv1.MemberCluster{}
		if err := mgmt.Get(ctx, client.ObjectKey{Name: name}, mc); err != nil {
			return err
		}
		orig := mc.DeepCopy()
		mc.Spec.Paused = paused
		return mgmt.Patch(ctx, mc, client.MergeFrom(orig))
	}, eventuallyWait, poll).Should(Succeed())
}

// A changed spec.healthCheck is probed at once: a member on a 1h period switched to 1s must not
// wait out the hour.
func TestChangedHealthCheckIsProbedAtOnce(t *testing.T) {
	g := NewWithT(t)
	m1 := env.Members[0]
	mc := attach(t, "slow-period", m1.Kubeconfig(), func(mc *clustersv1.MemberCluster) {
		mc.Spec.HealthCheck.Period = &metav1.Duration{Duration: time.Hour}
		mc.Spec.HealthCheck.UnhealthyAfter = &metav1.Duration{Duration: 2 * time.Hour}
	})
	waitCondition(t, mc.Name, clustersv1.ReadyCondition, metav1.ConditionTrue, clustersv1.ReasonReady, eventuallyWait)
	last := func() float64 { return testutil.ToFloat64(lastProbeGauge.WithLabelValues(mc.Name)) }
	before := last()
	g.Consistently(last, time.Second, poll).Should(Equal(before), "on a 1h period nothing is probed for a while")

	g.Eventually(func() error {
		cur := get(g, mc.Name)
		orig := cur.DeepCopy()
		cur.Spec.HealthCheck.Period = &metav1.Duration{Duration: time.Second}
		cur.Spec.HealthCheck.UnhealthyAfter = &metav1.Duration{Duration: testUnhealthy}
		return mgmt.Patch(ctx, cur, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{}))
	}, eventuallyWait, poll).Should(Succeed())
	changed := time.Now()
	g.Eventually(last, 2*time.Second, 10*time.Millisecond).Should(BeNumerically(">", before), "probed at once")
	t.Logf("probed %s after the change", time.Since(changed))
	second := last()
	g.Eventually(last, 3*time.Second, poll).Should(BeNumerically(">", second), "and then every second")
	expectSettled(t, mc.Name)
}

// expectSettled waits until the MemberCluster is Ready, not Reconciling and kstatus Current for its
// latest generation.
func expectSettled(t *testing.T, name string) {
	t.Helper()
	NewWithT(t).Eventually(func(g Gomega) {
		cur := get(g, name)
		g.Expect(cur.Status.ObservedGeneration).To(Equal(cur.Generation))
		g.Expect(meta.FindStatusCondition(cur.Status.Conditions, clustersv1.ReconcilingCondition)).To(BeNil())
		g.Expect(meta.IsStatusConditionTrue(cur.Status.Conditions, clustersv1.ReadyCondition)).To(BeTrue())
		g.Expect(kstatusOf(g, cur)).To(Equal(status.CurrentStatus))
	}, eventuallyWait, poll).Should(Succeed())
}

// While a member is being attached, kstatus says InProgress (so `kubectl wait` and GitOps tools
// wait), and the member is not usable.
func TestAttachingIsInProgress(t *testing.T) {
	g := NewWithT(t)
	m3 := env.Members[2]
	m3.Freeze()
	defer m3.Thaw()
	attach(t, "attaching", m3.Kubeconfig(), func(mc *clustersv1.MemberCluster) {
		mc.Spec.HealthCheck.Timeout = &metav1.Duration{Duration: 4 * time.Second}
	})
	g.Eventually(func(g Gomega) {
		mc := get(g, "attaching")
		g.Expect(mc.Status.ObservedGeneration).To(Equal(mc.Generation))
		g.Expect(kstatusOf(g, mc)).To(Equal(status.InProgressStatus))
		g.Expect(meta.IsStatusConditionTrue(mc.Status.Conditions, clustersv1.ReconcilingCondition)).To(BeTrue())
	}, 3*time.Second, 50*time.Millisecond).Should(Succeed())
	_, err := cache.Get(ctx, "attaching")
	g.Expect(err).To(HaveOccurred())
	m3.Thaw()
	mc := waitCondition(t, "attaching", clustersv1.ReadyCondition, metav1.ConditionTrue, clustersv1.ReasonReady, eventuallyWait)
	g.Expect(kstatusOf(g, mc)).To(Equal(status.CurrentStatus))
}

// With 5 probe slots and 10 members hung behind a frozen apiserver, probes of healthy members
// never wait behind the hung ones: failing members use their own pool, and a hung probe gives its
// slot back after slotHold.
func TestHungMembersDoNotHoldHealthyProbesWithFiveSlots(t *testing.T) {
	g := NewWithT(t)
	m1, m2, m3 := env.Members[0], env.Members[1], env.Members[2]
	c := clustercache.New(clustercache.Options{Scheme: scheme.New(), Timeout: 5 * time.Second})
	r := &Reconciler{Client: mgmt, APIReader: mgmt, Cache: c, Recorder: events.NewFakeRecorder(10), MaxConcurrentProbes: 5, StatusHeartbeat: time.Hour}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r.init(rctx, logr.Discard())
	go func() {
		for {
			select {
			case <-r.probeDone:
			case <-rctx.Done():
				return
			}
		}
	}()
	hc := clustersv1.HealthCheckSpec{
		Period: &metav1.Duration{Duration: time.Second}, Timeout: &metav1.Duration{Duration: 3 * time.Second},
		UnhealthyAfter: &metav1.Duration{Duration: 10 * time.Second}, SuccessThreshold: 1,
		InventoryInterval: &metav1.Duration{Duration: time.Hour},
	}
	policy := clustercache.Policy{AllowLoopback: true}
	start := func(name string, kubeconfig []byte) *memberState {
		cfg, err := policy.Load(kubeconfig, "")
		g.Expect(err).NotTo(HaveOccurred())
		acc, err := c.Connect(name, "v1", cfg)
		g.Expect(err).NotTo(HaveOccurred())
		st := &memberState{name: name, uid: types.UID(name)}
		r.activate(name, st, acc, hc)
		t.Cleanup(func() { deactivate(st) })
		return st
	}
	var hung, healthy []*memberState
	m3.Freeze()
	defer m3.Thaw()
	for i := range 10 {
		hung = append(hung, start(fmt.Sprintf("hung-slot-%d", i), m3.Kubeconfig()))
	}
	// Wait until every hung member's first probe (indistinguishable from a healthy one until it
	// hangs) has run into its timeout, so they are all known to be failing.
	g.Eventually(func() bool {
		for _, st := range hung {
			st.mu.Lock()
			f := st.health.ConsecutiveFailures
			st.mu.Unlock()
			if f == 0 {
				return false
			}
		}
		return true
	}, 20*time.Second, poll).Should(BeTrue())
	for i := range 6 {
		kc := m1.Kubeconfig()
		if i%2 == 1 {
			kc = m2.Kubeconfig()
		}
		healthy = append(healthy, start(fmt.Sprintf("healthy-slot-%d", i), kc))
	}
	// Probed every period: wait for several probes of each, then look at how long they waited.
	g.Eventually(func() bool {
		for _, st := range healthy {
			st.mu.Lock()
			n := st.health.ConsecutiveSuccesses
			st.mu.Unlock()
			if n < 4 {
				return false
			}
		}
		return true
	}, 20*time.Second, poll).Should(BeTrue())
	for _, st := range healthy {
		st.mu.Lock()
		h, wait := st.health, st.maxSlotWait
		st.mu.Unlock()
		g.Expect(h.Healthy).To(BeTrue(), st.name)
		g.Expect(h.ConsecutiveFailures).To(BeZero(), st.name)
		g.Expect(h.ConsecutiveSuccesses).To(BeNumerically(">=", 4), "%s was probed every period", st.name)
		g.Expect(wait).To(BeNumerically("<", 500*time.Millisecond), "%s waited %s for a slot", st.name, wait)
	}
	for _, st := range hung {
		st.mu.Lock()
		g.Expect(st.health.ConsecutiveFailures).To(BeNumerically(">=", 1), st.name)
		st.mu.Unlock()
	}
}

// A hand-deleted marker namespace comes back through the access layer's watch, well within 30 s,
// and the watch is shared and stops with its connection.
func TestDeletedMarkerNamespaceComesBack(t *testing.T) {
	g := NewWithT(t)
	m2 := env.Members[1]
	attach(t, "marker-back", m2.Kubeconfig())
	waitCondition(t, "marker-back", clustersv1.ReadyCondition, metav1.ConditionTrue, clustersv1.ReasonReady, eventuallyWait)
	ns := &corev1.Namespace{}
	g.Eventually(func() error { return m2.Client.Get(ctx, client.ObjectKey{Name: MarkerNamespace}, ns) }, eventuallyWait, poll).Should(Succeed())
	oldUID := ns.UID

	// Another controller joining the same watch shares it.
	watchesBefore := cache.Watches()
	var seen atomic.Int32
	stop, err := cache.Watch(ctx, "marker-back", markerWatch, func(clustercache.WatchEvent) { seen.Add(1) })
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(cache.Watches()).To(Equal(watchesBefore), "shared, not a second watch")
	g.Expect(cache.WaitForWatchSynced(ctx, "marker-back", markerWatch)).To(Succeed())

	deleted := time.Now()
	deleteMarkerByHand(t, m2, ns)
	g.Eventually(func(g Gomega) {
		cur := &corev1.Namespace{}
		g.Expect(m2.Client.Get(ctx, client.ObjectKey{Name: MarkerNamespace}, cur)).To(Succeed())
		g.Expect(cur.UID).NotTo(Equal(oldUID))
		g.Expect(cur.Labels).To(HaveKeyWithValue(ManagedByLabel, ManagedByValue))
	}, 30*time.Second, poll).Should(Succeed())
	t.Logf("the marker namespace was back %s after it was deleted", time.Since(deleted))
	g.Expect(seen.Load()).To(BeNumerically(">=", 2), "the second handler saw the namespace and its deletion")
	stop()
	g.Expect(cache.Watches()).To(Equal(watchesBefore), "the controller's own handler keeps the watch")

	// Re-pointing the Secret (same cluster, new connection) stops the old connection's watch.
	old, err := cache.Get(ctx, "marker-back")
	g.Expect(err).NotTo(HaveOccurred())
	_, err = writeSecret("marker-back", append(m2.Kubeconfig(), '\n'))
	g.Expect(err).NotTo(HaveOccurred())
	g.Eventually(func(g Gomega) {
		acc, err := cache.Get(ctx, "marker-back")
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(acc.Generation).NotTo(Equal(old.Generation))
	}, eventuallyWait, poll).Should(Succeed())
	g.Eventually(cache.Watches, eventuallyWait, poll).Should(Equal(watchesBefore))
}

// Between a change of spec.healthCheck and the first probe with the new settings, status says
// Reconciling=True for the new generation (kstatus InProgress): a `kubectl wait` on the change
// does not return before the member was probed as asked.
func TestChangedHealthCheckIsReconcilingUntilProbed(t *testing.T) {
	g := NewWithT(t)
	m3 := env.Members[2]
	attach(t, "hc-pending", m3.Kubeconfig(), func(mc *clustersv1.MemberCluster) {
		mc.Spec.HealthCheck.Timeout = &metav1.Duration{Duration: 4 * time.Second}
		mc.Spec.HealthCheck.UnhealthyAfter = &metav1.Duration{Duration: time.Minute}
	})
	waitCondition(t, "hc-pending", clustersv1.ReadyCondition, metav1.ConditionTrue, clustersv1.ReasonReady, eventuallyWait)
	m3.Freeze()
	defer m3.Thaw()
	g.Eventually(func() error {
		cur := get(g, "hc-pending")
		orig := cur.DeepCopy()
		cur.Spec.HealthCheck.Period = &metav1.Duration{Duration: 2 * time.Second}
		return mgmt.Patch(ctx, cur, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{}))
	}, eventuallyWait, poll).Should(Succeed())
	g.Eventually(func(g Gomega) {
		cur := get(g, "hc-pending")
		g.Expect(cur.Status.ObservedGeneration).To(Equal(cur.Generation))
		g.Expect(meta.IsStatusConditionTrue(cur.Status.Conditions, clustersv1.ReconcilingCondition)).To(BeTrue())
		g.Expect(kstatusOf(g, cur)).To(Equal(status.InProgressStatus))
	}, 3*time.Second, 50*time.Millisecond).Should(Succeed())
	m3.Thaw()
	expectSettled(t, "hc-pending")
}

// A probe result that comes back after its connection was replaced is discarded, not folded into
// the new connection's health: here a probe hangs on a frozen member while the Secret changes, and
// returns once the member thaws.
func TestProbeThroughAReplacedConnectionIsDiscarded(t *testing.T) {
	g := NewWithT(t)
	m3 := env.Members[2]
	attach(t, "discarded", m3.Kubeconfig(), func(mc *clustersv1.MemberCluster) {
		mc.Spec.HealthCheck.Period = &metav1.Duration{Duration: time.Second}
		mc.Spec.HealthCheck.Timeout = &metav1.Duration{Duration: 4 * time.Second}
		mc.Spec.HealthCheck.UnhealthyAfter = &metav1.Duration{Duration: time.Minute}
	})
	waitCondition(t, "discarded", clustersv1.ReadyCondition, metav1.ConditionTrue, clustersv1.ReasonReady, eventuallyWait)
	st := stateOf(g, suiteReconciler, "discarded")
	m3.Freeze()
	defer m3.Thaw()
	inFlight := func() bool { st.mu.Lock(); defer st.mu.Unlock(); return st.inFlight }
	g.Eventually(inFlight, 5*time.Second, 10*time.Millisecond).Should(BeTrue())
	st.mu.Lock()
	old := st.acc
	st.mu.Unlock()
	before := testutil.ToFloat64(probesDiscarded)
	_, err := writeSecret("discarded", append(m3.Kubeconfig(), '\n'))
	g.Expect(err).NotTo(HaveOccurred())
	g.Eventually(func() bool { st.mu.Lock(); defer st.mu.Unlock(); return st.acc != old }, eventuallyWait, 10*time.Millisecond).Should(BeTrue())
	m3.Thaw()
	g.Eventually(func() float64 { return testutil.ToFloat64(probesDiscarded) }, 10*time.Second, 10*time.Millisecond).Should(BeNumerically(">", before))
	waitCondition(t, "discarded", clustersv1.ReadyCondition, metav1.ConditionTrue, clustersv1.ReasonReady, eventuallyWait)
}

// Another owner's condition on a MemberCluster (a later Paddock controller, or a policy engine)
// survives this controller's status writes, which keep conditions they do not own. (Their
// optimistic lock covers a stale cached copy; this test does not force that race.)
func TestOtherOwnersConditionsSurviveStatusWrites(t *testing.T) {
	g := NewWithT(t)
	attach(t, "shared-status", env.Members[0].Kubeconfig())
	waitCondition(t, "shared-status", clustersv1.ReadyCondition, metav1.ConditionTrue, clustersv1.ReasonReady, eventuallyWait)
	g.Eventually(func() error {
		cur := get(g, "shared-status")
		orig := cur.DeepCopy()
		meta.SetStatusCondition(&cur.Status.Conditions, metav1.Condition{Type: "example.com/Audited", Status: metav1.ConditionTrue,
			Reason: "Audited", Message: "set by another owner", ObservedGeneration: cur.Generation})
		return mgmt.Status().Patch(ctx, cur, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{}))
	}, eventuallyWait, poll).Should(Succeed())
	// Make this controller write status: a changed health check is published at once.
	g.Eventually(func() error {
		cur := get(g, "shared-status")
		orig := cur.DeepCopy()
		cur.Spec.HealthCheck.Period = &metav1.Duration{Duration: 3 * time.Second}
		return mgmt.Patch(ctx, cur, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{}))
	}, eventuallyWait, poll).Should(Succeed())
	expectSettled(t, "shared-status")
	cur := get(g, "shared-status")
	g.Expect(cur.Status.ObservedGeneration).To(Equal(cur.Generation), "this controller wrote status for the new generation")
	audited := meta.FindStatusCondition(cur.Status.Conditions, "example.com/Audited")
	g.Expect(audited).NotTo(BeNil(), "the other owner's condition was kept")
	g.Expect(audited.Message).To(Equal("set by another owner"))
}

// A MemberCluster deleted and recreated under the same name while this Reconciler did not see the
// deletion (here: a Reconciler that is not watching) gets a new UID: the old one's in-memory state
// is dropped and its prober stopped on first sight of the new one, not left probing forever.
func TestRecreatedUnderTheSameNameLeavesOneProber(t *testing.T) {
	g := NewWithT(t)
	fresh, _ := freshReconciler(t)
	req := ctrl.Request{NamespacedName: types.NamespacedName{Name: "recreated"}}
	mc := attach(t, "recreated", env.Members[0].Kubeconfig(), func(mc *clustersv1.MemberCluster) {
		mc.Spec.DeletionPolicy = clustersv1.DeletionPolicyOrphan
	})
	byName := func() []*memberState {
		fresh.mu.Lock()
		defer fresh.mu.Unlock()
		var out []*memberState
		for _, st := range fresh.health {
			if st.name == "recreated" {
				out = append(out, st)
			}
		}
		return out
	}
	// Reconciled until it got past the finalizer (the suite's Reconciler adds it too, so the first
	// try may meet a conflict).
	g.Eventually(func() []*memberState { _, _ = fresh.Reconcile(ctx, req); return byName() }, eventuallyWait, poll).Should(HaveLen(1))
	old := byName()[0]
	g.Expect(old.uid).To(Equal(get(g, "recreated").UID))
	// The old one is being probed.
	g.Eventually(func() bool { old.mu.Lock(); defer old.mu.Unlock(); return old.probedConn }, eventuallyWait, poll).Should(BeTrue())

	g.Expect(mgmt.Delete(ctx, mc)).To(Succeed())
	g.Eventually(func() bool {
		return apierrors.IsNotFound(mgmt.Get(ctx, client.ObjectKey{Name: "recreated"}, &clustersv1.MemberCluster{}))
	}, eventuallyWait, poll).Should(BeTrue())
	again := attach(t, "recreated", env.Members[0].Kubeconfig())
	g.Expect(again.UID).NotTo(Equal(old.uid))
	g.Eventually(func() types.UID {
		_, _ = fresh.Reconcile(ctx, req)
		fresh.mu.Lock()
		defer fresh.mu.Unlock()
		if st := fresh.health[again.UID]; st != nil {
			return st.uid
		}
		return ""
	}, eventuallyWait, poll).Should(Equal(again.UID))

	states := byName()
	g.Expect(states).To(HaveLen(1), "one state per name")
	g.Expect(states[0].uid).To(Equal(again.UID))
	old.mu.Lock()
	g.Expect(old.active).To(BeFalse(), "the old prober is stopped")
	g.Expect(old.timer).To(BeNil())
	lastStart := old.lastStart
	old.mu.Unlock()
	g.Consistently(func() time.Time { old.mu.Lock(); defer old.mu.Unlock(); return old.lastStart }, 3*testPeriod, poll).Should(Equal(lastStart),
		"no probe of the old MemberCluster after the new one was seen")
}

// The race the optimistic lock is for, forced: this controller computes a status from a copy read
// before another owner set its condition. A merge patch replaces the whole conditions list, so
// without the lock the other owner's condition would be lost; with it the patch is refused, and
// the retry (from a fresh copy) keeps both.
func TestStaleStatusCopyCannotDropAnotherOwnersCondition(t *testing.T) {
	g := NewWithT(t)
	r, _ := freshReconciler(t)
	attach(t, "stale-copy", env.Members[0].Kubeconfig())
	expectSettled(t, "stale-copy")
	stale := get(g, "stale-copy")

	// Another owner's write lands after our read.
	cur := stale.DeepCopy()
	meta.SetStatusCondition(&cur.Status.Conditions, metav1.Condition{Type: "example.com/Audited", Status: metav1.ConditionTrue,
		Reason: "Audited", Message: "set by another owner", ObservedGeneration: cur.Generation})
	g.Expect(mgmt.Status().Patch(ctx, cur, client.MergeFrom(stale.DeepCopy()))).To(Succeed())

	// This controller's status from the stale copy: a visible change (the member turned unreachable).
	scopeFrom := func(mc *clustersv1.MemberCluster) *scope {
		return &scope{mc: mc, orig: mc.DeepCopy(), state: &memberState{name: mc.Name, uid: mc.UID}, connected: true, endpoint: mc.Status.APIEndpoint,
			health: health{LastProbe: time.Now(), LastSuccess: mc.Status.LastSuccessfulProbeTime.Time, ConsecutiveFailures: 3,
				LastFailureReason: clustersv1.ReasonClusterNotReachable, LastFailureMsg: "connection refused"},
			verified: true, probedConn: true}
	}
	err := r.patchStatus(ctx, scopeFrom(stale.DeepCopy()))
	g.Expect(apierrors.IsConflict(err)).To(BeTrue(), "a patch from a stale copy is refused: %v", err)
	after := get(g, "stale-copy")
	g.Expect(meta.FindStatusCondition(after.Status.Conditions, "example.com/Audited")).NotTo(BeNil(), "the other owner's condition is still there")

	// The retry reads the object again and keeps both (the suite's Reconciler writes heartbeats
	// too, so the retry may meet a conflict of its own). What the patch returned is the object as
	// stored right after this write.
	var written *clustersv1.MemberCluster
	g.Eventually(func() error {
		s := scopeFrom(get(g, "stale-copy"))
		written = s.mc
		return r.patchStatus(ctx, s)
	}, eventuallyWait, poll).Should(Succeed())
	g.Expect(meta.FindStatusCondition(written.Status.Conditions, "example.com/Audited")).NotTo(BeNil())
	g.Expect(meta.FindStatusCondition(written.Status.Conditions, clustersv1.ReadyCondition).Reason).To(Equal(clustersv1.ReasonClusterNotReachable))
}

// A label or annotation edit of the kubeconfig Secret (External Secrets, Argo CD and others write
// those routinely) changes its resourceVersion but not the kubeconfig: the connection is kept, not
// rebuilt and proven again. A change of the data does rebuild it.
func TestSecretMetadataEditKeepsTheConnection(t *testing.T) {
	g := NewWithT(t)
	m1 := env.Members[0]
	attach(t, "label-edit", m1.Kubeconfig())
	expectSettled(t, "label-edit")
	before, err := cache.Get(ctx, "label-edit")
	g.Expect(err).NotTo(HaveOccurred())

	secret := &corev1.Secret{}
	key := client.ObjectKey{Namespace: secretNS, Name: envs.KubeconfigSecretName("label-edit")}
	g.Expect(mgmt.Get(ctx, key, secret)).To(Succeed())
	for i := range 3 {
		orig := secret.DeepCopy()
		if secret.Annotations == nil {
			secret.Annotations = map[string]string{}
		}
		secret.Annotations["reconcile.external-secrets.io/refreshed"] = fmt.Sprint(i)
		g.Expect(mgmt.Patch(ctx, secret, client.MergeFrom(orig))).To(Succeed())
	}
	// The controller saw the edits (each enqueues the MemberCluster) and kept the connection.
	g.Consistently(func(g Gomega) {
		acc, err := cache.Get(ctx, "label-edit")
		g.Expect(err).NotTo(HaveOccurred(), "usable throughout")
		g.Expect(acc.Generation).To(Equal(before.Generation), "the same connection")
		g.Expect(meta.FindStatusCondition(get(g, "label-edit").Status.Conditions, clustersv1.ReconcilingCondition)).To(BeNil())
	}, 3*time.Second, poll).Should(Succeed())

	_, err = writeSecret("label-edit", append(m1.Kubeconfig(), '\n'))
	g.Expect(err).NotTo(HaveOccurred())
	g.Eventually(func(g Gomega) {
		acc, err := cache.Get(ctx, "label-edit")
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(acc.Generation).NotTo(Equal(before.Generation), "new data, new connection")
	}, eventuallyWait, poll).Should(Succeed())
}

// A revoke this controller's reconcile did not see (here: straight on the access layer, as the
// prober does when a probe reads another cluster) ends the marker watch; the watch's end is told
// to its handler, so once the member is usable again the marker is watched anew, and a
// hand-deleted paddock-system still comes back.
func TestMarkerWatchComesBackAfterAnUnseenRevoke(t *testing.T) {
	g := NewWithT(t)
	m2 := env.Members[1]
	attach(t, "marker-revoked", m2.Kubeconfig())
	expectSettled(t, "marker-revoked")
	g.Eventually(func() error { _, err := cache.Get(ctx, "marker-revoked"); return err }, eventuallyWait, poll).Should(Succeed())
	g.Eventually(func() error { return cache.WaitForWatchSynced(ctx, "marker-revoked", markerWatch) }, eventuallyWait, poll).Should(Succeed())

	cache.Revoke("marker-revoked", clustersv1.ReasonClusterIdentityChanged, true)
	_, err := cache.Get(ctx, "marker-revoked")
	g.Expect(err).To(HaveOccurred())
	// Re-admitted (the identity is still the pinned one) and watched again.
	g.Eventually(func() error { return cache.WaitForWatchSynced(ctx, "marker-revoked", markerWatch) }, 10*time.Second, poll).Should(Succeed())

	ns := &corev1.Namespace{}
	g.Expect(m2.Client.Get(ctx, client.ObjectKey{Name: MarkerNamespace}, ns)).To(Succeed())
	oldUID := ns.UID
	deleteMarkerByHand(t, m2, ns)
	g.Eventually(func(g Gomega) {
		cur := &corev1.Namespace{}
		g.Expect(m2.Client.Get(ctx, client.ObjectKey{Name: MarkerNamespace}, cur)).To(Succeed())
		g.Expect(cur.UID).NotTo(Equal(oldUID))
	}, 10*time.Second, poll).Should(Succeed())
}

// deleteMarkerByHand deletes the member's marker namespace ns the way a person would, and finishes
// the deletion as the namespace controller would (envtest runs none).
func deleteMarkerByHand(t *testing.T, m *envs.Member, ns *corev1.Namespace) {
	t.Helper()
	g := NewWithT(t)
	g.Expect(m.Client.Delete(ctx, ns)).To(Succeed())
	g.Eventually(func() error {
		cur := &corev1.Namespace{}
		if err := m.Client.Get(ctx, client.ObjectKey{Name: MarkerNamespace}, cur); err != nil {
			return client.IgnoreNotFound(err)
		}
		if cur.UID != ns.UID {
			return nil
		}
		cur.Spec.Finalizers = nil
		return m.Client.SubResource("finalize").Update(ctx, cur)
	}, eventuallyWait, poll).Should(Succeed())
}
