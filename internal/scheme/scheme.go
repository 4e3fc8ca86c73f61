// Package scheme builds the runtime.Scheme Paddock uses for the management cluster and members.
package scheme

import (
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	controlplanev1 "sigs.k8s.io/cluster-api/api/controlplane/kubeadm/v1beta2"
	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
	pluginsv1 "github.com/paddock-dev/paddock/api/plugins/v1alpha1"
	tenancyv1 "github.com/paddock-dev/paddock/api/tenancy/v1alpha1"
)

// New returns a scheme with client-go's types, Cluster API's core and kubeadm control-plane
// types (v1beta2), and every Paddock API group.
func New() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(clusterv1.AddToScheme(s))
	utilruntime.Must(controlplanev1.AddToScheme(s))
	utilruntime.Must(clustersv1.AddToScheme(s))
	utilruntime.Must(pluginsv1.AddToScheme(s))
	utilruntime.Must(tenancyv1.AddToScheme(s))
	return s
}
