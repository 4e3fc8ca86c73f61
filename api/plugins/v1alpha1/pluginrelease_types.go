package v1alpha1

import (
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Defaults of PluginRelease.
const (
	DefaultMaxHistory     = 10
	DefaultActionTimeout  = 5 * time.Minute
	DefaultMaxConcurrency = 10
	// MaxTargetClusters is the most clusters one PluginRelease may target: its status keeps a
	// record per target, and at 1,000 the worst (every target failed and drifted) still fits in
	// one object with room to spare; at 2,000 it does not. Split a larger fleet by label.
	MaxTargetClusters       = 1000
	MaxHistoryEntries       = 50
	DefaultValuesKey        = "values.yaml"
	DefaultUninstallTimeout = 5 * time.Minute
)

// PluginReleaseSpec is the desired state of a PluginRelease: one chart, installed as one Helm
// release in every target cluster.
// +kubebuilder:validation:XValidation:rule="!has(self.rollout) || !has(self.rollout.waves) || self.rollout.waves.all(w, self.rollout.waves.exists_one(x, x.name == w.name))",message="rollout wave names must be unique"
// +kubebuilder:validation:XValidation:rule="has(self.releaseName) == has(oldSelf.releaseName) && (!has(self.releaseName) || self.releaseName == oldSelf.releaseName)",message="releaseName is immutable; create another PluginRelease for another release"
// +kubebuilder:validation:XValidation:rule="has(self.targetNamespace) == has(oldSelf.targetNamespace) && (!has(self.targetNamespace) || self.targetNamespace == oldSelf.targetNamespace)",message="targetNamespace is immutable; create another PluginRelease for another namespace"
type PluginReleaseSpec struct {
	// Chart is what to install.
	Chart ChartReference `json:"chart"`

	// Targets selects the member clusters to install into.
	Targets Targets `json:"targets"`

	// ReleaseName is the Helm release's name in every target (default: the PluginRelease's name).
	// Immutable: a new name is a new release.
	// +optional
	// +kubebuilder:validation:MaxLength=53
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	ReleaseName string `json:"releaseName,omitempty"`

	// TargetNamespace is the release's namespace in every target (default: the PluginRelease's
	// namespace). Immutable.
	// +optional
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	TargetNamespace string `json:"targetNamespace,omitempty"`

	// CreateNamespace creates targetNamespace in a target where it does not exist.
	// +optional
	CreateNamespace bool `json:"createNamespace,omitempty"`

	// Values are the chart's values, merged over valuesFrom.
	// +optional
	// +kubebuilder:pruning:PreserveUnknownFields
	// +kubebuilder:validation:Schemaless
	// +kubebuilder:validation:Type=object
	Values *apiextensionsv1.JSON `json:"values,omitempty"`

	// ValuesFrom reads values from ConfigMaps and Secrets in the PluginRelease's namespace,
	// merged in order (a later one wins), then values over them.
	// +optional
	// +kubebuilder:validation:MaxItems=16
	ValuesFrom []ValuesReference `json:"valuesFrom,omitempty"`

	// ValuesTemplate is a Go template (with Sprig's functions) rendered per target cluster into
	// YAML values merged last. It sees .Cluster.Name, .Cluster.Labels, .Cluster.Annotations and
	// .Cluster.Status (the MemberCluster's status). Use it to make one release differ per
	// cluster: `region: {{ index .Cluster.Labels "topology.kubernetes.io/region" }}`.
	// +optional
	// +kubebuilder:validation:MaxLength=65536
	ValuesTemplate string `json:"valuesTemplate,omitempty"`

	// Install configures the first install in each target.
	// +optional
	Install *ActionSpec `json:"install,omitempty"`

	// Upgrade configures every upgrade.
	// +optional
	Upgrade *ActionSpec `json:"upgrade,omitempty"`

	// Uninstall configures removal (from clusters that leave the targets, and on deletion).
	// +optional
	Uninstall *UninstallSpec `json:"uninstall,omitempty"`

	// MaxHistory is how many Helm revisions each target keeps (default 10).
	// +optional
	// +kubebuilder:default=10
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	MaxHistory *int32 `json:"maxHistory,omitempty"`

	// DriftDetection corrects (enabled) or reports (warn) changes made in a target to the
	// release's objects, or ignores them (disabled).
	// +optional
	DriftDetection *DriftDetection `json:"driftDetection,omitempty"`

	// Rollout stages the install or upgrade across the targets.
	// +optional
	Rollout *Rollout `json:"rollout,omitempty"`

	// Adopt takes over a release of the same name that already exists in a target and that
	// Paddock did not install. Without it, such a target is a conflict and is left alone.
	// +optional
	Adopt bool `json:"adopt,omitempty"`

	// Suspend stops every action; what is installed stays as it is.
	// +optional
	Suspend bool `json:"suspend,omitempty"`
}

// ChartReference names a chart in a PluginRepository.
type ChartReference struct {
	// Repository is the name of a PluginRepository.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Repository string `json:"repository"`
	// Name of the chart in the repository.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9][A-Za-z0-9._-]*$`
	Name string `json:"name"`
	// Version is an exact version (3.13.0) or a semver range (3.13.x, >=1.2 <2). The highest
	// version the range allows is installed; a new one in the repository is rolled out.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=128
	Version string `json:"version"`
}

// Targets selects member clusters by name, by label, or both (a cluster matching either is a
// target).
// +kubebuilder:validation:XValidation:rule="(has(self.clusterNames) && size(self.clusterNames) > 0) || has(self.clusterSelector)",message="targets needs clusterNames or clusterSelector"
type Targets struct {
	// ClusterNames are MemberCluster names (at most 1000 targets in all, MaxTargetClusters).
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=1000
	// +kubebuilder:validation:items:MaxLength=253
	ClusterNames []string `json:"clusterNames,omitempty"`
	// ClusterSelector selects MemberClusters by label; {} selects all.
	// +optional
	ClusterSelector *metav1.LabelSelector `json:"clusterSelector,omitempty"`
}

// ValuesReference is one key of a ConfigMap or Secret holding YAML values.
type ValuesReference struct {
	// Kind is ConfigMap or Secret.
	// +kubebuilder:validation:Enum=ConfigMap;Secret
	Kind string `json:"kind"`
	// Name of the object, in the PluginRelease's namespace.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
	// Key holding the YAML (default values.yaml).
	// +optional
	// +kubebuilder:validation:MaxLength=253
	Key string `json:"key,omitempty"`
	// Optional: a missing object or key is skipped instead of blocking the release.
	// +optional
	Optional bool `json:"optional,omitempty"`
}

// RemediationStrategy is what to do after a failed install or upgrade.
// +kubebuilder:validation:Enum=rollback;uninstall
type RemediationStrategy string

// Remediation strategies.
const (
	RemediationRollback  RemediationStrategy = "rollback"
	RemediationUninstall RemediationStrategy = "uninstall"
)

// ActionSpec configures install or upgrade.
type ActionSpec struct {
	// Timeout of the action in one target (default 5m), hooks and wait included.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1s') && duration(self) <= duration('1h')",message="timeout must be between 1s and 1h"
	Timeout *metav1.Duration `json:"timeout,omitempty"`
	// Wait waits until the release's workloads are ready before the action counts as done
	// (default false, as Helm's CLI).
	// +optional
	Wait bool `json:"wait,omitempty"`
	// Remediation of a failed action.
	// +optional
	Remediation *Remediation `json:"remediation,omitempty"`
}

// Remediation says how a failed action is retried and cleaned up.
type Remediation struct {
	// Retries after a failure (default 0: a failed target stays Failed until the spec changes or
	// the cluster returns).
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=10
	Retries int32 `json:"retries,omitempty"`
	// Strategy: rollback (upgrade: to the last deployed revision) or uninstall. An install that
	// fails is always uninstalled before it is retried.
	// +optional
	// +kubebuilder:default=rollback
	Strategy RemediationStrategy `json:"strategy,omitempty"`
}

// UninstallSpec configures removal.
type UninstallSpec struct {
	// KeepHistory keeps the release's history in the target.
	// +optional
	KeepHistory bool `json:"keepHistory,omitempty"`
	// Timeout of the uninstall in one target (default 5m).
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1s') && duration(self) <= duration('1h')",message="timeout must be between 1s and 1h"
	Timeout *metav1.Duration `json:"timeout,omitempty"`
}

// DriftMode is what drift detection does.
// +kubebuilder:validation:Enum=enabled;warn;disabled
type DriftMode string

// Drift modes.
const (
	DriftEnabled  DriftMode = "enabled"
	DriftWarn     DriftMode = "warn"
	DriftDisabled DriftMode = "disabled"
)

// DriftDetection configures drift detection.
type DriftDetection struct {
	// Mode: enabled (correct drift, without a new Helm revision), warn (report only), disabled.
	// +optional
	// +kubebuilder:default=enabled
	Mode DriftMode `json:"mode,omitempty"`
	// Ignore lists fields other controllers own (an HPA's replicas, an injected annotation).
	// +optional
	// +kubebuilder:validation:MaxItems=32
	Ignore []DriftIgnoreRule `json:"ignore,omitempty"`
}

// DriftIgnoreRule ignores fields, by JSON pointer, of some or all of the release's objects.
type DriftIgnoreRule struct {
	// Paths are JSON pointers (RFC 6901), such as /spec/replicas.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:MaxLength=512
	// +kubebuilder:validation:items:Pattern=`^(/[^/]*)+$`
	Paths []string `json:"paths"`
	// Target limits the rule to objects of a kind and, optionally, a name (all objects if unset).
	// +optional
	Target *DriftTarget `json:"target,omitempty"`
}

// DriftTarget selects objects of a release.
type DriftTarget struct {
	// Group of the objects ("" for the core group).
	// +optional
	// +kubebuilder:validation:MaxLength=253
	Group string `json:"group,omitempty"`
	// Kind of the objects.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	Kind string `json:"kind"`
	// Name of the object (all of that kind if empty).
	// +optional
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name,omitempty"`
}

// Rollout stages a change across the targets. Without waves, every target is one wave.
// +kubebuilder:validation:XValidation:rule="!has(self.maxConcurrency) || (type(self.maxConcurrency) == int ? self.maxConcurrency >= 1 : self.maxConcurrency.matches('^(100|[1-9][0-9]?)%$'))",message="maxConcurrency must be a number >= 1 or a percentage from 1% to 100%"
// +kubebuilder:validation:XValidation:rule="!has(self.maxFailures) || (type(self.maxFailures) == int ? self.maxFailures >= 0 : self.maxFailures.matches('^(100|[1-9]?[0-9])%$'))",message="maxFailures must be a number >= 0 or a percentage from 0% to 100%"
type Rollout struct {
	// MaxConcurrency bounds the targets acted on at once (a number or a percentage of the
	// targets; default 10).
	// +optional
	// +kubebuilder:validation:XIntOrString
	// +kubebuilder:validation:MaxLength=4
	MaxConcurrency *intstr.IntOrString `json:"maxConcurrency,omitempty"`
	// Waves are rolled out in order; a target belongs to the first wave whose selector matches
	// it, and targets no wave matches form a last wave. A canary goes first.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=16
	Waves []Wave `json:"waves,omitempty"`
	// MaxFailures is each wave's failure budget (a number or a percentage of the wave; default
	// 0). A wave with more failures halts the rollout.
	// +optional
	// +kubebuilder:validation:XIntOrString
	// +kubebuilder:validation:MaxLength=4
	MaxFailures *intstr.IntOrString `json:"maxFailures,omitempty"`
	// BakeTime is how long a finished wave must stay healthy before the next starts.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('0s') && duration(self) <= duration('168h')",message="bakeTime must be between 0s and 168h"
	BakeTime *metav1.Duration `json:"bakeTime,omitempty"`
}

// Wave is one stage of a rollout.
// +kubebuilder:validation:XValidation:rule="!has(self.maxConcurrency) || (type(self.maxConcurrency) == int ? self.maxConcurrency >= 1 : self.maxConcurrency.matches('^(100|[1-9][0-9]?)%$'))",message="maxConcurrency must be a number >= 1 or a percentage from 1% to 100%"
type Wave struct {
	// Name of the wave (canary, eu, rest…).
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Name string `json:"name"`
	// ClusterSelector picks the wave's targets among the release's targets.
	ClusterSelector metav1.LabelSelector `json:"clusterSelector"`
	// MaxConcurrency within this wave (default: the rollout's).
	// +optional
	// +kubebuilder:validation:XIntOrString
	// +kubebuilder:validation:MaxLength=4
	MaxConcurrency *intstr.IntOrString `json:"maxConcurrency,omitempty"`
}

// ClusterPhase is where a release stands in one target.
// +kubebuilder:validation:Enum=Pending;Waiting;Installing;Upgrading;Deployed;Failed;Uninstalling;Conflict;Unreachable
type ClusterPhase string

// Cluster phases.
const (
	// PhasePending: not acted on yet.
	PhasePending ClusterPhase = "Pending"
	// PhaseWaiting: held back by the rollout (a later wave, or the concurrency limit).
	PhaseWaiting      ClusterPhase = "Waiting"
	PhaseInstalling   ClusterPhase = "Installing"
	PhaseUpgrading    ClusterPhase = "Upgrading"
	PhaseDeployed     ClusterPhase = "Deployed"
	PhaseFailed       ClusterPhase = "Failed"
	PhaseUninstalling ClusterPhase = "Uninstalling"
	// PhaseConflict: a release of that name exists and was not installed by this PluginRelease.
	PhaseConflict ClusterPhase = "Conflict"
	// PhaseUnreachable: the member is not Ready; nothing is done there until it is.
	PhaseUnreachable ClusterPhase = "Unreachable"
)

// Reasons of a target's phase.
const (
	ClusterReasonInstallFailed     = "InstallFailed"
	ClusterReasonUpgradeFailed     = "UpgradeFailed"
	ClusterReasonUninstallFailed   = "UninstallFailed"
	ClusterReasonMemberUnreachable = "MemberUnreachable"
	ClusterReasonReleaseConflict   = "ReleaseConflict"
)

// ClusterReleaseStatus is the release in one target.
type ClusterReleaseStatus struct {
	// Name of the MemberCluster.
	Name string `json:"name"`
	// Phase of the release there.
	Phase ClusterPhase `json:"phase"`
	// Reason is the cause of a Failed, Conflict or Unreachable phase, for machines:
	// InstallFailed, UpgradeFailed, UninstallFailed, MemberUnreachable (the member went away
	// during the action or before it: retried when it is Ready again, whatever the remediation
	// says), ReleaseConflict.
	// +optional
	Reason string `json:"reason,omitempty"`
	// ChartVersion and AppVersion deployed there.
	// +optional
	ChartVersion string `json:"chartVersion,omitempty"`
	// +optional
	AppVersion string `json:"appVersion,omitempty"`
	// Revision is the Helm revision there.
	// +optional
	Revision int32 `json:"revision,omitempty"`
	// ConfigDigest identifies the chart digest and values deployed there (a change redeploys): an
	// HMAC under the manager's digest key, so it tells nothing about the values (Secrets included).
	// +optional
	ConfigDigest string `json:"configDigest,omitempty"`
	// ManifestDigest identifies the manifest of the revision Paddock's own action produced there
	// (an HMAC under the manager's digest key).
	// Drift detection compares the member's objects only with a release record that matches it:
	// a record rewritten in the member (by anyone who may write Secrets in its namespace) is never
	// used to patch or create objects.
	// +optional
	ManifestDigest string `json:"manifestDigest,omitempty"`
	// LastOperation is the last action there (install, upgrade, rollback, uninstall,
	// drift-corrected).
	// +optional
	LastOperation string `json:"lastOperation,omitempty"`
	// Failures counts failed attempts of the current change (remediation retries).
	// +optional
	Failures int32 `json:"failures,omitempty"`
	// Message explains the phase (the error of a failure).
	// +optional
	Message string `json:"message,omitempty"`
	// LastTransitionTime is when the phase last changed.
	// +optional
	LastTransitionTime *metav1.Time `json:"lastTransitionTime,omitempty"`
	// Drift is drift found there and not corrected: driftDetection.mode is warn, correcting it did
	// not hold (another controller puts it back), or the correction failed. Corrected drift is in
	// history instead.
	// +optional
	Drift *DriftStatus `json:"drift,omitempty"`
}

// DriftStatus is uncorrected drift in one target.
type DriftStatus struct {
	// DetectedAt is when this drift was first seen.
	DetectedAt metav1.Time `json:"detectedAt"`
	// Objects lists the drifted objects and fields ("Deployment apps/web: /spec/replicas"), at
	// most 10.
	// +optional
	// +kubebuilder:validation:MaxItems=10
	Objects []string `json:"objects,omitempty"`
	// Message says why it is not corrected.
	// +optional
	Message string `json:"message,omitempty"`
}

// RolloutStatus is the progress of a staged rollout.
type RolloutStatus struct {
	// ConfigDigest identifies the change being rolled out (an HMAC under the manager's digest key).
	// +optional
	ConfigDigest string `json:"configDigest,omitempty"`
	// Wave is the current wave's name.
	// +optional
	Wave string `json:"wave,omitempty"`
	// WaveIndex is the current wave's position (0-based).
	// +optional
	WaveIndex int32 `json:"waveIndex,omitempty"`
	// Waves lists every wave's frozen targets, in order: frozen when the rollout started, so
	// that clusters joining or leaving meanwhile neither abort nor reorder it.
	// +optional
	// +kubebuilder:validation:MaxItems=17
	Waves []WaveStatus `json:"waves,omitempty"`
	// Waiting says why the rollout is not moving (bake time, halted, concurrency).
	// +optional
	Waiting string `json:"waiting,omitempty"`
	// StartedAt is when this rollout started.
	// +optional
	StartedAt *metav1.Time `json:"startedAt,omitempty"`
}

// WaveStatus is one wave of a rollout.
type WaveStatus struct {
	// Name of the wave.
	Name string `json:"name"`
	// Clusters are the wave's targets, frozen at the rollout's start.
	// +kubebuilder:validation:MaxItems=1000
	Clusters []string `json:"clusters"`
	// CompletedAt is when every target of the wave reached the desired revision (bake time
	// counts from here).
	// +optional
	CompletedAt *metav1.Time `json:"completedAt,omitempty"`
}

// HistoryEntry is one operation in one target.
type HistoryEntry struct {
	// Time the operation finished.
	Time metav1.Time `json:"time"`
	// Cluster is the MemberCluster.
	Cluster string `json:"cluster"`
	// Action: install, upgrade, rollback, uninstall, drift-corrected.
	Action string `json:"action"`
	// FromVersion and ToVersion are chart versions.
	// +optional
	FromVersion string `json:"fromVersion,omitempty"`
	// +optional
	ToVersion string `json:"toVersion,omitempty"`
	// Revision is the Helm revision the operation produced.
	// +optional
	Revision int32 `json:"revision,omitempty"`
	// Result: Succeeded or Failed.
	Result string `json:"result"`
	// Duration of the operation.
	// +optional
	Duration string `json:"duration,omitempty"`
	// Message is the error of a failure.
	// +optional
	Message string `json:"message,omitempty"`
}

// PluginReleaseStatus is the observed state of a PluginRelease.
type PluginReleaseStatus struct {
	// ObservedGeneration is the generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Conditions: Ready (every target at the desired revision), Reconciling and Stalled (kstatus).
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=32
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// ChartVersion is the version spec.chart.version resolves to now.
	// +optional
	ChartVersion string `json:"chartVersion,omitempty"`
	// Desired, ReadyCount and Failed count the targets.
	// +optional
	Desired int32 `json:"desired,omitempty"`
	// +optional
	ReadyCount int32 `json:"ready,omitempty"`
	// +optional
	Failed int32 `json:"failed,omitempty"`
	// ClusterSummary is "ready/desired", for kubectl get.
	// +optional
	ClusterSummary string `json:"clusterSummary,omitempty"`
	// Clusters is the release in every target (and in clusters it is being removed from).
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=2000
	Clusters []ClusterReleaseStatus `json:"clusters,omitempty"`
	// Rollout is the staged rollout's progress.
	// +optional
	Rollout *RolloutStatus `json:"rollout,omitempty"`
	// History is the last operations across targets, newest first (at most 50).
	// +optional
	// +kubebuilder:validation:MaxItems=50
	History []HistoryEntry `json:"history,omitempty"`
}

// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=prel,categories=paddock
// +kubebuilder:printcolumn:name="Chart",type=string,JSONPath=`.spec.chart.name`
// +kubebuilder:printcolumn:name="Version",type=string,JSONPath=`.status.chartVersion`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Clusters",type=string,JSONPath=`.status.clusterSummary`
// +kubebuilder:printcolumn:name="Wave",type=string,JSONPath=`.status.rollout.wave`
// +kubebuilder:printcolumn:name="Status",type=string,priority=1,JSONPath=`.status.conditions[?(@.type=="Ready")].message`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`

// PluginRelease installs one Helm chart into many member clusters, with staged rollouts, drift
// correction and a record of every operation.
type PluginRelease struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   PluginReleaseSpec   `json:"spec"`
	Status PluginReleaseStatus `json:"status,omitempty"`
}

