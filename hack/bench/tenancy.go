package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	tenancyv1 "github.com/paddock-dev/paddock/api/tenancy/v1alpha1"
	"github.com/paddock-dev/paddock/controllers"
	"github.com/paddock-dev/paddock/internal/chartrepo"
	"github.com/paddock-dev/paddock/internal/clustercache"
	"github.com/paddock-dev/paddock/internal/scheme"
	"github.com/paddock-dev/paddock/test/envs"
)

// runTenancy measures a workspace with -namespaces NamespaceQuotas and -grants workspace-scoped
// RoleGrants over -members real member apiservers (each one MemberCluster, with its own
// kube-controller-manager for quotas and role aggregation): one RoleBinding per grant per
// namespace per cluster. Simulated clusters sharing an apiserver would share namespaces and
// bindings (one cluster's cleanup would remove another's), so every cluster here is a real one;
// the figures are per cluster and per object, for scaling to larger fleets.
func runTenancy(o options) error {
	m, nsCount, grants := o.members, o.tenancyNamespaces, o.tenancyGrants
	fmt.Printf("\n== a workspace of %d namespaces x %d RoleGrants over %d member clusters (%d RoleBindings), %s added to every member request\n",
		nsCount, grants, m, nsCount*grants*m, o.memberLatency)
	env, err := envs.Start(envs.Options{Members: m, SkipCAPICRDs: true, ProxyInChildProcess: true, MemberControllers: true})
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
	ops := &opCounter{m: map[string]int{}}
	cache := clustercache.New(clustercache.Options{Scheme: sch, QPS: 20, Burst: 40,
		WrapTransport: func(_ string, rt http.RoundTripper) http.RoundTripper {
			return ops.wrap(latencyTransport{next: rt, d: o.memberLatency})
		}})
	if err := controllers.Setup(ctx, mgr, controllers.Options{
		DefaultConcurrency: 4, ClusterCache: cache, KubeconfigPolicy: clustercache.Policy{AllowLoopback: true},
		KubeconfigSecretNamespaces: []string{"paddock-system"}, RepositorySecretNamespace: "paddock-system",
		Repositories: chartrepo.Options{}, DigestKey: randomKey(),
	}); err != nil {
		return err
	}
	go func() { _ = mgr.Start(ctx) }()
	if !mgr.GetCache().WaitForCacheSync(ctx) {
		return errors.New("the manager's cache did not sync")
	}
	c := env.Management.Client
	if err := env.WriteMemberKubeconfigSecrets(ctx, "paddock-system"); err != nil {
		return err
	}
	if err := createAll(ctx, c, env, m, o); err != nil {
		return err
	}
	for {
		ready, _, err := countReady(ctx, mgr.GetClient())
		if err != nil {
			return err
		}
		if ready == m {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	fmt.Printf("%d MemberClusters Ready\n", m)

	ws := &tenancyv1.Workspace{ObjectMeta: metav1.ObjectMeta{Name: "bench"},
		Spec: tenancyv1.WorkspaceSpec{Clusters: tenancyv1.ClusterTargets{ClusterSelector: &metav1.LabelSelector{}}}}
	if err := c.Create(ctx, ws); err != nil {
		return err
	}
	ops.reset()
	start := time.Now()
	if err := parallel(nsCount, func(i int) error {
		return c.Create(ctx, &tenancyv1.NamespaceQuota{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("ns-%03d", i)},
			Spec: tenancyv1.NamespaceQuotaSpec{Namespace: fmt.Sprintf("ns-%03d", i), Workspace: "bench",
				Clusters: tenancyv1.ClusterTargets{ClusterSelector: &metav1.LabelSelector{}},
				Hard:     tenancyv1.ResourceList{corev1.ResourcePods: resource.MustParse("20"), corev1.ResourceRequestsCPU: resource.MustParse("4")}}})
	}); err != nil {
		return err
	}
	if err := parallel(grants, func(i int) error {
		return c.Create(ctx, &tenancyv1.RoleGrant{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("rg-%03d", i)},
			Spec: tenancyv1.RoleGrantSpec{Subjects: []tenancyv1.Subject{{Kind: "User", Name: fmt.Sprintf("user-%03d", i)}},
				RoleRef: tenancyv1.RoleRef{Name: "view"}, Scope: tenancyv1.GrantScope{Workspace: "bench"}}})
	}); err != nil {
		return err
	}
	var quotasAt time.Duration
	for {
		nq, ng, bindings, err := tenancyReady(ctx, c, m, nsCount)
		if err != nil {
			return err
		}
		if nq == nsCount && quotasAt == 0 {
			quotasAt = time.Since(start)
		}
		if nq == nsCount && ng == grants {
			fmt.Printf("converged in %s (NamespaceQuotas Ready after %s): %d namespaces and quotas, %d RoleBindings, every grant verified in every cluster\n",
				time.Since(start).Round(100*time.Millisecond), quotasAt.Round(100*time.Millisecond), nsCount*m, bindings)
			break
		}
		if time.Since(start) > o.readyTimeout {
			return fmt.Errorf("not converged after %s: %d/%d NamespaceQuotas, %d/%d RoleGrants Ready", o.readyTimeout, nq, nsCount, ng, grants)
		}
		time.Sleep(500 * time.Millisecond)
	}
	fmt.Printf("  requests to members while converging (%.1f per cluster per object): %s\n",
		float64(ops.total())/float64(m*nsCount*(grants+1)), ops.summary(8))

	// Steady state: what a quiet fleet costs (the resync is 10 minutes: a window shorter than it
	// sees only the watches and the probes).
	// The passes that followed the last writes (their own watch events) settle first.
	time.Sleep(15 * time.Second)
	ops.reset()
	time.Sleep(o.steady)
	per := o.steady.Minutes()
	fmt.Printf("  steady state over %s: %.1f requests per minute to all members (%.2f per cluster): %s\n",
		o.steady, float64(ops.total())/per, float64(ops.total())/per/float64(m), ops.summary(8))

	// A hand-deleted binding and a hand-deleted quota, restored.
	mc := env.Members[0].Client
	for _, obj := range []client.Object{
		&rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Namespace: "ns-000", Name: "paddock-rg-000"}},
		&corev1.ResourceQuota{ObjectMeta: metav1.ObjectMeta{Namespace: "ns-000", Name: "paddock-quota"}},
	} {
		if err := mc.Get(ctx, client.ObjectKeyFromObject(obj), obj); err != nil {
			return err
		}
		uid := obj.GetUID()
		t0 := time.Now()
		if err := mc.Delete(ctx, obj); err != nil {
			return err
		}
		for {
			got := obj.DeepCopyObject().(client.Object)
			if err := mc.Get(ctx, client.ObjectKeyFromObject(obj), got); err == nil && got.GetUID() != uid {
				break
			}
			if time.Since(t0) > time.Minute {
				return fmt.Errorf("%T %s not restored within a minute", obj, obj.GetName())
			}
			time.Sleep(20 * time.Millisecond)
		}
		fmt.Printf("  a hand-deleted %T was restored in %s\n", obj, time.Since(t0).Round(time.Millisecond))
	}
	return nil
}

