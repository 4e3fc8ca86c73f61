package clustercache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
	"github.com/paddock-dev/paddock/internal/scheme"
)

// A member that accepts connections and closes them (a dead apiserver behind a load balancer)
// fails a probe at once: client-go's GET retries must not stretch it to the probe timeout.
func TestProbeFailsFastWhenConnectionsAreClosed(t *testing.T) {
	g := NewWithT(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	g.Expect(err).NotTo(HaveOccurred())
	defer func() { _ = ln.Close() }()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	cache := New(Options{Scheme: scheme.New()})
	acc, err := cache.Connect("eof", "v1", &rest.Config{Host: "https://" + ln.Addr().String(), TLSClientConfig: rest.TLSClientConfig{Insecure: true}})
	g.Expect(err).NotTo(HaveOccurred())

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res := acc.ProbeLiveness(ctx)
	g.Expect(res.Err).To(HaveOccurred())
	g.Expect(res.Reason).To(Equal(clustersv1.ReasonClusterNotReachable))
	g.Expect(res.Latency).To(BeNumerically("<", time.Second), "no retries inside one probe")
}

// A port with nothing listening fails fast too.
func TestProbeFailsFastWhenRefused(t *testing.T) {
	g := NewWithT(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	g.Expect(err).NotTo(HaveOccurred())
	addr := ln.Addr().String()
	_ = ln.Close()
	acc, err := New(Options{Scheme: scheme.New()}).Connect("refused", "v1", &rest.Config{Host: "https://" + addr})
	g.Expect(err).NotTo(HaveOccurred())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res := acc.ProbeLiveness(ctx)
	g.Expect(res.Reason).To(Equal(clustersv1.ReasonClusterNotReachable))
	g.Expect(res.Latency).To(BeNumerically("<", time.Second))
}

// fakeMember serves handler over TLS and returns an accessor for it.
func fakeMember(t *testing.T, handler http.HandlerFunc) *Accessor {
	t.Helper()
	srv := httptest.NewTLSServer(handler)
	t.Cleanup(srv.Close)
	c := New(Options{Scheme: scheme.New()})
	acc, err := c.Connect("fake", "v1", &rest.Config{Host: srv.URL, TLSClientConfig: rest.TLSClientConfig{Insecure: true}, BearerToken: "s3cr3t-token"})
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	// Admitted, so that work clients pass the gate too (probes never need it).
	c.Admit(acc, "uid-fake")
	return acc
}

func probeCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestLivenessReadsTheIdentityFromTheWatchCache(t *testing.T) {
	g := NewWithT(t)
	var rv string
	acc := fakeMember(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/readyz":
			_, _ = io.WriteString(w, "ok")
		case "/api/v1/namespaces/kube-system":
			rv = r.URL.Query().Get("resourceVersion")
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"kind":"Namespace","apiVersion":"v1","metadata":{"name":"kube-system","uid":"uid-1"}}`)
		default:
			http.NotFound(w, r)
		}
	})
	res := acc.ProbeLiveness(probeCtx(t))
	g.Expect(res.Err).NotTo(HaveOccurred())
	g.Expect(res.ClusterID).To(Equal("uid-1"))
	g.Expect(rv).To(Equal("0"), "served from the apiserver's watch cache")
}

// A hostile member cannot make the manager read an unbounded response.
func TestOversizedResponsesAreProbeFailures(t *testing.T) {
	g := NewWithT(t)
	big := strings.Repeat("x", int(LivenessMaxResponseBytes)+10)
	for _, declared := range []bool{true, false} {
		acc := fakeMember(t, func(w http.ResponseWriter, r *http.Request) {
			if declared {
				w.Header().Set("Content-Length", strconv.Itoa(len(big)))
			}
			w.WriteHeader(http.StatusOK)
			// Written in pieces and flushed, so the length is not known up front.
			for i := 0; i < len(big); i += 64 << 10 {
				_, _ = io.WriteString(w, big[i:min(i+64<<10, len(big))])
				w.(http.Flusher).Flush()
			}
		})
		res := acc.ProbeLiveness(probeCtx(t))
		g.Expect(res.Reason).To(Equal(clustersv1.ReasonResponseTooLarge), "declared=%v: %v", declared, res.Err)
	}
	// Exactly at the cap is fine.
	body := &cappedBody{rc: io.NopCloser(strings.NewReader("12345")), left: 5, limit: 5}
	out, err := io.ReadAll(body)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(string(out)).To(Equal("12345"))
	body = &cappedBody{rc: io.NopCloser(strings.NewReader("123456")), left: 5, limit: 5}
	_, err = io.ReadAll(body)
	g.Expect(errors.Is(err, ErrResponseTooLarge)).To(BeTrue())
}

// A redirect is never followed: the bearer token must not go to another host.
func TestRedirectsAreNotFollowed(t *testing.T) {
	g := NewWithT(t)
	var leaked atomic.Bool
	other := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "" {
			leaked.Store(true)
		}
		_, _ = io.WriteString(w, "ok")
	}))
	defer other.Close()
	acc := fakeMember(t, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+r.URL.Path, http.StatusTemporaryRedirect)
	})
	res := acc.ProbeLiveness(probeCtx(t))
	g.Expect(res.Reason).To(Equal(clustersv1.ReasonRedirectRefused), "%v", res.Err)
	kc, err := acc.Kubernetes()
	g.Expect(err).NotTo(HaveOccurred())
	_, err = kc.CoreV1().Namespaces().Get(probeCtx(t), "default", metav1.GetOptions{})
	g.Expect(errors.Is(err, ErrRedirectRefused)).To(BeTrue(), "work clients refuse redirects too: %v", err)
	// Clients that others (Helm) build from the getter's config follow redirects by default; the
	// shared transport refuses them itself.
	cfg, err := acc.RESTClientGetter("").ToRESTConfig()
	g.Expect(err).NotTo(HaveOccurred())
	kc, err = kubernetes.NewForConfig(cfg)
	g.Expect(err).NotTo(HaveOccurred())
	_, err = kc.CoreV1().Namespaces().Get(probeCtx(t), "default", metav1.GetOptions{})
	g.Expect(errors.Is(err, ErrRedirectRefused)).To(BeTrue(), "clients built from the getter refuse redirects: %v", err)
	g.Expect(leaked.Load()).To(BeFalse())
}

func TestForbiddenIsToldApartFromUnauthorized(t *testing.T) {
	g := NewWithT(t)
	for code, reason := range map[int]string{401: clustersv1.ReasonUnauthorized, 403: clustersv1.ReasonForbidden} {
		acc := fakeMember(t, func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/readyz" {
				_, _ = io.WriteString(w, "ok")
				return
			}
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(code)
			_, _ = fmt.Fprintf(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","code":%d,"reason":"%s"}`, code, map[int]string{401: "Unauthorized", 403: "Forbidden"}[code])
		})
		res := acc.ProbeLiveness(probeCtx(t))
		g.Expect(res.Reason).To(Equal(reason), "%d: %v", code, res.Err)
	}
}

