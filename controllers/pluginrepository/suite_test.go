package pluginrepository

import (
	"context"
	"fmt"
	"io"
	"os"
	"testing"
	"time"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/paddock-dev/paddock/internal/chartrepo"
	"github.com/paddock-dev/paddock/internal/netpolicy"
	"github.com/paddock-dev/paddock/internal/scheme"
	"github.com/paddock-dev/paddock/test/envs"
)

const (
	secretNS       = "paddock-system"
	testMaxIndex   = 256 << 10
	eventuallyWait = 20 * time.Second
	poll           = 100 * time.Millisecond
)

var (
	env   *envs.Env
	mgmt  client.Client
	ctx   = context.Background()
	store = chartrepo.NewStore()
	logs  envs.SyncBuffer
)

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	var err error
	env, err = envs.Start(envs.Options{SkipCAPICRDs: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = env.Stop() }()
	mgmt = env.Management.Client
	ctrl.SetLogger(zap.New(zap.WriteTo(io.MultiWriter(os.Stderr, &logs)), zap.UseDevMode(true)))
	mgr, err := env.Management.NewManager(scheme.New(), secretNS)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	mctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r := &Reconciler{
		Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(),
		Recorder: mgr.GetEventRecorder("pluginrepository-controller"),
		Fetcher: &chartrepo.Fetcher{Options: chartrepo.Options{
			// As the tests' and make dev's manager: --allow-loopback-repositories.
			Policy:        netpolicy.Policy{AllowLoopback: true, LoopbackFlag: "--allow-loopback-repositories"},
			Timeout:       5 * time.Second,
			MaxIndexBytes: testMaxIndex,
		}},
		Store: store, SecretNamespace: secretNS, RetryInterval: 2 * time.Second,
	}
	if err := r.SetupWithManager(mctx, mgr, controller.Options{MaxConcurrentReconciles: 4}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := envs.EnsureNamespace(ctx, mgmt, secretNS); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	envs.StartManager(mctx, mgr)
	return m.Run()
}

func ptrTo[T any](v T) *T { return &v }
