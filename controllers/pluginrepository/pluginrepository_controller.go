package pluginrepository

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
	pluginsv1 "github.com/paddock-dev/paddock/api/plugins/v1alpha1"
	"github.com/paddock-dev/paddock/internal/chartrepo"
)

// secretIndex indexes PluginRepositories by the name of their credentials Secret.
const secretIndex = "spec.secretRef.name"

// DefaultRetryInterval is how soon a failed fetch is tried again (or spec.interval if shorter).
const DefaultRetryInterval = time.Minute

// Reconciler reconciles PluginRepository objects. It owns no objects anywhere: what it builds
// (the parsed index, the credentials) lives in Store, so deleting a PluginRepository needs no
// finalizer and can never wedge.
type Reconciler struct {
	// Client reads PluginRepositories and Secret metadata from the cache and writes status.
	Client client.Client
	// APIReader reads the credentials Secret's data uncached.
	APIReader client.Reader
	// Recorder emits events.
	Recorder events.EventRecorder
	// Fetcher reaches repositories under the address policy and limits.
	Fetcher *chartrepo.Fetcher
	// Store receives every repository's last good index, for the controllers that install charts.
	Store *chartrepo.Store
	// SecretNamespace is where credentials Secrets live (the manager's namespace).
	SecretNamespace string
	// RetryInterval overrides DefaultRetryInterval (tests).
	RetryInterval time.Duration
	// Clock is injectable for tests.
	Clock clock.PassiveClock
}

// +kubebuilder:rbac:groups=plugins.paddock.dev,resources=pluginrepositories,verbs=get;list;watch
// +kubebuilder:rbac:groups=plugins.paddock.dev,resources=pluginrepositories/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=clusters.paddock.dev,resources=memberclusters,verbs=get;list;watch
// Credentials Secrets are read only in the manager's namespace (a namespaced Role in the chart).

// SetupWithManager registers the controller.
func (r *Reconciler) SetupWithManager(ctx context.Context, mgr ctrl.Manager, opts controller.Options) error {
	if r.Clock == nil {
		r.Clock = clock.RealClock{}
	}
	if r.Store == nil {
		return fmt.Errorf("the PluginRepository controller needs a Store")
	}
	if err := mgr.GetFieldIndexer().IndexField(ctx, &pluginsv1.PluginRepository{}, secretIndex, func(o client.Object) []string {
		repo := o.(*pluginsv1.PluginRepository)
		if repo.Spec.SecretRef == nil {
			return nil
		}
		return []string{repo.Spec.SecretRef.Name}
	}); err != nil {
		return fmt.Errorf("indexing PluginRepositories by Secret: %w", err)
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("pluginrepository").
		For(&pluginsv1.PluginRepository{}, builder.WithPredicates(predicate.Or(
			predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		WatchesMetadata(&corev1.Secret{}, handler.EnqueueRequestsFromMapFunc(r.repositoriesForSecret)).
		WithOptions(opts).
		Complete(r)
}

func (r *Reconciler) repositoriesForSecret(ctx context.Context, o client.Object) []reconcile.Request {
	if o.GetNamespace() != r.SecretNamespace {
		return nil
	}
	var list pluginsv1.PluginRepositoryList
	if err := r.Client.List(ctx, &list, client.MatchingFields{secretIndex: o.GetName()}); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "Failed to list PluginRepositories for Secret")
		return nil
	}
	reqs := make([]reconcile.Request, 0, len(list.Items))
	for _, repo := range list.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Name: repo.Name}})
	}
	return reqs
}

