package v1alpha1

// Condition types of MemberCluster.
const (
	// ReadyCondition summarises: the member is reachable, its identity is confirmed and its
	// apiserver reports ready.
	ReadyCondition = "Ready"
	// KubeconfigValidCondition tells whether the kubeconfig Secret exists, parses, and passes the
	// kubeconfig safety policy.
	KubeconfigValidCondition = "KubeconfigValid"
	// ReachableCondition tells whether the last probes reached the member's apiserver.
	ReachableCondition = "Reachable"
	// ReconcilingCondition is present (True) only while the controller works towards a new state.
	ReconcilingCondition = "Reconciling"
	// StalledCondition is present (True) only while the controller cannot progress without a
	// person changing something.
	StalledCondition = "Stalled"
)

// Condition reasons of MemberCluster.
const (
	// ReasonReady: the member is healthy.
	ReasonReady = "Ready"
	// ReasonProgressing: the member was just attached and has not yet passed enough probes.
	ReasonProgressing = "Progressing"
	// ReasonPaused: spec.paused is set.
	ReasonPaused = "Paused"
	// ReasonDeleting: the MemberCluster is being deleted.
	ReasonDeleting = "Deleting"

	// ReasonValid: the kubeconfig passed the policy.
	ReasonValid = "Valid"
	// ReasonSecretNotFound: the kubeconfig Secret does not exist.
	ReasonSecretNotFound = "SecretNotFound"
	// ReasonSecretKeyNotFound: the Secret lacks the configured key.
	ReasonSecretKeyNotFound = "SecretKeyNotFound"
	// ReasonSecretTooLarge: the kubeconfig exceeds the size limit.
	ReasonSecretTooLarge = "SecretTooLarge"
	// ReasonInvalidKubeconfig: the kubeconfig does not parse or is incomplete.
	ReasonInvalidKubeconfig = "InvalidKubeconfig"
	// ReasonContextNotFound: the requested (or current) context is missing.
	ReasonContextNotFound = "ContextNotFound"
	// Policy refusals; each names the offending field in the message.
	ReasonExecNotAllowed                  = "ExecNotAllowed"
	ReasonAuthProviderNotAllowed          = "AuthProviderNotAllowed"
	ReasonTokenFileNotAllowed             = "TokenFileNotAllowed"
	ReasonLocalFileNotAllowed             = "LocalFileNotAllowed"
	ReasonProxyNotAllowed                 = "ProxyNotAllowed"
	ReasonImpersonationNotAllowed         = "ImpersonationNotAllowed"
	ReasonInsecureServerNotAllowed        = "InsecureServerNotAllowed"
	ReasonServerAddressNotAllowed         = "ServerAddressNotAllowed"
	ReasonInsecureSkipTLSVerifyNotAllowed = "InsecureSkipTLSVerifyNotAllowed"

	// ReasonReachable: the last probe reached the member.
	ReasonReachable = "Reachable"
	// ReasonClusterNotReachable: connection refused, DNS failure, timeout.
	ReasonClusterNotReachable = "ClusterNotReachable"
	// ReasonUnauthorized: the member rejected the credentials (401).
	ReasonUnauthorized = "Unauthorized"
	// ReasonForbidden: the member accepted the credentials but denied a request Paddock needs
	// (403): the member-side RBAC is missing (see docs/membercluster.md).
	ReasonForbidden = "Forbidden"
	// ReasonResponseTooLarge: a response from the member exceeded Paddock's cap.
	ReasonResponseTooLarge = "ResponseTooLarge"
	// ReasonRedirectRefused: the member answered with an HTTP redirect, which is never followed.
	ReasonRedirectRefused = "RedirectRefused"
	// ReasonTLSError: the TLS handshake failed (unknown authority, bad certificate).
	ReasonTLSError = "TLSError"
	// ReasonAPIServerNotReady: the member answered but /readyz is not ok.
	ReasonAPIServerNotReady = "APIServerNotReady"
	// ReasonProbeFailed: any other probe failure.
	ReasonProbeFailed = "ProbeFailed"
	// ReasonClusterIdentityChanged: the kube-system UID differs from status.clusterID.
	ReasonClusterIdentityChanged = "ClusterIdentityChanged"
	// ReasonProbePending: the connection is new (the kubeconfig Secret changed, the member was
	// unpaused, a refused kubeconfig was fixed) or spec.healthCheck changed, and no probe through
	// it has come in yet; no controller acts on the member until one confirms its identity.
	ReasonProbePending = "ProbePending"
	// ReasonSecretNamespaceNotAllowed: the kubeconfig Secret is in a namespace the manager does
	// not read kubeconfigs from (--kubeconfig-secret-namespaces).
	ReasonSecretNamespaceNotAllowed = "SecretNamespaceNotAllowed"
)