func TestInventorySumsNodesFromOneWatchCacheList(t *testing.T) {
	g := NewWithT(t)
	var lists atomic.Int32
	var rv, accept string
	acc := fakeMember(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/version":
			_, _ = io.WriteString(w, `{"gitVersion":"v1.36.3","platform":"linux/amd64"}`)
		case "/api/v1/nodes":
			lists.Add(1)
			rv, accept = r.URL.Query().Get("resourceVersion"), r.Header.Get("Accept")
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"kind":"NodeList","apiVersion":"v1","metadata":{},"items":[
{"metadata":{"name":"a"},"status":{"capacity":{"cpu":"4","memory":"8Gi","pods":"110"},"allocatable":{"cpu":"3"},"conditions":[{"type":"Ready","status":"True"}]}},
{"metadata":{"name":"b"},"status":{"capacity":{"cpu":"2"},"conditions":[{"type":"Ready","status":"False"}]}}]}`)
		default:
			http.NotFound(w, r)
		}
	})
	res := acc.ProbeInventory(probeCtx(t))
	g.Expect(res.Err).NotTo(HaveOccurred())
	g.Expect(res.Version).To(Equal("v1.36.3"))
	g.Expect(res.Nodes).To(Equal(clustersv1.NodeSummary{Total: 2, Ready: 1}))
	cpu := res.Capacity[corev1.ResourceCPU]
	g.Expect(cpu.String()).To(Equal("6"))
	g.Expect(lists.Load()).To(Equal(int32(1)))
	g.Expect(rv).To(Equal("0"))
	g.Expect(accept).To(Equal("application/json"))
}

// Clients that Helm builds from the accessor's RESTClientGetter reuse the member's connection.
func TestRESTClientGetterSharesTheMembersTransport(t *testing.T) {
	g := NewWithT(t)
	var conns atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"kind":"Namespace","apiVersion":"v1","metadata":{"name":"default","uid":"u"}}`)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.StartTLS()
	defer srv.Close()
	c := New(Options{Scheme: scheme.New()})
	acc, err := c.Connect("getter", "v1", &rest.Config{Host: srv.URL, TLSClientConfig: rest.TLSClientConfig{Insecure: true}, BearerToken: "t"})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(c.Admit(acc, "uid-getter")).To(BeTrue())
	kc, err := acc.Kubernetes()
	g.Expect(err).NotTo(HaveOccurred())
	_, err = kc.CoreV1().Namespaces().Get(probeCtx(t), "default", metav1.GetOptions{})
	g.Expect(err).NotTo(HaveOccurred())

	getter := acc.RESTClientGetter("apps")
	cfg, err := getter.ToRESTConfig()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(cfg.Transport).To(BeIdenticalTo(acc.sharedTransport()))
	for i := 0; i < 5; i++ {
		kc, err := kubernetes.NewForConfig(cfg)
		g.Expect(err).NotTo(HaveOccurred())
		_, err = kc.CoreV1().Namespaces().Get(probeCtx(t), "default", metav1.GetOptions{})
		g.Expect(err).NotTo(HaveOccurred())
	}
	g.Expect(conns.Load()).To(Equal(int32(1)), "one connection for the accessor and every client built from its getter")
	ns, explicit, err := getter.ToRawKubeConfigLoader().Namespace()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(ns).To(Equal("apps"))
	g.Expect(explicit).To(BeTrue())
}

