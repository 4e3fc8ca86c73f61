// Package clustercache is Paddock's one way into member clusters. From a MemberCluster's validated
// kubeconfig it builds one Accessor (a connection: one shared transport, the clients built on it)
// per kubeconfig version, and tells other controllers whether they may act on a member right now.
//
// A connection is usable only once the MemberCluster controller has admitted it: a probe through
// *this* connection read the member's clusterID, it matched the identity pinned in status, and the
// status that records it has landed. A rebuilt connection (a changed Secret, an unpause, a fixed
// kubeconfig, a manager restart) starts unadmitted, so no controller acts on a cluster whose
// identity is unproven.
//
// The API has two sides. Reader is what every controller gets: Get a usable member, GetForCleanup
// while its MemberCluster is being deleted, and Subscribe to usability changes. The write side
// (Connect, Admit, Revoke, BeginCleanup, Disconnect, Peek) is for the MemberCluster controller only.
package clustercache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/flowcontrol"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
)

// ErrNotConnected is returned by Get for a member the cache has no connection for (not yet
// attached, kubeconfig invalid, or deleted).
var ErrNotConnected = errors.New("member cluster is not connected")

// Reasons a connected member is not usable, beside the MemberCluster Ready reasons.
const (
	// ReasonProbePending: the connection is new and no probe through it has confirmed the
	// member's identity yet.
	ReasonProbePending = clustersv1.ReasonProbePending
	// ReasonDeleting: the MemberCluster is being deleted; only cleanup may use it (GetForCleanup).
	ReasonDeleting = clustersv1.ReasonDeleting
)

// NotReadyError is returned by Get for a connected member that must not be acted on now.
type NotReadyError struct {
	Member string
	// Reason is a MemberCluster Ready reason (ClusterNotReachable, ClusterIdentityChanged, Paused,
	// ...) or ProbePending / Deleting.
	Reason string
}

func (e *NotReadyError) Error() string {
	return fmt.Sprintf("member cluster %q is not ready: %s", e.Member, e.Reason)
}

// IsNotReady tells whether err is a *NotReadyError and returns it.
func IsNotReady(err error) (*NotReadyError, bool) {
	var nre *NotReadyError
	ok := errors.As(err, &nre)
	return nre, ok
}

// Reader is the read side of the cache, for every controller that acts on members.
type Reader interface {
	// Get returns the member's accessor when the member may be acted on now: connected, its
	// identity confirmed through this very connection, Ready, not paused and not being deleted.
	// Otherwise ErrNotConnected or a *NotReadyError.
	Get(ctx context.Context, name string) (*Accessor, error)
	// GetForCleanup returns the member's accessor while its MemberCluster is being deleted (or is
	// usable), so dependants can remove what they placed there before the MemberCluster's
	// finalizer goes. It never returns a connection whose identity was not confirmed.
	GetForCleanup(ctx context.Context, name string) (*Accessor, error)
	// Subscribe returns a channel that receives an event (object name = member name) whenever a
	// member's usability may have changed. Events are coalesced per member and never dropped.
	Subscribe() <-chan event.GenericEvent
	// Watch starts or joins a shared metadata watch of spec in a usable member (see
	// ClusterCache.Watch).
	Watch(ctx context.Context, member string, spec WatchSpec, h WatchHandler) (stop func(), err error)
	// WaitForWatchSynced waits until the member's watch of spec has listed once.
	WaitForWatchSynced(ctx context.Context, member string, spec WatchSpec) error
}

// Writer is the write side, for the MemberCluster controller only: it connects members, admits a
// connection once a probe through it has confirmed the pinned identity, revokes and disconnects.
// Other controllers get a Reader.
type Writer interface {
	Reader
	Connect(name, version string, cfg *rest.Config) (*Accessor, error)
	Admit(acc *Accessor, clusterID string) bool
	Revoke(name, reason string, forgetIdentity bool)
	RevokeFlipped(acc *Accessor, observedID string) bool
	BeginCleanup(name string)
	Disconnect(name string)
	Peek(name string) (*Accessor, bool)
	AdmittedID(name string) string
}

var (
	_ Reader = (*ClusterCache)(nil)
	_ Writer = (*ClusterCache)(nil)
)

