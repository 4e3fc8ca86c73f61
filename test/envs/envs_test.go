package envs

import (
	"context"
	"net"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

func TestHarness(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	env, err := Start(Options{Members: 2})
	g.Expect(err).NotTo(HaveOccurred())
	t.Cleanup(func() { g.Expect(env.Stop()).To(Succeed()) })
	g.Expect(env.Members).To(HaveLen(2))

	// The management control plane serves Paddock's and Cluster API's CRDs.
	mgmt := env.Management.Client
	g.Expect(apiextensionsv1.AddToScheme(mgmt.Scheme())).To(Succeed())
	for _, name := range []string{"memberclusters.clusters.paddock.dev", "clusters.cluster.x-k8s.io",
		"machinedeployments.cluster.x-k8s.io", "kubeadmcontrolplanes.controlplane.cluster.x-k8s.io"} {
		crd := &apiextensionsv1.CustomResourceDefinition{}
		g.Expect(mgmt.Get(ctx, client.ObjectKey{Name: name}, crd)).To(Succeed(), name)
	}
	paused := true
	capiCluster := &clusterv1.Cluster{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "harness-check"},
		Spec: clusterv1.ClusterSpec{Paused: &paused}}
	g.Expect(mgmt.Create(ctx, capiCluster)).To(Succeed())
	g.Expect(mgmt.Get(ctx, client.ObjectKeyFromObject(capiCluster), &clusterv1.Cluster{})).To(Succeed())

	// Member kubeconfigs are stored the way Cluster API stores them.
	sec, err := WriteKubeconfigSecret(ctx, mgmt, "default", "harness-check", env.Members[0].Kubeconfig())
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(sec.Name).To(Equal("harness-check-kubeconfig"))
	g.Expect(sec.Data).To(HaveKey("value"))

	// Each member is its own control plane, reachable with its self-contained kubeconfig.
	uids := map[string]bool{}
	clients := make([]kubernetes.Interface, len(env.Members))
	for i, m := range env.Members {
		cfg, err := clientcmd.RESTConfigFromKubeConfig(m.Kubeconfig())
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(cfg.Host).To(Equal(m.Server()))
		cfg.Timeout = 2 * time.Second
		cs, err := kubernetes.NewForConfig(cfg)
		g.Expect(err).NotTo(HaveOccurred())
		clients[i] = cs
		ns, err := cs.CoreV1().Namespaces().Get(ctx, "kube-system", metav1.GetOptions{})
		g.Expect(err).NotTo(HaveOccurred())
		uids[string(ns.UID)] = true
		v, err := cs.Discovery().ServerVersion()
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(v.GitVersion).To(Equal("v" + K8sVersion))
	}
	g.Expect(uids).To(HaveLen(2), "members are separate clusters")

	// Stop member-1's apiserver: it fails, member-2 keeps working.
	m1, cs1, cs2 := env.Members[0], clients[0], clients[1]
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "survives", Namespace: "default"}, Data: map[string]string{"k": "v"}}
	_, err = cs1.CoreV1().ConfigMaps("default").Create(ctx, cm, metav1.CreateOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	addr := m1.DirectAddress()
	g.Expect(m1.StopAPIServer()).To(Succeed())
	_, err = cs1.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	g.Expect(err).To(HaveOccurred())
	_, err = net.DialTimeout("tcp", addr, time.Second)
	g.Expect(err).To(HaveOccurred(), "the apiserver's own port is closed while stopped")
	_, err = cs2.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	g.Expect(err).NotTo(HaveOccurred())

	// Restart on the same address, same certificates: the same kubeconfig works, data survived.
	g.Expect(m1.StartAPIServer()).To(Succeed())
	g.Expect(m1.DirectAddress()).To(Equal(addr))
	g.Eventually(func() error {
		_, err := cs1.CoreV1().ConfigMaps("default").Get(ctx, "survives", metav1.GetOptions{})
		return err
	}, 20*time.Second, 100*time.Millisecond).Should(Succeed())

	// Freeze: TCP connects, requests hang until the client's timeout; Thaw: answers again.
	m1.Freeze()
	c, err := net.DialTimeout("tcp", m1.Server()[len("https://"):], time.Second)
	g.Expect(err).NotTo(HaveOccurred())
	_ = c.Close()
	start := time.Now()
	_, err = cs1.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	g.Expect(err).To(HaveOccurred())
	g.Expect(time.Since(start)).To(BeNumerically(">=", 1900*time.Millisecond), "a frozen member never answers")
	m1.Thaw()
	g.Eventually(func() error {
		_, err := cs1.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
		return err
	}, 10*time.Second, 100*time.Millisecond).Should(Succeed())
}
