// Package envs starts real Kubernetes control planes for tests and for `make dev`: one management
// control plane with Paddock's and Cluster API's CRDs, and any number of member control planes.
// Each member is reached through a small TCP proxy so a test can stop and restart the member's
// apiserver on the same address (same CA, same port) or freeze it (accepts TCP, never answers).
//
// The binaries come from hack/setup-envtest.sh (built from source); KUBEBUILDER_ASSETS points at
// them, or the harness finds them under bin/k8s of the repository.
package envs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/paddock-dev/paddock/internal/scheme"
)

// K8sVersion is the version hack/setup-envtest.sh builds by default.
const K8sVersion = "1.36.3"

// Options configure Start.
type Options struct {
	// Members is the number of member control planes.
	Members int
	// ExtraCRDPaths are installed on the management control plane besides Paddock's and CAPI's.
	ExtraCRDPaths []string
	// SkipCAPICRDs leaves Cluster API's CRDs out (faster start when a test does not need them).
	SkipCAPICRDs bool
	// ProxyInChildProcess runs each member's gate proxy in a child process (this binary
	// re-executed; its main must call RunGateProxyIfChild first), so that its connections,
	// buffers and goroutines do not count in this process's figures. For benchmarks.
	ProxyInChildProcess bool
	// MemberControllers runs a kube-controller-manager beside each member apiserver with the
	// controllers a real member has for resource quotas and namespace deletion (see
	// memberControllers).
	MemberControllers bool
}

// ControlPlane is one running kube-apiserver + etcd.
type ControlPlane struct {
	Name string
	// Env is the underlying envtest environment.
	Env *envtest.Environment
	// Config is an admin rest.Config (straight to the apiserver).
	Config *rest.Config
	// Client is an admin controller-runtime client with Paddock's scheme.
	Client client.Client
}

// Member is a member control plane behind a gate proxy.
type Member struct {
	ControlPlane
	proxy   gate
	certDir string
	kcm     *controllerManager
	// restartKCM: StartAPIServer starts the controller manager StopAPIServer stopped.
	restartKCM bool
	assets     string
	mu         sync.Mutex
	stopped    bool
}

// Env is a management control plane and its members.
type Env struct {
	Management *ControlPlane
	Members    []*Member
	// RepoRoot is the repository's root folder.
	RepoRoot string
}

// RepoRoot walks up from the working directory to the folder holding go.mod.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found above the working directory")
		}
		dir = parent
	}
}

// AssetsDir returns the folder of etcd/kube-apiserver/kubectl: KUBEBUILDER_ASSETS, or the
// repository's bin/k8s cache.
func AssetsDir() (string, error) {
	if d := os.Getenv("KUBEBUILDER_ASSETS"); d != "" {
		return d, nil
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	d := filepath.Join(root, "bin", "k8s", fmt.Sprintf("%s-%s-%s", K8sVersion, runtime.GOOS, runtime.GOARCH))
	if _, err := os.Stat(filepath.Join(d, "kube-apiserver")); err != nil {
		return "", fmt.Errorf("no control-plane binaries: run `make test` or `hack/setup-envtest.sh` (looked in %s)", d)
	}
	return d, nil
}

// Start starts the management control plane and opts.Members members, in parallel.
func Start(opts Options) (_ *Env, retErr error) {
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	assets, err := AssetsDir()
	if err != nil {
		return nil, err
	}
	e := &Env{RepoRoot: root, Members: make([]*Member, opts.Members)}
	defer func() {
		if retErr != nil {
			_ = e.Stop()
		}
	}()

	crdPaths := []string{filepath.Join(root, "config", "crd", "bases")}
	if !opts.SkipCAPICRDs {
		crdPaths = append(crdPaths, filepath.Join(root, "config", "crd", "capi"))
	}
	crdPaths = append(crdPaths, opts.ExtraCRDPaths...)

	var wg sync.WaitGroup
	errs := make([]error, opts.Members+1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		env := &envtest.Environment{
			BinaryAssetsDirectory: assets,
			CRDDirectoryPaths:     crdPaths,
			ErrorIfCRDPathMissing: true,
		}
		cp, err := startControlPlane("management", env)
		if err == nil {
			// The admission policies the chart ships (config/admission), as a real install has.
			err = applyManifests(context.Background(), cp.Client, filepath.Join(root, "config", "admission"))
		}
		if err == nil {
			// And the ClusterRoles it ships for Paddock's users.
			err = applyManifests(context.Background(), cp.Client, filepath.Join(root, "config", "rbac", "user"))
		}
		e.Management, errs[0] = cp, err
	}()
	// At most four members start at once: more apiservers starting together on a small machine
	// miss envtest's start timeout.
	starting := make(chan struct{}, 4)
	for i := range opts.Members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			starting <- struct{}{}
			defer func() { <-starting }()
			m, err := startMember(fmt.Sprintf("member-%d", i+1), assets, opts.ProxyInChildProcess)
			if err == nil && opts.MemberControllers {
				err = m.startControllerManager(assets)
			}
			e.Members[i], errs[i+1] = m, err
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return e, err
	}
	return e, nil
}

