// Command bench measures MemberCluster at scale: N MemberClusters pointing at a few real member
// apiservers, reconciled by the real controller (in this process). It prints the time until all are
// Ready, the process's RSS and goroutines, probes per second, how long a dead member takes to be
// detected, and how many Ready transitions happen while 20% of probes fail at random.
//
//	make bench BENCH_ARGS="-n 100,500,1000"
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	dto "github.com/prometheus/client_model/go"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
	"github.com/paddock-dev/paddock/controllers"
	"github.com/paddock-dev/paddock/internal/clustercache"
	"github.com/paddock-dev/paddock/internal/scheme"
	"github.com/paddock-dev/paddock/test/envs"
)

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
	ns := flag.String("n", "100,500,1000", "Comma-separated MemberCluster counts.")
	members := flag.Int("members", 3, "Member apiservers the MemberClusters point at.")
	lossFor := flag.Duration("loss-duration", 2*time.Minute, "How long to run with random probe loss (largest N only).")
	loss := flag.Float64("loss", 0.2, "Share of probes that fail during the loss run.")
	kubeQPS := flag.Float64("kube-api-qps", 300, "Manager QPS towards the management apiserver.")
	flag.Parse()
	ctrl.SetLogger(noopLogger())
	counts := []int{}
	for _, s := range strings.Split(*ns, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			fail(err)
		}
		counts = append(counts, n)
	}
	for i, n := range counts {
		// runOne stops its control planes before returning, also on error.
		if err := runOne(n, *members, *kubeQPS, i == len(counts)-1, *lossFor, *loss); err != nil {
			fail(err)
		}
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "bench:", err)
	os.Exit(1)
}

func runOne(n, members int, kubeQPS float64, full bool, lossFor time.Duration, loss float64) error {
	fmt.Printf("\n== %d MemberClusters on %d member apiservers\n", n, members)
	env, err := envs.Start(envs.Options{Members: members, SkipCAPICRDs: true})
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
	cache := clustercache.New(clustercache.Options{Scheme: sch, WrapTransport: func(_ string, rt http.RoundTripper) http.RoundTripper {
		return lossyTransport{next: rt, rate: rate}
	}})
	if err := controllers.Setup(ctx, mgr, controllers.Options{
		DefaultConcurrency: 4, ClusterCache: cache, KubeconfigPolicy: clustercache.Policy{AllowLoopback: true},
		KubeconfigSecretNamespaces: []string{"paddock-system"},
	}); err != nil {
		return err
	}
	go func() { _ = mgr.Start(ctx) }()

	c := env.Management.Client
	if err := env.WriteMemberKubeconfigSecrets(ctx, "paddock-system"); err != nil {
		return err
	}
	baseRSS := rssMiB()
	start := time.Now()
	if err := createAll(ctx, c, env, n); err != nil {
		return err
	}
	created := time.Since(start)
	for {
		ready, _, err := countReady(ctx, c)
		if err != nil {
			return err
		}
		if ready == n {
			break
		}
		if time.Since(start) > 10*time.Minute {
			return fmt.Errorf("only %d of %d Ready after 10 minutes", ready, n)
		}
		time.Sleep(250 * time.Millisecond)
	}
	allReady := time.Since(start)
	fmt.Printf("created in %s; all Ready %s after the first create\n", created.Round(time.Millisecond), allReady.Round(time.Millisecond))

	p0, t0 := probes(), time.Now()
	time.Sleep(20 * time.Second)
	pps := (probes() - p0) / time.Since(t0).Seconds()
	if dump := os.Getenv("BENCH_GOROUTINE_DUMP"); dump != "" {
		if f, err := os.Create(dump); err == nil {
			_ = pprof.Lookup("goroutine").WriteTo(f, 1)
			_ = f.Close()
		}
	}
	runtime.GC()
	fmt.Printf("steady state: %.0f probes/s, RSS %d MiB (%d MiB before creating MemberClusters), %d goroutines\n",
		pps, rssMiB(), baseRSS, runtime.NumGoroutine())
	if !full {
		return nil
	}

	// Random loss: no Ready transitions allowed.
	before, err := readyTransitions(ctx, c)
	if err != nil {
		return err
	}
	rate.Store(uint64(loss * 1e6))
	p0, t0 = probes(), time.Now()
	failed0 := failedProbes()
	flips, err := watchFlips(ctx, c, before, lossFor)
	if err != nil {
		return err
	}
	rate.Store(0)
	fmt.Printf("%.0f%% probe loss for %s: %.0f probes, %.0f failed, %d spurious Ready transitions\n",
		loss*100, lossFor, probes()-p0, failedProbes()-failed0, flips)

	// Dead members: one apiserver stopped, then another frozen (accepts TCP, never answers). All
	// MemberClusters on it must turn Ready=False; the target is within 30 s.
	onEach := n / members
	if n%members > 0 {
		onEach++
	}
	if err := detect(ctx, c, "stopped", onEach, env.Members[0].StopAPIServer); err != nil {
		return err
	}
	if members > 1 {
		frozen := env.Members[1]
		if err := detect(ctx, c, "frozen", n/members, func() error { frozen.Freeze(); return nil }); err != nil {
			return err
		}
		frozen.Thaw()
	}
	return nil
}

// detect takes a member down and waits until want MemberClusters in all are not Ready.
func detect(ctx context.Context, c client.Client, how string, want int, down func() error) error {
	_, before, err := countReady(ctx, c)
	if err != nil {
		return err
	}
	want += before
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
		if notReady >= want {
			break
		}
		if time.Since(stopAt) > 3*time.Minute {
			return fmt.Errorf("%s member: only %d of %d MemberClusters not Ready after 3 minutes", how, notReady, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
	fmt.Printf("%s member (%d MemberClusters on it) detected by all of them %s after it went down (unhealthyAfter 25s)\n",
		how, want-before, time.Since(stopAt).Round(100*time.Millisecond))
	return nil
}

func createAll(ctx context.Context, c client.Client, env *envs.Env, n int) error {
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 32)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			m := env.Members[i%len(env.Members)]
			mc := &clustersv1.MemberCluster{
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("bench-%04d", i)},
				Spec: clustersv1.MemberClusterSpec{Attach: &clustersv1.AttachSpec{KubeconfigSecretRef: clustersv1.SecretKeyReference{
					Namespace: "paddock-system", Name: envs.KubeconfigSecretName(m.Name)}}},
			}
			if err := c.Create(ctx, mc); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

func countReady(ctx context.Context, c client.Client) (ready, notReady int, err error) {
	var list clustersv1.MemberClusterList
	if err := c.List(ctx, &list); err != nil {
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
	if err := c.List(ctx, &list); err != nil {
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
