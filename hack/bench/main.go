// Command bench measures MemberCluster at scale: N MemberClusters pointing at a few real member
// apiservers, reconciled by the real controller (in this process). It prints the time until all are
// Ready, the process's RSS and goroutines, probes per second, how long a dead member takes to be
// detected, and how many Ready transitions happen while 20% of probes fail at random. It also
// counts status writes in steady state, and the requests and bytes each member apiserver serves.
//
//	make bench BENCH_ARGS="-n 100,500,1000"
//	make bench BENCH_ARGS="-n 10000 -period 60s -unhealthy-after 180s -loss-duration 0 -ready-timeout 30m" # scale
//	make bench BENCH_ARGS="-n 1000 -unhealthy-after 15s -loss-duration 10m" # detection under loss
//	make bench BENCH_ARGS="-n 1800 -max-concurrent-probes 500 -frozen-first -loss-duration 0"
//	make bench BENCH_ARGS="-n 1 -members 1 -nodes 5000 -steady 1m -loss-duration 0"
//	make bench BENCH_ARGS="-plugins -n 100,1000 -members 4"   # PluginRelease vs a sequential Helm loop
package main

import (
	"context"
	crand "crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
	"github.com/paddock-dev/paddock/controllers"
	"github.com/paddock-dev/paddock/internal/clustercache"
	"github.com/paddock-dev/paddock/internal/digestkey"
	"github.com/paddock-dev/paddock/internal/scheme"
	"github.com/paddock-dev/paddock/test/envs"
)

// options are the benchmark's knobs (flags).
type options struct {
	members, nodes, maxProbes  int
	kubeQPS, loss              float64
	lossFor, steady, unhealthy time.Duration
	period, readyTimeout       time.Duration
	frozenFirst                bool
	helmConcurrency            int
	oneReleasePerCluster       bool
	memberLatency              time.Duration
	tenancyNamespaces          int
	tenancyGrants              int
}

// traffic counts requests and response bytes per member apiserver (by host).
type traffic struct {
	mu    sync.Mutex
	reqs  map[string]int64
	bytes map[string]int64
}

func (t *traffic) add(host string, reqs, bytes int64) {
	t.mu.Lock()
	t.reqs[host] += reqs
	t.bytes[host] += bytes
	t.mu.Unlock()
}

func (t *traffic) snapshot() (map[string]int64, map[string]int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	r, b := map[string]int64{}, map[string]int64{}
	for k, v := range t.reqs {
		r[k] = v
	}
	for k, v := range t.bytes {
		b[k] = v
	}
	return r, b
}

type countingTransport struct {
	next http.RoundTripper
	t    *traffic
}

func (c countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := c.next.RoundTrip(req)
	if err != nil {
		return resp, err
	}
	c.t.add(req.URL.Host, 1, 0)
	resp.Body = &countingBody{ReadCloser: resp.Body, host: req.URL.Host, t: c.t}
	return resp, nil
}

type countingBody struct {
	io.ReadCloser
	host string
	t    *traffic
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.t.add(b.host, 0, int64(n))
	return n, err
}

// lossyTransport fails a share of probe requests (the /readyz request starts every probe).
type lossyTransport struct {
	next http.RoundTripper
	rate *atomic.Uint64 // math.Float64bits of the loss rate
}

var errInjected = errors.New("injected probe loss")

func (l lossyTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Path == "/readyz" {
		if rate := float64(l.rate.Load()) / 1e6; rate > 0 && rand.Float64() < rate {
			return nil, errInjected
		}
	}
	return l.next.RoundTrip(req)
}

