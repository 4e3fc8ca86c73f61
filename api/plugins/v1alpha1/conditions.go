package v1alpha1

// Condition types of the plugins.paddock.dev kinds (kstatus: Ready, and Reconciling or Stalled
// only while true).
const (
	ReadyCondition       = "Ready"
	ReconcilingCondition = "Reconciling"
	StalledCondition     = "Stalled"
	// DriftedCondition (PluginRelease) is True while some target has drift that is not
	// corrected; absent otherwise.
	DriftedCondition = "Drifted"
)

// Condition reasons of PluginRepository.
const (
	// ReasonSucceeded: the index was fetched and parsed (helm) or the registry answered (oci).
	ReasonSucceeded = "Succeeded"
	// ReasonProgressing: the first fetch has not completed yet.
	ReasonProgressing = "Progressing"
	// ReasonSuspended: spec.suspend is set; the last good index keeps serving.
	ReasonSuspended = "Suspended"
	// ReasonRepositoryNotReachable: the repository did not answer (DNS, connection, timeout, 5xx).
	ReasonRepositoryNotReachable = "RepositoryNotReachable"
	// ReasonNotFound: the repository answered 404 for its index.
	ReasonNotFound = "NotFound"
	// ReasonUnauthorized: the repository refused the credentials (401/403).
	ReasonUnauthorized = "Unauthorized"
	// ReasonTLSError: the TLS handshake failed (unknown CA, wrong name, bad client certificate).
	ReasonTLSError = "TLSError"
	// ReasonIndexInvalid: the index does not parse as a Helm repository index.
	ReasonIndexInvalid = "IndexInvalid"
	// ReasonIndexTooLarge: the index is larger than --max-repository-index-bytes.
	ReasonIndexTooLarge = "IndexTooLarge"
	// ReasonURLNotAllowed: the url resolves to an address Paddock never contacts (link-local,
	// metadata, loopback without --allow-loopback-repositories).
	ReasonURLNotAllowed = "URLNotAllowed"
	// ReasonInsecureCredentials: credentials are configured for a plain http url; they are never
	// sent over plain http.
	ReasonInsecureCredentials = "InsecureCredentials"
	// ReasonSecretNotFound: spec.secretRef names a Secret that does not exist.
	ReasonSecretNotFound = "SecretNotFound"
	// ReasonSecretInvalid: the Secret's keys do not make a usable credential.
	ReasonSecretInvalid = "SecretInvalid"
)

// Condition reasons about a chart (PluginRelease).
const (
	// ReasonChartNotFound: the repository has no chart of that name.
	ReasonChartNotFound = "ChartNotFound"
	// ReasonVersionNotFound: no version of the chart satisfies spec.chart.version.
	ReasonVersionNotFound = "VersionNotFound"
	// ReasonChartInvalid: the chart archive is malformed or exceeds the archive limits (size,
	// files, expansion ratio, nesting).
	ReasonChartInvalid = "ChartInvalid"
	// ReasonChartDigestMismatch: the downloaded archive is not the one the index lists.
	ReasonChartDigestMismatch = "ChartDigestMismatch"
)
