// Package controllers registers every Paddock controller with the manager, from one place: adding
// a kind is one entry in the registry below.
package controllers

import (
	"context"
	"fmt"
	"time"

	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/paddock-dev/paddock/controllers/membercluster"
	"github.com/paddock-dev/paddock/controllers/pluginrelease"
	"github.com/paddock-dev/paddock/controllers/pluginrepository"
	"github.com/paddock-dev/paddock/controllers/tenancy"
	"github.com/paddock-dev/paddock/internal/chartrepo"
	"github.com/paddock-dev/paddock/internal/clustercache"
	"github.com/paddock-dev/paddock/internal/flags"
)

// Options are what the manager's flags give the controllers.
type Options struct {
	// Concurrency per controller name; DefaultConcurrency for the rest.
	Concurrency        flags.Concurrency
	DefaultConcurrency int
	// ClusterCache is the shared access layer to member clusters.
	ClusterCache *clustercache.ClusterCache
	// KubeconfigPolicy checks members' kubeconfigs.
	KubeconfigPolicy clustercache.Policy
	// MemberDeletionGracePeriod bounds how long a MemberCluster's deletion waits for an
	// unreachable member.
	MemberDeletionGracePeriod time.Duration
	// MaxConcurrentProbes bounds member health probes in flight.
	MaxConcurrentProbes int
	// KubeconfigSecretNamespaces are where member kubeconfig Secrets may live.
	KubeconfigSecretNamespaces []string
	// Repositories are the settings of every chart repository connection.
	Repositories chartrepo.Options
	// RepositorySecretNamespace is where repository credentials Secrets live.
	RepositorySecretNamespace string
	// Repositories holds every repository's last good index (shared by the plugins controllers).
	RepositoryStore *chartrepo.Store
	// Charts downloads every chart version once, for every release and cluster.
	Charts *chartrepo.ChartCache
	// MaxConcurrentHelmActions bounds Helm actions in flight across all PluginReleases.
	MaxConcurrentHelmActions int
	// ValuesSecretNamespaces are the namespaces whose PluginReleases may read values Secrets
	// (nil: any).
	ValuesSecretNamespaces []string
	// DigestKey keys the digests in status (internal/digestkey.Ensure reads or creates it).
	DigestKey []byte
}

// defaultConcurrency of controllers whose work is mostly waiting on member clusters.
var defaultConcurrency = map[string]int{
	"membercluster":  20,
	"pluginrelease":  10,
	"namespacequota": 4,
}

type registration struct {
	name  string
	setup func(ctx context.Context, mgr ctrl.Manager, o Options, co controller.Options) error
}

