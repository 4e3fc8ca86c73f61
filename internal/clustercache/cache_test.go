package clustercache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/event"

	"github.com/paddock-dev/paddock/internal/scheme"
)

func TestCacheLifecycleAndNotifications(t *testing.T) {
	g := NewWithT(t)
	c := New(Options{Scheme: scheme.New(), QPS: 7, Burst: 9, Timeout: 3 * time.Second})
	events := c.Subscribe()
	cfg := &rest.Config{Host: "https://10.0.0.1:6443"}
	ctx := context.Background()

	_, err := c.Get(ctx, "m")
	g.Expect(errors.Is(err, ErrNotConnected)).To(BeTrue())

	acc, err := c.Connect("m", "v1", cfg)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(acc.Config.QPS).To(Equal(float32(7)))
	g.Expect(acc.Config.Burst).To(Equal(9))
	g.Expect(acc.Config.Timeout).To(Equal(3 * time.Second))
	g.Expect(acc.Config.RateLimiter).NotTo(BeNil(), "one limiter shared by the member's clients")
	cl, err := acc.Client()
	g.Expect(err).NotTo(HaveOccurred())
	cl2, _ := acc.Client()
	g.Expect(cl2).To(BeIdenticalTo(cl), "built once")
	again, err := c.Connect("m", "v1", cfg)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(again).To(BeIdenticalTo(acc), "same version: cached")

	_, err = c.Get(ctx, "m")
	nre, ok := IsNotReady(err)
	g.Expect(ok).To(BeTrue(), "connected but not yet admitted")
	g.Expect(nre.Reason).To(Equal(ReasonProbePending))
	_, err = c.GetForCleanup(ctx, "m")
	g.Expect(err).To(HaveOccurred(), "cleanup never acts through an unproven connection either")

	g.Expect(c.Admit(acc, "uid-1")).To(BeTrue())
	g.Expect(receive(events)).To(Equal("m"))
	got, err := c.Get(ctx, "m")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(got).To(BeIdenticalTo(acc))
	g.Expect(c.Admit(acc, "uid-1")).To(BeTrue())
	g.Consistently(events, 100*time.Millisecond).ShouldNot(Receive(), "no event without a change")

	// A new kubeconfig version rebuilds and starts unadmitted; dependants hear about it.
	rebuilt, err := c.Connect("m", "v2", cfg)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(rebuilt).NotTo(BeIdenticalTo(acc))
	g.Expect(rebuilt.Generation).NotTo(Equal(acc.Generation))
	g.Expect(receive(events)).To(Equal("m"))
	_, err = c.Get(ctx, "m")
	nre, _ = IsNotReady(err)
	g.Expect(nre.Reason).To(Equal(ReasonProbePending))
	// An admission for the old connection (a probe that was in flight) changes nothing.
	g.Expect(c.Admit(acc, "uid-1")).To(BeFalse())
	_, err = c.Get(ctx, "m")
	g.Expect(err).To(HaveOccurred())

	g.Expect(c.Admit(rebuilt, "uid-1")).To(BeTrue())
	g.Expect(receive(events)).To(Equal("m"))
	c.Revoke("m", "ClusterNotReachable", false)
	g.Expect(receive(events)).To(Equal("m"))
	_, err = c.Get(ctx, "m")
	nre, _ = IsNotReady(err)
	g.Expect(nre.Reason).To(Equal("ClusterNotReachable"))
	_, err = c.GetForCleanup(ctx, "m")
	g.Expect(err).NotTo(HaveOccurred(), "an unreachable member is still the same cluster: cleanup may try")
	c.Revoke("m", "ClusterIdentityChanged", true)
	_, err = c.GetForCleanup(ctx, "m")
	g.Expect(err).To(HaveOccurred(), "a changed identity is forgotten")

	g.Expect(c.Admit(rebuilt, "uid-1")).To(BeTrue())
	g.Expect(receive(events)).To(Equal("m"))
	c.BeginCleanup("m")
	g.Expect(receive(events)).To(Equal("m"))
	_, err = c.Get(ctx, "m")
	nre, _ = IsNotReady(err)
	g.Expect(nre.Reason).To(Equal(ReasonDeleting))
	cleanup, err := c.GetForCleanup(ctx, "m")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(cleanup).To(BeIdenticalTo(rebuilt))
	c.BeginCleanup("m")
	g.Consistently(events, 100*time.Millisecond).ShouldNot(Receive(), "no event for a repeated BeginCleanup")

	c.Disconnect("m")
	g.Expect(receive(events)).To(Equal("m"))
	g.Expect(c.Len()).To(Equal(0))
	_, ok = c.Peek("m")
	g.Expect(ok).To(BeFalse())
}

