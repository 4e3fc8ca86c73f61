package membercluster

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
	"github.com/paddock-dev/paddock/internal/clustercache"
	"github.com/paddock-dev/paddock/test/envs"
)

func kubeSystemUID(t *testing.T, m *envs.Member) string {
	ns := &corev1.Namespace{}
	NewWithT(t).Expect(m.Client.Get(ctx, client.ObjectKey{Name: "kube-system"}, ns)).To(Succeed())
	return string(ns.UID)
}

func TestAttachTwoMembersReportsVersionNodesAndCapacity(t *testing.T) {
	g := NewWithT(t)
	m1, m2 := env.Members[0], env.Members[1]
	addNode(t, m1, "m1-a", true, "4", "8Gi")
	addNode(t, m1, "m1-b", false, "2", "4Gi")
	addNode(t, m2, "m2-a", true, "8", "32Gi")

	attach(t, "attach-one", m1.Kubeconfig())
	attach(t, "attach-two", m2.Kubeconfig())

	one := waitCondition(t, "attach-one", clustersv1.ReadyCondition, metav1.ConditionTrue, clustersv1.ReasonReady, eventuallyWait)
	two := waitCondition(t, "attach-two", clustersv1.ReadyCondition, metav1.ConditionTrue, clustersv1.ReasonReady, eventuallyWait)

	g.Expect(one.Status.Mode).To(Equal("Attach"))
	g.Expect(one.Status.KubernetesVersion).To(Equal("v" + envs.K8sVersion))
	g.Expect(one.Status.Platform).To(Equal("linux/amd64"))
	g.Expect(one.Status.APIEndpoint).To(Equal(m1.Server()))
	g.Expect(one.Status.ClusterID).To(Equal(kubeSystemUID(t, m1)))
	g.Expect(two.Status.ClusterID).To(Equal(kubeSystemUID(t, m2)))
	g.Expect(*one.Status.Nodes).To(Equal(clustersv1.NodeSummary{Total: 2, Ready: 1}))
	g.Expect(one.Status.Capacity.CPU.String()).To(Equal("6"))
	g.Expect(one.Status.Capacity.Memory.String()).To(Equal("12Gi"))
	g.Expect(one.Status.Allocatable.Pods.String()).To(Equal("220"))
	g.Expect(*two.Status.Nodes).To(Equal(clustersv1.NodeSummary{Total: 1, Ready: 1}))
	g.Expect(two.Status.Allocatable.Memory.String()).To(Equal("32Gi"))
	g.Expect(one.Status.ObservedGeneration).To(Equal(one.Generation))
	for _, c := range one.Status.Conditions {
		g.Expect(c.ObservedGeneration).To(Equal(one.Generation), c.Type)
	}
	g.Expect(meta.IsStatusConditionTrue(one.Status.Conditions, clustersv1.KubeconfigValidCondition)).To(BeTrue())
	g.Expect(meta.IsStatusConditionTrue(one.Status.Conditions, clustersv1.ReachableCondition)).To(BeTrue())
	g.Expect(meta.FindStatusCondition(one.Status.Conditions, clustersv1.ReconcilingCondition)).To(BeNil())
	g.Expect(meta.FindStatusCondition(one.Status.Conditions, clustersv1.StalledCondition)).To(BeNil())
	g.Expect(one.Status.LastSuccessfulProbeTime).NotTo(BeNil())
	g.Expect(one.Finalizers).To(ContainElement(clustersv1.MemberClusterFinalizer))
	g.Expect(kstatusOf(g, one)).To(Equal(status.CurrentStatus))

	// Other controllers may now use the member through the cache.
	acc, err := cache.Get(ctx, "attach-one")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(acc.Config.Host).To(Equal(m1.Server()))
	g.Expect(testutil.ToFloat64(readyGauge.WithLabelValues("attach-one"))).To(Equal(1.0))
	g.Expect(testutil.ToFloat64(nodesGauge.WithLabelValues("attach-one", "total"))).To(Equal(2.0))

	// The marker namespace exists in the member.
	ns := &corev1.Namespace{}
	g.Eventually(func() error { return m1.Client.Get(ctx, client.ObjectKey{Name: MarkerNamespace}, ns) }, eventuallyWait, poll).Should(Succeed())

	// Status is live: a new node shows up.
	addNode(t, m2, "m2-b", true, "8", "32Gi")
	g.Eventually(func(g Gomega) {
		mc := get(g, "attach-two")
		g.Expect(mc.Status.Nodes.Total).To(Equal(int32(2)))
		g.Expect(mc.Status.Allocatable.CPU.String()).To(Equal("16"))
	}, eventuallyWait, poll).Should(Succeed())

	// lastProbeTime is not written on every probe, but the heartbeat (2s in this suite) keeps it fresh.
	g.Expect(one.Status.LastProbeTime).NotTo(BeNil())
	first := one.Status.LastProbeTime.Time
	g.Eventually(func(g Gomega) {
		mc := get(g, "attach-one")
		g.Expect(mc.Status.LastProbeTime.Time).To(BeTemporally(">", first))
		g.Expect(time.Since(mc.Status.LastProbeTime.Time)).To(BeNumerically("<", 2*time.Second+testPeriod+time.Second))
	}, 10*time.Second, poll).Should(Succeed())
	g.Expect(one.Status.ConsecutiveSuccesses).To(Equal(int32(testThreshold)), "capped at the threshold so a healthy member's status stays still")

	// One event for the transition to Ready, none per probe.
	g.Eventually(func(g Gomega) []string { return eventReasons(g, "attach-one") }, 5*time.Second, poll).Should(ContainElement(clustersv1.ReasonReady))
	g.Consistently(func(g Gomega) int { return len(memberEvents(g, "attach-one")) }, 3*time.Second, 500*time.Millisecond).Should(Equal(len(memberEvents(g, "attach-one"))))
}