// Reconcile fetches one repository and reports the result.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	log := ctrl.LoggerFrom(ctx)
	repo := &pluginsv1.PluginRepository{}
	if err := r.Client.Get(ctx, req.NamespacedName, repo); err != nil {
		if apierrors.IsNotFound(err) {
			r.Store.Delete(req.Name)
			forgetMetrics(req.Name)
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, err
	}
	if !repo.DeletionTimestamp.IsZero() {
		r.Store.Delete(repo.Name)
		forgetMetrics(repo.Name)
		return ctrl.Result{}, nil
	}
	prev, _ := r.Store.Get(repo.Name)
	if prev != nil && prev.UID != repo.UID {
		// Recreated under the same name: nothing of the old one serves the new one.
		r.Store.Delete(repo.Name)
		prev = nil
	}
	s := &scope{repo: repo, orig: repo.DeepCopy(), prev: prev, cur: prev}
	defer func() {
		if err := r.patchStatus(ctx, s); err != nil {
			log.Error(err, "Failed to patch PluginRepository status")
		}
	}()

	// Suspended: no fetch, unless this process has nothing to serve yet (after a restart the
	// last good index lives only in the last fetch).
	if repo.Spec.Suspend && prev != nil {
		s.suspended = true
		return ctrl.Result{}, nil
	}
	r.fetch(ctx, s)
	if ctx.Err() != nil {
		// The manager is stopping: this pass says nothing about the repository.
		s.aborted = true
		return ctrl.Result{}, nil
	}
	if s.failure != nil && s.terminal {
		// Only a change to the spec or the Secret (both watched) can fix it.
		return ctrl.Result{}, nil
	}
	if repo.Spec.Suspend {
		s.suspended = true
		return ctrl.Result{}, nil
	}
	if s.failure != nil {
		return ctrl.Result{RequeueAfter: r.retryInterval(repo)}, nil
	}
	return ctrl.Result{RequeueAfter: jitter(repo.Spec.GetInterval())}, nil
}

// scope is one reconcile's state.
type scope struct {
	repo, orig *pluginsv1.PluginRepository
	prev       *chartrepo.Source
	// cur is the Source serving after this pass (prev when the fetch failed).
	cur *chartrepo.Source
	// failure is why this pass's fetch failed; terminal when retrying cannot help.
	failure  *chartrepo.Error
	terminal bool
	// updated: the index or registry changed in this pass.
	updated   bool
	suspended bool
	// aborted: the pass was cancelled (shutdown) and writes nothing.
	aborted bool
}

// terminalReasons are failures only a spec or Secret change can fix.
var terminalReasons = map[string]bool{
	pluginsv1.ReasonURLNotAllowed:       true,
	pluginsv1.ReasonInsecureCredentials: true,
	pluginsv1.ReasonSecretNotFound:      true,
	pluginsv1.ReasonSecretInvalid:       true,
}

func (r *Reconciler) fetch(ctx context.Context, s *scope) {
	repo := s.repo
	s.cur = s.prev
	creds, err := r.credentials(ctx, repo)
	if err != nil {
		s.fail(err)
		if reason := s.failure.Reason; s.prev != nil && s.prev.Credentials.Authenticates() &&
			(reason == pluginsv1.ReasonSecretNotFound || reason == pluginsv1.ReasonSecretInvalid) {
			// Withdrawn credentials are not used again: the last good index keeps serving
			// what is cached, without them.
			s.cur = s.prev.WithoutCredentials()
			r.Store.Set(repo.Name, s.cur)
		}
		return
	}
	start := r.Clock.Now()
	defer func() { fetchDuration.WithLabelValues(repo.Name).Observe(r.Clock.Since(start).Seconds()) }()
	src := &chartrepo.Source{UID: repo.UID, URL: repo.Spec.URL, Type: string(repo.Spec.Type), Credentials: creds}
	switch repo.Spec.Type {
	case pluginsv1.RepositoryTypeOCI:
		reg, err := chartrepo.NewRegistry(r.Fetcher.Options, repo.Spec.URL, creds, repo.Spec.Insecure)
		if err == nil {
			err = reg.Ping(ctx)
		}
		if err != nil {
			s.fail(err)
			return
		}
		src.Registry = reg
		s.updated = s.prev == nil || s.prev.URL != src.URL || s.prev.Registry == nil
	default:
		var prevIndex *chartrepo.Index
		if s.prev != nil && s.prev.URL == repo.Spec.URL {
			prevIndex = s.prev.Index
		}
		idx, changed, err := r.Fetcher.FetchIndex(ctx, repo.Spec.URL, creds, prevIndex)
		if err != nil {
			s.fail(err)
			return
		}
		if changed {
			indexParses.WithLabelValues(repo.Name).Inc()
		}
		src.Index = idx
		s.updated = s.prev == nil || s.prev.Index == nil || s.prev.Index.Digest != idx.Digest
		indexBytes.WithLabelValues(repo.Name).Set(float64(idx.Size))
	}
	src.FetchedAt = r.Clock.Now()
	r.Store.Set(repo.Name, src)
	s.cur = src
	result := "unchanged"
	if s.updated {
		result = "updated"
	}
	fetchesTotal.WithLabelValues(repo.Name, result).Inc()
}