// Notifications are coalesced per member and never dropped, however far behind a subscriber is.
func TestSubscribeCoalescesAndNeverDrops(t *testing.T) {
	g := NewWithT(t)
	c := New(Options{Scheme: scheme.New()})
	events := c.Subscribe()
	const members = 3000 // more than any fixed buffer would hold
	for round := 0; round < 3; round++ {
		for i := 0; i < members; i++ {
			c.notify(fmt.Sprintf("m%d", i))
		}
	}
	seen := map[string]int{}
	timeout := time.After(10 * time.Second)
	for len(seen) < members {
		select {
		case e := <-events:
			seen[e.Object.GetName()]++
		case <-timeout:
			t.Fatalf("only %d of %d members notified", len(seen), members)
		}
	}
	// The first of each name may have been taken by the pump before the repeats came in, so at
	// most two per member; never the three that were sent.
	for name, n := range seen {
		g.Expect(n).To(BeNumerically("<=", 2), name)
	}
	g.Consistently(func() int {
		select {
		case e := <-events:
			seen[e.Object.GetName()]++
		default:
		}
		total := 0
		for _, n := range seen {
			total += n
		}
		return total
	}, 200*time.Millisecond, 10*time.Millisecond).Should(BeNumerically("<=", 2*members))
}

func receive(ch <-chan event.GenericEvent) string {
	select {
	case e := <-ch:
		return e.Object.GetName()
	case <-time.After(time.Second):
		return "<nothing>"
	}
}

// Work clients, watches and clients built from the RESTClientGetter pass the accessor's gate only
// while its connection is admitted: a client kept from an earlier Get cannot act on a member whose
// identity changed, through a replaced connection, or after a disconnect. Probes bypass the gate.
func TestWorkClientsPassOnlyWhileAdmitted(t *testing.T) {
	g := NewWithT(t)
	var work atomic.Int32
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/readyz":
			_, _ = io.WriteString(w, "ok")
		case "/api/v1/namespaces/kube-system":
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"kind":"Namespace","apiVersion":"v1","metadata":{"name":"kube-system","uid":"uid-1"}}`)
		default:
			work.Add(1)
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"kind":"Namespace","apiVersion":"v1","metadata":{"name":"default"}}`)
		}
	}))
	defer srv.Close()
	cfg := &rest.Config{Host: srv.URL, TLSClientConfig: rest.TLSClientConfig{Insecure: true}, BearerToken: "t"}
	c := New(Options{Scheme: scheme.New()})
	acc, err := c.Connect("m", "v1", cfg)
	g.Expect(err).NotTo(HaveOccurred())
	kc, err := acc.Kubernetes()
	g.Expect(err).NotTo(HaveOccurred())
	getterCfg, err := acc.RESTClientGetter("").ToRESTConfig()
	g.Expect(err).NotTo(HaveOccurred())
	fromGetter, err := kubernetes.NewForConfig(getterCfg)
	g.Expect(err).NotTo(HaveOccurred())
	ctx := context.Background()
	try := func() []error {
		_, err1 := kc.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{})
		_, err2 := fromGetter.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{})
		return []error{err1, err2}
	}
	refused := func(errs []error) {
		t.Helper()
		for _, err := range errs {
			g.Expect(errors.Is(err, ErrConnectionNotAdmitted)).To(BeTrue(), "%v", err)
		}
	}

	refused(try()) // not admitted yet
	g.Expect(acc.ProbeLiveness(ctx).Err).NotTo(HaveOccurred(), "probes do not need the gate")
	g.Expect(c.Admit(acc, "uid-1")).To(BeTrue())
	g.Expect(try()).To(HaveEach(BeNil()))
	c.Revoke("m", "ClusterNotReachable", false)
	g.Expect(try()).To(HaveEach(BeNil()), "an unreachable member is still the admitted cluster")
	c.Revoke("m", "ClusterIdentityChanged", true)
	refused(try())

	g.Expect(c.Admit(acc, "uid-1")).To(BeTrue())
	v2, err := c.Connect("m", "v2", cfg) // the Secret changed
	g.Expect(err).NotTo(HaveOccurred())
	refused(try())
	before := work.Load()
	kc2, err := v2.Kubernetes()
	g.Expect(err).NotTo(HaveOccurred())
	get2 := func() error {
		_, err := kc2.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{})
		return err
	}
	g.Expect(errors.Is(get2(), ErrConnectionNotAdmitted)).To(BeTrue(), "the new connection waits for its own admission")
	g.Expect(c.Admit(v2, "uid-1")).To(BeTrue())
	g.Expect(get2()).To(Succeed())
	c.Disconnect("m")
	g.Expect(errors.Is(get2(), ErrConnectionNotAdmitted)).To(BeTrue(), "disconnected")
	g.Expect(work.Load()).To(Equal(before+1), "refused requests never reach the member")
}

