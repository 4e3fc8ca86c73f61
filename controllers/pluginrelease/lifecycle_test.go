package pluginrelease

import (
	"fmt"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/release"
	"helm.sh/helm/v3/pkg/storage"
	"helm.sh/helm/v3/pkg/storage/driver"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
	pluginsv1 "github.com/paddock-dev/paddock/api/plugins/v1alpha1"
	"github.com/paddock-dev/paddock/internal/helm"
	"github.com/paddock-dev/paddock/test/envs"
)

// helmStorage is Helm's release storage in a member's apps namespace.
func helmStorage(g Gomega, member int) *storage.Storage {
	cs, err := kubernetes.NewForConfig(env.Members[member].Config)
	g.Expect(err).NotTo(HaveOccurred())
	return storage.Init(driver.NewSecrets(cs.CoreV1().Secrets("apps")))
}

// A manager killed in the middle of an install leaves the release pending-install, which Helm
// treats as a lock: the next manager marks it failed and completes the install.
func TestAReleaseLeftPendingByAKilledManagerIsRecovered(t *testing.T) {
	g := NewWithT(t)
	members := attachMembers(t)
	_, repo := serveHello(t, "0.1.0")
	prel := helloRelease("crashed", repo, members[:1])
	// What the killed manager left: revision 1, pending-install, labelled as this PluginRelease's.
	g.Expect(envs.EnsureNamespace(ctx, env.Members[0].Client, "apps")).To(Succeed())
	st := helmStorage(g, 0)
	left := &release.Release{Name: "crashed", Namespace: "apps", Version: 1,
		Chart:  &chart.Chart{Metadata: &chart.Metadata{Name: "hello", Version: "0.1.0", APIVersion: "v2"}},
		Info:   &release.Info{Status: release.StatusPendingInstall, Description: "Install in progress"},
		Labels: map[string]string{helm.OwnerLabel: "apps.crashed"}}
	g.Expect(st.Create(left)).To(Succeed())

	g.Expect(mgmt.Create(ctx, prel)).To(Succeed())
	t.Cleanup(func() { _ = mgmt.Delete(ctx, prel) })
	got := waitReleaseReady(t, prel)
	c := clusterStatus(got, members[0])
	g.Expect(c.Phase).To(Equal(pluginsv1.PhaseDeployed))
	g.Expect(c.Revision).To(Equal(int32(2)), "a new revision over the recovered one")
	h, err := st.History("crashed")
	g.Expect(err).NotTo(HaveOccurred())
	for _, r := range h {
		g.Expect(r.Info.Status.IsPending()).To(BeFalse(), "no revision is left pending: %d is %s", r.Version, r.Info.Status)
	}
	g.Expect(configMapIn(g, 0, "crashed")).NotTo(BeNil())
	g.Expect(logs.String()).To(ContainSubstring("Recovered a pending release left by an interrupted action"))
}

// Deleting a MemberCluster waits for the releases in it to be uninstalled, then goes.
func TestDeletingAMemberClusterUninstallsItsReleasesFirst(t *testing.T) {
	g := NewWithT(t)
	members := attachMembers(t)
	t.Cleanup(func() { attachMembers(t) })
	_, repo := serveHello(t, "0.1.0")
	prel := helloRelease("leaving", repo, members)
	createRelease(t, prel)
	waitReleaseReady(t, prel)
	mc := &clustersv1.MemberCluster{}
	g.Eventually(func(g Gomega) {
		g.Expect(mgmt.Get(ctx, client.ObjectKey{Name: members[1]}, mc)).To(Succeed())
		g.Expect(controllerutil.ContainsFinalizer(mc, MemberFinalizer)).To(BeTrue())
	}, eventuallyWait, poll).Should(Succeed())

	g.Expect(mgmt.Delete(ctx, mc)).To(Succeed())
	g.Eventually(func() bool {
		return apierrors.IsNotFound(mgmt.Get(ctx, client.ObjectKey{Name: members[1]}, &clustersv1.MemberCluster{}))
	}, eventuallyWait, poll).Should(BeTrue())
	// It went only once the release was uninstalled from it.
	g.Expect(configMapIn(g, 1, "leaving")).To(BeNil())
	g.Expect(helmRevisions(g, 1, "leaving")).To(BeZero())
	g.Expect(eventNotes(prel)).To(ContainElement(HavePrefix("uninstalled hello from " + members[1])))
	got := waitReleaseReady(t, prel)
	g.Expect(got.Status.ClusterSummary).To(Equal("1/1"))
	g.Expect(configMapIn(g, 0, "leaving")).NotTo(BeNil(), "the other member keeps it")
}