// Options configure every member's clients.
type Options struct {
	// Scheme for the member clients.
	Scheme *runtime.Scheme
	// QPS and Burst per member for work clients (client-go's 5/10 default throttles real work).
	QPS   float32
	Burst int
	// Timeout bounds every request of the work clients, watches through them included; Watch
	// uses a client without it.
	Timeout time.Duration
	// ProbeQPS and ProbeBurst are the probes' own limiter, so that work on a member never delays
	// its probes (default 5 and 10).
	ProbeQPS   float32
	ProbeBurst int
	// MaxResponseBytes caps any one response body from a member read by work clients (default
	// 128 MiB). Probes have their own, smaller caps.
	MaxResponseBytes int64
	// WrapTransport, if set, wraps every member's transport (metrics, fault injection in benchmarks).
	WrapTransport func(member string, rt http.RoundTripper) http.RoundTripper
}

// Response caps of the probe clients.
const (
	// DefaultMaxResponseBytes caps a work client's response.
	DefaultMaxResponseBytes int64 = 128 << 20
	// LivenessMaxResponseBytes caps /readyz, kube-system and every error body of a probe.
	LivenessMaxResponseBytes int64 = 1 << 20
	// InventoryMaxResponseBytes caps the node list (JSON from the watch cache, decoded one node
	// at a time, so it bounds bytes read, not memory: 5,000 bare envtest nodes are 8.8 MiB; real
	// nodes, with up to 50 images in status, can be 15 KiB each).
	InventoryMaxResponseBytes int64 = 256 << 20
)

var generations atomic.Uint64

// Accessor is one connection to a member: the clients built on one shared transport from one
// kubeconfig version. A new kubeconfig version makes a new Accessor.
type Accessor struct {
	// Name of the MemberCluster.
	Name string
	// Version identifies the kubeconfig the clients were built from (Secret UID/resourceVersion,
	// key and context); a different version rebuilds them.
	Version string
	// Generation is unique per Accessor in this process.
	Generation uint64
	// Config is the member's rest.Config for work (do not mutate). Its transport is shared by every
	// client of this Accessor: build clients with HTTPClient(), never from Config alone.
	Config     *rest.Config
	httpClient *http.Client
	scheme     *runtime.Scheme
	// open is the gate of the work clients: set while the connection is admitted.
	open atomic.Bool
	// gateMu guards gateCtx, which is cancelled when the gate closes: requests that passed the
	// gate while it was open (a watch, a Helm wait, a log follow) end with it.
	gateMu     sync.Mutex
	gateCtx    context.Context
	gateCancel context.CancelFunc
	// liveness and inventory are the probes' REST clients (own limiter, response caps).
	liveness  rest.Interface
	inventory rest.Interface

	// Clients are built on first use: a full clientset is some fifty REST clients, about 30 KiB a
	// member that members which are only probed never need, and a controller-runtime client's
	// REST mapper runs discovery against the member.
	client    lazy[client.Client]
	kube      lazy[kubernetes.Interface]
	core      lazy[corev1client.CoreV1Interface]
	watchREST lazy[rest.Interface]
}

// lazy is a value built once, on first use, with the error of that build.
type lazy[T any] struct {
	once sync.Once
	v    T
	err  error
}

// get builds the value with build (what names the error: "clientset", "core client"...) once.
func (l *lazy[T]) get(a *Accessor, what string, build func() (T, error)) (T, error) {
	l.once.Do(func() {
		l.v, l.err = build()
		if l.err != nil {
			l.err = fmt.Errorf("building %s for member %q: %w", what, a.Name, l.err)
		}
	})
	return l.v, l.err
}

// Kubernetes returns a typed clientset for work on the member, built on first use.
func (a *Accessor) Kubernetes() (kubernetes.Interface, error) {
	return a.kube.get(a, "clientset", func() (kubernetes.Interface, error) {
		return kubernetes.NewForConfigAndClient(a.Config, a.httpClient)
	})
}

// CoreV1 returns a typed client of the core API group only (one REST client), built on first use.
func (a *Accessor) CoreV1() (corev1client.CoreV1Interface, error) {
	return a.core.get(a, "core client", func() (corev1client.CoreV1Interface, error) {
		return corev1client.NewForConfigAndClient(a.Config, a.httpClient)
	})
}