// Dropping a connection closes its idle connections to the member at once (through client-go's
// transport wrappers), instead of leaving them until their idle timeout.
func TestDisconnectClosesIdleConnections(t *testing.T) {
	g := NewWithT(t)
	var opened, closed atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"kind":"Namespace","apiVersion":"v1","metadata":{"name":"default"}}`)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			opened.Add(1)
		case http.StateClosed:
			closed.Add(1)
		}
	}
	srv.StartTLS()
	defer srv.Close()
	c := New(Options{Scheme: scheme.New()})
	acc, err := c.Connect("m", "v1", &rest.Config{Host: srv.URL, TLSClientConfig: rest.TLSClientConfig{Insecure: true}, BearerToken: "t"})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(c.Admit(acc, "uid-1")).To(BeTrue())
	kc, err := acc.Kubernetes()
	g.Expect(err).NotTo(HaveOccurred())
	_, err = kc.CoreV1().Namespaces().Get(context.Background(), "default", metav1.GetOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(opened.Load()).To(Equal(int32(1)))
	g.Consistently(closed.Load, 200*time.Millisecond).Should(BeZero())
	c.Disconnect("m")
	g.Eventually(closed.Load, 5*time.Second).Should(Equal(int32(1)))
}

// A probe that read another cluster revokes only through the connection it was taken on: one
// through a replaced connection (or of a MemberCluster deleted and recreated under the same name)
// leaves the current connection alone.
func TestRevokeFlippedOnlyRevokesThroughTheCurrentConnection(t *testing.T) {
	g := NewWithT(t)
	c := New(Options{Scheme: scheme.New()})
	ctx := context.Background()
	cfg := &rest.Config{Host: "https://10.0.0.1:6443"}
	old, err := c.Connect("m", "v1", cfg)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(c.Admit(old, "uid-1")).To(BeTrue())
	g.Expect(c.RevokeFlipped(old, "uid-1")).To(BeFalse(), "the admitted cluster")
	cur, err := c.Connect("m", "v2", cfg)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(c.Admit(cur, "uid-2")).To(BeTrue())
	g.Expect(c.RevokeFlipped(old, "uid-1")).To(BeFalse(), "a stale connection's probe")
	_, err = c.Get(ctx, "m")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(c.RevokeFlipped(cur, "uid-3")).To(BeTrue())
	_, err = c.Get(ctx, "m")
	nre, ok := IsNotReady(err)
	g.Expect(ok).To(BeTrue())
	g.Expect(nre.Reason).To(Equal("ClusterIdentityChanged"))
	g.Expect(c.AdmittedID("m")).To(BeEmpty())
}

// The gate also ends requests that passed it while it was open: a stream started through an
// admitted connection (a watch, a Helm wait, a log follow) is cut off when the member's identity
// is revoked, not left talking to a cluster that may no longer be the admitted one.
func TestClosingTheGateEndsRequestsInFlight(t *testing.T) {
	g := NewWithT(t)
	ended := make(chan struct{})
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, `{"type":"ADDED"`)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
		close(ended)
	}))
	defer srv.Close()
	c := New(Options{Scheme: scheme.New()})
	acc, err := c.Connect("m", "v1", &rest.Config{Host: srv.URL, TLSClientConfig: rest.TLSClientConfig{Insecure: true}})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(c.Admit(acc, "uid-1")).To(BeTrue())
	kc, err := acc.Kubernetes()
	g.Expect(err).NotTo(HaveOccurred())
	body, err := kc.CoreV1().RESTClient().Get().AbsPath("/api/v1/namespaces").Param("watch", "true").Stream(context.Background())
	g.Expect(err).NotTo(HaveOccurred())
	defer func() { _ = body.Close() }()
	buf := make([]byte, 64)
	n, err := body.Read(buf)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(string(buf[:n])).To(Equal(`{"type":"ADDED"`))
	readErr := make(chan error, 1)
	go func() { _, err := io.ReadAll(body); readErr <- err }()
	g.Consistently(readErr, 200*time.Millisecond).ShouldNot(Receive(), "streams while admitted")

	c.Revoke("m", "ClusterIdentityChanged", true)
	g.Eventually(readErr, 5*time.Second).Should(Receive(HaveOccurred()))
	g.Eventually(ended, 5*time.Second).Should(BeClosed(), "the member saw the request end")
}