// A PluginRelease whose finalizer is removed by hand disappears without a pass of the
// controller seeing its deletion: the sweep drops what the controller held for it (outcomes,
// drift watches, Secret values for redaction).
func TestStateOfAReleaseDeletedBehindTheControllersBackIsSwept(t *testing.T) {
	g := NewWithT(t)
	members := attachMembers(t)
	_, repo := serveHello(t, "0.1.0")
	prel := helloRelease("abandoned", repo, members[:1], func(s *pluginsv1.PluginReleaseSpec) { s.TargetNamespace = "abandoned" })
	g.Expect(mgmt.Create(ctx, prel)).To(Succeed())
	got := waitReleaseReady(t, prel)
	uid := got.UID
	known := func() bool { _, ok := reconciler.knownUIDs()[uid]; return ok }
	watching := func() bool {
		reconciler.mu.Lock()
		defer reconciler.mu.Unlock()
		st := reconciler.drift[actionKey{uid, members[0]}]
		return st != nil && len(st.watches) > 0
	}
	g.Eventually(watching, eventuallyWait, poll).Should(BeTrue(), "the drift check watches the release's objects")

	// Deleted with the finalizer taken off first: no pass sees a deletion.
	orig := got.DeepCopy()
	controllerutil.RemoveFinalizer(got, Finalizer)
	g.Expect(mgmt.Patch(ctx, got, client.MergeFrom(orig))).To(Succeed())
	g.Expect(mgmt.Delete(ctx, got)).To(Succeed())
	g.Eventually(func() bool {
		return apierrors.IsNotFound(reconciler.Client.Get(ctx, client.ObjectKeyFromObject(prel), &pluginsv1.PluginRelease{}))
	}, eventuallyWait, poll).Should(BeTrue())
	g.Consistently(known, 2*time.Second, poll).Should(BeTrue(), "nothing else drops the state")

	g.Eventually(func() bool {
		g.Expect(reconciler.sweep(ctx)).To(Succeed())
		return known()
	}, eventuallyWait, poll).Should(BeFalse())
	g.Expect(watching()).To(BeFalse())
	reconciler.mu.Lock()
	for k := range reconciler.watches {
		g.Expect(k.ns).NotTo(Equal("abandoned"), "a watch of the release's namespace is still open")
	}
	reconciler.mu.Unlock()
}

// With uninstall.keepHistory, a cluster that leaves the targets keeps the release's history; when
// it comes back the release is installed over that history (Helm refuses the name otherwise).
func TestAClusterThatComesBackIsInstalledOverKeptHistory(t *testing.T) {
	g := NewWithT(t)
	members := attachMembers(t)
	_, repo := serveHello(t, "0.1.0")
	prel := helloRelease("kept", repo, members, func(s *pluginsv1.PluginReleaseSpec) {
		s.Uninstall = &pluginsv1.UninstallSpec{KeepHistory: true}
	})
	createRelease(t, prel)
	waitReleaseReady(t, prel)
	mergePatchRelease(g, prel, fmt.Sprintf(`{"spec":{"targets":{"clusterNames":[%q]}}}`, members[1]))
	g.Eventually(func() *corev1.ConfigMap { return configMapIn(g, 0, "kept") }, eventuallyWait, poll).Should(BeNil())
	g.Expect(helmRevisions(g, 0, "kept")).To(Equal(1), "the history is kept")
	waitReleaseReady(t, prel)

	mergePatchRelease(g, prel, fmt.Sprintf(`{"spec":{"targets":{"clusterNames":[%q,%q]}}}`, members[0], members[1]))
	got := waitReleaseReady(t, prel)
	g.Expect(clusterStatus(got, members[0]).Revision).To(Equal(int32(2)), "a new revision over the kept one")
	g.Expect(configMapIn(g, 0, "kept")).NotTo(BeNil())
}

