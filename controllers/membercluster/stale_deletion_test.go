package membercluster

import (
	"context"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/gomega"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
	"github.com/paddock-dev/paddock/internal/clustercache"
	"github.com/paddock-dev/paddock/internal/scheme"
)

// staleClient serves one MemberCluster from a stale copy, as an informer cache does for a moment
// after the object changed.
type staleClient struct {
	client.Client
	stale *clustersv1.MemberCluster
}

func (c staleClient) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if mc, ok := obj.(*clustersv1.MemberCluster); ok && key.Name == c.stale.Name {
		c.stale.DeepCopyInto(mc)
		return nil
	}
	return c.Client.Get(ctx, key, obj, opts...)
}

// releasedCopy attaches a MemberCluster, deletes it until it is gone, and returns its last copy
// as it was while deleting (deletion timestamp, this controller's finalizer): what a stale cache
// would still serve.
func releasedCopy(t *testing.T, name string, kubeconfig []byte) *clustersv1.MemberCluster {
	t.Helper()
	g := NewWithT(t)
	attach(t, name, kubeconfig)
	mc := waitCondition(t, name, clustersv1.ReadyCondition, metav1.ConditionTrue, "", eventuallyWait)
	g.Expect(mgmt.Delete(ctx, mc)).To(Succeed())
	g.Eventually(func() bool {
		return apierrors.IsNotFound(mgmt.Get(ctx, client.ObjectKey{Name: name}, &clustersv1.MemberCluster{}))
	}, eventuallyWait, poll).Should(BeTrue())
	c := mc.DeepCopy()
	c.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	c.Finalizers = []string{clustersv1.MemberClusterFinalizer}
	return c
}

// A deletion pass that reads a stale copy (still deleting, still holding the finalizer) after the
// member was released neither connects to the member again nor cleans up there a second time:
// first with the object gone, then with a new MemberCluster of the same name in its place.
func TestAStaleDeletionPassDoesNotReachTheMemberAgain(t *testing.T) {
	g := NewWithT(t)
	m1 := env.Members[0]
	stale := releasedCopy(t, "stale-delete", m1.Kubeconfig())

	pass := func() *events.FakeRecorder {
		c := clustercache.New(clustercache.Options{Scheme: scheme.New(), Timeout: 5 * time.Second})
		rec := events.NewFakeRecorder(10)
		r := &Reconciler{Client: staleClient{mgmt, stale}, APIReader: mgmt, Cache: c, Recorder: rec,
			MaxConcurrentProbes: 5, StatusHeartbeat: time.Hour, DeletionGracePeriod: time.Minute}
		rctx, cancel := context.WithCancel(ctx)
		t.Cleanup(cancel)
		r.init(rctx, logr.Discard())
		_, err := r.reconcile(ctx, ctrl.Request{NamespacedName: client.ObjectKey{Name: "stale-delete"}})
		g.Expect(err).NotTo(HaveOccurred())
		_, connected := c.Peek("stale-delete")
		g.Expect(connected).To(BeFalse())
		return rec
	}
	// Every cleanup outcome (done, skipped, in use, abandoned) is an event.
	noTrace := func(rec *events.FakeRecorder) {
		t.Helper()
		g.Expect(rec.Events).To(BeEmpty(), "the stale pass cleaned up again")
	}
	noTrace(pass())

	attach(t, "stale-delete", m1.Kubeconfig())
	waitCondition(t, "stale-delete", clustersv1.ReadyCondition, metav1.ConditionTrue, "", eventuallyWait)
	noTrace(pass())
	g.Expect(get(g, "stale-delete").DeletionTimestamp.IsZero()).To(BeTrue())
}

// conflictOnce serves one MemberCluster from a copy (to the cache and the uncached reader alike)
// and refuses the first patch of it with a conflict, as when a dependant's finalizer goes between
// the read and the finalizer patch.
type conflictOnce struct {
	client.Client
	obj     *clustersv1.MemberCluster
	patches int
}

func (c *conflictOnce) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if mc, ok := obj.(*clustersv1.MemberCluster); ok && key.Name == c.obj.Name {
		c.obj.DeepCopyInto(mc)
		return nil
	}
	return c.Client.Get(ctx, key, obj, opts...)
}

func (c *conflictOnce) Patch(ctx context.Context, obj client.Object, patch client.Patch, opts ...client.PatchOption) error {
	if obj.GetName() != c.obj.Name {
		return c.Client.Patch(ctx, obj, patch, opts...)
	}
	c.patches++
	if c.patches == 1 {
		return apierrors.NewConflict(clustersv1.GroupVersion.WithResource("memberclusters").GroupResource(), obj.GetName(), nil)
	}
	return nil
}

// A finalizer patch that conflicts after the member was cleaned up is retried alone: the retry
// neither reaches the member again (here it no longer answers, so a second cleanup could only
// time out) nor reports the cleanup twice.
func TestAConflictedFinalizerPatchDoesNotCleanUpTwice(t *testing.T) {
	g := NewWithT(t)
	m1 := env.Members[0]
	ghost := releasedCopy(t, "conflict-delete", m1.Kubeconfig())

	// The same deletion again, served by a client that refuses the first finalizer patch.
	cl := &conflictOnce{Client: mgmt, obj: ghost}
	c := clustercache.New(clustercache.Options{Scheme: scheme.New(), Timeout: 5 * time.Second})
	rec := events.NewFakeRecorder(10)
	r := &Reconciler{Client: cl, APIReader: cl, Cache: c, Recorder: rec, Policy: clustercache.Policy{AllowLoopback: true},
		SecretNamespaces: []string{secretNS}, MaxConcurrentProbes: 5, StatusHeartbeat: time.Hour, DeletionGracePeriod: time.Minute}
	rctx, cancel := context.WithCancel(ctx)
	t.Cleanup(cancel)
	r.init(rctx, logr.Discard())
	req := ctrl.Request{NamespacedName: client.ObjectKey{Name: "conflict-delete"}}
	_, err := r.reconcile(ctx, req)
	g.Expect(apierrors.IsConflict(err)).To(BeTrue(), "the first patch conflicts: %v", err)
	g.Expect(rec.Events).To(BeEmpty(), "reported once the patch has landed")

	m1.Freeze()
	t.Cleanup(m1.Thaw)
	start := time.Now()
	res, err := r.reconcile(ctx, req)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res.RequeueAfter).To(BeZero())
	g.Expect(cl.patches).To(Equal(2), "the retry patched the finalizer away")
	g.Expect(time.Since(start)).To(BeNumerically("<", testTimeout), "the retry did not reach the member")
	g.Expect(rec.Events).To(HaveLen(1))
	g.Expect(<-rec.Events).To(ContainSubstring("CleanedUp"))
}