// Discovery returns a discovery client for the member (uncached), built on each call.
func (a *Accessor) Discovery() (discovery.DiscoveryInterface, error) {
	return discovery.NewDiscoveryClientForConfigAndClient(a.Config, a.httpClient)
}

// HTTPClient is the member's shared HTTP client (one connection pool per member): build further
// clients on it with rest.Config from Config.
func (a *Accessor) HTTPClient() *http.Client { return a.httpClient }

// Client returns a controller-runtime client for the member (uncached), built on first use.
func (a *Accessor) Client() (client.Client, error) {
	return a.client.get(a, "client", func() (client.Client, error) {
		return client.New(a.Config, client.Options{Scheme: a.scheme, HTTPClient: a.httpClient})
	})
}

type entry struct {
	acc *Accessor
	// admittedID is the clusterID a probe through acc confirmed and the controller admitted;
	// empty until then.
	admittedID string
	ready      bool
	reason     string
	deleting   bool
}

// unadmitted is the error for a connection whose identity is not confirmed yet.
func (e *entry) unadmitted(name string) error {
	reason := e.reason
	if reason == "" {
		reason = ReasonProbePending
	}
	return &NotReadyError{Member: name, Reason: reason}
}

func (e *entry) usable() bool { return e.admittedID != "" && e.ready && !e.deleting }

// ClusterCache caches one Accessor per MemberCluster name. It is safe for concurrent use.
type ClusterCache struct {
	opts Options

	mu      sync.RWMutex
	members map[string]*entry
	subs    []*subscriber
	// watches by member name.
	watches    map[string]map[watchKey]*sharedWatch
	watchCount int
	// timing overrides the watches' pacing (tests).
	timing *watchTiming
}

// New returns an empty ClusterCache.
func New(opts Options) *ClusterCache {
	if opts.QPS <= 0 {
		opts.QPS = 20
	}
	if opts.Burst <= 0 {
		opts.Burst = 40
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 30 * time.Second
	}
	if opts.ProbeQPS <= 0 {
		opts.ProbeQPS = 5
	}
	if opts.ProbeBurst <= 0 {
		opts.ProbeBurst = 10
	}
	if opts.MaxResponseBytes <= 0 {
		opts.MaxResponseBytes = DefaultMaxResponseBytes
	}
	return &ClusterCache{opts: opts, members: map[string]*entry{}}
}

// Connect returns the member's Accessor, building a new one from cfg when none exists or the
// version differs. cfg must come from Policy.Load. A new Accessor is not usable until Admit.
func (c *ClusterCache) Connect(name, version string, cfg *rest.Config) (*Accessor, error) {
	c.mu.RLock()
	e, ok := c.members[name]
	c.mu.RUnlock()
	if ok && e.acc.Version == version {
		return e.acc, nil
	}
	acc, err := c.build(name, version, cfg)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	old := c.members[name]
	ne := &entry{acc: acc, reason: ReasonProbePending}
	if old != nil {
		ne.deleting = old.deleting
		old.acc.closeGate()
	}
	c.members[name] = ne
	c.stopWatches(name, acc.Generation)
	c.mu.Unlock()
	if old != nil {
		old.acc.close()
		if old.admittedID != "" {
			c.notify(name)
		}
	}
	return acc, nil
}

