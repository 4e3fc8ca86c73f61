package membercluster

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
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
	// live and inv are the latest liveness and inventory results through the current connection.
	live *clustercache.LivenessResult
	inv  *clustercache.InventoryResult
	// health is a snapshot of the member's health verdict.
	health health
	// probedConn: a probe through the current connection is in; verified: one confirmed the
	// pinned identity; replaced and hcPending as in memberState.
	probedConn, verified, replaced, hcPending bool
	// pendingEvents are emitted once the status that records them has landed.
	pendingEvents []pendingEvent
	// patchFailed: a status patch of this reconcile failed; the deferred one is skipped.
	patchFailed bool
}

type pendingEvent struct{ eventType, reason, action, msg string }

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
	// only hands the prober the current connection and settings and publishes what it found.
	st := s.state
	r.activate(mc.Name, st, acc, hc)
	st.mu.Lock()
	s.live, s.inv, s.health = st.live, st.inv, st.health
	s.probedConn, s.replaced, s.hcPending = st.probedConn, st.replaced, st.hcPending
	st.pinnedID = mc.Status.ClusterID
	flipped := st.flippedID
	st.mu.Unlock()
	if st.verifiedGen != acc.Generation {
		st.verifiedGen = 0
	}

	if s.live != nil && s.live.Err == nil {
		r.checkIdentity(s, s.live.ClusterID)
		if st.identityMismatch == "" {
			st.verifiedGen = acc.Generation
		}
	} else if flipped != "" {
		// The latest probe failed, but an earlier one through this connection read another
		// cluster: that still holds.
		r.checkIdentity(s, flipped)
		if st.identityMismatch != "" {
			st.verifiedGen = 0
		}
	}
	s.verified = st.verifiedGen == acc.Generation && st.identityMismatch == ""

	usable := s.verified && s.health.Healthy
	if !usable {
		// Taking a member away is safe at any time; only admitting one waits for its status.
		reason := clustersv1.ReasonProbePending
		switch {
		case st.identityMismatch != "":
			reason = clustersv1.ReasonClusterIdentityChanged
		case !s.health.Healthy && s.health.LastFailureReason != "":
			reason = s.health.LastFailureReason
		case !s.health.Healthy:
			reason = clustersv1.ReasonProgressing
		}
		r.Cache.Revoke(mc.Name, reason, st.identityMismatch != "")
		if st.identityMismatch != "" {
			// Revoke stopped the member's watches; when the identity is proven again, the marker
			// is checked and watched anew, also on this same connection.
			st.stopMarkerWatch()
			st.markerGen = 0
		}
	}

	// Status first (it pins the identity), then admission: no controller acts on the member
	// before the status saying which cluster it is has landed.
	if err := r.patchStatus(ctx, s); err != nil {
		if errors.Is(err, errGone) {
			// No status pinned the identity: no admission, no marker namespace.
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, err
	}
	// The prober asks for the next heartbeat write once the lastProbeTime that status holds now
	// is a heartbeat old (a reconcile that wrote nothing does not put it off).
	if t := mc.Status.LastProbeTime; t != nil {
		st.mu.Lock()
		st.lastPublished = t.Time
		st.mu.Unlock()
	}
	if usable && r.admit(st, acc, mc.Status.ClusterID) {
		if st.markerLost.Swap(false) {
			st.markerGen = 0
		}
		if st.markerGen != acc.Generation {
			if err := r.ensureMarker(ctx, acc, mc); err != nil {
				log.Info("Could not create the marker namespace; retrying", "member", mc.Name, "reason", sanitizeMessage(err.Error()))
				return ctrl.Result{RequeueAfter: retryInterval(hc) * 5}, nil
			}
			st.markerGen = acc.Generation
		}
		if err := r.watchMarker(ctx, mc.Name, st, acc); err != nil {
			log.Info("Could not watch the marker namespace; retrying", "member", mc.Name, "reason", sanitizeMessage(err.Error()))
			return ctrl.Result{RequeueAfter: retryInterval(hc) * 5}, nil
		}
	}
	// The prober requeues this member when something visible changes or the heartbeat is due;
	// this is a safety net, due just after the heartbeat.
	return ctrl.Result{RequeueAfter: r.heartbeat(mc.UID) + hc.GetPeriod()}, nil
}