func TestPrinterColumnsAndShortName(t *testing.T) {
	g := NewWithT(t)
	m1 := env.Members[0]
	attach(t, "columns", m1.Kubeconfig())
	waitCondition(t, "columns", clustersv1.ReadyCondition, metav1.ConditionTrue, "", eventuallyWait)
	crd := env.RepoRoot + "/config/crd/bases/clusters.paddock.dev_memberclusters.yaml"
	out, err := runKubectl("get", "mc", "columns")
	g.Expect(err).NotTo(HaveOccurred(), string(out))
	g.Expect(string(out)).To(MatchRegexp(`NAME\s+MODE\s+VERSION\s+READY\s+NODES\s+CPU\s+MEMORY\s+AGE`))
	g.Expect(string(out)).To(MatchRegexp(`columns\s+Attach\s+v1\.36\.3\s+True`), crd)
}

func TestIdentityChangeBlocksTheMemberUntilAccepted(t *testing.T) {
	g := NewWithT(t)
	m1, m2 := env.Members[0], env.Members[1]
	attach(t, "rotating", m1.Kubeconfig())
	mc := waitCondition(t, "rotating", clustersv1.ReadyCondition, metav1.ConditionTrue, "", eventuallyWait)
	uid1, uid2 := kubeSystemUID(t, m1), kubeSystemUID(t, m2)
	g.Expect(mc.Status.ClusterID).To(Equal(uid1))

	// Rotate the Secret to a different cluster.
	_, err := envs.WriteKubeconfigSecret(ctx, mgmt, secretNS, "rotating", m2.Kubeconfig())
	g.Expect(err).NotTo(HaveOccurred())
	mc = waitCondition(t, "rotating", clustersv1.ReadyCondition, metav1.ConditionFalse, clustersv1.ReasonClusterIdentityChanged, eventuallyWait)
	ready := meta.FindStatusCondition(mc.Status.Conditions, clustersv1.ReadyCondition)
	g.Expect(ready.Message).To(ContainSubstring(uid2))
	g.Expect(ready.Message).To(ContainSubstring("kubectl annotate membercluster rotating " + clustersv1.AcceptClusterIDAnnotation + "=" + uid2))
	g.Expect(mc.Status.ClusterID).To(Equal(uid1), "the pinned identity does not move by itself")
	g.Expect(meta.IsStatusConditionTrue(mc.Status.Conditions, clustersv1.StalledCondition)).To(BeTrue())
	g.Expect(kstatusOf(g, mc)).To(Equal(status.FailedStatus))
	_, err = cache.Get(ctx, "rotating")
	var nre *clustercache.NotReadyError
	g.Expect(errors.As(err, &nre)).To(BeTrue())
	g.Expect(nre.Reason).To(Equal(clustersv1.ReasonClusterIdentityChanged))
	g.Eventually(func(g Gomega) []string { return eventReasons(g, "rotating") }, 5*time.Second, poll).Should(ContainElement(clustersv1.ReasonClusterIdentityChanged))

	// Accepting some other identity does nothing.
	orig := mc.DeepCopy()
	mc.Annotations = map[string]string{clustersv1.AcceptClusterIDAnnotation: "not-the-uid"}
	g.Expect(mgmt.Patch(ctx, mc, client.MergeFrom(orig))).To(Succeed())
	g.Consistently(func(g Gomega) string {
		return meta.FindStatusCondition(get(g, "rotating").Status.Conditions, clustersv1.ReadyCondition).Reason
	}, 2*time.Second, poll).Should(Equal(clustersv1.ReasonClusterIdentityChanged))

	// A person confirms the new identity.
	mc = get(g, "rotating")
	orig = mc.DeepCopy()
	mc.Annotations[clustersv1.AcceptClusterIDAnnotation] = uid2
	g.Expect(mgmt.Patch(ctx, mc, client.MergeFrom(orig))).To(Succeed())
	mc = waitCondition(t, "rotating", clustersv1.ReadyCondition, metav1.ConditionTrue, "", eventuallyWait)
	g.Expect(mc.Status.ClusterID).To(Equal(uid2))
	g.Expect(meta.FindStatusCondition(mc.Status.Conditions, clustersv1.StalledCondition)).To(BeNil())
	g.Eventually(func(g Gomega) []string { return eventReasons(g, "rotating") }, 5*time.Second, poll).Should(ContainElement("ClusterIdentityAccepted"))
}