func (c *ClusterCache) build(name, version string, in *rest.Config) (*Accessor, error) {
	cfg := rest.CopyConfig(in)
	cfg.QPS = c.opts.QPS
	cfg.Burst = c.opts.Burst
	cfg.Timeout = c.opts.Timeout
	// One rate limiter shared by all work clients of this member.
	cfg.RateLimiter = flowcontrol.NewTokenBucketRateLimiter(c.opts.QPS, c.opts.Burst)
	cfg.UserAgent = "paddock-manager"
	if c.opts.WrapTransport != nil {
		wrap := c.opts.WrapTransport
		cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { return wrap(name, rt) })
	}
	rt, err := rest.TransportFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("building transport for member %q: %w", name, err)
	}
	acc := &Accessor{Name: name, Version: version, Generation: generations.Add(1), Config: cfg, scheme: c.opts.Scheme}
	// One transport (one connection pool) per member. Redirects are never followed: a member
	// must not be able to send our credentials to another host.
	shared := func(limit int64, timeout time.Duration) *http.Client {
		return &http.Client{Transport: &capTransport{next: noRedirects{next: rt}, limit: limit}, Timeout: timeout, CheckRedirect: refuseRedirect}
	}
	// Work clients (and watches, and everything built from the RESTClientGetter) go through the
	// accessor's gate: closed until the connection is admitted and again once it is revoked for
	// a changed identity, replaced or dropped, so a client someone kept from an earlier Get can
	// never act on a cluster whose identity is not the admitted one. Probes bypass it.
	httpClient := shared(c.opts.MaxResponseBytes, c.opts.Timeout)
	httpClient.Transport = &gateTransport{next: httpClient.Transport, acc: acc}
	// Probe clients: their own limiter, no client timeout (each probe's context bounds it).
	probeCfg := rest.CopyConfig(cfg)
	probeCfg.RateLimiter = flowcontrol.NewTokenBucketRateLimiter(c.opts.ProbeQPS, c.opts.ProbeBurst)
	probeCfg.Timeout = 0
	probeCfg.GroupVersion = &schema.GroupVersion{Version: "v1"}
	probeCfg.APIPath = "/api"
	probeCfg.NegotiatedSerializer = clientgoscheme.Codecs.WithoutConversion()
	liveness, err := rest.RESTClientForConfigAndClient(probeCfg, shared(LivenessMaxResponseBytes, 0))
	if err != nil {
		return nil, fmt.Errorf("building probe client for member %q: %w", name, err)
	}
	invCfg := rest.CopyConfig(probeCfg)
	// Nodes are read as JSON and decoded one at a time into a few fields (see ProbeInventory):
	// with real nodes' managedFields, protobuf saved nothing measurable (hack/bench -nodes 5000),
	// and decoding full Nodes parses every quantity a member sends before it can be checked.
	inventory, err := rest.RESTClientForConfigAndClient(invCfg, shared(InventoryMaxResponseBytes, 0))
	if err != nil {
		return nil, fmt.Errorf("building inventory client for member %q: %w", name, err)
	}
	acc.httpClient, acc.liveness, acc.inventory = httpClient, liveness, inventory
	return acc, nil
}

// ErrConnectionNotAdmitted is returned by a work client whose connection is not (or no longer)
// admitted: not yet probed, revoked because the member's identity changed, replaced by a new
// kubeconfig version, or disconnected.
var ErrConnectionNotAdmitted = errors.New("the member's connection is not admitted (identity unconfirmed or changed, or the connection was replaced); get a fresh accessor")

// gateTransport refuses every request while its accessor's gate is closed.
type gateTransport struct {
	next http.RoundTripper
	acc  *Accessor
}

func (g *gateTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	gate := g.acc.gate()
	if gate == nil {
		if req.Body != nil {
			_ = req.Body.Close()
		}
		return nil, fmt.Errorf("%w: member %s", ErrConnectionNotAdmitted, g.acc.Name)
	}
	// The request ends when the gate closes, also after its response has begun.
	ctx, cancel := context.WithCancelCause(req.Context())
	stop := context.AfterFunc(gate, func() { cancel(ErrConnectionNotAdmitted) })
	resp, err := g.next.RoundTrip(req.WithContext(ctx))
	if err != nil || resp.Body == nil {
		stop()
		cancel(nil)
		return resp, err
	}
	resp.Body = &gatedBody{ReadCloser: resp.Body, done: func() { stop(); cancel(nil) }}
	return resp, nil
}

// gatedBody releases the request's gate watch when the body is closed.
type gatedBody struct {
	io.ReadCloser
	once sync.Once
	done func()
}

func (b *gatedBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(b.done)
	return err
}

// openGate opens the accessor's gate (a new context for the requests it lets through).
func (a *Accessor) openGate() {
	a.gateMu.Lock()
	defer a.gateMu.Unlock()
	if a.gateCtx == nil {
		a.gateCtx, a.gateCancel = context.WithCancel(context.Background())
	}
	a.open.Store(true)
}

