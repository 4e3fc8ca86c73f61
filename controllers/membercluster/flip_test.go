package membercluster

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/events"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
	"github.com/paddock-dev/paddock/internal/clustercache"
	"github.com/paddock-dev/paddock/internal/scheme"
)

// flippingMember serves /readyz and a kube-system namespace whose UID the test can change, as a
// DNS or load-balancer flip to another cluster behind the same kubeconfig would.
func flippingMember(t *testing.T, uid *atomic.Value, forbidden *atomic.Bool) *httptest.Server {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/readyz":
			_, _ = io.WriteString(w, "ok")
		case forbidden.Load():
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusForbidden)
			// A hostile member's error text: huge, with control characters.
			_, _ = io.WriteString(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","code":403,"reason":"Forbidden","message":"`+
				strings.Repeat("no\\u001b[31m ", 50_000)+`"}`)
		case r.URL.Path == "/api/v1/namespaces/kube-system":
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"kind":"Namespace","apiVersion":"v1","metadata":{"name":"kube-system","uid":"`+uid.Load().(string)+`"}}`)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

// A different cluster behind an admitted connection is taken away by the prober itself, at the
// next probe, without waiting for a reconcile; and a member's error text is bounded.
func TestIdentityFlipBehindAnAdmittedConnectionIsRevokedAtOnce(t *testing.T) {
	g := NewWithT(t)
	var uid atomic.Value
	uid.Store("uid-1")
	var forbidden atomic.Bool
	srv := flippingMember(t, &uid, &forbidden)
	c := clustercache.New(clustercache.Options{Scheme: scheme.New()})
	r := &Reconciler{Cache: c, Recorder: events.NewFakeRecorder(10), StatusHeartbeat: time.Hour}
	rctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r.init(rctx, logr.Discard())
	go func() {
		for {
			select {
			case <-r.probeDone: // no reconciles in this test
			case <-rctx.Done():
				return
			}
		}
	}()
	acc, err := c.Connect("flip", "v1", &rest.Config{Host: srv.URL, TLSClientConfig: rest.TLSClientConfig{Insecure: true}})
	g.Expect(err).NotTo(HaveOccurred())
	st := &memberState{name: "flip", uid: "flip"}
	hc := clustersv1.HealthCheckSpec{Period: &metav1.Duration{Duration: 200 * time.Millisecond}, SuccessThreshold: 1}
	r.activate("flip", st, acc, hc)
	defer deactivate(st)
	g.Eventually(func() bool {
		st.mu.Lock()
		defer st.mu.Unlock()
		return st.live != nil && st.live.ClusterID == "uid-1"
	}, 5*time.Second, 10*time.Millisecond).Should(BeTrue())
	g.Expect(r.admit(st, acc, "uid-1")).To(BeTrue())
	_, err = c.Get(context.Background(), "flip")
	g.Expect(err).NotTo(HaveOccurred())

	uid.Store("uid-2")
	g.Eventually(func() string {
		_, err := c.Get(context.Background(), "flip")
		if nre, ok := clustercache.IsNotReady(err); ok {
			return nre.Reason
		}
		return ""
	}, 2*time.Second, 10*time.Millisecond).Should(Equal(clustersv1.ReasonClusterIdentityChanged))
	_, err = c.GetForCleanup(context.Background(), "flip")
	g.Expect(err).To(HaveOccurred(), "the identity is forgotten, cleanup included")
	g.Expect(r.admit(st, acc, "uid-1")).To(BeFalse(), "an admission from a stale snapshot is refused")

	// A huge error message with control characters is bounded before it is kept.
	forbidden.Store(true)
	g.Eventually(func() string {
		st.mu.Lock()
		defer st.mu.Unlock()
		return st.health.LastFailureReason
	}, 2*time.Second, 10*time.Millisecond).Should(Equal(clustersv1.ReasonForbidden))
	st.mu.Lock()
	msg := st.health.LastFailureMsg
	st.mu.Unlock()
	g.Expect(len(msg)).To(BeNumerically("<=", maxMessage+3))
	g.Expect(msg).NotTo(ContainSubstring("\x1b"))
	// The latest probe failed, but this connection reached another cluster: it stays refused.
	g.Expect(r.admit(st, acc, "uid-1")).To(BeFalse(), "a failed probe after a flip does not re-admit the connection")
	_, err = c.Get(context.Background(), "flip")
	g.Expect(err).To(HaveOccurred())
}
