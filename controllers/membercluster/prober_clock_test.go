package membercluster

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
	testingclock "k8s.io/utils/clock/testing"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
	"github.com/paddock-dev/paddock/internal/clustercache"
	"github.com/paddock-dev/paddock/internal/scheme"
)

// asyncClock runs AfterFunc callbacks in their own goroutine, as time.AfterFunc does (the fake
// clock calls them under its lock, where a callback reading the clock would deadlock).
type asyncClock struct{ *testingclock.FakeClock }

func (c asyncClock) AfterFunc(d time.Duration, f func()) clock.Timer {
	return c.FakeClock.AfterFunc(d, func() { go f() })
}

// clockedProber is a prober on a fake clock, and a connection to a member whose /readyz always
// fails (counted in readyz when set).
func clockedProber(t *testing.T, name string, start time.Time, readyz *atomic.Int32) (*Reconciler, *testingclock.FakeClock, *clustercache.Accessor) {
	t.Helper()
	return clockedProberFor(t, name, start, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/readyz" && readyz != nil {
			readyz.Add(1)
		}
		http.Error(w, "not ready", http.StatusServiceUnavailable)
	})
}

// clockedProberFor is a prober on a fake clock, and a connection to a member served by handler.
func clockedProberFor(t *testing.T, name string, start time.Time, handler http.HandlerFunc) (*Reconciler, *testingclock.FakeClock, *clustercache.Accessor) {
	t.Helper()
	srv := httptest.NewTLSServer(handler)
	t.Cleanup(srv.Close)
	// The probe limiter runs on real time: let the fake clock set the pace.
	cache := clustercache.New(clustercache.Options{Scheme: scheme.New(), ProbeQPS: 1000, ProbeBurst: 1000})
	acc, err := cache.Connect(name, "v1", &rest.Config{Host: srv.URL, TLSClientConfig: rest.TLSClientConfig{Insecure: true}})
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	fc := testingclock.NewFakeClock(start)
	r := &Reconciler{Cache: cache, Clock: asyncClock{fc}}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	r.init(ctx, logr.Discard())
	return r, fc, acc
}

// The prober keeps its schedule by the injected clock: a member that stops answering is probed at
// once on activation, re-probed every retry interval (period/5) while suspect, probed once more at
// the exact end of its unhealthyAfter window (6.5 s, not a multiple of the retry interval), turns
// unhealthy then, not a step earlier, and is then probed only every maxDownBackoff. No probe
// starts before the clock says it is due.
func TestProberFollowsTheInjectedClock(t *testing.T) {
	g := NewWithT(t)
	start := time.Unix(1_000_000, 0)
	r, fc, acc := clockedProber(t, "clocked", start, nil)
	spec := clustersv1.HealthCheckSpec{
		Period:         &metav1.Duration{Duration: 5 * time.Second},
		Timeout:        &metav1.Duration{Duration: 2 * time.Second},
		UnhealthyAfter: &metav1.Duration{Duration: 6500 * time.Millisecond},
	}
	st := &memberState{name: "clocked", uid: "uid-clocked", health: health{Healthy: true, LastSuccess: start}}
	r.activate("clocked", st, acc, spec)

	// idle: no probe running and the next one scheduled (read together under st.mu, where the
	// prober clears inFlight and schedules the next probe in one step).
	idle := func() bool {
		st.mu.Lock()
		defer st.mu.Unlock()
		return !st.inFlight && fc.HasWaiters()
	}
	var probedAt []time.Duration
	var unhealthyAt time.Duration
	lastStart := time.Time{}
	for step := time.Duration(0); step <= 40*time.Second; step += 100 * time.Millisecond {
		fc.SetTime(start.Add(step))
		g.Eventually(idle, 5*time.Second, time.Millisecond).Should(BeTrue(), "at +%s", step)
		st.mu.Lock()
		if st.lastStart != lastStart {
			lastStart = st.lastStart
			probedAt = append(probedAt, lastStart.Sub(start))
		}
		if !st.health.Healthy && unhealthyAt == 0 {
			unhealthyAt = step
		}
		st.mu.Unlock()
	}
	g.Expect(probedAt[:8]).To(Equal([]time.Duration{0, time.Second, 2 * time.Second, 3 * time.Second, 4 * time.Second,
		5 * time.Second, 6 * time.Second, 6500 * time.Millisecond}))
	g.Expect(unhealthyAt).To(Equal(6500*time.Millisecond), "unhealthy at the end of the window")
	// Down now, after eight failures in a row: backed off to maxDownBackoff at once.
	g.Expect(probedAt[8:]).To(Equal([]time.Duration{6500*time.Millisecond + maxDownBackoff}))
}

