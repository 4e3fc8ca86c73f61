package tenancy

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
	"github.com/paddock-dev/paddock/controllers/membercluster"
	"github.com/paddock-dev/paddock/internal/clustercache"
	"github.com/paddock-dev/paddock/internal/scheme"
	"github.com/paddock-dev/paddock/test/envs"
)

const (
	secretNS       = "paddock-system"
	eventuallyWait = 30 * time.Second
	poll           = 50 * time.Millisecond
)

var (
	env     *envs.Env
	mgmt    client.Client
	ctx     = context.Background()
	members *clustercache.ClusterCache
	quotas  *NamespaceQuotaReconciler
)

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	var err error
	// Two members, each with the controllers a real member runs for quotas and namespace deletion.
	env, err = envs.Start(envs.Options{Members: 2, SkipCAPICRDs: true, MemberControllers: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = env.Stop() }()
	mgmt = env.Management.Client
	ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.UseDevMode(true)))
	sch := scheme.New()
	mgr, err := env.Management.NewManager(sch, secretNS)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	mctx, cancel := context.WithCancel(ctx)
	defer cancel()
	members = clustercache.New(clustercache.Options{Scheme: sch, Timeout: 10 * time.Second})
	if err := envs.EnsureNamespace(ctx, mgmt, secretNS); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	quotas = &NamespaceQuotaReconciler{Client: mgr.GetClient(), Cache: members, Recorder: mgr.GetEventRecorder("namespacequota-controller"),
		CleanupGracePeriod: 20 * time.Second}
	setups := []func() error{
		func() error {
			return (&membercluster.Reconciler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Cache: members,
				Policy: clustercache.Policy{AllowLoopback: true}, Recorder: mgr.GetEventRecorder("membercluster-controller"),
				SecretNamespaces: []string{secretNS}}).SetupWithManager(mctx, mgr, controller.Options{MaxConcurrentReconciles: 4})
		},
		func() error {
			return (&WorkspaceReconciler{Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("workspace-controller")}).
				SetupWithManager(mctx, mgr, controller.Options{MaxConcurrentReconciles: 4})
		},
		func() error {
			return quotas.SetupWithManager(mctx, mgr, controller.Options{MaxConcurrentReconciles: 4})
		},
		func() error {
			return (&RoleGrantReconciler{Client: mgr.GetClient(), Cache: members, Recorder: mgr.GetEventRecorder("rolegrant-controller"),
				CleanupGracePeriod: 20 * time.Second}).SetupWithManager(mctx, mgr, controller.Options{MaxConcurrentReconciles: 4})
		},
	}
	for _, setup := range setups {
		if err := setup(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	envs.StartManager(mctx, mgr)
	return m.Run()
}

// attachMembers creates a MemberCluster for every member (labelled env=<label>) and waits until
// all are Ready. Idempotent: tests share the members.
func attachMembers(t *testing.T) []string {
	t.Helper()
	g := NewWithT(t)
	var names []string
	for _, m := range env.Members {
		_, err := envs.WriteKubeconfigSecret(ctx, mgmt, secretNS, m.Name, m.Kubeconfig())
		g.Expect(err).NotTo(HaveOccurred())
		mc := &clustersv1.MemberCluster{ObjectMeta: metav1.ObjectMeta{Name: m.Name, Labels: map[string]string{"tier": "real"}},
			Spec: clustersv1.MemberClusterSpec{Attach: &clustersv1.AttachSpec{KubeconfigSecretRef: clustersv1.SecretKeyReference{
				Namespace: secretNS, Name: envs.KubeconfigSecretName(m.Name)}},
				HealthCheck: clustersv1.HealthCheckSpec{Period: &metav1.Duration{Duration: time.Second}}}}
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
