package membercluster

import (
	"context"
	"fmt"
	"io"
	"os"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
	"github.com/paddock-dev/paddock/internal/clustercache"
	"github.com/paddock-dev/paddock/internal/scheme"
	"github.com/paddock-dev/paddock/test/envs"
)

const (
	secretNS       = "paddock-system"
	deletionGrace  = 6 * time.Second
	testPeriod     = time.Second
	testTimeout    = time.Second
	testUnhealthy  = 4 * time.Second
	testThreshold  = 2
	testInventory  = 10 * time.Second
	eventuallyWait = 30 * time.Second
	poll           = 100 * time.Millisecond
)

var (
	env   *envs.Env
	mgmt  client.Client
	cache *clustercache.ClusterCache
	ctx   context.Context
	// suiteReconciler is the Reconciler the suite's manager runs.
	suiteReconciler *Reconciler
	// suiteLogs holds everything the manager and the controller logged (debug level included).
	suiteLogs envs.SyncBuffer
)

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	var err error
	env, err = envs.Start(envs.Options{Members: 3, SkipCAPICRDs: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = env.Stop() }()
	mgmt = env.Management.Client

	ctrl.SetLogger(zap.New(zap.WriteTo(io.MultiWriter(os.Stderr, &suiteLogs)), zap.UseDevMode(true)))
	sch := scheme.New()
	mgr, err := env.Management.NewManager(sch, secretNS)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var cancel context.CancelFunc
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	cache = clustercache.New(clustercache.Options{Scheme: sch, Timeout: 5 * time.Second})
	r := &Reconciler{
		Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Cache: cache,
		Policy:              clustercache.Policy{AllowLoopback: true},
		Recorder:            mgr.GetEventRecorder("membercluster-controller"),
		DeletionGracePeriod: deletionGrace,
		StatusHeartbeat:     2 * time.Second,
		SecretNamespaces:    []string{secretNS},
	}
	suiteReconciler = r
	if err := r.SetupWithManager(ctx, mgr, controller.Options{MaxConcurrentReconciles: 10}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := envs.EnsureNamespace(ctx, mgmt, secretNS); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	envs.StartManager(ctx, mgr)
	return m.Run()
}

func ptrTo[T any](v T) *T { return &v }

// attach stores kubeconfig in a Secret and creates a MemberCluster for it with fast health checks.
func attach(t *testing.T, name string, kubeconfig []byte, mutate ...func(*clustersv1.MemberCluster)) *clustersv1.MemberCluster {
	t.Helper()
	g := NewWithT(t)
	_, err := envs.WriteKubeconfigSecret(ctx, mgmt, secretNS, name, kubeconfig)
	g.Expect(err).NotTo(HaveOccurred())
	mc := &clustersv1.MemberCluster{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"env": "test"}},
		Spec: clustersv1.MemberClusterSpec{
			Attach: &clustersv1.AttachSpec{KubeconfigSecretRef: clustersv1.SecretKeyReference{
				Namespace: secretNS, Name: envs.KubeconfigSecretName(name)}},
			HealthCheck: clustersv1.HealthCheckSpec{
				Period: &metav1.Duration{Duration: testPeriod}, Timeout: &metav1.Duration{Duration: testTimeout},
				UnhealthyAfter: &metav1.Duration{Duration: testUnhealthy}, SuccessThreshold: testThreshold,
				InventoryInterval: &metav1.Duration{Duration: testInventory},
			},
		},
	}
	for _, f := range mutate {
		f(mc)
	}
	g.Expect(mgmt.Create(ctx, mc)).To(Succeed())
	t.Cleanup(func() {
		// Leave the member alone: the marker namespace is shared by every test on that member, and
		// envtest has no namespace controller to finish deleting it. Deletion has its own tests.
		cur := &clustersv1.MemberCluster{}
		if err := mgmt.Get(context.Background(), client.ObjectKeyFromObject(mc), cur); err == nil {
			orig := cur.DeepCopy()
			cur.Spec.DeletionPolicy = clustersv1.DeletionPolicyOrphan
			_ = mgmt.Patch(context.Background(), cur, client.MergeFrom(orig))
		}
		_ = mgmt.Delete(context.Background(), mc)
	})
	return mc
}

func get(g Gomega, name string) *clustersv1.MemberCluster {
	mc := &clustersv1.MemberCluster{}
	g.Expect(mgmt.Get(ctx, client.ObjectKey{Name: name}, mc)).To(Succeed())
	return mc
}

// waitCondition waits until condition t of the named MemberCluster has status and reason (reason
// "" matches any) and returns the object.
func waitCondition(t *testing.T, name, condType string, st metav1.ConditionStatus, reason string, timeout time.Duration) *clustersv1.MemberCluster {
	t.Helper()
	var out *clustersv1.MemberCluster
	NewWithT(t).Eventually(func(g Gomega) {
		mc := get(g, name)
		c := meta.FindStatusCondition(mc.Status.Conditions, condType)
		g.Expect(c).NotTo(BeNil(), "condition %s", condType)
		g.Expect(c.Status).To(Equal(st), "%s: %s", c.Reason, c.Message)
		if reason != "" {
			g.Expect(c.Reason).To(Equal(reason), c.Message)
		}
		out = mc
	}, timeout, poll).Should(Succeed())
	return out
}

func kstatusOf(g Gomega, mc *clustersv1.MemberCluster) status.Status {
	mc = mc.DeepCopy()
	mc.SetGroupVersionKind(clustersv1.GroupVersion.WithKind("MemberCluster"))
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(mc)
	g.Expect(err).NotTo(HaveOccurred())
	res, err := status.Compute(&unstructured.Unstructured{Object: obj})
	g.Expect(err).NotTo(HaveOccurred())
	return res.Status
}

// modify returns the member's kubeconfig changed by f.
func modify(t *testing.T, kubeconfig []byte, f func(c *clientcmdapi.Cluster, u *clientcmdapi.AuthInfo, cfg *clientcmdapi.Config)) []byte {
	t.Helper()
	cfg, err := clientcmd.Load(kubeconfig)
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	kctx := cfg.Contexts[cfg.CurrentContext]
	f(cfg.Clusters[kctx.Cluster], cfg.AuthInfos[kctx.AuthInfo], cfg)
	out, err := clientcmd.Write(*cfg)
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	return out
}

func addNode(t *testing.T, m *envs.Member, name string, ready bool, cpu, mem string) {
	t.Helper()
	g := NewWithT(t)
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	g.Expect(m.Client.Create(ctx, n)).To(Succeed())
	st := corev1.ConditionFalse
	if ready {
		st = corev1.ConditionTrue
	}
	rl := corev1.ResourceList{
		corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse(mem),
		corev1.ResourcePods: resource.MustParse("110"),
	}
	n.Status = corev1.NodeStatus{
		Capacity: rl, Allocatable: rl,
		Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: st, LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}},
	}
	g.Expect(m.Client.Status().Update(ctx, n)).To(Succeed())
}

// events returns the events recorded for the named MemberCluster.
func memberEvents(g Gomega, name string) []eventsv1.Event {
	var list eventsv1.EventList
	g.Expect(mgmt.List(ctx, &list)).To(Succeed())
	var out []eventsv1.Event
	for _, e := range list.Items {
		if e.Regarding.Kind == "MemberCluster" && e.Regarding.Name == name {
			out = append(out, e)
		}
	}
	return out
}

func eventReasons(g Gomega, name string) []string {
	var out []string
	for _, e := range memberEvents(g, name) {
		out = append(out, e.Reason)
	}
	return out
}

func runKubectl(args ...string) ([]byte, error) { return env.Management.Kubectl(args...) }
