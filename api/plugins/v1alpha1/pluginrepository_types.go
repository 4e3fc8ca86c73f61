package v1alpha1

import (
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// RepositoryType is the kind of chart repository.
// +kubebuilder:validation:Enum=helm;oci
type RepositoryType string

const (
	// RepositoryTypeHelm is a classic Helm repository: an index.yaml served over HTTP(S).
	RepositoryTypeHelm RepositoryType = "helm"
	// RepositoryTypeOCI is an OCI registry holding charts as artifacts.
	RepositoryTypeOCI RepositoryType = "oci"
)

// DefaultRepositoryInterval is how often a repository's index is fetched when spec.interval is
// not set.
const DefaultRepositoryInterval = 10 * time.Minute

// PluginRepositorySpec is the desired state of a PluginRepository.
// +kubebuilder:validation:XValidation:rule="self.type != 'helm' || self.url.startsWith('https://') || self.url.startsWith('http://')",message="a helm repository's url must start with https:// or http://"
// +kubebuilder:validation:XValidation:rule="self.type != 'oci' || self.url.startsWith('oci://')",message="an oci repository's url must start with oci://"
// +kubebuilder:validation:XValidation:rule="!has(self.insecure) || !self.insecure || self.type == 'oci'",message="insecure is for oci registries only; a helm repository says http:// in its url"
type PluginRepositorySpec struct {
	// Type is helm (an index.yaml over HTTP(S)) or oci (an OCI registry).
	Type RepositoryType `json:"type"`

	// URL of the repository: https://charts.example.com/stable for helm, oci://registry.example.com/charts
	// for oci. Plain http is allowed for helm repositories, but credentials are never sent over it.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="!self.contains('#') && !self.contains(' ')",message="the url must not contain a fragment or spaces"
	// +kubebuilder:validation:XValidation:rule="!self.matches('^[a-z]+://[^/]*@')",message="the url must not carry credentials; put them in the Secret named by spec.secretRef"
	URL string `json:"url"`

	// Insecure reaches an oci registry over plain http instead of https. Credentials are never
	// sent over plain http: a secretRef with credentials and insecure is refused.
	// +optional
	Insecure bool `json:"insecure,omitempty"`

	// SecretRef names a Secret in the manager's namespace with the repository's credentials:
	// username and password (basic auth), or token (bearer); tls.crt and tls.key (a client
	// certificate); ca.crt (a CA bundle to trust).
	// +optional
	SecretRef *LocalSecretReference `json:"secretRef,omitempty"`

	// Interval between fetches of the repository's index (default 10m, between 1m and 24h).
	// +optional
	// +kubebuilder:default="10m"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1m') && duration(self) <= duration('24h')",message="interval must be between 1m and 24h"
	Interval *metav1.Duration `json:"interval,omitempty"`

	// Suspend stops fetching; releases keep using the last good index.
	// +optional
	Suspend bool `json:"suspend,omitempty"`
}

// GetInterval returns spec.interval, defaulted.
func (s PluginRepositorySpec) GetInterval() time.Duration {
	if s.Interval == nil || s.Interval.Duration <= 0 {
		return DefaultRepositoryInterval
	}
	return s.Interval.Duration
}

// LocalSecretReference names a Secret in a namespace the context fixes.
type LocalSecretReference struct {
	// Name of the Secret.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	Name string `json:"name"`
}

// ChartSummary is one chart of a repository's index.
type ChartSummary struct {
	// Name of the chart.
	Name string `json:"name"`
	// LatestVersion is the highest semantic version the index lists (pre-releases excluded
	// unless there is nothing else).
	LatestVersion string `json:"latestVersion"`
	// AppVersion of that version, as the chart states it.
	// +optional
	AppVersion string `json:"appVersion,omitempty"`
}

// MaxListedCharts bounds status.charts.
const MaxListedCharts = 100

// PluginRepositoryStatus is the observed state of a PluginRepository.
type PluginRepositoryStatus struct {
	// ObservedGeneration is the generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Conditions: Ready (the last fetch succeeded, or for oci: the registry answered), Reconciling
	// and Stalled (kstatus).
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// LastFetchTime is when the index was last fetched successfully.
	// +optional
	LastFetchTime *metav1.Time `json:"lastFetchTime,omitempty"`

	// IndexDigest is the sha256 digest of the last good index.
	// +optional
	IndexDigest string `json:"indexDigest,omitempty"`

	// ChartCount is the number of charts in the last good index.
	// +optional
	ChartCount int32 `json:"chartCount,omitempty"`

	// Charts lists the index's charts with their latest versions, by name, at most 100 of them.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=100
	Charts []ChartSummary `json:"charts,omitempty"`
}

// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=prepo,categories=paddock
// +kubebuilder:printcolumn:name="Type",type=string,JSONPath=`.spec.type`
// +kubebuilder:printcolumn:name="URL",type=string,JSONPath=`.spec.url`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Charts",type=integer,JSONPath=`.status.chartCount`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`

// PluginRepository is a Helm chart repository (an index over HTTP(S)) or an OCI registry that
// PluginReleases install charts from.
type PluginRepository struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   PluginRepositorySpec   `json:"spec"`
	Status PluginRepositoryStatus `json:"status,omitempty"`
}

// +kubebuilder:object:root=true

// PluginRepositoryList lists PluginRepositories.
type PluginRepositoryList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []PluginRepository `json:"items"`
}

func init() {
	SchemeBuilder.Register(&PluginRepository{}, &PluginRepositoryList{})
}