func startControlPlane(name string, env *envtest.Environment) (*ControlPlane, error) {
	cfg, err := env.Start()
	if err != nil {
		return nil, fmt.Errorf("starting %s control plane: %w", name, err)
	}
	cfg.QPS, cfg.Burst = 200, 400
	c, err := client.New(cfg, client.Options{Scheme: scheme.New()})
	if err != nil {
		_ = env.Stop()
		return nil, err
	}
	return &ControlPlane{Name: name, Env: env, Config: cfg, Client: c}, nil
}

func startMember(name, assets string, childProxy bool) (*Member, error) {
	certDir, err := os.MkdirTemp("", "paddock-"+name+"-")
	if err != nil {
		return nil, err
	}
	env := &envtest.Environment{BinaryAssetsDirectory: assets}
	// A fixed CertDir keeps the serving certificate, the client CA and the port across a restart;
	// envtest would otherwise mint new ones.
	env.ControlPlane.APIServer = &envtest.APIServer{CertDir: certDir}
	cp, err := startControlPlane(name, env)
	if err != nil {
		_ = os.RemoveAll(certDir)
		return nil, err
	}
	target := cp.Env.ControlPlane.APIServer.SecureServing.ListenAddr.HostPort()
	var p gate
	if childProxy {
		p, err = newRemoteGate(target)
	} else {
		p, err = newGateProxy(target)
	}
	if err != nil {
		_ = env.Stop()
		_ = os.RemoveAll(certDir)
		return nil, err
	}
	return &Member{ControlPlane: *cp, proxy: p, certDir: certDir, assets: assets}, nil
}

// Stop stops every control plane.
func (e *Env) Stop() error {
	var errs []error
	for _, m := range e.Members {
		if m != nil {
			errs = append(errs, m.stop())
		}
	}
	if e.Management != nil {
		errs = append(errs, e.Management.Env.Stop())
	}
	return errors.Join(errs...)
}

func (m *Member) stop() error {
	m.mu.Lock()
	kcm := m.kcm
	m.kcm = nil
	stopped := m.stopped
	m.mu.Unlock()
	kcm.stop()
	m.proxy.close()
	var err error
	if stopped {
		// The apiserver is down already; stop etcd through the environment anyway.
		err = m.Env.ControlPlane.Etcd.Stop()
	} else {
		err = m.Env.Stop()
	}
	_ = os.RemoveAll(m.certDir)
	return err
}

// Server is the member's address as clients see it (the proxy's), an https URL.
func (m *Member) Server() string { return "https://" + m.proxy.addr() }

