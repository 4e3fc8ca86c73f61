package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// NamespaceQuotaFinalizer lets the controller remove the quota objects (and, with
// deletionPolicy Delete, the namespaces it created) before a NamespaceQuota goes.
const NamespaceQuotaFinalizer = "tenancy.paddock.dev/namespacequota"

// NamespaceQuotaLabel is set on the namespace, ResourceQuota and LimitRange a NamespaceQuota
// manages in a member: its name.
const NamespaceQuotaLabel = "tenancy.paddock.dev/namespacequota"

// NamespaceDeletionPolicy says what happens to a namespace when its NamespaceQuota is deleted.
// +kubebuilder:validation:Enum=Orphan;Delete
type NamespaceDeletionPolicy string

const (
	// NamespaceOrphan leaves the namespace (and its workloads); only the quota objects go.
	NamespaceOrphan NamespaceDeletionPolicy = "Orphan"
	// NamespaceDelete deletes the namespace too, but only where Paddock created it.
	NamespaceDelete NamespaceDeletionPolicy = "Delete"
)

// LimitRangeDefaults are container defaults for the namespace (a LimitRange of type Container).
// +kubebuilder:validation:XValidation:rule="has(self.default) || has(self.defaultRequest) || has(self.max) || has(self.min)",message="set at least one of default, defaultRequest, max, min"
type LimitRangeDefaults struct {
	// Default limits of a container that sets none.
	// +optional
	// +kubebuilder:validation:XValidation:rule="size(self) <= 16",message="at most 16 resources"
	Default ResourceList `json:"default,omitempty"`
	// DefaultRequest requests of a container that sets none.
	// +optional
	// +kubebuilder:validation:XValidation:rule="size(self) <= 16",message="at most 16 resources"
	DefaultRequest ResourceList `json:"defaultRequest,omitempty"`
	// Max a container may set.
	// +optional
	// +kubebuilder:validation:XValidation:rule="size(self) <= 16",message="at most 16 resources"
	Max ResourceList `json:"max,omitempty"`
	// Min a container must set.
	// +optional
	// +kubebuilder:validation:XValidation:rule="size(self) <= 16",message="at most 16 resources"
	Min ResourceList `json:"min,omitempty"`
}

// NamespaceQuotaSpec is the desired state of a NamespaceQuota.
type NamespaceQuotaSpec struct {
	// Namespace is the namespace's name in the member clusters.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="namespace is immutable; create another NamespaceQuota"
	// +kubebuilder:validation:XValidation:rule="!(self in ['default', 'kube-system', 'kube-public', 'kube-node-lease', 'paddock-system']) && !self.startsWith('kube-')",message="a system namespace (default, kube-*, or Paddock's own paddock-system) cannot be managed by a NamespaceQuota"
	Namespace string `json:"namespace"`

	// Workspace is the Workspace the namespace belongs to. Moving the namespace to another
	// workspace is an edit of this field.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	Workspace string `json:"workspace"`

	// Clusters selects where the namespace lives; they must be clusters of the workspace.
	Clusters ClusterTargets `json:"clusters"`

	// Hard is the namespace's ResourceQuota hard list, in each cluster.
	// +kubebuilder:validation:XValidation:rule="size(self) >= 1 && size(self) <= 64",message="hard lists between 1 and 64 resources"
	Hard ResourceList `json:"hard"`

	// LimitRange sets container defaults in the namespace.
	// +optional
	LimitRange *LimitRangeDefaults `json:"limitRange,omitempty"`

	// DeletionPolicy: Orphan (default) keeps the namespace when this object is deleted (only
	// the quota objects go); Delete deletes it too, but only where Paddock created it.
	// +optional
	// +kubebuilder:default=Orphan
	DeletionPolicy NamespaceDeletionPolicy `json:"deletionPolicy,omitempty"`
}

// NamespacePhase is where a namespace stands in one cluster.
type NamespacePhase string

// Namespace phases.
const (
	NamespacePending     NamespacePhase = "Pending"
	NamespaceActive      NamespacePhase = "Active"
	NamespaceFailed      NamespacePhase = "Failed"
	NamespaceUnreachable NamespacePhase = "Unreachable"
	NamespaceRemoving    NamespacePhase = "Removing"
)

