package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// RoleGrantFinalizer lets the controller remove every binding a RoleGrant made before it goes.
const RoleGrantFinalizer = "tenancy.paddock.dev/rolegrant"

// RoleGrantLabel is set on every binding a RoleGrant makes in a member: its name. The
// RoleGrantUIDLabel tells a binding of this RoleGrant from one of an earlier object of the name.
const (
	RoleGrantLabel    = "tenancy.paddock.dev/rolegrant"
	RoleGrantUIDLabel = "tenancy.paddock.dev/rolegrant-uid"
)

// Subject is who a RoleGrant grants the role to.
// +kubebuilder:validation:XValidation:rule="self.kind == 'ServiceAccount' ? has(self.__namespace__) && size(self.__namespace__) > 0 : !has(self.__namespace__) || size(self.__namespace__) == 0",message="namespace is required for a ServiceAccount and only for one"
type Subject struct {
	// Kind is User, Group or ServiceAccount.
	// +kubebuilder:validation:Enum=User;Group;ServiceAccount
	Kind string `json:"kind"`
	// Name of the user, group or ServiceAccount.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
	// Namespace of the ServiceAccount (in each member).
	// +optional
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Namespace string `json:"namespace,omitempty"`
}

// RoleRef names the ClusterRole granted.
type RoleRef struct {
	// Name of a ClusterRole that exists in the members (cluster-admin, admin, edit and view
	// always do). A member without it is a per-cluster error.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
}

// GrantScope is where a RoleGrant applies: exactly one of workspace, cluster or clusterSelector;
// namespace only with cluster.
// +kubebuilder:validation:XValidation:rule="(has(self.workspace) ? 1 : 0) + (has(self.cluster) ? 1 : 0) + (has(self.clusterSelector) ? 1 : 0) == 1",message="set exactly one of scope.workspace, scope.cluster, scope.clusterSelector"
// +kubebuilder:validation:XValidation:rule="!has(self.__namespace__) || has(self.cluster)",message="scope.namespace goes with scope.cluster"
type GrantScope struct {
	// Workspace: a RoleBinding in each of the workspace's namespaces on each of its clusters,
	// following namespaces as they are added or removed.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	Workspace string `json:"workspace,omitempty"`
	// Cluster: a ClusterRoleBinding in that MemberCluster, or with namespace a RoleBinding there.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Cluster string `json:"cluster,omitempty"`
	// Namespace (with cluster): a RoleBinding in that namespace of that cluster.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Namespace string `json:"namespace,omitempty"`
	// ClusterSelector: a ClusterRoleBinding in every MemberCluster it selects ({} selects all).
	// +optional
	ClusterSelector *metav1.LabelSelector `json:"clusterSelector,omitempty"`
}

// RoleGrantSpec is the desired state of a RoleGrant.
type RoleGrantSpec struct {
	// Subjects are granted the role.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=100
	Subjects []Subject `json:"subjects"`
	// RoleRef is the ClusterRole granted.
	RoleRef RoleRef `json:"roleRef"`
	// Scope is where.
	Scope GrantScope `json:"scope"`
}

// GrantPhase is where a RoleGrant stands in one cluster.
type GrantPhase string

// Grant phases.
const (
	GrantPending     GrantPhase = "Pending"
	GrantApplied     GrantPhase = "Applied"
	GrantVerified    GrantPhase = "Verified"
	GrantFailed      GrantPhase = "Failed"
	GrantUnreachable GrantPhase = "Unreachable"
	GrantRemoving    GrantPhase = "Removing"
)

// GrantClusterStatus is the RoleGrant in one cluster.
type GrantClusterStatus struct {
	// Name of the MemberCluster.
	Name string `json:"name"`
	// Phase: Pending, Applied (bindings made, not verified yet), Verified (the member's
	// authorizer allows what the role grants), Failed, Unreachable, Removing.
	Phase GrantPhase `json:"phase"`
	// Bindings is how many bindings Paddock holds there for this RoleGrant.
	// +optional
	Bindings int32 `json:"bindings,omitempty"`
	// Verified says what the member's authorizer answered, when last asked (a
	// SubjectAccessReview for one subject and one verb the role grants).
	// +optional
	Verified *Verification `json:"verified,omitempty"`
	// Message says what went wrong, or what is awaited.
	// +optional
	Message string `json:"message,omitempty"`
	// LastTransitionTime is when the phase last changed.
	// +optional
	LastTransitionTime *metav1.Time `json:"lastTransitionTime,omitempty"`
}

// Verification is one answer of a member's authorizer.
type Verification struct {
	// Allowed is the authorizer's answer.
	Allowed bool `json:"allowed"`
	// Check is what was asked: "<subject> <verb> <resource> [in <namespace>]".
	Check string `json:"check"`
	// Time is when.
	Time metav1.Time `json:"time"`
}

// RoleGrantStatus is the observed state of a RoleGrant.
type RoleGrantStatus struct {
	// ObservedGeneration is the generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Conditions: Ready (bound and verified in every selected cluster), Reconciling and Stalled
	// (kstatus).
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// Clusters is the grant in each selected cluster, by name.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=1000
	Clusters []GrantClusterStatus `json:"clusters,omitempty"`

	// ClusterSummary is "<verified>/<selected>", for printer columns.
	// +optional
	ClusterSummary string `json:"clusterSummary,omitempty"`
}

// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=rg,categories=paddock
// +kubebuilder:validation:XValidation:rule="size(self.metadata.name) <= 63",message="a RoleGrant name has at most 63 characters: it goes into label values"
// +kubebuilder:printcolumn:name="Role",type=string,JSONPath=`.spec.roleRef.name`
// +kubebuilder:printcolumn:name="Clusters",type=string,JSONPath=`.status.clusterSummary`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`

// RoleGrant grants a ClusterRole to subjects in member clusters, at workspace, cluster or
// namespace level, through native RBAC bindings that Paddock keeps in place and verifies.
type RoleGrant struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   RoleGrantSpec   `json:"spec"`
	Status RoleGrantStatus `json:"status,omitempty"`
}

// +kubebuilder:object:root=true

// RoleGrantList lists RoleGrants.
type RoleGrantList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []RoleGrant `json:"items"`
}

func init() {
	SchemeBuilder.Register(&RoleGrant{}, &RoleGrantList{})
}