// A probe timer that fires late, after its member was deactivated and re-activated, belongs to an
// old epoch: it neither probes nor disturbs the new schedule, so a member has one probe chain.
func TestStaleProbeTimerLeavesOneProbeChain(t *testing.T) {
	g := NewWithT(t)
	var readyz atomic.Int32
	start := time.Unix(2_000_000, 0)
	r, fc, acc := clockedProber(t, "epochs", start, &readyz)
	spec := clustersv1.HealthCheckSpec{Period: &metav1.Duration{Duration: 5 * time.Second}, Timeout: &metav1.Duration{Duration: 2 * time.Second}}
	// Unhealthy and failing: probed every period (no retries, no backoff yet).
	st := &memberState{name: "epochs", uid: "uid-epochs"}
	r.activate("epochs", st, acc, spec)
	st.mu.Lock()
	stale := st.epoch
	st.mu.Unlock()
	deactivate(st)
	r.activate("epochs", st, acc, spec)
	// The first timer fires now, late: it must do nothing.
	r.runProbe("epochs", st, stale)
	st.mu.Lock()
	g.Expect(st.inFlight).To(BeFalse())
	g.Expect(st.timer).NotTo(BeNil(), "the new schedule is intact")
	st.mu.Unlock()
	g.Expect(readyz.Load()).To(BeZero())

	idle := func() bool {
		st.mu.Lock()
		defer st.mu.Unlock()
		return !st.inFlight && fc.HasWaiters()
	}
	fc.SetTime(start)
	g.Eventually(readyz.Load, 5*time.Second, time.Millisecond).Should(Equal(int32(1)))
	g.Eventually(idle, 5*time.Second, time.Millisecond).Should(BeTrue())
	for i := int32(2); i <= 4; i++ {
		fc.SetTime(start.Add(time.Duration(i-1) * 5 * time.Second))
		g.Eventually(readyz.Load, 5*time.Second, time.Millisecond).Should(Equal(i))
		g.Eventually(idle, 5*time.Second, time.Millisecond).Should(BeTrue())
		g.Consistently(readyz.Load, 50*time.Millisecond, 5*time.Millisecond).Should(Equal(i), "one probe per period: one chain")
	}
}

// The inventory (version, node list) is read on its own cadence, not with every liveness probe:
// over 35 s of a healthy member with a 1 s period and a 10 s inventoryInterval, /readyz is asked
// every second (after the two quick attach probes at 0 and 0.2 s, on the retry interval) and the
// node list only with the first liveness probe 10 s after the last list, each from the watch cache.
func TestInventoryFollowsItsOwnInterval(t *testing.T) {
	g := NewWithT(t)
	var readyz atomic.Int32
	var mu sync.Mutex
	var nodeLists []string
	start := time.Unix(3_000_000, 0)
	var fc *testingclock.FakeClock
	r, fc, acc := clockedProberFor(t, "inventory", start, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/readyz":
			readyz.Add(1)
			_, _ = io.WriteString(w, "ok")
		case "/api/v1/namespaces/kube-system":
			_, _ = io.WriteString(w, `{"kind":"Namespace","apiVersion":"v1","metadata":{"name":"kube-system","uid":"uid-inv"}}`)
		case "/version":
			_, _ = io.WriteString(w, `{"gitVersion":"v1.36.3","platform":"linux/amd64"}`)
		case "/api/v1/nodes":
			mu.Lock()
			nodeLists = append(nodeLists, fc.Now().Sub(start).String()+" rv="+r.URL.Query().Get("resourceVersion"))
			mu.Unlock()
			_, _ = io.WriteString(w, `{"kind":"NodeList","apiVersion":"v1","metadata":{"resourceVersion":"7"},"items":[]}`)
		default:
			http.NotFound(w, r)
		}
	})
	spec := clustersv1.HealthCheckSpec{
		Period:            &metav1.Duration{Duration: time.Second},
		Timeout:           &metav1.Duration{Duration: time.Second},
		InventoryInterval: &metav1.Duration{Duration: 10 * time.Second},
	}
	st := &memberState{name: "inventory", uid: "uid-inventory"}
	r.activate("inventory", st, acc, spec)
	idle := func() bool {
		st.mu.Lock()
		defer st.mu.Unlock()
		return !st.inFlight && !st.invInFlight && fc.HasWaiters()
	}
	for step := time.Duration(0); step <= 35*time.Second; step += 100 * time.Millisecond {
		fc.SetTime(start.Add(step))
		g.Eventually(idle, 5*time.Second, time.Millisecond).Should(BeTrue(), "at +%s", step)
	}
	g.Expect(readyz.Load()).To(Equal(int32(36)), "liveness at 0, 0.2, then every period up to 34.2 s")
	mu.Lock()
	defer mu.Unlock()
	g.Expect(nodeLists).To(Equal([]string{"0s rv=0", "10.2s rv=0", "20.2s rv=0", "30.2s rv=0"}))
	st.mu.Lock()
	defer st.mu.Unlock()
	g.Expect(st.inv).NotTo(BeNil())
	g.Expect(st.inv.Version).To(Equal("v1.36.3"))
}
