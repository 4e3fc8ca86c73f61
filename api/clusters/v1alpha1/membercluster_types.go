package v1alpha1

import (
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// MemberClusterFinalizer lets the controller clean up what Paddock placed in a member before the
// MemberCluster goes away.
const MemberClusterFinalizer = "clusters.paddock.dev/membercluster"

// AcceptClusterIDAnnotation, set on a MemberCluster to the new clusterID reported in the
// ClusterIdentityChanged condition, confirms that the kubeconfig Secret now intentionally points
// at a different cluster. The annotation is only honoured while its value equals the identity the
// controller observes, so it cannot silently accept a third cluster later.
const AcceptClusterIDAnnotation = "clusters.paddock.dev/accept-cluster-id"

// DeletionPolicy says what happens to what Paddock placed in a member when the MemberCluster is
// deleted.
// +kubebuilder:validation:Enum=Delete;Orphan
type DeletionPolicy string

const (
	// DeletionPolicyDelete removes what Paddock placed in the member (bounded by a grace period
	// when the member is unreachable).
	DeletionPolicyDelete DeletionPolicy = "Delete"
	// DeletionPolicyOrphan leaves the member untouched.
	DeletionPolicyOrphan DeletionPolicy = "Orphan"
)

// MemberClusterSpec is the desired state of a MemberCluster.
// +kubebuilder:validation:XValidation:rule="(has(self.attach) ? 1 : 0) == 1",message="exactly one cluster mode must be set: spec.attach"
type MemberClusterSpec struct {
	// Attach an existing, running cluster through a kubeconfig stored in a Secret.
	// +optional
	Attach *AttachSpec `json:"attach,omitempty"`

	// HealthCheck tunes how the member is probed and when it is declared unhealthy.
	// +optional
	// +kubebuilder:default={}
	HealthCheck HealthCheckSpec `json:"healthCheck,omitempty"`

	// Paused stops all reconciliation of this member: no probes, no status updates, and no other
	// Paddock controller mutates the member while it is paused.
	// +optional
	Paused bool `json:"paused,omitempty"`

	// DeletionPolicy says what happens to what Paddock placed in the member when this object is
	// deleted: Delete (default) removes it, Orphan leaves it.
	// +optional
	// +kubebuilder:default=Delete
	DeletionPolicy DeletionPolicy `json:"deletionPolicy,omitempty"`
}

// AttachSpec attaches an existing cluster through a kubeconfig Secret.
type AttachSpec struct {
	// KubeconfigSecretRef names the Secret and key that hold the member's kubeconfig.
	// The kubeconfig must be self-contained: exec plugins, auth providers, token files, local file
	// paths, proxies and impersonation are refused.
	KubeconfigSecretRef SecretKeyReference `json:"kubeconfigSecretRef"`

	// Context selects a context of the kubeconfig. Defaults to its current-context.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	Context string `json:"context,omitempty"`
}

// SecretKeyReference names one key of a Secret.
type SecretKeyReference struct {
	// Namespace of the Secret.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Namespace string `json:"namespace"`

	// Name of the Secret.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	Name string `json:"name"`

	// Key of the Secret's data that holds the kubeconfig. Defaults to "value", the key Cluster API
	// writes.
	// +optional
	// +kubebuilder:default=value
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[-._a-zA-Z0-9]+$`
	Key string `json:"key,omitempty"`
}

// HealthCheckSpec tunes health probing. A member turns Ready=False once no probe has succeeded for
// unhealthyAfter, and Ready=True again after successThreshold consecutive successful probes.
// +kubebuilder:validation:XValidation:rule="!has(self.timeout) || !has(self.unhealthyAfter) || duration(self.timeout) <= duration(self.unhealthyAfter)",message="healthCheck.timeout must not exceed healthCheck.unhealthyAfter"
// +kubebuilder:validation:XValidation:rule="!has(self.period) || !has(self.unhealthyAfter) || duration(self.period) <= duration(self.unhealthyAfter)",message="healthCheck.period must not exceed healthCheck.unhealthyAfter"
type HealthCheckSpec struct {
	// Period between two probes.
	// +optional
	// +kubebuilder:default="5s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1s') && duration(self) <= duration('1h')",message="healthCheck.period must be between 1s and 1h"
	Period *metav1.Duration `json:"period,omitempty"`

	// Timeout bounds one liveness probe (/readyz and the kube-system UID).
	// +optional
	// +kubebuilder:default="5s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('100ms') && duration(self) <= duration('5m')",message="healthCheck.timeout must be between 100ms and 5m"
	Timeout *metav1.Duration `json:"timeout,omitempty"`

	// UnhealthyAfter is how long without a successful probe before the member turns Ready=False.
	// +optional
	// +kubebuilder:default="25s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1s') && duration(self) <= duration('24h')",message="healthCheck.unhealthyAfter must be between 1s and 24h"
	UnhealthyAfter *metav1.Duration `json:"unhealthyAfter,omitempty"`

	// InventoryInterval is how often the member's version, nodes, capacity and allocatable are
	// read (from its apiserver's watch cache, one request). Liveness (/readyz and identity) is
	// probed every period; the inventory is heavier on big members and changes slowly.
	// +optional
	// +kubebuilder:default="1m"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('10s') && duration(self) <= duration('24h')",message="healthCheck.inventoryInterval must be between 10s and 24h"
	InventoryInterval *metav1.Duration `json:"inventoryInterval,omitempty"`
	// SuccessThreshold is how many consecutive successful probes turn an unhealthy member Ready.
	// +optional
	// +kubebuilder:default=2
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	SuccessThreshold int32 `json:"successThreshold,omitempty"`
}

// Defaults of HealthCheckSpec, also applied at admission.
const (
	DefaultHealthCheckPeriod         = 5 * time.Second
	DefaultHealthCheckTimeout        = 5 * time.Second
	DefaultHealthCheckUnhealthyAfter = 25 * time.Second
	DefaultHealthCheckSuccess        = 2
	DefaultInventoryInterval         = time.Minute
)

// GetInventoryInterval returns the inventory interval, defaulted.
func (h HealthCheckSpec) GetInventoryInterval() time.Duration {
	return durationOr(h.InventoryInterval, DefaultInventoryInterval)
}

// GetPeriod returns the probe period, defaulted.
func (h HealthCheckSpec) GetPeriod() time.Duration {
	return durationOr(h.Period, DefaultHealthCheckPeriod)
}

// GetTimeout returns the probe timeout, defaulted.
func (h HealthCheckSpec) GetTimeout() time.Duration {
	return durationOr(h.Timeout, DefaultHealthCheckTimeout)
}

// GetUnhealthyAfter returns the unhealthy window, defaulted.
func (h HealthCheckSpec) GetUnhealthyAfter() time.Duration {
	return durationOr(h.UnhealthyAfter, DefaultHealthCheckUnhealthyAfter)
}

// GetSuccessThreshold returns the success threshold, defaulted.
func (h HealthCheckSpec) GetSuccessThreshold() int32 {
	if h.SuccessThreshold < 1 {
		return DefaultHealthCheckSuccess
	}
	return h.SuccessThreshold
}

func durationOr(d *metav1.Duration, def time.Duration) time.Duration {
	if d == nil || d.Duration <= 0 {
		return def
	}
	return d.Duration
}

// NodeSummary counts a member's nodes.
type NodeSummary struct {
	// Total number of nodes.
	Total int32 `json:"total"`
	// Ready is the number of nodes whose Ready condition is True.
	Ready int32 `json:"ready"`
}

// ResourceSummary sums resources over a member's nodes.
type ResourceSummary struct {
	// CPU summed over nodes.
	// +optional
	CPU *resource.Quantity `json:"cpu,omitempty"`
	// Memory summed over nodes.
	// +optional
	Memory *resource.Quantity `json:"memory,omitempty"`
	// Pods summed over nodes.
	// +optional
	Pods *resource.Quantity `json:"pods,omitempty"`
}

// MemberClusterStatus is the observed state of a MemberCluster.
type MemberClusterStatus struct {
	// ObservedGeneration is the generation of the spec this status was computed for.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Conditions: Ready (summary), KubeconfigValid, Reachable, and Reconciling/Stalled while
	// they are True.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=32
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// Mode is how the member is managed: Attach.
	// +optional
	Mode string `json:"mode,omitempty"`

	// KubernetesVersion reported by the member's /version.
	// +optional
	KubernetesVersion string `json:"kubernetesVersion,omitempty"`

	// Platform reported by the member's /version (os/arch).
	// +optional
	Platform string `json:"platform,omitempty"`

	// APIEndpoint is the server URL of the member's kubeconfig.
	// +optional
	APIEndpoint string `json:"apiEndpoint,omitempty"`

	// ClusterID is the UID of the member's kube-system namespace: a stable identity that tells if
	// the kubeconfig Secret starts pointing at a different cluster.
	// +optional
	ClusterID string `json:"clusterID,omitempty"`

	// Nodes counts the member's nodes.
	// +optional
	Nodes *NodeSummary `json:"nodes,omitempty"`

	// Capacity sums the nodes' capacity.
	// +optional
	Capacity *ResourceSummary `json:"capacity,omitempty"`

	// Allocatable sums the nodes' allocatable resources.
	// +optional
	Allocatable *ResourceSummary `json:"allocatable,omitempty"`

	// LastProbeTime is when the member was last probed. To bound write load on the management
	// cluster it is refreshed about every 10 minutes while nothing else changes, and whenever
	// anything else in the status changes; the live figure is the metric
	// paddock_membercluster_last_probe_timestamp_seconds.
	// +optional
	LastProbeTime *metav1.Time `json:"lastProbeTime,omitempty"`

	// LastSuccessfulProbeTime is when a probe last succeeded.
	// +optional
	LastSuccessfulProbeTime *metav1.Time `json:"lastSuccessfulProbeTime,omitempty"`

	// ConsecutiveFailures counts failed probes since the last successful one.
	// +optional
	ConsecutiveFailures int32 `json:"consecutiveFailures,omitempty"`

	// ConsecutiveSuccesses counts successful probes since the last failed one (capped).
	// +optional
	ConsecutiveSuccesses int32 `json:"consecutiveSuccesses,omitempty"`
}

// MemberCluster is a Kubernetes cluster that Paddock manages.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=mc,categories=paddock
// +kubebuilder:printcolumn:name="Mode",type=string,JSONPath=`.status.mode`
// +kubebuilder:printcolumn:name="Version",type=string,JSONPath=`.status.kubernetesVersion`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Nodes",type=string,JSONPath=`.status.nodes.ready`,description="Ready nodes"
// +kubebuilder:printcolumn:name="CPU",type=string,JSONPath=`.status.allocatable.cpu`
// +kubebuilder:printcolumn:name="Memory",type=string,JSONPath=`.status.allocatable.memory`
// +kubebuilder:printcolumn:name="Status",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].message`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="size(self.metadata.name) <= 63",message="a MemberCluster name has at most 63 characters: it goes into label values"
type MemberCluster struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec is the desired state.
	Spec MemberClusterSpec `json:"spec"`
	// Status is the observed state.
	// +optional
	Status MemberClusterStatus `json:"status,omitempty"`
}

// GetConditions returns the conditions (for condition helpers).
func (m *MemberCluster) GetConditions() []metav1.Condition { return m.Status.Conditions }

// SetConditions sets the conditions (for condition helpers).
func (m *MemberCluster) SetConditions(c []metav1.Condition) { m.Status.Conditions = c }

// +kubebuilder:object:root=true

// MemberClusterList is a list of MemberClusters.
type MemberClusterList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []MemberCluster `json:"items"`
}

func init() {
	SchemeBuilder.Register(&MemberCluster{}, &MemberClusterList{})
}