// admit makes the connection usable unless a probe that landed since the snapshot read another
// cluster. It runs under st.mu, as does the prober's revocation, so neither can slip past the other.
func (r *Reconciler) admit(st *memberState, acc *clustercache.Accessor, clusterID string) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.pinnedID = clusterID
	if st.acc != acc || st.live == nil || st.flippedID != "" || (st.live.Err == nil && st.live.ClusterID != clusterID) {
		return false
	}
	return r.Cache.Admit(acc, clusterID)
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
		s.pendingEvents = append(s.pendingEvents, pendingEvent{corev1.EventTypeNormal, "ClusterIdentityAccepted", "Probe",
			fmt.Sprintf("Accepted new cluster identity %s (was %s) as confirmed by annotation %s", observed, st.ClusterID, clustersv1.AcceptClusterIDAnnotation)})
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
	if len(r.SecretNamespaces) > 0 && !slices.Contains(r.SecretNamespaces, ref.Namespace) {
		return nil, &clustercache.PolicyError{Reason: clustersv1.ReasonSecretNamespaceNotAllowed,
			Message: fmt.Sprintf("kubeconfig Secrets are read only in the namespaces %s (--kubeconfig-secret-namespaces), not in %q",
				strings.Join(r.SecretNamespaces, ", "), ref.Namespace)}
	}
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
	// The connection is rebuilt only when what it is built from changed: the Secret's data under
	// the key, the context, or the Secret itself (deleted and recreated). Its resourceVersion also
	// changes with a label or annotation edit (External Secrets, Argo CD and others write those
	// routinely), which must not cost a reconnect and a new identity proof; it only tells when
	// the data must be read again.
	seen := fmt.Sprintf("%s/%s/%s/%s", meta.UID, meta.ResourceVersion, key, mc.Spec.Attach.Context)
	if acc, ok := r.Cache.Peek(mc.Name); ok {
		r.mu.Lock()
		last := r.secrets[mc.Name]
		r.mu.Unlock()
		if last.seen == seen && last.version == acc.Version {
			return acc, nil
		}
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
	sum := sha256.Sum256(data)
	version := fmt.Sprintf("%s/%x/%s/%s", secret.UID, sum, key, mc.Spec.Attach.Context)
	remember := func() {
		r.mu.Lock()
		r.secrets[mc.Name] = secretSeen{seen: seen, version: version}
		r.mu.Unlock()
	}
	if acc, ok := r.Cache.Peek(mc.Name); ok && acc.Version == version {
		remember()
		return acc, nil
	}
	cfg, err := r.Policy.Load(data, mc.Spec.Attach.Context)
	if err != nil {
		return nil, err
	}
	acc, err := r.Cache.Connect(mc.Name, version, cfg)
	if err != nil {
		return nil, err
	}
	remember()
	ctrl.LoggerFrom(ctx).Info("Connected member", "member", mc.Name, "server", cfg.Host)
	return acc, nil
}

// markerWatch watches the marker namespace (metadata only, by name and label) in a member.
var markerWatch = clustercache.WatchSpec{
	Resource:      corev1.SchemeGroupVersion.WithResource("namespaces"),
	LabelSelector: ManagedByLabel + "=" + ManagedByValue,
	FieldSelector: "metadata.name=" + MarkerNamespace,
}

// watchMarker watches the marker namespace through the member's current connection, so a
// hand-deleted paddock-system comes back at once (the watch is shared through the access layer,
// and stops with the connection).
func (r *Reconciler) watchMarker(ctx context.Context, name string, st *memberState, acc *clustercache.Accessor) error {
	gen := acc.Generation
	st.mu.Lock()
	// Current unless the access layer ended it (a revoke this reconcile did not see, for one).
	current := st.markerWatchGen == gen && st.markerEndedGen.Load() != gen
	st.mu.Unlock()
	if current {
		return nil
	}
	st.stopMarkerWatch()
	// Cleared before the watch starts, so an end right after it started is not lost.
	st.markerEndedGen.CompareAndSwap(gen, 0)
	stop, err := r.Cache.Watch(ctx, name, markerWatch, func(ev clustercache.WatchEvent) {
		if ev.Type == watch.Error {
			// The watch ended: watch again once the member is usable.
			st.markerEndedGen.Store(gen)
			r.requeue(name)
			return
		}
		if ev.Type == watch.Deleted || !ev.Object.DeletionTimestamp.IsZero() {
			st.markerLost.Store(true)
			r.requeue(name)
		}
	})
	if err != nil {
		return err
	}
	st.mu.Lock()
	st.markerWatchGen, st.markerStop = gen, stop
	st.mu.Unlock()
	return nil
}