// closeGate closes the gate and ends every request that passed it.
func (a *Accessor) closeGate() {
	a.gateMu.Lock()
	defer a.gateMu.Unlock()
	a.open.Store(false)
	if a.gateCancel != nil {
		a.gateCancel()
	}
	a.gateCtx, a.gateCancel = nil, nil
}

// gate returns the context of the open gate, or nil while it is closed.
func (a *Accessor) gate() context.Context {
	a.gateMu.Lock()
	defer a.gateMu.Unlock()
	if !a.open.Load() {
		return nil
	}
	return a.gateCtx
}

// WrappedRoundTripper lets utilnet.CloseIdleConnectionsFor reach the transport below.
func (g *gateTransport) WrappedRoundTripper() http.RoundTripper { return g.next }

// ErrRedirectRefused is returned when a member answers with a redirect.
var ErrRedirectRefused = errors.New("the member answered with a redirect, which Paddock never follows")

func refuseRedirect(*http.Request, []*http.Request) error { return ErrRedirectRefused }

// noRedirects turns a redirect into an error inside the transport, so that also clients built on
// the shared transport by others (Helm through the RESTClientGetter, client-go's HTTPClientFor,
// which follow redirects) never follow one.
type noRedirects struct{ next http.RoundTripper }

func (n noRedirects) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := n.next.RoundTrip(req)
	if err != nil {
		return resp, err
	}
	switch resp.StatusCode {
	case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther, http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		_ = resp.Body.Close()
		return nil, ErrRedirectRefused
	}
	return resp, nil
}

// WrappedRoundTripper lets utilnet.CloseIdleConnectionsFor reach the transport below.
func (n noRedirects) WrappedRoundTripper() http.RoundTripper { return n.next }

// close closes the connection's idle connections (client-go's own wrappers in between are
// unwrapped by utilnet.CloseIdleConnectionsFor).
func (a *Accessor) close() {
	if a.httpClient != nil {
		utilnet.CloseIdleConnectionsFor(a.httpClient.Transport)
	}
}

// current returns the entry when acc is still the member's connection.
func (c *ClusterCache) current(acc *Accessor) (*entry, bool) {
	e, ok := c.members[acc.Name]
	return e, ok && e.acc == acc
}

// Admit makes acc usable: a probe through acc read clusterID, it matches the member's pinned
// identity, and the status recording it has landed. It returns false (and changes nothing) when
// acc is no longer the member's connection.
func (c *ClusterCache) Admit(acc *Accessor, clusterID string) bool {
	if clusterID == "" {
		return false
	}
	c.mu.Lock()
	e, ok := c.current(acc)
	var changed bool
	if ok {
		before, wasAdmitted := e.usable(), e.admittedID
		e.admittedID, e.ready, e.reason = clusterID, true, ""
		acc.openGate()
		// Also when only GetForCleanup changed (a member being deleted).
		changed = before != e.usable() || wasAdmitted != clusterID
	}
	c.mu.Unlock()
	if changed {
		c.notify(acc.Name)
	}
	return ok
}

// Revoke makes the member unusable for reason (a Ready reason). The admitted identity is kept
// unless forgetIdentity: an unreachable member is still the same cluster, a member whose identity
// changed is not.
func (c *ClusterCache) Revoke(name, reason string, forgetIdentity bool) {
	c.mu.Lock()
	e, ok := c.members[name]
	var changed bool
	if ok {
		before := e.usable()
		e.ready, e.reason = false, reason
		if forgetIdentity {
			e.admittedID = ""
			e.acc.closeGate()
			c.stopWatches(name, 0)
		}
		changed = before != e.usable()
	}
	c.mu.Unlock()
	if changed {
		c.notify(name)
	}
}

// RevokeFlipped revokes the member's identity (as Revoke with ClusterIdentityChanged) when acc is
// still its connection, is admitted, and observedID is not the admitted clusterID: a probe through
// acc read another cluster. A probe through an older or replaced connection changes nothing.
func (c *ClusterCache) RevokeFlipped(acc *Accessor, observedID string) bool {
	c.mu.Lock()
	e, ok := c.members[acc.Name]
	if !ok || e.acc != acc || e.admittedID == "" || e.admittedID == observedID {
		c.mu.Unlock()
		return false
	}
	before := e.usable()
	e.ready, e.reason = false, clustersv1.ReasonClusterIdentityChanged
	e.admittedID = ""
	e.acc.closeGate()
	c.stopWatches(acc.Name, 0)
	changed := before != e.usable()
	c.mu.Unlock()
	if changed {
		c.notify(acc.Name)
	}
	return true
}

