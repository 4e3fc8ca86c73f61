package envs

import (
	"context"
	"fmt"
	"os"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	ctrl "sigs.k8s.io/controller-runtime"
	crcache "sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
)

// NewManager is a controller-runtime manager on this control plane configured as the controller
// tests run it: Secrets cached only in secretNamespace (as main.go caches them), no metrics or
// health listeners, and controller names that may be registered again by another test manager.
func (cp *ControlPlane) NewManager(sch *runtime.Scheme, secretNamespace string) (manager.Manager, error) {
	skip := true
	return ctrl.NewManager(cp.Config, ctrl.Options{
		Scheme: sch,
		Cache: crcache.Options{ByObject: map[client.Object]crcache.ByObject{
			&corev1.Secret{}: {Namespaces: map[string]crcache.Config{secretNamespace: {}}},
		}},
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Controller:             config.Controller{SkipNameValidation: &skip},
	})
}

// StartManager runs mgr in the background until ctx ends; an error is written to stderr.
func StartManager(ctx context.Context, mgr manager.Manager) {
	go func() {
		if err := mgr.Start(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "manager:", err)
		}
	}()
}
