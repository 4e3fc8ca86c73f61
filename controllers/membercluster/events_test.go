package membercluster

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
	"github.com/paddock-dev/paddock/internal/clustercache"
	"github.com/paddock-dev/paddock/internal/scheme"
)

// Events announce what status records, so they go out only once that status has landed: a status
// patch that fails emits nothing, its retry emits each event once, and a reconcile that finds
// nothing new emits nothing again.
func TestEventsFollowTheStatusThatRecordsThem(t *testing.T) {
	g := NewWithT(t)
	mc := &clustersv1.MemberCluster{
		ObjectMeta: metav1.ObjectMeta{Name: "events", UID: "uid-events", Generation: 1,
			Annotations: map[string]string{clustersv1.AcceptClusterIDAnnotation: "new-id"}},
		Spec:   clustersv1.MemberClusterSpec{Attach: &clustersv1.AttachSpec{}},
		Status: clustersv1.MemberClusterStatus{ClusterID: "old-id"},
	}
	failures := 1
	c := interceptor.NewClient(
		fake.NewClientBuilder().WithScheme(scheme.New()).WithObjects(mc).WithStatusSubresource(mc).Build(),
		interceptor.Funcs{SubResourcePatch: func(ctx context.Context, cl client.Client, sub string, obj client.Object, p client.Patch, opts ...client.SubResourcePatchOption) error {
			if failures > 0 {
				failures--
				return apierrors.NewConflict(schema.GroupResource{Group: clustersv1.GroupVersion.Group, Resource: "memberclusters"}, obj.GetName(), errors.New("changed"))
			}
			return cl.SubResource(sub).Patch(ctx, obj, p, opts...)
		}})
	rec := events.NewFakeRecorder(10)
	r := &Reconciler{Client: c, Recorder: rec, StatusHeartbeat: time.Minute}
	now := time.Now()
	st := &memberState{name: "events", uid: "uid-events"}
	// One reconcile's findings, from the object as the cache has it: the member answers, with the
	// new identity the annotation accepts.
	reconcileOnce := func() error {
		cur := &clustersv1.MemberCluster{}
		g.Expect(c.Get(context.Background(), client.ObjectKeyFromObject(mc), cur)).To(Succeed())
		s := &scope{mc: cur, orig: cur.DeepCopy(), state: st, connected: true, endpoint: "https://member.example:6443",
			health:   health{Healthy: true, LastProbe: now, LastSuccess: now, ConsecutiveSuccesses: 2},
			live:     &clustercache.LivenessResult{ClusterID: "new-id"},
			verified: true, probedConn: true}
		r.checkIdentity(s, s.live.ClusterID)
		return r.patchStatus(context.Background(), s)
	}
	drain := func() []string {
		var out []string
		for {
			select {
			case e := <-rec.Events:
				out = append(out, e)
			default:
				return out
			}
		}
	}

	g.Expect(apierrors.IsConflict(reconcileOnce())).To(BeTrue())
	g.Expect(drain()).To(BeEmpty(), "nothing announced for a status that did not land")

	g.Expect(reconcileOnce()).To(Succeed())
	got := drain()
	g.Expect(got).To(ConsistOf(
		HavePrefix(corev1.EventTypeNormal+" ClusterIdentityAccepted"),
		HavePrefix(corev1.EventTypeNormal+" "+clustersv1.ReasonReady)))
	cur := &clustersv1.MemberCluster{}
	g.Expect(c.Get(context.Background(), client.ObjectKeyFromObject(mc), cur)).To(Succeed())
	g.Expect(cur.Status.ClusterID).To(Equal("new-id"))

	g.Expect(reconcileOnce()).To(Succeed())
	g.Expect(drain()).To(BeEmpty(), "nothing new, nothing announced again")
}

// A status patch refused for a conflict is retried within a second, without the failure backoff,
// and counted; after five in a row the retries back off, doubling up to 5 minutes, and a success
// resets the count.
func TestConflictsAreRetriedQuicklyThenBackOff(t *testing.T) {
	g := NewWithT(t)
	mc := &clustersv1.MemberCluster{
		ObjectMeta: metav1.ObjectMeta{Name: "conflicted", UID: "uid-conflicted", Generation: 1,
			Finalizers: []string{clustersv1.MemberClusterFinalizer}},
		Spec: clustersv1.MemberClusterSpec{Attach: &clustersv1.AttachSpec{}, Paused: true},
	}
	conflicting := true
	var patches int
	c := interceptor.NewClient(
		fake.NewClientBuilder().WithScheme(scheme.New()).WithObjects(mc).WithStatusSubresource(mc).Build(),
		interceptor.Funcs{SubResourcePatch: func(ctx context.Context, cl client.Client, sub string, obj client.Object, p client.Patch, opts ...client.SubResourcePatchOption) error {
			patches++
			if conflicting {
				return apierrors.NewConflict(schema.GroupResource{Group: clustersv1.GroupVersion.Group, Resource: "memberclusters"}, obj.GetName(), errors.New("changed"))
			}
			return cl.SubResource(sub).Patch(ctx, obj, p, opts...)
		}})
	r := &Reconciler{Client: c, Cache: clustercache.New(clustercache.Options{Scheme: scheme.New()}), Recorder: events.NewFakeRecorder(10)}
	rctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r.init(rctx, logr.Discard())
	req := ctrl.Request{NamespacedName: types.NamespacedName{Name: "conflicted"}}
	before := testutil.ToFloat64(conflictsTotal)

	for i := range maxQuickConflictRetries {
		res, err := r.Reconcile(rctx, req)
		g.Expect(err).NotTo(HaveOccurred(), "conflict %d is not an error", i+1)
		g.Expect(res.RequeueAfter).To(And(BeNumerically(">=", conflictRequeue/2), BeNumerically("<", conflictRequeue*3/2)))
	}
	g.Expect(patches).To(Equal(maxQuickConflictRetries), "one patch per reconcile")
	g.Expect(testutil.ToFloat64(conflictsTotal) - before).To(Equal(float64(maxQuickConflictRetries)))
	// A conflict that keeps coming back backs off, doubling (the workqueue's own failure backoff
	// would start again at every RequeueAfter).
	for i, want := range []time.Duration{2 * conflictRequeue, 4 * conflictRequeue, 8 * conflictRequeue} {
		res, err := r.Reconcile(rctx, req)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(res.RequeueAfter).To(Equal(want), "conflict %d", maxQuickConflictRetries+i+1)
	}
	g.Expect(testutil.ToFloat64(conflictsTotal)-before).To(Equal(float64(maxQuickConflictRetries+3)), "every conflict counted")
	r.mu.Lock()
	r.conflicts["conflicted"] = 1000
	r.mu.Unlock()
	res, err := r.Reconcile(rctx, req)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res.RequeueAfter).To(Equal(maxConflictBackoff))

	conflicting = false
	res, err = r.Reconcile(rctx, req)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res.RequeueAfter).To(BeZero())
	cur := &clustersv1.MemberCluster{}
	g.Expect(c.Get(rctx, client.ObjectKeyFromObject(mc), cur)).To(Succeed())
	g.Expect(findCondition(cur.Status.Conditions, clustersv1.ReadyCondition).Reason).To(Equal(clustersv1.ReasonPaused))

	r.mu.Lock()
	g.Expect(r.conflicts).NotTo(HaveKey("conflicted"), "a success resets the count")
	r.mu.Unlock()
}
