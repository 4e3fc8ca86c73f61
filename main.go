// Command manager runs Paddock's controllers against a management cluster.
package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/go-logr/zapr"
	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/paddock-dev/paddock/controllers"
	"github.com/paddock-dev/paddock/internal/chartrepo"
	"github.com/paddock-dev/paddock/internal/clustercache"
	"github.com/paddock-dev/paddock/internal/digestkey"
	"github.com/paddock-dev/paddock/internal/flags"
	"github.com/paddock-dev/paddock/internal/netpolicy"
	paddockscheme "github.com/paddock-dev/paddock/internal/scheme"
)

func main() {
	os.Exit(run())
}

func run() int {
	var (
		metricsAddr, probeAddr    string
		metricsSecure             bool
		leaderElect               bool
		leaderElectionNamespace   string
		leaderElectionID          string
		kubeQPS                   float64
		kubeBurst                 int
		memberQPS                 float64
		memberBurst               int
		memberTimeout             time.Duration
		allowLoopback, allowInsec bool
		maxKubeconfigBytes        int
		defaultConcurrency        int
		memberDeletionGrace       time.Duration
		maxConcurrentProbes       int
		gracefulShutdownTimeout   time.Duration
		concurrency               = flags.Concurrency{}
		enableHTTP2               bool
		secretNamespaces          string
		deniedCIDRs               string
		memberMaxResponseBytes    int64
		allowLoopbackRepos        bool
		repoDeniedCIDRs           string
		maxIndexBytes             int64
		repoTimeout               time.Duration
		repoSecretNamespace       string
		valuesSecretNamespaces    string
		maxHelmActions            int
		digestKeySecret           string
	)
	fs := flag.CommandLine
	fs.StringVar(&metricsAddr, "metrics-bind-address", ":8080", "Address of the Prometheus metrics endpoint; \"0\" disables it.")
	fs.BoolVar(&metricsSecure, "metrics-secure", false, "Serve metrics over HTTPS, authenticated and authorized against the apiserver (TokenReview/SubjectAccessReview).")
	fs.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "Address of the /healthz and /readyz endpoints.")
	fs.BoolVar(&leaderElect, "leader-elect", false, "Elect a leader so that only one replica reconciles (the Helm chart turns it on).")
	fs.StringVar(&leaderElectionNamespace, "leader-election-namespace", "", "Namespace of the leader election Lease (default: the pod's namespace).")
	fs.StringVar(&leaderElectionID, "leader-election-id", "paddock-manager.paddock.dev", "Name of the leader election Lease.")
	fs.Float64Var(&kubeQPS, "kube-api-qps", 50, "QPS towards the management cluster's apiserver.")
	fs.IntVar(&kubeBurst, "kube-api-burst", 100, "Burst towards the management cluster's apiserver.")
	fs.Float64Var(&memberQPS, "member-api-qps", 20, "QPS towards each member cluster's apiserver.")
	fs.IntVar(&memberBurst, "member-api-burst", 40, "Burst towards each member cluster's apiserver.")
	fs.DurationVar(&memberTimeout, "member-api-timeout", 30*time.Second, "Timeout of every request to a member cluster.")
	fs.BoolVar(&allowLoopback, "allow-loopback-members", false, "Accept member kubeconfigs whose server is a loopback address (local development and tests only).")
	fs.BoolVar(&allowInsec, "allow-insecure-kubeconfig", false, "Accept member kubeconfigs with insecure-skip-tls-verify.")
	fs.IntVar(&maxKubeconfigBytes, "max-kubeconfig-bytes", clustercache.DefaultMaxKubeconfigBytes, "Largest kubeconfig accepted from a Secret.")
	fs.IntVar(&defaultConcurrency, "default-concurrency", 4, "Parallel reconciles per controller unless --concurrency says otherwise.")
	fs.Var(concurrency, "concurrency", fmt.Sprintf("Parallel reconciles of one controller, as name=N (repeatable, comma separated). Controllers: %v; membercluster defaults to 20.", controllers.Names()))
	fs.DurationVar(&memberDeletionGrace, "member-deletion-grace-period", 2*time.Minute, "How long deleting a MemberCluster waits for an unreachable member before giving up its cleanup.")
	fs.IntVar(&maxConcurrentProbes, "max-concurrent-probes", 500, "Member liveness probes started at once, across all members; a fifth of them serve members whose last probe failed, and a probe gives its slot back after 1s (a hung member holds one probe, not a slot).")
	fs.DurationVar(&gracefulShutdownTimeout, "graceful-shutdown-timeout", 30*time.Second, "How long the manager waits for running reconciles on shutdown.")
	fs.StringVar(&secretNamespaces, "kubeconfig-secret-namespaces", "", "Comma-separated namespaces whose Secrets may hold member kubeconfigs; the manager reads and caches Secrets only there. Default: the manager's own namespace.")
	fs.StringVar(&deniedCIDRs, "member-denied-cidrs", "", "Comma-separated networks no member server may be in (the management cluster's own pod, service and node CIDRs).")
	fs.Int64Var(&memberMaxResponseBytes, "member-max-response-bytes", clustercache.DefaultMaxResponseBytes, "Largest response read from a member by work clients (probes have their own, smaller caps).")
	fs.BoolVar(&allowLoopbackRepos, "allow-loopback-repositories", false, "Accept chart repository URLs on loopback addresses (local development and tests only).")
	fs.StringVar(&repoDeniedCIDRs, "repository-denied-cidrs", "", "Comma-separated networks no chart repository may be in (link-local and metadata addresses are always refused).")
	fs.Int64Var(&maxIndexBytes, "max-repository-index-bytes", chartrepo.DefaultMaxIndexBytes, "Largest Helm repository index.yaml accepted.")
	fs.DurationVar(&repoTimeout, "repository-timeout", chartrepo.DefaultTimeout, "Timeout of every request to a chart repository, body included.")
	fs.StringVar(&repoSecretNamespace, "repository-secret-namespace", "", "Namespace of the Secrets PluginRepositories' spec.secretRef names. Default: the manager's own namespace.")
	fs.StringVar(&valuesSecretNamespaces, "values-secret-namespaces", "*", "Comma-separated namespaces whose PluginReleases may read values from Secrets (spec.valuesFrom kind: Secret); \"*\" means any namespace (RBAC decides), empty means none.")
	fs.IntVar(&maxHelmActions, "max-concurrent-helm-actions", 50, "Helm actions (install, upgrade, uninstall) in flight at once across all PluginReleases and members.")
	fs.StringVar(&digestKeySecret, "digest-key-secret", digestkey.DefaultSecretName, "Secret in --repository-secret-namespace holding the key of the digests in status (created with a random key on the first start).")
	fs.BoolVar(&enableHTTP2, "enable-http2", false, "Serve metrics over HTTP/2 (off by default: CVE-2023-44487, CVE-2023-39325).")
	zapOpts := zap.Options{Development: false, TimeEncoder: zapcore.ISO8601TimeEncoder}
	zapOpts.BindFlags(fs)
	flag.Parse()

	logger := zap.NewRaw(zap.UseFlagOptions(&zapOpts))
	log := zapr.NewLogger(logger)
	ctrl.SetLogger(log)
	klog.SetLogger(log)
	setupLog := log.WithName("setup")

	restCfg, err := ctrl.GetConfig()
	if err != nil {
		setupLog.Error(err, "Failed to load the management cluster's kubeconfig")
		return 1
	}
	restCfg.QPS, restCfg.Burst = float32(kubeQPS), kubeBurst
	restCfg.UserAgent = "paddock-manager"

	var tlsOpts []func(*tls.Config)
	if !enableHTTP2 {
		tlsOpts = append(tlsOpts, func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} })
	}
	metricsOpts := metricsserver.Options{BindAddress: metricsAddr, SecureServing: metricsSecure, TLSOpts: tlsOpts}
	if metricsSecure {
		metricsOpts.FilterProvider = filters.WithAuthenticationAndAuthorization
	}

	valuesNamespaces, err := namespaceList(valuesSecretNamespaces)
	if err != nil {
		setupLog.Error(err, "Invalid --values-secret-namespaces")
		return 1
	}
	namespaces, err := kubeconfigSecretNamespaces(secretNamespaces)
	if err != nil {
		setupLog.Error(err, "Invalid --kubeconfig-secret-namespaces")
		return 1
	}
	denied, err := clustercache.ParseCIDRs(deniedCIDRs)
	if err != nil {
		setupLog.Error(err, "Invalid --member-denied-cidrs")
		return 1
	}
	repoDenied, err := netpolicy.ParseCIDRs(repoDeniedCIDRs)
	if err != nil {
		setupLog.Error(err, "Invalid --repository-denied-cidrs")
		return 1
	}
	if repoSecretNamespace == "" {
		repoSecretNamespace = ownNamespace()
	}
	if repoSecretNamespace == "" {
		setupLog.Error(errors.New("the manager's own namespace is unknown outside a pod"), "Set --repository-secret-namespace")
		return 1
	}
	if errs := validation.IsDNS1123Label(repoSecretNamespace); len(errs) > 0 {
		setupLog.Error(errors.New(strings.Join(errs, "; ")), "Invalid --repository-secret-namespace")
		return 1
	}
	secretCache := map[string]cache.Config{}
	for _, ns := range append(namespaces, repoSecretNamespace) {
		secretCache[ns] = cache.Config{}
	}

	scheme := paddockscheme.New()
	mgr, err := ctrl.NewManager(restCfg, ctrl.Options{
		Scheme: scheme,
		// Secrets are cached (as metadata) only in the kubeconfig namespaces: the manager neither
		// holds nor may read the management cluster's other Secrets.
		Cache: cache.Options{ByObject: map[client.Object]cache.ByObject{
			&corev1.Secret{}: {Namespaces: secretCache},
		}},
		Metrics:                       metricsOpts,
		HealthProbeBindAddress:        probeAddr,
		LeaderElection:                leaderElect,
		LeaderElectionID:              leaderElectionID,
		LeaderElectionNamespace:       leaderElectionNamespace,
		LeaderElectionReleaseOnCancel: true,
		GracefulShutdownTimeout:       &gracefulShutdownTimeout,
	})
	if err != nil {
		setupLog.Error(err, "Failed to create the manager")
		return 1
	}

	if errs := validation.IsDNS1123Subdomain(digestKeySecret); len(errs) > 0 {
		setupLog.Error(errors.New(strings.Join(errs, "; ")), "Invalid --digest-key-secret")
		return 1
	}

	ctx := ctrl.SetupSignalHandler()
	// Before the manager starts: no cache yet, so both the read and the create go to the apiserver.
	key, err := digestkey.Ensure(ctx, mgr.GetAPIReader(), mgr.GetClient(), repoSecretNamespace, digestKeySecret)
	if err != nil {
		setupLog.Error(err, "Failed to read or create the digest key")
		return 1
	}
	members := clustercache.New(clustercache.Options{
		Scheme: scheme, QPS: float32(memberQPS), Burst: memberBurst, Timeout: memberTimeout,
		MaxResponseBytes: memberMaxResponseBytes,
	})
	if err := controllers.Setup(ctx, mgr, controllers.Options{
		Concurrency:        concurrency,
		DefaultConcurrency: defaultConcurrency,
		ClusterCache:       members,
		KubeconfigPolicy: clustercache.Policy{
			AllowLoopback: allowLoopback, AllowInsecureSkipTLSVerify: allowInsec, MaxBytes: maxKubeconfigBytes,
			DeniedCIDRs: denied,
		},
		KubeconfigSecretNamespaces: namespaces,
		MemberDeletionGracePeriod:  memberDeletionGrace,
		MaxConcurrentProbes:        maxConcurrentProbes,
		Repositories: chartrepo.Options{
			Policy: netpolicy.Policy{AllowLoopback: allowLoopbackRepos, DeniedCIDRs: repoDenied,
				LoopbackFlag: "--allow-loopback-repositories", DeniedCIDRsFlag: "--repository-denied-cidrs"},
			Timeout: repoTimeout, MaxIndexBytes: maxIndexBytes, UserAgent: "paddock-manager",
		},
		RepositorySecretNamespace: repoSecretNamespace,
		MaxConcurrentHelmActions:  maxHelmActions,
		ValuesSecretNamespaces:    valuesNamespaces,
		DigestKey:                 key,
	}); err != nil {
		setupLog.Error(err, "Failed to set up controllers")
		return 1
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		setupLog.Error(err, "Failed to add the health check")
		return 1
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		setupLog.Error(err, "Failed to add the ready check")
		return 1
	}
	if allowLoopback {
		setupLog.Info("Accepting loopback member servers (--allow-loopback-members): for local development only")
	}
	if allowLoopbackRepos {
		setupLog.Info("Accepting loopback chart repositories (--allow-loopback-repositories): for local development only")
	}
	setupLog.Info("Starting manager", "leaderElection", leaderElect, "metrics", metricsAddr, "probes", probeAddr,
		"kubeconfigSecretNamespaces", namespaces)
	if err := mgr.Start(ctx); err != nil {
		setupLog.Error(err, "Manager stopped with an error")
		return 1
	}
	setupLog.Info("Manager stopped")
	return 0
}

