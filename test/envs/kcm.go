package envs

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// memberControllers are the kube-controller-manager controllers a member runs when
// Options.MemberControllers is set: the ones a member's own behaviour depends on and a bare
// apiserver lacks (a ResourceQuota's status.hard and status.used, without which the quota
// admission plugin refuses every pod; namespace deletion, which without it never ends; and the
// rules of the aggregated ClusterRoles admin, edit and view, empty without it).
const memberControllers = "resourcequota,namespace,garbagecollector,clusterrole-aggregation"

// controllerManager is a kube-controller-manager process beside a member's apiserver.
type controllerManager struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// startControllerManager runs kube-controller-manager (built by hack/setup-envtest.sh) against
// the member's apiserver, straight (not through its proxy: freezing the member freezes
// Paddock's view of it, not the member itself). It serves nothing and elects no leader.
func (m *Member) startControllerManager(assets string) error {
	bin := filepath.Join(assets, "kube-controller-manager")
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("kube-controller-manager is missing from %s (run hack/setup-envtest.sh): %w", assets, err)
	}
	kubeconfig := filepath.Join(m.certDir, "kcm.kubeconfig")
	if err := os.WriteFile(kubeconfig, KubeconfigFor(m.Config, m.Config.Host, m.Name), 0o600); err != nil {
		return err
	}
	// PADDOCK_KCM_LOG_DIR keeps the logs past the test (the member's folder is removed).
	logDir := m.certDir
	if d := os.Getenv("PADDOCK_KCM_LOG_DIR"); d != "" {
		logDir = d
	}
	// Appended to: a restart (StopAPIServer, StartAPIServer) keeps the earlier log.
	logFile, err := os.OpenFile(filepath.Join(logDir, m.Name+"-kube-controller-manager.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(bin,
		"--kubeconfig="+kubeconfig,
		"--controllers="+memberControllers,
		"--leader-elect=false",
		"--secure-port=0",
		// Usage follows pods through informers at once; the full resync is the backstop.
		"--resource-quota-sync-period=30s",
		"--concurrent-resource-quota-syncs=2",
		"--v=1",
	)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Its own process group, so that a test binary killed by a signal does not leave it behind
	// attached to the terminal (Stop kills it in the normal case).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		_ = logFile.Close()
		return fmt.Errorf("starting kube-controller-manager for %s: %w", m.Name, err)
	}
	cm := &controllerManager{cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		_ = logFile.Close()
		close(cm.done)
	}()
	m.kcm = cm
	return nil
}

func (cm *controllerManager) stop() {
	if cm == nil {
		return
	}
	_ = cm.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-cm.done:
	case <-time.After(5 * time.Second):
		_ = cm.cmd.Process.Kill()
		<-cm.done
	}
}
