package pluginrelease

import (
	"context"
	"fmt"
	"io"
	"os"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"go.uber.org/zap/zapcore"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
	"github.com/paddock-dev/paddock/controllers/membercluster"
	"github.com/paddock-dev/paddock/controllers/pluginrepository"
	"github.com/paddock-dev/paddock/internal/chartrepo"
	"github.com/paddock-dev/paddock/internal/clustercache"
	"github.com/paddock-dev/paddock/internal/digestkey"
	"github.com/paddock-dev/paddock/internal/netpolicy"
	"github.com/paddock-dev/paddock/internal/scheme"
	"github.com/paddock-dev/paddock/test/envs"
)

const (
	secretNS       = "paddock-system"
	eventuallyWait = 60 * time.Second
	poll           = 100 * time.Millisecond
)

var (
	env    *envs.Env
	mgmt   client.Client
	ctx    = context.Background()
	charts *chartrepo.ChartCache
	logs   envs.SyncBuffer
	// reconciler is the PluginRelease controller under test (to look at its in-memory state).
	reconciler *Reconciler
	// digestKey is the key the suite's manager keys status digests with.
	digestKey []byte
)

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	var err error
	env, err = envs.Start(envs.Options{Members: 2, SkipCAPICRDs: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = env.Stop() }()
	mgmt = env.Management.Client
	// V(2): Helm's own debug output too, so that the tests that look for leaks in logs see it.
	ctrl.SetLogger(zap.New(zap.WriteTo(io.MultiWriter(os.Stderr, &logs)), zap.UseDevMode(true), zap.Level(zapcore.Level(-2))))
	sch := scheme.New()
	mgr, err := env.Management.NewManager(sch, secretNS)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	mctx, cancel := context.WithCancel(ctx)
	defer cancel()
	members := clustercache.New(clustercache.Options{Scheme: sch, Timeout: 10 * time.Second})
	repoOpts := chartrepo.Options{Policy: netpolicy.Policy{AllowLoopback: true, LoopbackFlag: "--allow-loopback-repositories"}, Timeout: 10 * time.Second}
	store := chartrepo.NewStore()
	charts = &chartrepo.ChartCache{Options: repoOpts}
	// The manager's path: the key Secret is created on the first start.
	if err := envs.EnsureNamespace(ctx, mgmt, secretNS); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	digestKey, err = digestkey.Ensure(ctx, mgmt, mgmt, secretNS, digestkey.DefaultSecretName)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	setups := []func() error{
		func() error {
			return (&membercluster.Reconciler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Cache: members,
				Policy: clustercache.Policy{AllowLoopback: true}, Recorder: mgr.GetEventRecorder("membercluster-controller"),
				SecretNamespaces: []string{secretNS}}).SetupWithManager(mctx, mgr, controller.Options{MaxConcurrentReconciles: 4})
		},
		func() error {
			return (&pluginrepository.Reconciler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(),
				Recorder: mgr.GetEventRecorder("pluginrepository-controller"), Fetcher: &chartrepo.Fetcher{Options: repoOpts},
				Store: store, SecretNamespace: secretNS}).SetupWithManager(mctx, mgr, controller.Options{MaxConcurrentReconciles: 2})
		},
		func() error {
			reconciler = &Reconciler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Cache: members,
				Repositories: store, Charts: charts, Recorder: mgr.GetEventRecorder("pluginrelease-controller"),
				RetryDelay: time.Second, DeletionGracePeriod: 10 * time.Second, ProtectedNamespaces: []string{secretNS},
				DigestKey: digestKey}
			return reconciler.SetupWithManager(mctx, mgr, controller.Options{MaxConcurrentReconciles: 4})
		},
	}
	for _, setup := range setups {
		if err := setup(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	for _, ns := range []string{secretNS, "apps"} {
		if err := envs.EnsureNamespace(ctx, mgmt, ns); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	envs.StartManager(mctx, mgr)
	return m.Run()
}

func ptrTo[T any](v T) *T { return &v }

// attachMembers creates a MemberCluster for every member and waits until all are Ready.
func attachMembers(t *testing.T, labels ...map[string]string) []string {
	t.Helper()
	g := NewWithT(t)
	var names []string
	for i, m := range env.Members {
		_, err := envs.WriteKubeconfigSecret(ctx, mgmt, secretNS, m.Name, m.Kubeconfig())
		g.Expect(err).NotTo(HaveOccurred())
		mc := &clustersv1.MemberCluster{ObjectMeta: metav1.ObjectMeta{Name: m.Name},
			Spec: clustersv1.MemberClusterSpec{Attach: &clustersv1.AttachSpec{KubeconfigSecretRef: clustersv1.SecretKeyReference{
				Namespace: secretNS, Name: envs.KubeconfigSecretName(m.Name)}},
				HealthCheck: clustersv1.HealthCheckSpec{Period: &metav1.Duration{Duration: time.Second}}}}
		if i < len(labels) {
			mc.Labels = labels[i]
		}
		if err := mgmt.Create(ctx, mc); err != nil {
			g.Expect(client.IgnoreAlreadyExists(err)).To(Succeed())
		}
		names = append(names, m.Name)
	}
	for _, n := range names {
		g.Eventually(func(g Gomega) {
			mc := &clustersv1.MemberCluster{}
			g.Expect(mgmt.Get(ctx, client.ObjectKey{Name: n}, mc)).To(Succeed())
			g.Expect(meta.IsStatusConditionTrue(mc.Status.Conditions, clustersv1.ReadyCondition)).To(BeTrue())
		}, eventuallyWait, poll).Should(Succeed())
	}
	return names
}