// outage runs one outage scenario against member-3 and checks the detection window.
func outage(t *testing.T, name string, down, up func() error, wantReason string) {
	g := NewWithT(t)
	m3 := env.Members[2]
	attach(t, name, m3.Kubeconfig())
	waitCondition(t, name, clustersv1.ReadyCondition, metav1.ConditionTrue, "", eventuallyWait)

	t0 := time.Now()
	g.Expect(down()).To(Succeed())
	defer func() { _ = up() }()
	// Not before: Ready holds for unhealthyAfter minus one period (the last success may be up to
	// one period older than the outage).
	g.Consistently(func(g Gomega) metav1.ConditionStatus {
		return meta.FindStatusCondition(get(g, name).Status.Conditions, clustersv1.ReadyCondition).Status
	}, testUnhealthy-testPeriod-500*time.Millisecond, poll).Should(Equal(metav1.ConditionTrue))
	// Within unhealthyAfter + period (+1s for the status write and second-granular timestamps).
	mc := waitCondition(t, name, clustersv1.ReadyCondition, metav1.ConditionFalse, wantReason, testUnhealthy+testPeriod+time.Second-time.Since(t0))
	detected := time.Since(t0)
	t.Logf("%s detected after %s", name, detected)
	ready := meta.FindStatusCondition(mc.Status.Conditions, clustersv1.ReadyCondition)
	g.Expect(ready.LastTransitionTime.Sub(mc.Status.LastSuccessfulProbeTime.Time)).To(BeNumerically(">=", testUnhealthy-time.Second),
		"Ready turned False only once no probe had succeeded for unhealthyAfter (second-granular timestamps)")
	g.Expect(mc.Status.ConsecutiveFailures).To(BeNumerically(">=", 2))
	g.Expect(ready.Message).To(ContainSubstring("No successful probe since"))
	_, err := cache.Get(ctx, name)
	g.Expect(err).To(HaveOccurred())
	g.Expect(testutil.ToFloat64(readyGauge.WithLabelValues(name))).To(Equal(0.0))
	g.Eventually(func(g Gomega) []string { return eventReasons(g, name) }, 5*time.Second, poll).Should(ContainElement(wantReason))

	g.Expect(up()).To(Succeed())
	waitCondition(t, name, clustersv1.ReadyCondition, metav1.ConditionTrue, clustersv1.ReasonReady, eventuallyWait)
	_, err = cache.Get(ctx, name)
	g.Expect(err).NotTo(HaveOccurred())
}