// namespaceList parses --values-secret-namespaces: "*" is any namespace (nil), "" none (empty).
func namespaceList(flagValue string) ([]string, error) {
	if strings.TrimSpace(flagValue) == "*" {
		return nil, nil
	}
	return splitNamespaces(flagValue)
}

// splitNamespaces parses a comma-separated list of namespace names (never nil).
func splitNamespaces(flagValue string) ([]string, error) {
	out := []string{}
	for _, ns := range strings.Split(flagValue, ",") {
		ns = strings.TrimSpace(ns)
		if ns == "" {
			continue
		}
		if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
			return nil, fmt.Errorf("%q is not a namespace name: %s", ns, strings.Join(errs, "; "))
		}
		if !slices.Contains(out, ns) {
			out = append(out, ns)
		}
	}
	return out, nil
}

// serviceAccountNamespaceFile is where a pod finds its own namespace.
const serviceAccountNamespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// kubeconfigSecretNamespaces parses --kubeconfig-secret-namespaces; empty means the manager's own
// namespace (POD_NAMESPACE, else the service account's namespace file).
func kubeconfigSecretNamespaces(flagValue string) ([]string, error) {
	out, err := splitNamespaces(flagValue)
	if err != nil {
		return nil, err
	}
	if len(out) > 0 {
		return out, nil
	}
	if ns := ownNamespace(); ns != "" {
		return []string{ns}, nil
	}
	return nil, errors.New("set --kubeconfig-secret-namespaces: the manager's own namespace is unknown outside a pod")
}

// ownNamespace is the manager's namespace (POD_NAMESPACE, else the service account's namespace
// file), or "" outside a pod.
func ownNamespace() string {
	if ns := os.Getenv("POD_NAMESPACE"); ns != "" {
		return ns
	}
	if b, err := os.ReadFile(serviceAccountNamespaceFile); err == nil {
		return strings.TrimSpace(string(b))
	}
	return ""
}