func main() {
	// The members' gate proxies run as children of this binary, so that RSS and goroutines
	// below are the manager's own.
	envs.RunGateProxyIfChild()
	ns := flag.String("n", "100,500,1000", "Comma-separated MemberCluster counts.")
	members := flag.Int("members", 3, "Member apiservers the MemberClusters point at.")
	lossFor := flag.Duration("loss-duration", 2*time.Minute, "How long to run with random probe loss (largest N only).")
	loss := flag.Float64("loss", 0.2, "Share of probes that fail during the loss run.")
	kubeQPS := flag.Float64("kube-api-qps", 300, "Manager QPS towards the management apiserver.")
	nodes := flag.Int("nodes", 0, "Node objects to create in the first member apiserver (inventory cost).")
	steady := flag.Duration("steady", time.Minute, "How long to measure steady state (probes, status writes, member traffic).")
	unhealthy := flag.Duration("unhealthy-after", 25*time.Second, "spec.healthCheck.unhealthyAfter of every MemberCluster.")
	readyTimeout := flag.Duration("ready-timeout", 10*time.Minute, "How long to wait for all MemberClusters to be Ready.")
	period := flag.Duration("period", 0, "spec.healthCheck.period of every MemberCluster (0: the default, 5s).")
	maxProbes := flag.Int("max-concurrent-probes", 0, "--max-concurrent-probes (0: the default).")
	plugins := flag.Bool("plugins", false, "Measure PluginRelease instead: one chart into each of -n simulated clusters, against a sequential Helm SDK loop.")
	helmConcurrency := flag.Int("helm-concurrency", 20, "With -plugins: --max-concurrent-helm-actions.")
	oneReleasePerCluster := flag.Bool("one-release-per-cluster", false, "With -plugins: one PluginRelease per simulated cluster (else one per simulated cluster on each member apiserver).")
	memberLatency := flag.Duration("member-latency", 20*time.Millisecond, "With -plugins: delay added to every request to a member (a remote cluster's round trip).")
	frozenFirst := flag.Bool("frozen-first", false, "Freeze the second member (its probes hang) before stopping the first, and measure the first's detection beside them.")
	tenancy := flag.Bool("tenancy", false, "Measure the tenancy kinds instead: a workspace of -namespaces NamespaceQuotas and -grants RoleGrants over -members real member clusters.")
	tenancyNamespaces := flag.Int("namespaces", 50, "With -tenancy: NamespaceQuotas in the workspace.")
	tenancyGrants := flag.Int("grants", 20, "With -tenancy: workspace-scoped RoleGrants.")
	flag.Parse()
	o := options{tenancyNamespaces: *tenancyNamespaces, tenancyGrants: *tenancyGrants, members: *members, nodes: *nodes, maxProbes: *maxProbes, kubeQPS: *kubeQPS, loss: *loss,
		lossFor: *lossFor, steady: *steady, unhealthy: *unhealthy, frozenFirst: *frozenFirst, period: *period, readyTimeout: *readyTimeout,
		helmConcurrency: *helmConcurrency, memberLatency: *memberLatency, oneReleasePerCluster: *oneReleasePerCluster}
	ctrl.SetLogger(benchLogger())
	counts := []int{}
	for _, s := range strings.Split(*ns, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			fail(err)
		}
		counts = append(counts, n)
	}
	if *tenancy {
		if err := runTenancy(o); err != nil {
			fail(err)
		}
		return
	}
	if *plugins {
		for _, n := range counts {
			if err := runPlugins(n, o); err != nil {
				fail(err)
			}
		}
		return
	}
	for i, n := range counts {
		// runOne stops its control planes before returning, also on error.
		if err := runOne(n, o, i == len(counts)-1); err != nil {
			fail(err)
		}
	}
}

func fail(err error) {
	pprof.StopCPUProfile()
	fmt.Fprintln(os.Stderr, "bench:", err)
	os.Exit(1)
}

