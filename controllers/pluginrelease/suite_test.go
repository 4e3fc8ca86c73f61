package pluginrelease

import (
	"context"
	"fmt"
	"os"
	"testing"

	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/paddock-dev/paddock/test/envs"
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
	if err := envs.EnsureNamespace(ctx, mgmt, "apps"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}
