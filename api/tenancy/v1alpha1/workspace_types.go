package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// WorkspaceLabel is set on every namespace a NamespaceQuota places in a member: the name of its
// workspace.
const WorkspaceLabel = "tenancy.paddock.dev/workspace"

// MaxWorkspaceNamespaces bounds the NamespaceQuotas one workspace admits (status.allocations).
const MaxWorkspaceNamespaces = 1000

// ClusterTargets selects MemberClusters by name, by label, or both (the union).
// +kubebuilder:validation:XValidation:rule="(has(self.clusterNames) && size(self.clusterNames) > 0) || has(self.clusterSelector)",message="set clusterNames, clusterSelector, or both"
type ClusterTargets struct {
	// ClusterNames are MemberCluster names.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=1000
	// +kubebuilder:validation:items:MaxLength=253
	ClusterNames []string `json:"clusterNames,omitempty"`
	// ClusterSelector selects MemberClusters by label; {} selects all.
	// +optional
	ClusterSelector *metav1.LabelSelector `json:"clusterSelector,omitempty"`
}

// WorkspaceQuota is a workspace's total budget.
type WorkspaceQuota struct {
	// Hard is the budget summed over all the workspace's namespaces in all clusters: a
	// NamespaceQuota's hard counts once per cluster it selects.
	// +kubebuilder:validation:XValidation:rule="size(self) >= 1 && size(self) <= 64",message="hard lists between 1 and 64 resources"
	Hard ResourceList `json:"hard"`
}

// WorkspaceSpec is the desired state of a Workspace.
type WorkspaceSpec struct {
	// DisplayName is a name for people.
	// +optional
	// +kubebuilder:validation:MaxLength=256
	DisplayName string `json:"displayName,omitempty"`

	// Clusters are where the workspace's namespaces may live.
	Clusters ClusterTargets `json:"clusters"`

	// Quota is an optional total budget over all the workspace's namespaces in all clusters.
	// NamespaceQuotas that would take the workspace over it are refused.
	// +optional
	Quota *WorkspaceQuota `json:"quota,omitempty"`
}

// WorkspaceCluster is one cluster of a workspace.
type WorkspaceCluster struct {
	// Name of the MemberCluster.
	Name string `json:"name"`
	// Namespaces of the workspace in this cluster (NamespaceQuotas that select it), by name, at
	// most 100 listed.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=100
	Namespaces []string `json:"namespaces,omitempty"`
	// NamespaceCount is how many there are.
	// +optional
	NamespaceCount int32 `json:"namespaceCount,omitempty"`
}

// Allocation is a NamespaceQuota's admitted share of its workspace's budget.
type Allocation struct {
	// NamespaceQuota is the NamespaceQuota's name.
	NamespaceQuota string `json:"namespaceQuota"`
	// UID of the NamespaceQuota that was admitted (one deleted and created again under the
	// same name is decided anew).
	// +optional
	UID types.UID `json:"uid,omitempty"`
	// Generation of the NamespaceQuota that was admitted.
	Generation int64 `json:"generation"`
	// Hard is the admitted per-cluster hard (what the NamespaceQuota applies in each cluster).
	Hard corev1.ResourceList `json:"hard"`
	// Clusters is how many clusters it was admitted for.
	Clusters int32 `json:"clusters"`
}

// WorkspaceQuotaStatus is the budget, what NamespaceQuotas were admitted for, and what is used.
type WorkspaceQuotaStatus struct {
	// Hard is spec.quota.hard.
	// +optional
	Hard corev1.ResourceList `json:"hard,omitempty"`
	// Allocated is the sum of the admitted NamespaceQuotas' hard, times their clusters.
	// +optional
	Allocated corev1.ResourceList `json:"allocated,omitempty"`
	// Used is the sum of what the members' ResourceQuotas report as used.
	// +optional
	Used corev1.ResourceList `json:"used,omitempty"`
	// Refused are the NamespaceQuotas whose current spec the budget does not hold, and why
	// (what was admitted for them before, if anything, stays in allocations).
	// +optional
	// +listType=map
	// +listMapKey=namespaceQuota
	// +kubebuilder:validation:MaxItems=1000
	Refused []Refusal `json:"refused,omitempty"`
}

// Refusal is a NamespaceQuota's spec that the workspace's budget refused.
type Refusal struct {
	// NamespaceQuota is the NamespaceQuota's name.
	NamespaceQuota string `json:"namespaceQuota"`
	// Generation of the NamespaceQuota that was refused.
	Generation int64 `json:"generation"`
	// Message says why.
	// +kubebuilder:validation:MaxLength=1024
	Message string `json:"message"`
}

// WorkspaceStatus is the observed state of a Workspace.
type WorkspaceStatus struct {
	// ObservedGeneration is the generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Conditions: Ready, Reconciling and Stalled (kstatus).
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// Clusters are the MemberClusters the workspace holds, by name.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=1000
	Clusters []WorkspaceCluster `json:"clusters,omitempty"`

	// ClusterCount is how many clusters the workspace holds.
	// +optional
	ClusterCount int32 `json:"clusterCount,omitempty"`

	// NamespaceCount is how many namespaces it has, over all clusters.
	// +optional
	NamespaceCount int32 `json:"namespaceCount,omitempty"`

	// Quota is the budget, what was admitted and what is used (with spec.quota only).
	// +optional
	Quota *WorkspaceQuotaStatus `json:"quota,omitempty"`

	// Allocations are the admitted NamespaceQuotas (with spec.quota only): the ledger that
	// admission decides on, one at a time.
	// +optional
	// +listType=map
	// +listMapKey=namespaceQuota
	// +kubebuilder:validation:MaxItems=1000
	Allocations []Allocation `json:"allocations,omitempty"`
}

// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=ws,categories=paddock
// +kubebuilder:validation:XValidation:rule="size(self.metadata.name) <= 63",message="a Workspace name has at most 63 characters: it goes into label values"
// +kubebuilder:printcolumn:name="Clusters",type=integer,JSONPath=`.status.clusterCount`
// +kubebuilder:printcolumn:name="Namespaces",type=integer,JSONPath=`.status.namespaceCount`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`

// Workspace groups namespaces across member clusters, with an optional total quota.
type Workspace struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   WorkspaceSpec   `json:"spec"`
	Status WorkspaceStatus `json:"status,omitempty"`
}

// +kubebuilder:object:root=true

// WorkspaceList lists Workspaces.
type WorkspaceList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Workspace `json:"items"`
}

func init() {
	SchemeBuilder.Register(&Workspace{}, &WorkspaceList{})
}