func TestStoppedMemberTurnsNotReadyAndRecovers(t *testing.T) {
	m3 := env.Members[2]
	outage(t, "stopped", m3.StopAPIServer, m3.StartAPIServer, clustersv1.ReasonClusterNotReachable)
}

func TestFrozenMemberTurnsNotReadyAndRecovers(t *testing.T) {
	m3 := env.Members[2]
	outage(t, "frozen",
		func() error { m3.Freeze(); return nil },
		func() error { m3.Thaw(); return nil },
		clustersv1.ReasonClusterNotReachable)
}

func TestUnauthorizedAndTLSErrorsAreTold(t *testing.T) {
	m1, m2 := env.Members[0], env.Members[1]
	// A client certificate signed by member-2's CA, presented to member-1: Unauthorized.
	wrongCreds := modify(t, m1.Kubeconfig(), func(c *clientcmdapi.Cluster, u *clientcmdapi.AuthInfo, _ *clientcmdapi.Config) {
		u.ClientCertificateData, u.ClientKeyData = m2.Config.CertData, m2.Config.KeyData
	})
	// Member-2's CA for member-1's server: TLS error.
	wrongCA := modify(t, m1.Kubeconfig(), func(c *clientcmdapi.Cluster, _ *clientcmdapi.AuthInfo, _ *clientcmdapi.Config) {
		c.CertificateAuthorityData = m2.Config.CAData
	})
	attach(t, "wrong-creds", wrongCreds)
	attach(t, "wrong-ca", wrongCA)
	mc := waitCondition(t, "wrong-creds", clustersv1.ReadyCondition, metav1.ConditionFalse, clustersv1.ReasonUnauthorized, eventuallyWait)
	NewWithT(t).Expect(meta.FindStatusCondition(mc.Status.Conditions, clustersv1.ReadyCondition).Message).To(ContainSubstring("rejected the credentials"))
	waitCondition(t, "wrong-ca", clustersv1.ReadyCondition, metav1.ConditionFalse, clustersv1.ReasonTLSError, eventuallyWait)
	waitCondition(t, "wrong-ca", clustersv1.KubeconfigValidCondition, metav1.ConditionTrue, "", eventuallyWait)
}

func TestPausedMemberIsNotProbed(t *testing.T) {
	g := NewWithT(t)
	attach(t, "paused", env.Members[0].Kubeconfig(), func(mc *clustersv1.MemberCluster) { mc.Spec.Paused = true })
	mc := waitCondition(t, "paused", clustersv1.ReadyCondition, metav1.ConditionUnknown, clustersv1.ReasonPaused, eventuallyWait)
	g.Expect(mc.Status.LastProbeTime).To(BeNil())
	_, err := cache.Get(ctx, "paused")
	g.Expect(err).To(HaveOccurred())

	orig := mc.DeepCopy()
	mc.Spec.Paused = false
	g.Expect(mgmt.Patch(ctx, mc, client.MergeFrom(orig))).To(Succeed())
	waitCondition(t, "paused", clustersv1.ReadyCondition, metav1.ConditionTrue, clustersv1.ReasonReady, eventuallyWait)
}