func runOne(n int, o options, full bool) error {
	members, kubeQPS, lossFor, loss := o.members, o.kubeQPS, o.lossFor, o.loss
	fmt.Printf("\n== %d MemberClusters on %d member apiservers (unhealthyAfter %s, %d nodes in the first)\n", n, members, o.unhealthy, o.nodes)
	env, err := envs.Start(envs.Options{Members: members, SkipCAPICRDs: true, ProxyInChildProcess: true})
	if err != nil {
		return err
	}
	defer func() { _ = env.Stop() }()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	cfg := *env.Management.Config
	cfg.QPS, cfg.Burst = float32(kubeQPS), int(kubeQPS*2)
	sch := scheme.New()
	mgr, err := ctrl.NewManager(&cfg, ctrl.Options{
		Scheme: sch, Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0",
		// One manager per N in this process.
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		return err
	}
	rate := &atomic.Uint64{}
	tr := &traffic{reqs: map[string]int64{}, bytes: map[string]int64{}}
	cache := clustercache.New(clustercache.Options{Scheme: sch, WrapTransport: func(_ string, rt http.RoundTripper) http.RoundTripper {
		return lossyTransport{next: countingTransport{next: rt, t: tr}, rate: rate}
	}})
	if err := controllers.Setup(ctx, mgr, controllers.Options{
		DefaultConcurrency: 4, ClusterCache: cache, KubeconfigPolicy: clustercache.Policy{AllowLoopback: true},
		KubeconfigSecretNamespaces: []string{"paddock-system"}, MaxConcurrentProbes: o.maxProbes, DigestKey: randomKey(),
	}); err != nil {
		return err
	}
	if o.nodes > 0 {
		if err := createNodes(ctx, env.Members[0], o.nodes); err != nil {
			return err
		}
	}
	go func() { _ = mgr.Start(ctx) }()

	// Reads come from the manager's own informer cache: listing 10,000 MemberClusters from the
	// apiserver four times a second would load it (and this process) more than the manager does.
	if !mgr.GetCache().WaitForCacheSync(ctx) {
		return errors.New("the manager's cache did not sync")
	}
	c := mgr.GetClient()
	if err := env.WriteMemberKubeconfigSecrets(ctx, "paddock-system"); err != nil {
		return err
	}
	baseRSS := rssMiB()
	if prof := os.Getenv("BENCH_CPU_PROFILE"); prof != "" {
		if f, err := os.Create(prof); err == nil && pprof.StartCPUProfile(f) == nil {
			defer func() { pprof.StopCPUProfile(); _ = f.Close() }()
		}
	}
	start := time.Now()
	if err := createAll(ctx, env.Management.Client, env, n, o); err != nil {
		return err
	}
	created := time.Since(start)
	lastProgress, lastProbes, lastCPU := time.Now(), probes(), cpuNow()
	for {
		ready, _, err := countReady(ctx, c)
		if err != nil {
			return err
		}
		if ready == n {
			break
		}
		if time.Since(lastProgress) >= 30*time.Second {
			cpu := cpuNow()
			fmt.Printf("  +%3.0fs: %d Ready, %.0f probes/s, queue depth %.0f, %.0f reconcile errors, %.0f write conflicts; %s\n", time.Since(start).Seconds(), ready,
				(probes()-lastProbes)/time.Since(lastProgress).Seconds(), metricSum("workqueue_depth", "name", "membercluster"),
				metricSum("controller_runtime_reconcile_errors_total", "controller", "membercluster"),
				metricSum("paddock_membercluster_write_conflicts_total", "", ""), cpu.sub(lastCPU).cores(time.Since(lastProgress)))
			lastProgress, lastProbes, lastCPU = time.Now(), probes(), cpu
		}
		if time.Since(start) > o.readyTimeout {
			return fmt.Errorf("only %d of %d Ready after %s", ready, n, o.readyTimeout)
		}
		time.Sleep(250 * time.Millisecond)
	}
	allReady := time.Since(start)
	fmt.Printf("created in %s; all Ready %s after the first create\n", created.Round(time.Millisecond), allReady.Round(time.Millisecond))

	// Steady state starts once the first status writes (attach, Ready, inventory) are done.
	time.Sleep(15 * time.Second)
	p0, t0, cpu0 := probes(), time.Now(), cpuNow()
	w0 := metricSum("rest_client_requests_total", "method", "PATCH")
	r0, b0 := tr.snapshot()
	time.Sleep(o.steady)
	el := time.Since(t0)
	pps := (probes() - p0) / el.Seconds()
	writes := (metricSum("rest_client_requests_total", "method", "PATCH") - w0) / el.Seconds()
	r1, b1 := tr.snapshot()
	fmt.Printf("steady state over %s: %.1f status writes/s (%.4f per member per minute)\n", o.steady, writes, writes*60/float64(n))
	cpuUsed := cpuNow().sub(cpu0)
	fmt.Printf("  CPU: %s; manager %.0f µs per probe\n", cpuUsed.cores(el), cpuUsed.self.Seconds()*1e6/(probes()-p0))
	for i, m := range env.Members {
		host := strings.TrimPrefix(m.Server(), "https://")
		perMin := time.Minute.Seconds() / el.Seconds()
		fmt.Printf("  member %d: %.0f requests/min, %.1f KiB/min read by the manager\n", i, float64(r1[host]-r0[host])*perMin, float64(b1[host]-b0[host])*perMin/1024)
	}
	if o.nodes > 0 {
		if err := fullListCost(ctx, env.Members[0]); err != nil {
			return err
		}
	}
	if dump := os.Getenv("BENCH_GOROUTINE_DUMP"); dump != "" {
		if f, err := os.Create(dump); err == nil {
			_ = pprof.Lookup("goroutine").WriteTo(f, 1)
			_ = f.Close()
		}
	}
	if dump := os.Getenv("BENCH_HEAP_PROFILE"); dump != "" {
		runtime.GC()
		if f, err := os.Create(dump); err == nil {
			_ = pprof.Lookup("heap").WriteTo(f, 0)
			_ = f.Close()
		}
	}
	runtime.GC()
	fmt.Printf("steady state: %.0f probes/s, RSS %d MiB (%d MiB before creating MemberClusters), %d goroutines\n",
		pps, rssMiB(), baseRSS, runtime.NumGoroutine())
	if !full {
		return nil
	}

	if lossFor > 0 {
		if err := lossRun(ctx, c, rate, loss, lossFor); err != nil {
			return err
		}
	}
	return deadMembers(ctx, c, env, n, o)
}

// lossRun fails a share of probes at random for d: no Ready transitions allowed.
func lossRun(ctx context.Context, c client.Client, rate *atomic.Uint64, loss float64, lossFor time.Duration) error {
	before, err := readyTransitions(ctx, c)
	if err != nil {
		return err
	}
	rate.Store(uint64(loss * 1e6))
	p0 := probes()
	failed0 := failedProbes()
	flips, err := watchFlips(ctx, c, before, lossFor)
	if err != nil {
		return err
	}
	rate.Store(0)
	fmt.Printf("%.0f%% probe loss for %s: %.0f probes, %.0f failed, %d spurious Ready transitions\n",
		loss*100, lossFor, probes()-p0, failedProbes()-failed0, flips)
	return nil
}

// deadMembers takes members down and measures how long until every MemberCluster on them is not
// Ready.
func deadMembers(ctx context.Context, c client.Client, env *envs.Env, n int, o options) error {
	members := o.members

	// Dead members: one apiserver stopped, then another frozen (accepts TCP, never answers). All
	// MemberClusters on it must turn Ready=False; the target is within 30 s.
	onEach := n / members
	if n%members > 0 {
		onEach++
	}
	if o.frozenFirst && members > 1 {
		// Hung probes first: every MemberCluster on the frozen member holds a probe until its
		// timeout; the stopped member's MemberClusters must still be detected in their window.
		frozen := env.Members[1]
		if err := detect(ctx, c, "frozen", n/members, o.unhealthy, func() error { frozen.Freeze(); return nil }); err != nil {
			return err
		}
		if err := detect(ctx, c, "stopped (beside the frozen one)", onEach, o.unhealthy, env.Members[0].StopAPIServer); err != nil {
			return err
		}
		fmt.Printf("probe slot wait: p99 < %s\n", slotWaitP99())
		frozen.Thaw()
		return nil
	}
	if err := detect(ctx, c, "stopped", onEach, o.unhealthy, env.Members[0].StopAPIServer); err != nil {
		return err
	}
	if members > 1 {
		frozen := env.Members[1]
		if err := detect(ctx, c, "frozen", n/members, o.unhealthy, func() error { frozen.Freeze(); return nil }); err != nil {
			return err
		}
		frozen.Thaw()
	}
	return nil
}

// detect takes a member down and waits until want MemberClusters in all are not Ready.
func detect(ctx context.Context, c client.Client, how string, want int, unhealthy time.Duration, down func() error) error {
	_, before, err := countReady(ctx, c)
	if err != nil {
		return err
	}
	want += before
	// Per MemberCluster: how long after the outage it was first seen not Ready (within the 100 ms
	// the loop below polls at).
	wasReady, err := readyNames(ctx, c)
	if err != nil {
		return err
	}
	seen := map[string]time.Duration{}
	stopAt := time.Now()
	if err := down(); err != nil {
		return err
	}
	lastDiag, patches0 := time.Now(), metricSum("rest_client_requests_total", "method", "PATCH")
	for {
		if time.Since(lastDiag) >= 5*time.Second {
			patches := metricSum("rest_client_requests_total", "method", "PATCH")
			_, nr, _ := countReady(ctx, c)
			fmt.Printf("  +%2.0fs: %d not Ready, %.0f PATCH/s to the management apiserver, queue depth %.0f, busy workers %.0f\n",
				time.Since(stopAt).Seconds(), nr, (patches-patches0)/time.Since(lastDiag).Seconds(),
				metricSum("workqueue_depth", "name", "membercluster"), metricSum("controller_runtime_active_workers", "controller", "membercluster"))
			lastDiag, patches0 = time.Now(), patches
		}
		_, notReady, err := countReady(ctx, c)
		if err != nil {
			return err
		}
		if err := seeNotReady(ctx, c, wasReady, seen, time.Since(stopAt)); err != nil {
			return err
		}
		if notReady >= want {
			break
		}
		if time.Since(stopAt) > 3*time.Minute {
			return fmt.Errorf("%s member: only %d of %d MemberClusters not Ready after 3 minutes", how, notReady, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
	fmt.Printf("%s member (%d MemberClusters on it) detected by all of them %s after it went down (unhealthyAfter %s)\n",
		how, want-before, time.Since(stopAt).Round(100*time.Millisecond), unhealthy)
	if len(seen) > 0 {
		ds := make([]time.Duration, 0, len(seen))
		for _, d := range seen {
			ds = append(ds, d)
		}
		slices.Sort(ds)
		q := func(p float64) time.Duration {
			return ds[min(len(ds)-1, int(p*float64(len(ds))))].Round(100 * time.Millisecond)
		}
		fmt.Printf("  per MemberCluster, from the outage to not Ready: min %s, median %s, p99 %s, max %s (%d of them)\n",
			q(0), q(0.5), q(0.99), ds[len(ds)-1].Round(100*time.Millisecond), len(ds))
	}
	return nil
}

// readyNames returns the names of the MemberClusters that are Ready now.
func readyNames(ctx context.Context, c client.Client) (map[string]bool, error) {
	var list clustersv1.MemberClusterList
	if err := c.List(ctx, &list, client.UnsafeDisableDeepCopy); err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, mc := range list.Items {
		if meta.IsStatusConditionTrue(mc.Status.Conditions, clustersv1.ReadyCondition) {
			out[mc.Name] = true
		}
	}
	return out, nil
}

// seeNotReady records, for each MemberCluster that was Ready, when it was first seen not Ready.
func seeNotReady(ctx context.Context, c client.Client, wasReady map[string]bool, seen map[string]time.Duration, at time.Duration) error {
	var list clustersv1.MemberClusterList
	if err := c.List(ctx, &list, client.UnsafeDisableDeepCopy); err != nil {
		return err
	}
	for _, mc := range list.Items {
		if _, ok := seen[mc.Name]; ok || !wasReady[mc.Name] {
			continue
		}
		if cond := meta.FindStatusCondition(mc.Status.Conditions, clustersv1.ReadyCondition); cond != nil && cond.Status == metav1.ConditionFalse {
			seen[mc.Name] = at
		}
	}
	return nil
}

func createAll(ctx context.Context, c client.Client, env *envs.Env, n int, o options) error {
	var period *metav1.Duration
	if o.period > 0 {
		period = &metav1.Duration{Duration: o.period}
	}
	return parallel(n, func(i int) error {
		m := env.Members[i%len(env.Members)]
		mc := &clustersv1.MemberCluster{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("bench-%04d", i)},
			Spec: clustersv1.MemberClusterSpec{Attach: &clustersv1.AttachSpec{KubeconfigSecretRef: clustersv1.SecretKeyReference{
				Namespace: "paddock-system", Name: envs.KubeconfigSecretName(m.Name)}},
				HealthCheck: clustersv1.HealthCheckSpec{Period: period, UnhealthyAfter: &metav1.Duration{Duration: o.unhealthy}}},
		}
		return c.Create(ctx, mc)
	})
}

func countReady(ctx context.Context, c client.Client) (ready, notReady int, err error) {
	var list clustersv1.MemberClusterList
	if err := c.List(ctx, &list, client.UnsafeDisableDeepCopy); err != nil {
		return 0, 0, err
	}
	for _, mc := range list.Items {
		cond := meta.FindStatusCondition(mc.Status.Conditions, clustersv1.ReadyCondition)
		switch {
		case cond == nil:
		case cond.Status == metav1.ConditionTrue:
			ready++
		case cond.Reason != clustersv1.ReasonProgressing:
			notReady++
		}
	}
	return ready, notReady, nil
}

func readyTransitions(ctx context.Context, c client.Client) (map[string]string, error) {
	var list clustersv1.MemberClusterList
	if err := c.List(ctx, &list, client.UnsafeDisableDeepCopy); err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, mc := range list.Items {
		if cond := meta.FindStatusCondition(mc.Status.Conditions, clustersv1.ReadyCondition); cond != nil {
			out[mc.Name] = string(cond.Status) + "@" + cond.LastTransitionTime.String()
		}
	}
	return out, nil
}

// watchFlips samples every second for d and counts MemberClusters whose Ready status or
// transition time changed from before (a flip and back within a second still moves the time).
func watchFlips(ctx context.Context, c client.Client, before map[string]string, d time.Duration) (int, error) {
	flipped := map[string]bool{}
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		now, err := readyTransitions(ctx, c)
		if err != nil {
			return 0, err
		}
		for name, v := range now {
			if before[name] != v {
				flipped[name] = true
			}
		}
		time.Sleep(time.Second)
	}
	return len(flipped), nil
}

func probes() float64       { return counterSum(func(string) bool { return true }) }
func failedProbes() float64 { return counterSum(func(r string) bool { return r != "success" }) }

func counterSum(match func(result string) bool) float64 {
	mfs, err := metrics.Registry.Gather()
	if err != nil {
		return 0
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != "paddock_membercluster_probes_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if match(label(m, "result")) {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// metricSum sums a counter or gauge over the series whose label equals value.
func metricSum(name, labelName, value string) float64 {
	mfs, err := metrics.Registry.Gather()
	if err != nil {
		return 0
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label(m, labelName) == value {
				sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func rssMiB() int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			kb, _ := strconv.Atoi(f[1])
			return kb / 1024
		}
	}
	return -1
}

// createNodes creates n Node objects with capacity, allocatable and a Ready condition, as a big
// member would have.
func createNodes(ctx context.Context, m *envs.Member, n int) error {
	start := time.Now()
	err := parallel(n, func(i int) error {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("node-%05d", i), Labels: map[string]string{
			"kubernetes.io/hostname": fmt.Sprintf("node-%05d", i), "node.kubernetes.io/instance-type": "m6i.4xlarge",
			"topology.kubernetes.io/zone": fmt.Sprintf("zone-%d", i%3)}}}
		if err := m.Client.Create(ctx, node); err != nil {
			return err
		}
		rl := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("16"), corev1.ResourceMemory: resource.MustParse("64Gi"),
			corev1.ResourcePods: resource.MustParse("110"), corev1.ResourceEphemeralStorage: resource.MustParse("200Gi")}
		now := metav1.Now()
		node.Status = corev1.NodeStatus{Capacity: rl, Allocatable: rl,
			Conditions: []corev1.NodeCondition{
				{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: now, LastTransitionTime: now, Reason: "KubeletReady", Message: "kubelet is posting ready status"},
				{Type: corev1.NodeMemoryPressure, Status: corev1.ConditionFalse, LastHeartbeatTime: now, LastTransitionTime: now, Reason: "KubeletHasSufficientMemory"},
				{Type: corev1.NodeDiskPressure, Status: corev1.ConditionFalse, LastHeartbeatTime: now, LastTransitionTime: now, Reason: "KubeletHasNoDiskPressure"},
			},
			NodeInfo:  corev1.NodeSystemInfo{KubeletVersion: "v1.36.3", ContainerRuntimeVersion: "containerd://2.1.0", OSImage: "Ubuntu 24.04", KernelVersion: "6.8.0"},
			Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: fmt.Sprintf("10.%d.%d.%d", i/65536, (i/256)%256, i%256)}},
		}
		return m.Client.Status().Update(ctx, node)
	})
	if err != nil {
		return err
	}
	fmt.Printf("created %d nodes in member 0 in %s\n", n, time.Since(start).Round(time.Millisecond))
	return nil
}