// A hostile member's absurd quantities are left out of the sums instead of being expanded (adding
// 1e999999999 to 1 exactly would need a number of about 400 MB).
func TestInventoryIgnoresAbsurdQuantities(t *testing.T) {
	g := NewWithT(t)
	acc := fakeMember(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/version":
			_, _ = io.WriteString(w, `{"gitVersion":"v1.36.3"}`)
		case "/api/v1/nodes":
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"kind":"NodeList","apiVersion":"v1","metadata":{},"items":[
{"metadata":{"name":"a"},"status":{"capacity":{"cpu":"1e999999999","memory":"1e-999999999","pods":"110"}}},
{"metadata":{"name":"b"},"status":{"capacity":{"cpu":"2","memory":"8Gi","pods":"1e18"}}}]}`)
		default:
			http.NotFound(w, r)
		}
	})
	res := acc.ProbeInventory(probeCtx(t))
	g.Expect(res.Err).NotTo(HaveOccurred())
	g.Expect(res.Nodes.Total).To(Equal(int32(2)))
	cpu, mem, pods := res.Capacity[corev1.ResourceCPU], res.Capacity[corev1.ResourceMemory], res.Capacity[corev1.ResourcePods]
	g.Expect(cpu.String()).To(Equal("2"))
	g.Expect(mem.String()).To(Equal("8Gi"))
	g.Expect(pods.Value()).To(Equal(int64(1e18 + 110)))
}

// Work on a member never makes its probes wait: with the work limiter exhausted (requests queued
// behind it), liveness and inventory probes still go out at once through their own limiter.
func TestProbesPassWhileTheWorkLimiterIsExhausted(t *testing.T) {
	g := NewWithT(t)
	var workSeen atomic.Int32
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/readyz":
			_, _ = io.WriteString(w, "ok")
		case "/api/v1/namespaces/kube-system":
			_, _ = io.WriteString(w, `{"kind":"Namespace","apiVersion":"v1","metadata":{"name":"kube-system","uid":"uid-1"}}`)
		case "/version":
			_, _ = io.WriteString(w, `{"gitVersion":"v1.36.3","platform":"linux/amd64"}`)
		case "/api/v1/nodes":
			_, _ = io.WriteString(w, `{"kind":"NodeList","apiVersion":"v1","metadata":{"resourceVersion":"1"},"items":[]}`)
		default:
			workSeen.Add(1)
			_, _ = io.WriteString(w, `{"kind":"Namespace","apiVersion":"v1","metadata":{"name":"default"}}`)
		}
	}))
	defer srv.Close()
	// One work request per 100 s: the first takes the only token, every later one waits.
	c := New(Options{Scheme: scheme.New(), QPS: 0.01, Burst: 1})
	acc, err := c.Connect("m", "v1", &rest.Config{Host: srv.URL, TLSClientConfig: rest.TLSClientConfig{Insecure: true}})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(c.Admit(acc, "uid-1")).To(BeTrue())
	kc, err := acc.Kubernetes()
	g.Expect(err).NotTo(HaveOccurred())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, err = kc.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	// Work queued behind the limiter, as a busy controller's would be.
	queued := make(chan error, 3)
	for range 3 {
		go func() {
			_, err := kc.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{})
			queued <- err
		}()
	}
	short, cancelShort := context.WithTimeout(ctx, 200*time.Millisecond)
	_, err = kc.CoreV1().Namespaces().Get(short, "default", metav1.GetOptions{})
	cancelShort()
	g.Expect(err).To(HaveOccurred(), "the work limiter is exhausted")

	start := time.Now()
	for range 5 {
		res := acc.ProbeLiveness(probeCtx(t))
		g.Expect(res.Err).NotTo(HaveOccurred())
		g.Expect(res.ClusterID).To(Equal("uid-1"))
	}
	inv := acc.ProbeInventory(probeCtx(t))
	g.Expect(inv.Err).NotTo(HaveOccurred())
	took := time.Since(start)
	t.Logf("5 liveness probes and an inventory with the work limiter exhausted took %s", took)
	g.Expect(took).To(BeNumerically("<", 2*time.Second), "probes do not wait for the work limiter")
	g.Expect(workSeen.Load()).To(Equal(int32(1)), "the queued work is still waiting")
	cancel()
	for range 3 {
		g.Expect(<-queued).To(HaveOccurred())
	}
}