func TestDeletionCleansUpTheMember(t *testing.T) {
	g := NewWithT(t)
	m2 := env.Members[1]
	attach(t, "deleted", m2.Kubeconfig())
	mc := waitCondition(t, "deleted", clustersv1.ReadyCondition, metav1.ConditionTrue, "", eventuallyWait)
	g.Eventually(func() error { return m2.Client.Get(ctx, client.ObjectKey{Name: MarkerNamespace}, &corev1.Namespace{}) }, eventuallyWait, poll).Should(Succeed())
	// Other MemberClusters in this suite point at member-2 too; detach them from this check by
	// giving this one a unique identity view: only it remains with member-2's clusterID once the
	// others are gone, so delete the others first.
	for _, other := range []string{"attach-two", "rotating", "wrong-creds"} {
		_ = mgmt.Delete(ctx, &clustersv1.MemberCluster{ObjectMeta: metav1.ObjectMeta{Name: other}})
	}
	g.Eventually(func(g Gomega) {
		var list clustersv1.MemberClusterList
		g.Expect(mgmt.List(ctx, &list)).To(Succeed())
		for _, o := range list.Items {
			if o.Name != "deleted" {
				g.Expect(o.Status.ClusterID).NotTo(Equal(mc.Status.ClusterID), o.Name)
			}
		}
	}, eventuallyWait, poll).Should(Succeed())

	g.Expect(mgmt.Delete(ctx, mc)).To(Succeed())
	g.Eventually(func() bool {
		return apierrors.IsNotFound(mgmt.Get(ctx, client.ObjectKey{Name: "deleted"}, &clustersv1.MemberCluster{}))
	}, eventuallyWait, poll).Should(BeTrue())
	g.Eventually(func(g Gomega) {
		ns := &corev1.Namespace{}
		err := m2.Client.Get(ctx, client.ObjectKey{Name: MarkerNamespace}, ns)
		g.Expect(apierrors.IsNotFound(err) || !ns.DeletionTimestamp.IsZero()).To(BeTrue())
	}, eventuallyWait, poll).Should(Succeed())
	g.Eventually(func(g Gomega) []string { return eventReasons(g, "deleted") }, 5*time.Second, poll).Should(ContainElement("CleanedUp"))
	_, err := cache.Get(ctx, "deleted")
	g.Expect(errors.Is(err, clustercache.ErrNotConnected)).To(BeTrue())
}

func TestDeletionWithTheMemberDownDoesNotWedge(t *testing.T) {
	g := NewWithT(t)
	m3 := env.Members[2]
	attach(t, "deleted-down", m3.Kubeconfig())
	mc := waitCondition(t, "deleted-down", clustersv1.ReadyCondition, metav1.ConditionTrue, "", eventuallyWait)
	g.Expect(m3.StopAPIServer()).To(Succeed())
	defer func() { g.Expect(m3.StartAPIServer()).To(Succeed()) }()

	start := time.Now()
	g.Expect(mgmt.Delete(ctx, mc)).To(Succeed())
	g.Eventually(func() bool {
		return apierrors.IsNotFound(mgmt.Get(ctx, client.ObjectKey{Name: "deleted-down"}, &clustersv1.MemberCluster{}))
	}, deletionGrace+15*time.Second, poll).Should(BeTrue())
	took := time.Since(start)
	t.Logf("deletion with the member down took %s (grace %s)", took, deletionGrace)
	// deletionTimestamp has whole seconds, so the grace period is counted from up to 1 s earlier.
	g.Expect(took).To(BeNumerically(">=", deletionGrace-time.Second-100*time.Millisecond), "it tried for the grace period first")
	g.Eventually(func(g Gomega) []string { return eventReasons(g, "deleted-down") }, 5*time.Second, poll).Should(ContainElement("CleanupAbandoned"))
}

