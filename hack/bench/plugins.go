package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	pluginsv1 "github.com/paddock-dev/paddock/api/plugins/v1alpha1"
	"github.com/paddock-dev/paddock/controllers"
	"github.com/paddock-dev/paddock/internal/chartrepo"
	"github.com/paddock-dev/paddock/internal/clustercache"
	"github.com/paddock-dev/paddock/internal/helm"
	"github.com/paddock-dev/paddock/internal/netpolicy"
	"github.com/paddock-dev/paddock/internal/scheme"
	"github.com/paddock-dev/paddock/test/chartrepos"
	"github.com/paddock-dev/paddock/test/envs"
)

// runPlugins measures one chart going into n simulated member clusters (MemberClusters spread
// over a few real member apiservers), first by a plain sequential loop of Helm SDK installs, then
// by Paddock's PluginRelease controller in this process, with the same chart from a real HTTP
// chart repository.
//
// Simulated clusters on one apiserver need a namespace each (one release name in one namespace is
// one Helm release). So a PluginRelease spans one simulated cluster on each real member apiserver
// (n/members PluginReleases, each with its own targetNamespace), or with -one-release-per-cluster
// one simulated cluster only. Paddock is bounded by --max-concurrent-helm-actions =
// -helm-concurrency (the global bound that rollout.maxConcurrency would be for one PluginRelease
// over n real clusters).
func runPlugins(n int, o options) error {
	fmt.Printf("\n== one chart into %d simulated clusters on %d member apiservers, %d Helm actions at once, %s added to every member request\n",
		n, o.members, o.helmConcurrency, o.memberLatency)
	env, err := envs.Start(envs.Options{Members: o.members, SkipCAPICRDs: true, ProxyInChildProcess: true})
	if err != nil {
		return err
	}
	defer func() { _ = env.Stop() }()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	cfg := *env.Management.Config
	cfg.QPS, cfg.Burst = float32(o.kubeQPS), int(o.kubeQPS*2)
	sch := scheme.New()
	mgr, err := ctrl.NewManager(&cfg, ctrl.Options{
		Scheme: sch, Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0",
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		return err
	}
	// QPS and burst: the manager's defaults. Every request to a member waits -member-latency first:
	// real members are remote, and these share this machine's two cores with the manager.
	cache := clustercache.New(clustercache.Options{Scheme: sch, QPS: 20, Burst: 40,
		WrapTransport: func(_ string, rt http.RoundTripper) http.RoundTripper {
			return latencyTransport{next: rt, d: o.memberLatency}
		}})
	repoOpts := chartrepo.Options{Policy: netpolicy.Policy{AllowLoopback: true}, Timeout: 30 * time.Second}
	charts := &chartrepo.ChartCache{Options: repoOpts}
	if err := controllers.Setup(ctx, mgr, controllers.Options{
		DefaultConcurrency: 4, ClusterCache: cache, KubeconfigPolicy: clustercache.Policy{AllowLoopback: true},
		KubeconfigSecretNamespaces: []string{"paddock-system"}, Repositories: repoOpts, RepositorySecretNamespace: "paddock-system",
		Charts: charts, MaxConcurrentHelmActions: o.helmConcurrency,
		Concurrency: map[string]int{"pluginrelease": 20}, DigestKey: randomKey(),
	}); err != nil {
		return err
	}
	go func() { _ = mgr.Start(ctx) }()
	if !mgr.GetCache().WaitForCacheSync(ctx) {
		return errors.New("the manager's cache did not sync")
	}
	c := mgr.GetClient()
	if err := env.WriteMemberKubeconfigSecrets(ctx, "paddock-system"); err != nil {
		return err
	}
	if err := createAll(ctx, env.Management.Client, env, n, o); err != nil {
		return err
	}
	for {
		ready, _, err := countReady(ctx, c)
		if err != nil {
			return err
		}
		if ready == n {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	fmt.Printf("%d MemberClusters Ready\n", n)

	srv := chartrepos.NewHelmRepo(chartrepos.Options{})
	defer srv.Close()
	ch, err := chartrepos.Package(filepath.Join(env.RepoRoot, "test", "testdata", "charts", "hello"), "0.1.0")
	if err != nil {
		return err
	}
	if err := srv.Add(ch); err != nil {
		return err
	}

	// The baseline: one Helm SDK install after another, through the same member connections,
	// with the same settings as Paddock's (no client-side OpenAPI validation); and, on the first
	// clusters, with Helm's CLI default (validation on) for reference.
	sample := min(n, 20)
	start := time.Now()
	for i := range sample {
		acc, err := cache.Get(ctx, fmt.Sprintf("bench-%04d", i))
		if err != nil {
			return err
		}
		hc, err := helm.New(acc, "hello", fmt.Sprintf("cli-%d", i), logr.Discard(), nil)
		if err != nil {
			return err
		}
		loaded, err := chartrepo.LoadArchive(ch.Archive, chartrepo.ArchiveLimits{})
		if err != nil {
			return err
		}
		if _, err := hc.Install(ctx, loaded, map[string]any{"greeting": "hi"}, helm.Options{CreateNamespace: true, Timeout: time.Minute, ClientSideValidation: true}); err != nil {
			return fmt.Errorf("sequential install %d: %w", i, err)
		}
	}
	cli := time.Since(start) / time.Duration(sample)
	fmt.Printf("sequential Helm SDK loop with Helm's default client-side validation: %.0f ms per install (%d installs)\n", float64(cli.Milliseconds()), sample)
	start = time.Now()
	for i := range n {
		acc, err := cache.Get(ctx, fmt.Sprintf("bench-%04d", i))
		if err != nil {
			return err
		}
		hc, err := helm.New(acc, "hello", fmt.Sprintf("seq-%d", i), logr.Discard(), nil)
		if err != nil {
			return err
		}
		loaded, err := chartrepo.LoadArchive(ch.Archive, chartrepo.ArchiveLimits{})
		if err != nil {
			return err
		}
		if _, err := hc.Install(ctx, loaded, map[string]any{"greeting": "hi"}, helm.Options{CreateNamespace: true, Timeout: time.Minute}); err != nil {
			return fmt.Errorf("sequential install %d: %w", i, err)
		}
	}
	seq := time.Since(start)
	fmt.Printf("sequential Helm SDK loop: %d installs in %s (%.0f ms each)\n", n, seq.Round(time.Millisecond), float64(seq.Milliseconds())/float64(n))

	// Paddock.
	repo := &pluginsv1.PluginRepository{ObjectMeta: metav1.ObjectMeta{Name: "bench"},
		Spec: pluginsv1.PluginRepositorySpec{Type: pluginsv1.RepositoryTypeHelm, URL: srv.URL()}}
	if err := env.Management.Client.Create(ctx, repo); err != nil {
		return err
	}
	if err := envs.EnsureNamespace(ctx, env.Management.Client, "bench"); err != nil {
		return err
	}
	runtime.GC()
	baseRSS := rssMiB()
	downloads := charts.Downloads()
	mgmtBefore, _ := requestCounts(ctx, env.Management.Config)
	memberBefore := make([]map[string]float64, len(env.Members))
	for i, m := range env.Members {
		memberBefore[i], _ = requestCounts(ctx, m.Config)
	}
	busy0, total0 := cpuTicks()
	mgmtArg := ""
	if u, err := url.Parse(env.Management.Config.Host); err == nil {
		mgmtArg = "--secure-port=" + u.Port()
	}
	if os.Getenv("BENCH_IDLE") != "" {
		idle0 := processCPU(mgmtArg)
		time.Sleep(5 * time.Second)
		fmt.Print("idle 5s:")
		printCPUDelta(idle0, processCPU(mgmtArg))
	}
	procs0 := processCPU(mgmtArg)
	start = time.Now()
	// Release j targets simulated clusters j*per .. j*per+per-1, which createAll put on distinct
	// member apiservers (cluster i lives on member i % members).
	per := o.members
	if o.oneReleasePerCluster {
		per = 1
	}
	releases := (n + per - 1) / per
	if err := parallel(releases, func(j int) error {
		var names []string
		for i := j * per; i < min(n, (j+1)*per); i++ {
			names = append(names, fmt.Sprintf("bench-%04d", i))
		}
		return env.Management.Client.Create(ctx, &pluginsv1.PluginRelease{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("hello-%04d", j), Namespace: "bench"},
			Spec: pluginsv1.PluginReleaseSpec{
				Chart:           pluginsv1.ChartReference{Repository: "bench", Name: "hello", Version: "0.1.x"},
				Targets:         pluginsv1.Targets{ClusterNames: names},
				ReleaseName:     "hello",
				TargetNamespace: fmt.Sprintf("par-%d", j),
				CreateNamespace: true,
			}})
	}); err != nil {
		return err
	}
	fmt.Printf("%d PluginReleases of up to %d clusters each\n", releases, per)
	created := time.Since(start)
	peakRSS := 0
	lastPrint := time.Now()
	if prof := os.Getenv("BENCH_CPU_PROFILE"); prof != "" {
		if f, err := os.Create(prof); err == nil && pprof.StartCPUProfile(f) == nil {
			defer func() { pprof.StopCPUProfile(); _ = f.Close() }()
		}
	}
	for {
		var list pluginsv1.PluginReleaseList
		if err := c.List(ctx, &list, client.InNamespace("bench")); err != nil {
			return err
		}
		ready, readyClusters := 0, 0
		phases := map[string]int{}
		for _, p := range list.Items {
			if meta.IsStatusConditionTrue(p.Status.Conditions, pluginsv1.ReadyCondition) && p.Status.ObservedGeneration == p.Generation {
				ready++
			}
			if p.Status.ObservedGeneration == p.Generation {
				readyClusters += int(p.Status.ReadyCount)
			}
			if c := meta.FindStatusCondition(p.Status.Conditions, pluginsv1.ReadyCondition); c != nil {
				phases[c.Reason]++
			}
		}
		peakRSS = max(peakRSS, rssMiB())
		if time.Since(lastPrint) >= 2*time.Second {
			fmt.Printf("  +%4.1fs: %d clusters ready; %d of %d PluginReleases created Ready; Ready reasons %v\n", time.Since(start).Seconds(), readyClusters, ready, len(list.Items), phases)
			lastPrint = time.Now()
		}
		if ready == releases && readyClusters == n {
			break
		}
		if time.Since(start) > o.readyTimeout {
			return fmt.Errorf("only %d of %d PluginReleases Ready after %s", ready, releases, o.readyTimeout)
		}
		time.Sleep(250 * time.Millisecond)
	}
	par := time.Since(start)
	busy1, total1 := cpuTicks()
	if total1 > total0 {
		fmt.Printf("machine CPU busy during Paddock's run: %.0f%%\n", 100*float64(busy1-busy0)/float64(total1-total0))
	}
	printCPUDelta(procs0, processCPU(mgmtArg))
	if after, err := requestCounts(ctx, env.Management.Config); err == nil {
		printRequestDelta("management apiserver", mgmtBefore, after, n)
	}
	memberAfter := map[string]float64{}
	memberSum := map[string]float64{}
	for i, m := range env.Members {
		after, err := requestCounts(ctx, m.Config)
		if err != nil {
			continue
		}
		for k, v := range after {
			memberAfter[k] += v
		}
		for k, v := range memberBefore[i] {
			memberSum[k] += v
		}
	}
	printRequestDelta("member apiservers", memberSum, memberAfter, n)
	fmt.Printf("Paddock: %d clusters Ready in %s (%.1fx the loop; the harness took %s to create the PluginReleases); chart downloads %d; RSS %d MiB before, peak %d MiB; %d goroutines\n",
		n, par.Round(time.Millisecond), seq.Seconds()/par.Seconds(), created.Round(time.Millisecond), charts.Downloads()-downloads, baseRSS, peakRSS, runtime.NumGoroutine())
	fmt.Printf("repository index requests %d, chart archive requests %d\n", srv.Hits("/index.yaml"), srv.Hits("/charts/"+ch.FileName()))
	_ = os.Stdout.Sync()
	return nil
}

// latencyTransport delays every request by d (a round trip to a remote member).
type latencyTransport struct {
	next http.RoundTripper
	d    time.Duration
}

func (l latencyTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if l.d > 0 {
		t := time.NewTimer(l.d)
		select {
		case <-t.C:
		case <-req.Context().Done():
			t.Stop()
			return nil, req.Context().Err()
		}
	}
	return l.next.RoundTrip(req)
}