// NamespaceClusterStatus is the namespace in one cluster.
type NamespaceClusterStatus struct {
	// Name of the MemberCluster.
	Name string `json:"name"`
	// Phase: Pending, Active, Failed, Unreachable, Removing.
	Phase NamespacePhase `json:"phase"`
	// Created: Paddock created the namespace (else it adopted one that existed).
	// +optional
	Created bool `json:"created,omitempty"`
	// Placed: the namespace is there, belongs to this NamespaceQuota (and to the workspace of
	// status.applied), and holds its quota: workspace-scoped RoleGrants make their RoleBindings
	// in it.
	// +optional
	Placed bool `json:"placed,omitempty"`
	// NamespaceUID is the UID of the namespace Paddock created there (with created): only that
	// very namespace may be deleted by deletionPolicy Delete.
	// +optional
	NamespaceUID string `json:"namespaceUID,omitempty"`
	// Hard is what the member's ResourceQuota enforces (its status.hard).
	// +optional
	Hard corev1.ResourceList `json:"hard,omitempty"`
	// Used is what the member's ResourceQuota counts as used.
	// +optional
	Used corev1.ResourceList `json:"used,omitempty"`
	// Message says what went wrong, or what is awaited.
	// +optional
	Message string `json:"message,omitempty"`
	// LastTransitionTime is when the phase last changed.
	// +optional
	LastTransitionTime *metav1.Time `json:"lastTransitionTime,omitempty"`
}

// AppliedSpec is the spec the members are kept at: the last one that was admitted (by the
// workspace's budget, when it has one). A newer spec waiting for, or refused by, the budget
// leaves the members at this one, still enforced.
type AppliedSpec struct {
	// Workspace the namespace is labelled with in the members (and whose RoleGrants bind in it).
	Workspace string `json:"workspace"`
	// Generation of the NamespaceQuota whose spec this is.
	Generation int64 `json:"generation"`
	// Hard is the ResourceQuota hard list applied.
	Hard corev1.ResourceList `json:"hard"`
	// LimitRange applied, if any.
	// +optional
	LimitRange *LimitRangeDefaults `json:"limitRange,omitempty"`
}

// NamespaceQuotaStatus is the observed state of a NamespaceQuota.
type NamespaceQuotaStatus struct {
	// ObservedGeneration is the generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Applied is the spec the members are kept at (see AppliedSpec).
	// +optional
	Applied *AppliedSpec `json:"applied,omitempty"`

	// Conditions: Ready (the namespace and its quota are in place in every selected cluster),
	// Reconciling and Stalled (kstatus).
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// Clusters is the namespace in each selected cluster, by name.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=1000
	Clusters []NamespaceClusterStatus `json:"clusters,omitempty"`

	// Hard and Used are the totals over all clusters.
	// +optional
	Hard corev1.ResourceList `json:"hard,omitempty"`
	// +optional
	Used corev1.ResourceList `json:"used,omitempty"`

	// ClusterSummary is "<active>/<selected>", for printer columns.
	// +optional
	ClusterSummary string `json:"clusterSummary,omitempty"`
}

// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=nsq,categories=paddock
// +kubebuilder:validation:XValidation:rule="size(self.metadata.name) <= 63",message="a NamespaceQuota name has at most 63 characters: it goes into label values"
// +kubebuilder:printcolumn:name="Namespace",type=string,JSONPath=`.spec.namespace`
// +kubebuilder:printcolumn:name="Workspace",type=string,JSONPath=`.spec.workspace`
// +kubebuilder:printcolumn:name="Clusters",type=string,JSONPath=`.status.clusterSummary`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`

// NamespaceQuota is a namespace in some of a workspace's clusters, with a ResourceQuota (and
// LimitRange) Paddock keeps equal to its spec.
type NamespaceQuota struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   NamespaceQuotaSpec   `json:"spec"`
	Status NamespaceQuotaStatus `json:"status,omitempty"`
}

// +kubebuilder:object:root=true

// NamespaceQuotaList lists NamespaceQuotas.
type NamespaceQuotaList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []NamespaceQuota `json:"items"`
}

func init() {
	SchemeBuilder.Register(&NamespaceQuota{}, &NamespaceQuotaList{})
}
