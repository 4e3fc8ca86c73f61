package membercluster

import (
	"context"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
	"github.com/paddock-dev/paddock/internal/clustercache"
)

// MarkerNamespace is the namespace Paddock creates in every member it manages (and removes when a
// MemberCluster with deletionPolicy Delete goes away, unless another MemberCluster still points at
// the same cluster).
const MarkerNamespace = "paddock-system"

// Labels Paddock puts on what it creates in a member.
const (
	ManagedByLabel = "app.kubernetes.io/managed-by"
	ManagedByValue = "paddock"
)

// scope carries one reconcile's findings from the phases to the status computation.
type scope struct {
	mc    *clustersv1.MemberCluster
	orig  *clustersv1.MemberCluster
	state *memberState

	paused        bool
	kubeconfigErr *clustercache.PolicyError
	connected     bool
	endpoint      string
	// probe is the result that completed since the last reconcile, if any.
	probe *clustercache.ProbeResult
	// health is a snapshot of the member's health verdict.
	health health
}

func (r *Reconciler) reconcileNormal(ctx context.Context, s *scope) (ctrl.Result, error) {
	log := ctrl.LoggerFrom(ctx)
	mc := s.mc
	hc := mc.Spec.HealthCheck

	acc, err := r.connect(ctx, mc)
	if err != nil {
		if pe, ok := clustercache.IsPolicyError(err); ok {
			s.kubeconfigErr = pe
			deactivate(s.state)
			r.Cache.Disconnect(mc.Name)
			log.Info("Refused kubeconfig", "member", mc.Name, "reason", pe.Reason, "detail", pe.Message)
			// A person has to fix the Secret; its watch brings us back.
			return ctrl.Result{}, reconcile.TerminalError(err)
		}
		return ctrl.Result{}, err
	}
	s.endpoint = acc.Config.Host

	s.connected = true

	// Probes run on their own schedule, outside reconcile workers (see prober.go); a reconcile
	// only hands the prober the current accessor and settings and publishes what it found.
	st := s.state
	st.mu.Lock()
	s.probe, s.health = st.latest, st.health
	st.lastPublished = r.Clock.Now()
	st.mu.Unlock()
	r.activate(mc.Name, st, acc, hc)

	if s.probe != nil && s.probe.Err == nil {
		r.checkIdentity(s, s.probe.ClusterID)
	}

	ready, reason := s.health.Healthy && st.identityMismatch == "", ""
	switch {
	case st.identityMismatch != "":
		reason = clustersv1.ReasonClusterIdentityChanged
	case !s.health.Healthy:
		reason = s.health.LastFailureReason
		if reason == "" {
			reason = clustersv1.ReasonProgressing
		}
	}
	r.Cache.SetReady(mc.Name, ready, reason)

	if ready && st.markerVersion != acc.Version {
		if err := r.ensureMarker(ctx, acc, mc); err != nil {
			log.Info("Could not create the marker namespace; retrying at the next probe", "member", mc.Name, "reason", err.Error())
		} else {
			st.markerVersion = acc.Version
		}
	}
	// The prober requeues this member when something visible changes; this is a safety net.
	return ctrl.Result{RequeueAfter: r.StatusHeartbeat}, nil
}

// checkIdentity pins the member's clusterID on first sight and refuses a different one until a
// person accepts it with the accept-cluster-id annotation.
func (r *Reconciler) checkIdentity(s *scope, observed string) {
	st := &s.mc.Status
	switch {
	case observed == "":
		return
	case st.ClusterID == "" || st.ClusterID == observed:
		st.ClusterID = observed
		s.state.identityMismatch = ""
	case s.mc.Annotations[clustersv1.AcceptClusterIDAnnotation] == observed:
		r.Recorder.Eventf(s.mc, nil, corev1.EventTypeNormal, "ClusterIdentityAccepted", "Probe",
			"Accepted new cluster identity %s (was %s) as confirmed by annotation %s", observed, st.ClusterID, clustersv1.AcceptClusterIDAnnotation)
		st.ClusterID = observed
		s.state.identityMismatch = ""
	default:
		s.state.identityMismatch = observed
	}
}

