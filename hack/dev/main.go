// Command dev runs Paddock locally for real: a management control plane and two member control
// planes (kube-apiserver + etcd built by hack/setup-envtest.sh), the CRDs, the manager binary
// against them, and the samples of config/samples. It prints the KUBECONFIG to use and stops
// everything it started on Ctrl-C (or SIGTERM).
//
// Run it with `make dev`.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/paddock-dev/paddock/test/chartrepos"
	"github.com/paddock-dev/paddock/test/envs"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "dev:", err)
		os.Exit(1)
	}
}

func run() error {
	managerBin := flag.String("manager-binary", "bin/manager", "The manager binary to run (make build).")
	stateDir := flag.String("dir", ".dev", "Folder for the kubeconfig and logs.")
	members := flag.Int("members", 2, "Number of member control planes.")
	exitAfter := flag.Duration("exit-after", 0, "Stop by itself after this long (0: run until Ctrl-C). For smoke tests.")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *exitAfter > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *exitAfter)
		defer cancel()
	}

	if err := os.MkdirAll(*stateDir, 0o755); err != nil {
		return err
	}
	dir, err := filepath.Abs(*stateDir)
	if err != nil {
		return err
	}
	fmt.Printf("Starting a management control plane and %d member control planes...\n", *members)
	// The members run the controllers a real member has for quotas, namespace deletion and the
	// aggregated admin/edit/view roles (the tenancy samples rely on them).
	env, err := envs.Start(envs.Options{Members: *members, MemberControllers: true})
	if err != nil {
		return err
	}
	defer func() {
		fmt.Println("Stopping control planes...")
		if err := env.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "dev: stopping control planes:", err)
		}
	}()

	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, env.Management.Kubeconfig(), 0o600); err != nil {
		return err
	}
	if err := env.WriteMemberKubeconfigSecrets(ctx, "paddock-system"); err != nil {
		return err
	}
	// Admin kubeconfigs of the members, to look at what Paddock did there.
	for _, m := range env.Members {
		if err := os.WriteFile(filepath.Join(dir, m.Name+".kubeconfig"), m.Kubeconfig(), 0o600); err != nil {
			return err
		}
	}
	for _, m := range env.Members {
		// envtest runs no kubelets: give each member a couple of Node objects to count.
		for i := 1; i <= 2; i++ {
			if err := addNode(ctx, m, fmt.Sprintf("%s-node-%d", m.Name, i)); err != nil {
				return err
			}
		}
	}

	// A local chart repository for the PluginRepository and PluginRelease samples.
	charts := chartrepos.NewHelmRepo(chartrepos.Options{Addr: "127.0.0.1:8082"})
	defer charts.Close()
	for _, v := range []string{"0.1.0", "0.2.0"} {
		c, err := chartrepos.Package(filepath.Join(env.RepoRoot, "test", "testdata", "charts", "hello"), v)
		if err != nil {
			return err
		}
		if err := charts.Add(c); err != nil {
			return err
		}
	}

	logPath := filepath.Join(dir, "manager.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer func() { _ = logFile.Close() }()
	mgr := exec.Command(*managerBin, "--kubeconfig", kubeconfig, "--allow-loopback-members",
		"--allow-loopback-repositories",
		"--kubeconfig-secret-namespaces", "paddock-system", "--repository-secret-namespace", "paddock-system",
		"--metrics-bind-address", "127.0.0.1:8080", "--health-probe-bind-address", "127.0.0.1:8081")
	mgr.Stdout, mgr.Stderr = logFile, logFile
	mgr.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := mgr.Start(); err != nil {
		return fmt.Errorf("starting the manager: %w", err)
	}
	mgrDone := make(chan error, 1)
	go func() { mgrDone <- mgr.Wait() }()
	defer func() {
		fmt.Println("Stopping the manager...")
		_ = mgr.Process.Signal(syscall.SIGTERM)
		select {
		case <-mgrDone:
		case <-time.After(35 * time.Second):
			_ = mgr.Process.Kill()
			<-mgrDone
		}
	}()

	out, err := env.Management.Kubectl("apply", "-f", filepath.Join(env.RepoRoot, "config", "samples"))
	if err != nil {
		return fmt.Errorf("applying samples: %w\n%s", err, out)
	}
	fmt.Print(string(out))
	out, err = env.Management.Kubectl("wait", "membercluster", "--all", "--for=condition=Ready", "--timeout=60s")
	fmt.Print(string(out))
	if err != nil {
		return fmt.Errorf("members did not become Ready (see %s): %w", logPath, err)
	}
	out, _ = env.Management.Kubectl("get", "membercluster")
	fmt.Print(string(out))
	out, err = env.Management.Kubectl("wait", "pluginrelease", "--all", "-n", "default", "--for=condition=Ready", "--timeout=120s")
	fmt.Print(string(out))
	if err != nil {
		return fmt.Errorf("the sample PluginRelease did not become Ready (see %s): %w", logPath, err)
	}
	out, _ = env.Management.Kubectl("get", "prel", "-n", "default")
	fmt.Print(string(out))
	out, err = env.Management.Kubectl("wait", "namespacequota,rolegrant", "--all", "--for=condition=Ready", "--timeout=60s")
	fmt.Print(string(out))
	if err != nil {
		return fmt.Errorf("the tenancy samples did not become Ready (see %s): %w", logPath, err)
	}
	out, _ = env.Management.Kubectl("get", "ws,nsq,rg")
	fmt.Print(string(out))

	assets, _ := envs.AssetsDir()
	fmt.Printf(`
Paddock is running locally.
  export KUBECONFIG=%[1]s
  export PATH=%[2]s:$PATH      # kubectl %[3]s
  kubectl get membercluster            # or: kubectl get mc -o wide, kubectl get paddock
  kubectl describe mc member-1
  kubectl get events --field-selector involvedObject.kind=MemberCluster
  kubectl get prepo; kubectl get prel -n default -o yaml   # the hello chart in both members
  kubectl patch prel hello -n default --type merge -p '{"spec":{"chart":{"version":"0.2.0"}}}'
  kubectl get ws,nsq,rg                # team-a: a namespace with a quota, and a grant, in both members
  kubectl --kubeconfig %[6]s/member-1.kubeconfig auth can-i create deployments -n team-a-dev --as alice   # yes (edit)
  kubectl --kubeconfig %[6]s/member-1.kubeconfig auth can-i create deployments -n default --as alice      # no
  kubectl --kubeconfig %[6]s/member-2.kubeconfig get resourcequota -n team-a-dev                            # Paddock's quota
  curl -s 127.0.0.1:8080/metrics | grep paddock_
Manager log: %[4]s
Members: %[5]s
Press Ctrl-C to stop everything.
`, kubeconfig, assets, envs.K8sVersion, logPath, memberList(env), dir)

	select {
	case <-ctx.Done():
		return nil
	case err := <-mgrDone:
		mgrDone <- err
		return fmt.Errorf("the manager exited (see %s): %v", logPath, err)
	}
}

func memberList(env *envs.Env) string {
	var s []string
	for _, m := range env.Members {
		s = append(s, m.Name+"="+m.Server())
	}
	return strings.Join(s, " ")
}

func addNode(ctx context.Context, m *envs.Member, name string) error {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/hostname": name}}}
	if err := m.Client.Create(ctx, n); err != nil {
		return err
	}
	rl := corev1.ResourceList{
		corev1.ResourceCPU: resource.MustParse("4"), corev1.ResourceMemory: resource.MustParse("16Gi"),
		corev1.ResourcePods: resource.MustParse("110"),
	}
	n.Status = corev1.NodeStatus{Capacity: rl, Allocatable: rl, Conditions: []corev1.NodeCondition{{
		Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
		LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now(),
	}}}
	return m.Client.Status().Update(ctx, n)
}