// BeginCleanup marks the member as being deleted: Get refuses it from now on, GetForCleanup
// serves it (when its identity was confirmed) until Disconnect.
func (c *ClusterCache) BeginCleanup(name string) {
	c.mu.Lock()
	e, ok := c.members[name]
	var changed bool
	if ok && !e.deleting {
		// Dependants hear of it whether the member was usable or only cleanup-usable.
		changed = e.admittedID != ""
		e.deleting = true
	}
	c.mu.Unlock()
	if changed {
		c.notify(name)
	}
}

// Disconnect drops the member's connection.
func (c *ClusterCache) Disconnect(name string) {
	c.mu.Lock()
	e, ok := c.members[name]
	delete(c.members, name)
	c.stopWatches(name, 0)
	if ok {
		e.acc.closeGate()
	}
	c.mu.Unlock()
	if ok {
		e.acc.close()
		c.notify(name)
	}
}

// Peek returns the member's connection whatever its state, for the MemberCluster controller's own
// probes. Nothing else may act through it. ok is false when not connected.
func (c *ClusterCache) Peek(name string) (*Accessor, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	e, ok := c.members[name]
	if !ok {
		return nil, false
	}
	return e.acc, true
}

// AdmittedID returns the clusterID admitted for the member's current connection ("" if none).
func (c *ClusterCache) AdmittedID(name string) string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if e, ok := c.members[name]; ok {
		return e.admittedID
	}
	return ""
}

// Get implements Reader.
func (c *ClusterCache) Get(_ context.Context, name string) (*Accessor, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	e, ok := c.members[name]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrNotConnected, name)
	}
	switch {
	case e.deleting:
		return nil, &NotReadyError{Member: name, Reason: ReasonDeleting}
	case e.admittedID == "":
		return nil, e.unadmitted(name)
	case !e.ready:
		return nil, &NotReadyError{Member: name, Reason: e.reason}
	}
	return e.acc, nil
}

// GetForCleanup implements Reader.
func (c *ClusterCache) GetForCleanup(_ context.Context, name string) (*Accessor, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	e, ok := c.members[name]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrNotConnected, name)
	}
	if e.admittedID == "" {
		return nil, e.unadmitted(name)
	}
	return e.acc, nil
}

// Len is the number of connected members.
func (c *ClusterCache) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.members)
}

// subscriber coalesces notifications per member: a member already pending is not queued again,
// and none is ever dropped however far behind the subscriber is.
type subscriber struct {
	out  chan event.GenericEvent
	mu   sync.Mutex
	set  map[string]struct{}
	fifo []string
	wake chan struct{}
}

// Subscribe implements Reader. Subscribe before the manager starts; the pump lives as long as the
// process (one goroutine per subscriber).
func (c *ClusterCache) Subscribe() <-chan event.GenericEvent {
	s := &subscriber{out: make(chan event.GenericEvent), set: map[string]struct{}{}, wake: make(chan struct{}, 1)}
	c.mu.Lock()
	c.subs = append(c.subs, s)
	c.mu.Unlock()
	go s.pump()
	return s.out
}

func (s *subscriber) add(name string) {
	s.mu.Lock()
	if _, ok := s.set[name]; !ok {
		s.set[name] = struct{}{}
		s.fifo = append(s.fifo, name)
	}
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *subscriber) pump() {
	for range s.wake {
		for {
			s.mu.Lock()
			if len(s.fifo) == 0 {
				s.fifo = nil
				s.mu.Unlock()
				break
			}
			name := s.fifo[0]
			s.fifo = s.fifo[1:]
			// Taken off the set before it is sent: a change after this point queues it again.
			delete(s.set, name)
			s.mu.Unlock()
			obj := &memberRef{}
			obj.SetName(name)
			s.out <- event.GenericEvent{Object: obj}
		}
	}
}

func (c *ClusterCache) notify(name string) {
	c.mu.RLock()
	subs := c.subs
	c.mu.RUnlock()
	for _, s := range subs {
		s.add(name)
	}
}