// fullListCost measures what one full node list costs the way the probe read it before v2 (JSON,
// a quorum read from etcd, every probe period): the "before" figure for a big member.
func fullListCost(ctx context.Context, m *envs.Member) error {
	cfg := rest.CopyConfig(m.Config)
	tr := &traffic{reqs: map[string]int64{}, bytes: map[string]int64{}}
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { return countingTransport{next: rt, t: tr} })
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	start := time.Now()
	if _, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); err != nil {
		return err
	}
	took := time.Since(start)
	_, b := tr.snapshot()
	var bytes int64
	for _, v := range b {
		bytes += v
	}
	perMin := time.Minute.Seconds() / clustersv1.DefaultHealthCheckPeriod.Seconds()
	fmt.Printf("  before v2 (a full JSON node list from etcd every %s period): one list %.1f KiB in %s, %.0f lists/min, %.1f KiB/min\n",
		clustersv1.DefaultHealthCheckPeriod, float64(bytes)/1024, took.Round(time.Millisecond), perMin, float64(bytes)*perMin/1024)
	return nil
}

// slotWaitP99 reads the probe slot wait histogram: the bucket bound under which 99% fell.
func slotWaitP99() string {
	mfs, err := metrics.Registry.Gather()
	if err != nil {
		return "?"
	}
	for _, mf := range mfs {
		if mf.GetName() != "paddock_membercluster_probe_slot_wait_seconds" || len(mf.GetMetric()) == 0 {
			continue
		}
		h := mf.GetMetric()[0].GetHistogram()
		for _, b := range h.GetBucket() {
			if float64(b.GetCumulativeCount()) >= 0.99*float64(h.GetSampleCount()) {
				return (time.Duration(b.GetUpperBound() * float64(time.Second))).String()
			}
		}
	}
	return "?"
}