func TestOrphanDeletionLeavesTheMemberAlone(t *testing.T) {
	g := NewWithT(t)
	m1 := env.Members[0]
	attach(t, "orphaned", m1.Kubeconfig(), func(mc *clustersv1.MemberCluster) { mc.Spec.DeletionPolicy = clustersv1.DeletionPolicyOrphan })
	mc := waitCondition(t, "orphaned", clustersv1.ReadyCondition, metav1.ConditionTrue, "", eventuallyWait)
	g.Expect(mgmt.Delete(ctx, mc)).To(Succeed())
	g.Eventually(func() bool {
		return apierrors.IsNotFound(mgmt.Get(ctx, client.ObjectKey{Name: "orphaned"}, &clustersv1.MemberCluster{}))
	}, eventuallyWait, poll).Should(BeTrue())
	ns := &corev1.Namespace{}
	g.Expect(m1.Client.Get(ctx, client.ObjectKey{Name: MarkerNamespace}, ns)).To(Succeed())
	g.Expect(ns.DeletionTimestamp.IsZero()).To(BeTrue())
}

// Probes of a hung member must not hold the workers other members need: with 30 MemberClusters on
// a frozen member (probe timeout 3 s, 10 reconcile workers in this suite), a member attached to a
// healthy cluster still turns Ready promptly.
func TestFrozenMembersDoNotStarveOthers(t *testing.T) {
	g := NewWithT(t)
	m1, m3 := env.Members[0], env.Members[2]
	slow := func(mc *clustersv1.MemberCluster) {
		mc.Spec.HealthCheck.Timeout = &metav1.Duration{Duration: 3 * time.Second}
		mc.Spec.HealthCheck.UnhealthyAfter = &metav1.Duration{Duration: 10 * time.Second}
	}
	names := []string{}
	for i := range 30 {
		name := fmt.Sprintf("hung-%02d", i)
		attach(t, name, m3.Kubeconfig(), slow)
		names = append(names, name)
	}
	for _, name := range names {
		waitCondition(t, name, clustersv1.ReadyCondition, metav1.ConditionTrue, "", eventuallyWait)
	}
	frozenAt := time.Now()
	m3.Freeze()
	defer m3.Thaw()
	// Wait until every hung member has a probe started after the freeze still in flight (stuck
	// until its timeout).
	g.Eventually(func(g Gomega) {
		for _, name := range names {
			st := stateOf(g, suiteReconciler, name)
			st.mu.Lock()
			stuck := st.inFlight && st.lastStart.After(frozenAt)
			st.mu.Unlock()
			g.Expect(stuck).To(BeTrue(), "%s has a probe stuck on the frozen member", name)
		}
	}, eventuallyWait, poll).Should(Succeed())

	start := time.Now()
	attach(t, "beside-hung", m1.Kubeconfig())
	waitCondition(t, "beside-hung", clustersv1.ReadyCondition, metav1.ConditionTrue, clustersv1.ReasonReady, 5*time.Second)
	t.Logf("a healthy member attached beside 30 hung ones was Ready after %s", time.Since(start))
	g.Expect(time.Since(start)).To(BeNumerically("<", 5*time.Second))
}