// tenancyReady counts the Ready NamespaceQuotas, and the RoleGrants Ready and verified in every
// cluster, with the bindings they hold.
func tenancyReady(ctx context.Context, c client.Client, clusters, namespaces int) (quotas, grants, bindings int, err error) {
	var nql tenancyv1.NamespaceQuotaList
	if err := c.List(ctx, &nql); err != nil {
		return 0, 0, 0, err
	}
	for _, q := range nql.Items {
		if q.Status.ObservedGeneration == q.Generation && meta.IsStatusConditionTrue(q.Status.Conditions, tenancyv1.ReadyCondition) {
			quotas++
		}
	}
	var rgl tenancyv1.RoleGrantList
	if err := c.List(ctx, &rgl); err != nil {
		return 0, 0, 0, err
	}
	for _, g := range rgl.Items {
		n := 0
		for _, cl := range g.Status.Clusters {
			bindings += int(cl.Bindings)
			if cl.Phase == tenancyv1.GrantVerified && int(cl.Bindings) == namespaces {
				n++
			}
		}
		if n == clusters && meta.IsStatusConditionTrue(g.Status.Conditions, tenancyv1.ReadyCondition) {
			grants++
		}
	}
	return quotas, grants, bindings, nil
}

// opCounter counts requests to members by method and resource.
type opCounter struct {
	mu sync.Mutex
	m  map[string]int
}

func (o *opCounter) wrap(rt http.RoundTripper) http.RoundTripper {
	return opTransport{next: rt, o: o}
}

type opTransport struct {
	next http.RoundTripper
	o    *opCounter
}

func (t opTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	key := req.Method + " " + resourceOf(req.URL.Path)
	if req.URL.Query().Get("watch") == "true" {
		key = "WATCH " + resourceOf(req.URL.Path)
	}
	t.o.mu.Lock()
	t.o.m[key]++
	t.o.mu.Unlock()
	return t.next.RoundTrip(req)
}

// resourceOf is the resource of an API path (/api/v1/namespaces/x/pods/y -> pods), or the path.
func resourceOf(p string) string {
	parts := strings.Split(strings.Trim(p, "/"), "/")
	switch {
	case len(parts) >= 3 && parts[0] == "api":
		parts = parts[2:]
	case len(parts) >= 4 && parts[0] == "apis":
		parts = parts[3:]
	default:
		return p
	}
	if len(parts) >= 3 && parts[0] == "namespaces" {
		parts = parts[2:]
	}
	if len(parts) == 0 {
		return "namespaces"
	}
	return parts[0]
}

func (o *opCounter) reset() {
	o.mu.Lock()
	o.m = map[string]int{}
	o.mu.Unlock()
}

func (o *opCounter) total() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, v := range o.m {
		n += v
	}
	return n
}

func (o *opCounter) summary(top int) string {
	o.mu.Lock()
	defer o.mu.Unlock()
	type row struct {
		k string
		v int
	}
	var rows []row
	for k, v := range o.m {
		rows = append(rows, row{k, v})
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].v > rows[j].v })
	var parts []string
	for i, r := range rows {
		if i == top {
			break
		}
		parts = append(parts, fmt.Sprintf("%s %d", r.k, r.v))
	}
	return strings.Join(parts, ", ")
}