// registry lists every controller of the manager.
var registry = []registration{
	{"membercluster", func(ctx context.Context, mgr ctrl.Manager, o Options, co controller.Options) error {
		return (&membercluster.Reconciler{
			Client:              mgr.GetClient(),
			APIReader:           mgr.GetAPIReader(),
			Cache:               o.ClusterCache,
			Policy:              o.KubeconfigPolicy,
			Recorder:            mgr.GetEventRecorder("membercluster-controller"),
			DeletionGracePeriod: o.MemberDeletionGracePeriod,
			MaxConcurrentProbes: o.MaxConcurrentProbes,
			SecretNamespaces:    o.KubeconfigSecretNamespaces,
		}).SetupWithManager(ctx, mgr, co)
	}},
	{"pluginrepository", func(ctx context.Context, mgr ctrl.Manager, o Options, co controller.Options) error {
		return (&pluginrepository.Reconciler{
			Client:          mgr.GetClient(),
			APIReader:       mgr.GetAPIReader(),
			Recorder:        mgr.GetEventRecorder("pluginrepository-controller"),
			Fetcher:         &chartrepo.Fetcher{Options: o.Repositories},
			Store:           o.RepositoryStore,
			SecretNamespace: o.RepositorySecretNamespace,
		}).SetupWithManager(ctx, mgr, co)
	}},
	{"pluginrelease", func(ctx context.Context, mgr ctrl.Manager, o Options, co controller.Options) error {
		return (&pluginrelease.Reconciler{
			Client:               mgr.GetClient(),
			APIReader:            mgr.GetAPIReader(),
			Cache:                o.ClusterCache,
			Repositories:         o.RepositoryStore,
			Charts:               o.Charts,
			Recorder:             mgr.GetEventRecorder("pluginrelease-controller"),
			MaxConcurrentActions: o.MaxConcurrentHelmActions,
			SecretNamespaces:     o.ValuesSecretNamespaces,
			ProtectedNamespaces:  append(append([]string{}, o.KubeconfigSecretNamespaces...), o.RepositorySecretNamespace),
			DigestKey:            o.DigestKey,
		}).SetupWithManager(ctx, mgr, co)
	}},
	{"workspace", func(ctx context.Context, mgr ctrl.Manager, o Options, co controller.Options) error {
		return (&tenancy.WorkspaceReconciler{
			Client:   mgr.GetClient(),
			Recorder: mgr.GetEventRecorder("workspace-controller"),
		}).SetupWithManager(ctx, mgr, co)
	}},
	{"rolegrant", func(ctx context.Context, mgr ctrl.Manager, o Options, co controller.Options) error {
		return (&tenancy.RoleGrantReconciler{
			Client:   mgr.GetClient(),
			Cache:    o.ClusterCache,
			Recorder: mgr.GetEventRecorder("rolegrant-controller"),
		}).SetupWithManager(ctx, mgr, co)
	}},
	{"namespacequota", func(ctx context.Context, mgr ctrl.Manager, o Options, co controller.Options) error {
		return (&tenancy.NamespaceQuotaReconciler{
			Client:   mgr.GetClient(),
			Cache:    o.ClusterCache,
			Recorder: mgr.GetEventRecorder("namespacequota-controller"),
		}).SetupWithManager(ctx, mgr, co)
	}},
}

// Names lists the registered controllers (for --concurrency help and validation).
func Names() []string {
	out := make([]string, 0, len(registry))
	for _, r := range registry {
		out = append(out, r.name)
	}
	return out
}

// failureRateLimiter paces retries of failed reconciles per object only (50 ms doubling up to 5
// minutes). controller-runtime's default also caps all retries of a controller together at 10 per
// second, which at thousands of members makes a burst of failures (a management apiserver blip)
// take minutes to drain; the per-object backoff alone already keeps a failing object from
// looping.
func failureRateLimiter() workqueue.TypedRateLimiter[reconcile.Request] {
	return workqueue.NewTypedItemExponentialFailureRateLimiter[reconcile.Request](50*time.Millisecond, 5*time.Minute)
}

// Setup registers every controller with mgr.
func Setup(ctx context.Context, mgr ctrl.Manager, o Options) error {
	if o.RepositoryStore == nil {
		o.RepositoryStore = chartrepo.NewStore()
	}
	if o.Charts == nil {
		o.Charts = &chartrepo.ChartCache{Options: o.Repositories}
	}
	for name := range o.Concurrency {
		if !known(name) {
			return fmt.Errorf("--concurrency names unknown controller %q (known: %v)", name, Names())
		}
	}
	for _, reg := range registry {
		def := o.DefaultConcurrency
		if d, ok := defaultConcurrency[reg.name]; ok && def < d {
			def = d
		}
		co := controller.Options{MaxConcurrentReconciles: o.Concurrency.For(reg.name, def), RateLimiter: failureRateLimiter()}
		if err := reg.setup(ctx, mgr, o, co); err != nil {
			return fmt.Errorf("setting up the %s controller: %w", reg.name, err)
		}
	}
	return nil
}

func known(name string) bool {
	for _, r := range registry {
		if r.name == name {
			return true
		}
	}
	return false
}
