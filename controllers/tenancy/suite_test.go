package tenancy

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/paddock-dev/paddock/internal/scheme"
	"github.com/paddock-dev/paddock/test/envs"
)

const (
	secretNS       = "paddock-system"
	eventuallyWait = 30 * time.Second
	poll           = 50 * time.Millisecond
)

var (
	env  *envs.Env
	mgmt client.Client
	ctx  = context.Background()
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
	ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.UseDevMode(true)))
	mgr, err := env.Management.NewManager(scheme.New(), secretNS)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	mctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := (&WorkspaceReconciler{Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("workspace-controller")}).
		SetupWithManager(mctx, mgr, controller.Options{MaxConcurrentReconciles: 4}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	envs.StartManager(mctx, mgr)
	return m.Run()
}