// connect returns the member's accessor, (re)building it when the kubeconfig Secret changed.
func (r *Reconciler) connect(ctx context.Context, mc *clustersv1.MemberCluster) (*clustercache.Accessor, error) {
	if mc.Spec.Attach == nil {
		return nil, &clustercache.PolicyError{Reason: clustersv1.ReasonInvalidKubeconfig, Message: "spec.attach is not set"}
	}
	ref := mc.Spec.Attach.KubeconfigSecretRef
	key := ref.Key
	if key == "" {
		key = "value"
	}
	nn := types.NamespacedName{Namespace: ref.Namespace, Name: ref.Name}
	meta := &metav1.PartialObjectMetadata{}
	meta.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Secret"))
	if err := r.Client.Get(ctx, nn, meta); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, &clustercache.PolicyError{Reason: clustersv1.ReasonSecretNotFound,
				Message: fmt.Sprintf("Secret %s does not exist", nn)}
		}
		return nil, fmt.Errorf("reading Secret %s: %w", nn, err)
	}
	version := fmt.Sprintf("%s/%s/%s/%s", meta.UID, meta.ResourceVersion, key, mc.Spec.Attach.Context)
	if acc, ok := r.Cache.Peek(mc.Name); ok && acc.Version == version {
		return acc, nil
	}
	secret := &corev1.Secret{}
	if err := r.APIReader.Get(ctx, nn, secret); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, &clustercache.PolicyError{Reason: clustersv1.ReasonSecretNotFound,
				Message: fmt.Sprintf("Secret %s does not exist", nn)}
		}
		return nil, fmt.Errorf("reading Secret %s: %w", nn, err)
	}
	data, ok := secret.Data[key]
	if !ok {
		return nil, &clustercache.PolicyError{Reason: clustersv1.ReasonSecretKeyNotFound,
			Message: fmt.Sprintf("Secret %s has no key %q (set spec.attach.kubeconfigSecretRef.key)", nn, key)}
	}
	cfg, err := r.Policy.Load(data, mc.Spec.Attach.Context)
	if err != nil {
		return nil, err
	}
	acc, err := r.Cache.Connect(mc.Name, version, cfg)
	if err != nil {
		return nil, err
	}
	ctrl.LoggerFrom(ctx).Info("Connected member", "member", mc.Name, "server", cfg.Host)
	return acc, nil
}

func (r *Reconciler) ensureMarker(ctx context.Context, acc *clustercache.Accessor, mc *clustersv1.MemberCluster) error {
	ctx, cancel := context.WithTimeout(ctx, mc.Spec.HealthCheck.GetTimeout())
	defer cancel()
	// The typed clientset needs no discovery (a controller-runtime client would build a REST
	// mapper and cache discovery for every member).
	namespaces := acc.Kubernetes.CoreV1().Namespaces()
	ns, err := namespaces.Get(ctx, MarkerNamespace, metav1.GetOptions{})
	if err == nil && !ns.DeletionTimestamp.IsZero() {
		return fmt.Errorf("namespace %s is being deleted", MarkerNamespace)
	}
	if err == nil || !apierrors.IsNotFound(err) {
		return err
	}
	ns = &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name:   MarkerNamespace,
		Labels: map[string]string{ManagedByLabel: ManagedByValue},
	}}
	if _, err := namespaces.Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return nil
}

// cleanupMember removes what Paddock placed in the member: the marker namespace, unless it is not
// Paddock's or another MemberCluster still points at the same cluster.
func (r *Reconciler) cleanupMember(ctx context.Context, mc *clustersv1.MemberCluster) error {
	acc, ok := r.Cache.Peek(mc.Name)
	if !ok {
		var err error
		if acc, err = r.connect(ctx, mc); err != nil {
			return err
		}
	}
	if mc.Status.ClusterID != "" {
		var all clustersv1.MemberClusterList
		if err := r.Client.List(ctx, &all); err != nil {
			return err
		}
		for _, other := range all.Items {
			if other.Name != mc.Name && other.Status.ClusterID == mc.Status.ClusterID && other.DeletionTimestamp.IsZero() {
				return nil // still in use through another MemberCluster
			}
		}
	}
	ctx, cancel := context.WithTimeout(ctx, mc.Spec.HealthCheck.GetTimeout())
	defer cancel()
	namespaces := acc.Kubernetes.CoreV1().Namespaces()
	ns, err := namespaces.Get(ctx, MarkerNamespace, metav1.GetOptions{})
	if err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("reading namespace %s: %w", MarkerNamespace, errors.New(clustercache.Classify(err)+": "+err.Error()))
	}
	if ns.Labels[ManagedByLabel] != ManagedByValue {
		return nil
	}
	if err := namespaces.Delete(ctx, MarkerNamespace, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting namespace %s: %w", MarkerNamespace, err)
	}
	return nil
}
