package v1alpha1

// Condition types of the tenancy.paddock.dev kinds (kstatus: Ready, and Reconciling or Stalled
// only while true).
const (
	ReadyCondition       = "Ready"
	ReconcilingCondition = "Reconciling"
	StalledCondition     = "Stalled"
)

// Condition reasons shared by the tenancy kinds.
const (
	// ReasonSucceeded: everything is in place in every selected cluster (and, for a RoleGrant,
	// verified by the member's authorizer).
	ReasonSucceeded = "Succeeded"
	// ReasonProgressing: work is under way.
	ReasonProgressing = "Progressing"
	// ReasonClustersFailed: some clusters failed; the message names them with their errors.
	ReasonClustersFailed = "ClustersFailed"
	// ReasonWorkspaceNotFound: spec.workspace names no Workspace.
	ReasonWorkspaceNotFound = "WorkspaceNotFound"
	// ReasonClustersOutsideWorkspace: spec.clusters selects clusters the workspace does not hold.
	ReasonClustersOutsideWorkspace = "ClustersOutsideWorkspace"
	// ReasonExceedsWorkspaceQuota: admitting this NamespaceQuota would take its workspace over
	// spec.quota.hard; nothing is applied for it (what was admitted before stays).
	ReasonExceedsWorkspaceQuota = "ExceedsWorkspaceQuota"
	// ReasonNamespaceConflict: another NamespaceQuota already manages that namespace in a cluster.
	ReasonNamespaceConflict = "NamespaceConflict"
	// ReasonNoClusters: the selection matches no MemberCluster.
	ReasonNoClusters = "NoClusters"
	// ReasonDeleting: the object is being deleted; what it made in members is being removed.
	ReasonDeleting = "Deleting"
)