// A target whose status lost track of what it runs (the manager stopped between a Helm action and
// its status write, or the digest key is new, so every digest changed) while the member runs the
// desired chart and values is recorded as it is: no second Helm revision on every target.
func TestATargetAlreadyRunningTheChangeGetsNoNewRevision(t *testing.T) {
	g := NewWithT(t)
	members := attachMembers(t)
	_, repo := serveHello(t, "0.1.0")
	prel := helloRelease("rekeyed", repo, members[:1], func(s *pluginsv1.PluginReleaseSpec) {
		s.Values = jsonValues(`{"greeting":"kept","port":8080}`)
	})
	createRelease(t, prel)
	got := waitReleaseReady(t, prel)
	g.Expect(helmRevisions(g, 0, "rekeyed")).To(Equal(1))
	was := got.Status.Clusters[0].ConfigDigest
	// forgetDigest makes status lose what the target runs (a digest made with another key),
	// then changes maxHistory, so that a pass runs now.
	forgetDigest := func(maxHistory int) {
		g.Eventually(func() error {
			cur := getRelease(g, prel)
			cur.Status.Clusters[0].ConfigDigest = "hmac:made-with-another-key"
			return mgmt.Status().Update(ctx, cur)
		}, eventuallyWait, poll).Should(Succeed())
		mergePatchRelease(g, prel, fmt.Sprintf(`{"spec":{"maxHistory":%d}}`, maxHistory))
	}

	forgetDigest(5)
	got = waitReleaseReady(t, prel)
	g.Expect(got.Status.Clusters[0].ConfigDigest).To(Equal(was))
	g.Expect(got.Status.Clusters[0].Revision).To(Equal(int32(1)))
	g.Expect(got.Status.History[0].Message).To(ContainSubstring("no Helm action"))
	g.Eventually(func() []string { return eventNotes(prel) }, eventuallyWait, poll).Should(ContainElement(HavePrefix("hello 0.1.0 already runs on " + members[0])))
	g.Expect(helmRevisions(g, 0, "rekeyed")).To(Equal(1))

	// A record forged in the member (labels and values as ours, another manifest) is not believed:
	// the chart is upgraded over it, and the forged object is never made.
	st := helmStorage(g, 0)
	rec, err := st.Last("rekeyed")
	g.Expect(err).NotTo(HaveOccurred())
	rec.Manifest += "\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: forged\n  namespace: apps\n"
	g.Expect(st.Update(rec)).To(Succeed())
	forgetDigest(6)
	g.Eventually(func() int { return helmRevisions(g, 0, "rekeyed") }, eventuallyWait, poll).Should(Equal(2))
	waitReleaseReady(t, prel)
	g.Expect(configMapNamed(g, 0, "forged")).To(BeNil())

	// Nor one with our manifest and an extra hook (hooks are not in the manifest; this one would
	// run with Paddock's credentials at the next uninstall).
	rec, err = st.Last("rekeyed")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(rec.Hooks).To(BeEmpty())
	rec.Hooks = append(rec.Hooks, &release.Hook{Name: "forged-hook", Kind: "ConfigMap", Path: "hello/templates/forged.yaml",
		Manifest: "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: forged-hook\n  namespace: apps\n",
		Events:   []release.HookEvent{release.HookPreDelete}})
	g.Expect(st.Update(rec)).To(Succeed())
	forgetDigest(7)
	g.Eventually(func() int { return helmRevisions(g, 0, "rekeyed") }, eventuallyWait, poll).Should(Equal(3))
	waitReleaseReady(t, prel)
	rec, err = st.Last("rekeyed")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(rec.Hooks).To(BeEmpty(), "the upgrade recorded the chart's hooks, not the forged one")

	// A real change still upgrades.
	mergePatchRelease(g, prel, `{"spec":{"values":{"greeting":"changed"}}}`)
	g.Eventually(func() int { return helmRevisions(g, 0, "rekeyed") }, eventuallyWait, poll).Should(Equal(4))
}

// An uninstall that runs longer than the grace period and then fails is retried: the grace
// counts from its first failure, not from when it started or when the PluginRelease was deleted.
// Only once it has kept failing for the grace period is the release left in the member, with a
// Warning event, and the finalizer removed.
func TestAnUninstallThatRanPastTheGraceIsRetriedBeforeItIsGivenUp(t *testing.T) {
	g := NewWithT(t)
	members := attachMembers(t)
	_, repo := serveHello(t, "0.1.0")
	timeout := 12 * time.Second
	g.Expect(reconciler.deletionGrace()).To(BeNumerically("<", timeout), "the suite's grace is shorter than one uninstall")
	prel := helloRelease("stuck-uninstall", repo, members[:1], func(s *pluginsv1.PluginReleaseSpec) {
		s.Values = jsonValues(`{"stuckPreDelete":true}`)
		s.Uninstall = &pluginsv1.UninstallSpec{Timeout: &metav1.Duration{Duration: timeout}}
	})
	createRelease(t, prel)
	waitReleaseReady(t, prel)

	deleted := time.Now()
	g.Expect(mgmt.Delete(ctx, prel)).To(Succeed())
	sawFailure := false
	g.Eventually(func() bool {
		got := &pluginsv1.PluginRelease{}
		if err := mgmt.Get(ctx, client.ObjectKeyFromObject(prel), got); apierrors.IsNotFound(err) {
			return true
		}
		for _, h := range got.Status.History {
			if h.Action == "uninstall" && h.Result == "Failed" {
				sawFailure = true
			}
		}
		return false
	}, 3*eventuallyWait, poll).Should(BeTrue())
	took := time.Since(deleted)
	t.Logf("gone %s after the delete", took)
	g.Expect(sawFailure).To(BeTrue(), "status recorded the failed uninstall")
	g.Expect(took).To(BeNumerically(">=", 2*timeout), "a second uninstall was tried after the first failed past the grace")
	g.Expect(eventNotes(prel)).To(ContainElement(HavePrefix("left stuck-uninstall in " + members[0])))
	g.Expect(helmRevisions(g, 0, "stuck-uninstall")).NotTo(BeZero(), "the release was left in the member")
}