// parallel runs f(0..n-1), 32 at a time, and returns the first error.
func parallel(n int, f func(i int) error) error {
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 32)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := f(i); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// cpuTimes is CPU time used by this process (the manager, and the harness's clients) and by its
// child processes by kind: member apiservers, the management apiserver, etcd, gate proxies.
type cpuTimes struct {
	self, members, management, etcd, proxies time.Duration
}

func (c cpuTimes) sub(o cpuTimes) cpuTimes {
	return cpuTimes{c.self - o.self, c.members - o.members, c.management - o.management, c.etcd - o.etcd, c.proxies - o.proxies}
}

func (c cpuTimes) cores(d time.Duration) string {
	f := func(x time.Duration) float64 { return x.Seconds() / d.Seconds() }
	return fmt.Sprintf("cores used: manager %.2f, member apiservers %.2f, management apiserver %.2f, etcd %.2f, gate proxies %.2f",
		f(c.self), f(c.members), f(c.management), f(c.etcd), f(c.proxies))
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat times (100 on Linux).
const clockTicks = 100

// cpuNow reads utime+stime of this process and its children from /proc.
func cpuNow() cpuTimes {
	var out cpuTimes
	self := os.Getpid()
	out.self = procCPU(strconv.Itoa(self))
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return out
	}
	for _, e := range entries {
		pid := e.Name()
		if pid[0] < '0' || pid[0] > '9' {
			continue
		}
		stat, err := os.ReadFile("/proc/" + pid + "/stat")
		if err != nil {
			continue
		}
		// Fields after the command (which is in parentheses and may hold spaces).
		rest := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		if len(rest) < 3 || rest[1] != strconv.Itoa(self) {
			continue
		}
		cmdline, _ := os.ReadFile("/proc/" + pid + "/cmdline")
		t := procCPU(pid)
		cmd := string(cmdline)
		argv0, _, _ := strings.Cut(cmd, "\x00")
		switch filepath.Base(argv0) {
		case "etcd":
			out.etcd += t
		case "kube-apiserver":
			if strings.Contains(cmd, "paddock-member") {
				out.members += t
			} else {
				out.management += t
			}
		default:
			out.proxies += t
		}
	}
	return out
}

func procCPU(pid string) time.Duration {
	stat, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0
	}
	rest := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	// rest[0] is the state (field 3); utime and stime are fields 14 and 15.
	if len(rest) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(rest[11], 10, 64)
	s, _ := strconv.ParseInt(rest[12], 10, 64)
	return time.Duration(u+s) * time.Second / clockTicks
}

// randomKey is a digest key for one run (the manager keeps its own in a Secret).
func randomKey() []byte {
	b := make([]byte, digestkey.MinBytes)
	_, _ = crand.Read(b)
	return b
}