func (r *Reconciler) ensureMarker(ctx context.Context, acc *clustercache.Accessor, mc *clustersv1.MemberCluster) error {
	ctx, cancel := context.WithTimeout(ctx, mc.Spec.HealthCheck.GetTimeout())
	defer cancel()
	// The typed clientset needs no discovery (a controller-runtime client would build a REST
	// mapper and cache discovery for every member).
	core, err := acc.CoreV1()
	if err != nil {
		return err
	}
	namespaces := core.Namespaces()
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

type cleanupOutcome int

// inUseError: the member's cluster is still managed through another MemberCluster, so what
// Paddock placed there stays.
type inUseError struct{ other string }

func (e *inUseError) Error() string {
	return fmt.Sprintf("left what Paddock placed in the member in place: MemberCluster %s still manages the same cluster", e.other)
}

const (
	// cleanupDone: what Paddock placed in the member was removed (or was not there).
	cleanupDone cleanupOutcome = iota
	// cleanupRetry: the member could not be reached; retry until the grace period ends.
	cleanupRetry
	// cleanupSkipped: there is nothing Paddock may safely do in the member (identity never pinned
	// or changed, kubeconfig gone or refused, still in use through another MemberCluster).
	cleanupSkipped
)

// cleanupMember removes what Paddock placed in the member: the marker namespace, unless it is not
// Paddock's or another MemberCluster still points at the same cluster. Right before deleting it
// reads the kube-system UID again through the connection it deletes with, and skips on a mismatch:
// a Secret re-pointed at another cluster must not make us delete there.
func (r *Reconciler) cleanupMember(ctx context.Context, mc *clustersv1.MemberCluster) (cleanupOutcome, error) {
	if mc.Status.ClusterID == "" {
		// Never pinned, so nothing was ever placed there (the marker waits for admission).
		return cleanupSkipped, nil
	}
	acc, ok := r.Cache.Peek(mc.Name)
	if !ok {
		var err error
		if acc, err = r.connect(ctx, mc); err != nil {
			if pe, ok := clustercache.IsPolicyError(err); ok {
				return cleanupSkipped, fmt.Errorf("released without cleaning up the member: its kubeconfig is not usable (%s: %s)", pe.Reason, pe.Message)
			}
			return cleanupRetry, err
		}
	}
	var all clustersv1.MemberClusterList
	if err := r.Client.List(ctx, &all); err != nil {
		return cleanupRetry, err
	}
	for _, other := range all.Items {
		if other.Name != mc.Name && other.Status.ClusterID == mc.Status.ClusterID && other.DeletionTimestamp.IsZero() {
			return cleanupSkipped, &inUseError{other: other.Name}
		}
	}
	ctx, cancel := context.WithTimeout(ctx, mc.Spec.HealthCheck.GetTimeout())
	defer cancel()
	res := acc.ProbeLiveness(ctx)
	if res.Err != nil {
		return cleanupRetry, fmt.Errorf("%s: %w", res.Reason, res.Err)
	}
	if res.ClusterID != mc.Status.ClusterID {
		return cleanupSkipped, fmt.Errorf("skipped cleaning up the member: the kubeconfig now reaches a different cluster (kube-system UID %s, expected %s), so nothing was deleted there",
			res.ClusterID, mc.Status.ClusterID)
	}
	// Proven just now: open the connection's gate for cleanup. Marked deleting first (the entry
	// may be new: connected just above), so the admission never makes it usable for Get.
	r.Cache.BeginCleanup(mc.Name)
	if !r.Cache.Admit(acc, res.ClusterID) {
		return cleanupRetry, errors.New("the member's connection was replaced during cleanup")
	}
	core, err := acc.CoreV1()
	if err != nil {
		return cleanupRetry, err
	}
	namespaces := core.Namespaces()
	ns, err := namespaces.Get(ctx, MarkerNamespace, metav1.GetOptions{})
	if err != nil {
		if apierrors.IsNotFound(err) {
			return cleanupDone, nil
		}
		return cleanupRetry, fmt.Errorf("reading namespace %s: %w", MarkerNamespace, errors.New(clustercache.Classify(err)+": "+err.Error()))
	}
	if ns.Labels[ManagedByLabel] != ManagedByValue {
		return cleanupDone, nil
	}
	// Preconditioned on the UID just read: never delete a namespace someone recreated meanwhile.
	uid := ns.UID
	if err := namespaces.Delete(ctx, MarkerNamespace, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}}); err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return cleanupRetry, fmt.Errorf("deleting namespace %s: %w", MarkerNamespace, err)
	}
	return cleanupDone, nil
}