// A frozen member's probe is cut off when the unhealthyAfter window ends: detection does not wait
// for a long probe timeout on top of unhealthyAfter.
func TestFrozenMemberDetectedWithinUnhealthyAfterDespiteALongTimeout(t *testing.T) {
	g := NewWithT(t)
	m3 := env.Members[2]
	attach(t, "frozen-long-timeout", m3.Kubeconfig(), func(mc *clustersv1.MemberCluster) {
		mc.Spec.HealthCheck.Timeout = &metav1.Duration{Duration: 3 * time.Second}
	})
	waitCondition(t, "frozen-long-timeout", clustersv1.ReadyCondition, metav1.ConditionTrue, "", eventuallyWait)
	t0 := time.Now()
	m3.Freeze()
	defer m3.Thaw()
	mc := waitCondition(t, "frozen-long-timeout", clustersv1.ReadyCondition, metav1.ConditionFalse, clustersv1.ReasonClusterNotReachable, 10*time.Second)
	detected := time.Since(t0)
	t.Logf("detected after %s (unhealthyAfter %s, timeout 3s)", detected, testUnhealthy)
	g.Expect(detected).To(BeNumerically("<", testUnhealthy+1500*time.Millisecond))
	ready := meta.FindStatusCondition(mc.Status.Conditions, clustersv1.ReadyCondition)
	// The write that records the verdict carries the last success with it (timestamps have whole
	// seconds), not one up to a heartbeat older.
	g.Expect(ready.LastTransitionTime.Sub(mc.Status.LastSuccessfulProbeTime.Time)).To(And(
		BeNumerically(">=", testUnhealthy-time.Second), BeNumerically("<=", testUnhealthy+time.Second)))
}

// stateOf returns r's in-memory state of the named MemberCluster.
func stateOf(g Gomega, r *Reconciler, name string) *memberState {
	uid := get(g, name).UID
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.health[uid]
	g.Expect(st).NotTo(BeNil(), "no state for %s", name)
	return st
}

// A healthy member's status is written only when its heartbeat is due (2 s in this suite, spread
// to 2.2 s), not on every probe (1 s): between heartbeats its resourceVersion stays the same, and
// a heartbeat write changes nothing but the probe times. Every write is seen, through a watch.
func TestHealthyMemberStatusIsWrittenOnlyOnHeartbeats(t *testing.T) {
	g := NewWithT(t)
	attach(t, "quiet", env.Members[0].Kubeconfig())
	expectSettled(t, "quiet")
	wc, err := client.NewWithWatch(env.Management.Config, client.Options{Scheme: mgmt.Scheme()})
	g.Expect(err).NotTo(HaveOccurred())
	last := get(g, "quiet")
	wctx, cancel := context.WithTimeout(ctx, 9*time.Second)
	defer cancel()
	w, err := wc.Watch(wctx, &clustersv1.MemberClusterList{}, client.MatchingFields{"metadata.name": "quiet"},
		&client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: last.ResourceVersion}})
	g.Expect(err).NotTo(HaveOccurred())
	defer w.Stop()
	var writes []*clustersv1.MemberCluster
	for ev := range w.ResultChan() {
		g.Expect(ev.Type).To(Equal(watch.Modified))
		cur := ev.Object.(*clustersv1.MemberCluster)
		writes = append(writes, cur)
		// Apart from the probe times, nothing changed.
		a, b := last.Status.DeepCopy(), cur.Status.DeepCopy()
		g.Expect(b.LastProbeTime.Time).To(BeTemporally(">", a.LastProbeTime.Time))
		a.LastProbeTime, a.LastSuccessfulProbeTime = b.LastProbeTime, b.LastSuccessfulProbeTime
		g.Expect(b).To(Equal(a), "a heartbeat write changes only the probe times")
		g.Expect(cur.Generation).To(Equal(last.Generation))
		gap := cur.Status.LastProbeTime.Sub(last.Status.LastProbeTime.Time)
		g.Expect(gap).To(BeNumerically(">=", 2*time.Second), "a write %s after the one before, before the heartbeat was due", gap)
		// Due after at most 2.2 s, written with the next probe (1 s); timestamps have whole seconds.
		g.Expect(gap).To(BeNumerically("<=", 4*time.Second+200*time.Millisecond), "the heartbeat came late: %s", gap)
		last = cur
	}
	t.Logf("%d status writes in 9 s with a 1 s probe period", len(writes))
	g.Expect(len(writes)).To(BeNumerically(">=", 2), "the heartbeat keeps lastProbeTime fresh")
	g.Expect(len(writes)).To(BeNumerically("<=", 5))
}