func (s *scope) fail(err error) {
	e := chartrepo.AsError(err)
	s.failure, s.terminal = e, terminalReasons[e.Reason]
	fetchesTotal.WithLabelValues(s.repo.Name, e.Reason).Inc()
}

// credentials reads spec.secretRef (nil: anonymous).
func (r *Reconciler) credentials(ctx context.Context, repo *pluginsv1.PluginRepository) (chartrepo.Credentials, error) {
	if repo.Spec.SecretRef == nil {
		return chartrepo.Credentials{}, nil
	}
	nn := types.NamespacedName{Namespace: r.SecretNamespace, Name: repo.Spec.SecretRef.Name}
	secret := &corev1.Secret{}
	if err := r.APIReader.Get(ctx, nn, secret); err != nil {
		if apierrors.IsNotFound(err) {
			return chartrepo.Credentials{}, &chartrepo.Error{Reason: pluginsv1.ReasonSecretNotFound,
				Message: fmt.Sprintf("Secret %s does not exist (credentials Secrets live in the manager's namespace, %s)", nn, r.SecretNamespace)}
		}
		return chartrepo.Credentials{}, &chartrepo.Error{Reason: pluginsv1.ReasonRepositoryNotReachable,
			Message: fmt.Sprintf("reading Secret %s failed: %s", nn, apierrors.ReasonForError(err))}
	}
	// Secrets that are credentials of something else are never sent to a repository: whoever may
	// write a PluginRepository names a Secret and a URL, and could otherwise collect them.
	if secret.Type == corev1.SecretTypeServiceAccountToken || secret.Labels["app.kubernetes.io/managed-by"] == "paddock" ||
		secret.Type == "cluster.x-k8s.io/secret" || secret.Labels["cluster.x-k8s.io/cluster-name"] != "" {
		return chartrepo.Credentials{}, &chartrepo.Error{Reason: pluginsv1.ReasonSecretInvalid,
			Message: fmt.Sprintf("Secret %s is not a repository credentials Secret (a ServiceAccount token, a Cluster API cluster's, or one Paddock manages); create one for the repository", nn)}
	}
	// Nor a member's kubeconfig Secret (a bearer token in it would do as a repository's).
	var members clustersv1.MemberClusterList
	if err := r.Client.List(ctx, &members); err != nil {
		// Retried (as a Secret that could not be read is); nothing is sent meanwhile.
		return chartrepo.Credentials{}, &chartrepo.Error{Reason: pluginsv1.ReasonRepositoryNotReachable,
			Message: "listing MemberClusters (to refuse their kubeconfig Secrets) failed: " + string(apierrors.ReasonForError(err))}
	}
	for _, mc := range members.Items {
		if a := mc.Spec.Attach; a != nil && a.KubeconfigSecretRef.Namespace == nn.Namespace && a.KubeconfigSecretRef.Name == nn.Name {
			return chartrepo.Credentials{}, &chartrepo.Error{Reason: pluginsv1.ReasonSecretInvalid,
				Message: fmt.Sprintf("Secret %s is MemberCluster %s's kubeconfig, not a repository credentials Secret; create one for the repository", nn, mc.Name)}
		}
	}
	return chartrepo.CredentialsFromSecret(nn.String(), secret.Data)
}

func (r *Reconciler) retryInterval(repo *pluginsv1.PluginRepository) time.Duration {
	d := r.RetryInterval
	if d <= 0 {
		d = DefaultRetryInterval
	}
	if i := repo.Spec.GetInterval(); i < d {
		d = i
	}
	return jitter(d)
}

// jitter spreads fetches of repositories created together by up to 10%.
func jitter(d time.Duration) time.Duration {
	return d + time.Duration(rand.Int64N(int64(d)/10+1))
}