// Kubeconfig returns a self-contained admin kubeconfig for the member (inline CA and client
// certificate) whose server goes through the member's proxy.
func (m *Member) Kubeconfig() []byte {
	return KubeconfigFor(m.Config, m.Server(), m.Name)
}

// KubeconfigFor writes an inline kubeconfig from a rest.Config, with server overridden.
func KubeconfigFor(cfg *rest.Config, server, name string) []byte {
	kc := clientcmdapi.NewConfig()
	kc.Clusters[name] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos[name] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData, Token: cfg.BearerToken}
	kc.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: name}
	kc.CurrentContext = name
	out, err := clientcmd.Write(*kc)
	if err != nil {
		panic(err) // only fails on unserialisable input, which a rest.Config cannot produce
	}
	return out
}

// StopAPIServer stops the member's kube-apiserver (etcd keeps running). Clients through the proxy
// then see their connections closed.
func (m *Member) StopAPIServer() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped {
		return nil
	}
	// Cut the clients off first: a kube-apiserver shutting down waits for its open connections
	// (watch streams among them) to finish, which clients that keep watching never do.
	m.proxy.setDown(true)
	m.proxy.dropConnections()
	// The controller manager's watches go straight to the apiserver, which would wait for them.
	restartKCM := m.kcm != nil
	m.kcm.stop()
	m.kcm = nil
	if err := m.Env.ControlPlane.APIServer.Stop(); err != nil {
		m.proxy.setDown(false)
		if restartKCM {
			_ = m.startControllerManager(m.assets)
		}
		return err
	}
	m.stopped, m.restartKCM = true, restartKCM
	return nil
}

// StartAPIServer starts the stopped kube-apiserver again on the same address with the same
// certificates, and waits until it serves.
func (m *Member) StartAPIServer() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.stopped {
		return nil
	}
	if err := m.Env.ControlPlane.APIServer.Start(); err != nil {
		return err
	}
	m.proxy.setDown(false)
	m.stopped = false
	if m.restartKCM {
		m.restartKCM = false
		return m.startControllerManager(m.assets)
	}
	return nil
}

// Freeze makes the member accept TCP connections and never answer (in-flight requests hang too).
func (m *Member) Freeze() { m.proxy.setFrozen(true) }

// Thaw undoes Freeze.
func (m *Member) Thaw() { m.proxy.setFrozen(false) }

// DirectAddress is the apiserver's own address (bypassing the proxy).
func (m *Member) DirectAddress() string {
	return m.Env.ControlPlane.APIServer.SecureServing.ListenAddr.HostPort()
}

// Kubeconfig returns an inline admin kubeconfig for the control plane (straight to its apiserver).
func (cp *ControlPlane) Kubeconfig() []byte {
	return KubeconfigFor(cp.Config, cp.Config.Host, cp.Name)
}

// Kubectl runs the kubectl built by hack/setup-envtest.sh against the control plane.
func (cp *ControlPlane) Kubectl(args ...string) ([]byte, error) {
	dir, err := os.MkdirTemp("", "paddock-kubectl-")
	if err != nil {
		return nil, err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	kc := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kc, cp.Kubeconfig(), 0o600); err != nil {
		return nil, err
	}
	assets, err := AssetsDir()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(filepath.Join(assets, "kubectl"), append([]string{"--kubeconfig", kc}, args...)...)
	return cmd.CombinedOutput()
}

// applyManifests creates every object of the YAML files in dir (documents separated by ---).
func applyManifests(ctx context.Context, c client.Client, dir string) error {
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return err
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
		for {
			u := &unstructured.Unstructured{}
			if err := dec.Decode(&u.Object); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				return fmt.Errorf("%s: %w", f, err)
			}
			if len(u.Object) == 0 {
				continue
			}
			if err := c.Create(ctx, u); err != nil {
				return fmt.Errorf("%s: creating %s %s: %w", f, u.GetKind(), u.GetName(), err)
			}
		}
	}
	return nil
}