// +kubebuilder:object:root=true

// PluginReleaseList lists PluginReleases.
type PluginReleaseList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []PluginRelease `json:"items"`
}

func init() {
	SchemeBuilder.Register(&PluginRelease{}, &PluginReleaseList{})
}

// GetReleaseName returns spec.releaseName, defaulted to the object's name.
func (p *PluginRelease) GetReleaseName() string {
	if p.Spec.ReleaseName != "" {
		return p.Spec.ReleaseName
	}
	return p.Name
}

// GetTargetNamespace returns spec.targetNamespace, defaulted to the object's namespace.
func (p *PluginRelease) GetTargetNamespace() string {
	if p.Spec.TargetNamespace != "" {
		return p.Spec.TargetNamespace
	}
	return p.Namespace
}

// GetMaxHistory returns spec.maxHistory, defaulted.
func (s PluginReleaseSpec) GetMaxHistory() int {
	if s.MaxHistory == nil || *s.MaxHistory <= 0 {
		return DefaultMaxHistory
	}
	return int(*s.MaxHistory)
}

// GetDriftMode returns the drift detection mode, defaulted to enabled.
func (s PluginReleaseSpec) GetDriftMode() DriftMode {
	if s.DriftDetection == nil || s.DriftDetection.Mode == "" {
		return DriftEnabled
	}
	return s.DriftDetection.Mode
}

// TimeoutOr returns the action's timeout, or def.
func (a *ActionSpec) TimeoutOr(def time.Duration) time.Duration {
	if a == nil || a.Timeout == nil || a.Timeout.Duration <= 0 {
		return def
	}
	return a.Timeout.Duration
}
