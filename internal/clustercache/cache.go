// Package clustercache is Paddock's one way into member clusters. From a MemberCluster's validated
// kubeconfig it builds and caches a client, a discovery client and the rest.Config of that member,
// rebuilds them when the kubeconfig Secret changes, drops them when the member goes, and tells
// other controllers whether they may act on a member right now (Get fails with a typed error while
// the member is unhealthy, paused, or its identity changed).
//
// It starts no goroutines and no informers per member: clients read from the member directly,
// bounded by per-member QPS, burst and timeouts.
package clustercache

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/flowcontrol"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
)

// ErrNotConnected is returned by Get for a member the cache has no client for (not yet attached,
// kubeconfig invalid, or deleted).
var ErrNotConnected = errors.New("member cluster is not connected")

// NotReadyError is returned by Get for a connected member that must not be acted on now.
type NotReadyError struct {
	Member string
	Reason string // a MemberCluster Ready reason, e.g. ClusterNotReachable, ClusterIdentityChanged, Paused
}

func (e *NotReadyError) Error() string {
	return fmt.Sprintf("member cluster %q is not ready: %s", e.Member, e.Reason)
}

// Options configure every member's clients.
type Options struct {
	// Scheme for the member clients.
	Scheme *runtime.Scheme
	// QPS and Burst per member (client-go's 5/10 default throttles real workloads).
	QPS   float32
	Burst int
	// Timeout bounds every request to a member.
	Timeout time.Duration
	// WrapTransport, if set, wraps every member's transport (metrics, fault injection in benchmarks).
	WrapTransport func(member string, rt http.RoundTripper) http.RoundTripper
}

// Accessor holds the clients of one member.
type Accessor struct {
	// Name of the MemberCluster.
	Name string
	// Version identifies the kubeconfig the clients were built from (Secret UID/resourceVersion,
	// key and context); a different version rebuilds them.
	Version string
	// Config is the member's rest.Config (do not mutate).
	Config *rest.Config
	// Kubernetes is a typed clientset for the member.
	Kubernetes kubernetes.Interface
	// Discovery for the member.
	Discovery discovery.DiscoveryInterface

	httpClient *http.Client
	scheme     *runtime.Scheme

	clientOnce sync.Once
	client     client.Client
	clientErr  error
}

// Client returns a controller-runtime client for the member (uncached), built on first use: its
// REST mapper runs discovery against the member, which members that are only probed never need.
func (a *Accessor) Client() (client.Client, error) {
	a.clientOnce.Do(func() {
		a.client, a.clientErr = client.New(a.Config, client.Options{Scheme: a.scheme, HTTPClient: a.httpClient})
		if a.clientErr != nil {
			a.clientErr = fmt.Errorf("building client for member %q: %w", a.Name, a.clientErr)
		}
	})
	return a.client, a.clientErr
}

type entry struct {
	acc    *Accessor
	ready  bool
	reason string
}

// ClusterCache caches Accessors by MemberCluster name. It is safe for concurrent use.
type ClusterCache struct {
	opts Options

	mu      sync.RWMutex
	members map[string]*entry
	subs    []chan event.GenericEvent
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
	return &ClusterCache{opts: opts, members: map[string]*entry{}}
}

// Connect returns the member's Accessor, building it from cfg when none exists or version differs.
// cfg must come from Policy.Load. A rebuilt accessor starts not ready until SetReady says so.
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
	c.members[name] = &entry{acc: acc}
	c.mu.Unlock()
	if old != nil {
		old.acc.close()
		if old.ready {
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
	// One rate limiter shared by all clients of this member.
	cfg.RateLimiter = flowcontrol.NewTokenBucketRateLimiter(c.opts.QPS, c.opts.Burst)
	cfg.UserAgent = "paddock-manager"
	if c.opts.WrapTransport != nil {
		wrap := c.opts.WrapTransport
		cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { return wrap(name, rt) })
	}
	httpClient, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("building HTTP client for member %q: %w", name, err)
	}
	kc, err := kubernetes.NewForConfigAndClient(cfg, httpClient)
	if err != nil {
		return nil, fmt.Errorf("building clientset for member %q: %w", name, err)
	}
	return &Accessor{
		Name: name, Version: version, Config: cfg,
		Kubernetes: kc, Discovery: kc.Discovery(),
		httpClient: httpClient, scheme: c.opts.Scheme,
	}, nil
}

func (a *Accessor) close() {
	if a.httpClient != nil {
		a.httpClient.CloseIdleConnections()
	}
}

// Disconnect drops the member's clients.
func (c *ClusterCache) Disconnect(name string) {
	c.mu.Lock()
	e, ok := c.members[name]
	delete(c.members, name)
	c.mu.Unlock()
	if ok {
		e.acc.close()
		if e.ready {
			c.notify(name)
		}
	}
}

// SetReady records whether other controllers may act on the member. reason explains a false.
// Subscribers are notified when readiness changes.
func (c *ClusterCache) SetReady(name string, ready bool, reason string) {
	c.mu.Lock()
	e, ok := c.members[name]
	changed := ok && e.ready != ready
	if ok {
		e.ready, e.reason = ready, reason
	}
	c.mu.Unlock()
	if changed {
		c.notify(name)
	}
}

// Peek returns the member's accessor whatever its readiness (for the MemberCluster controller's
// own probes and cleanup). ok is false when not connected.
func (c *ClusterCache) Peek(name string) (*Accessor, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	e, ok := c.members[name]
	if !ok {
		return nil, false
	}
	return e.acc, true
}

// Get returns the member's accessor for a controller that wants to act on the member. It fails
// with ErrNotConnected or a *NotReadyError when it must not.
func (c *ClusterCache) Get(_ context.Context, name string) (*Accessor, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	e, ok := c.members[name]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrNotConnected, name)
	}
	if !e.ready {
		reason := e.reason
		if reason == "" {
			reason = "not yet probed"
		}
		return nil, &NotReadyError{Member: name, Reason: reason}
	}
	return e.acc, nil
}

// Len is the number of connected members.
func (c *ClusterCache) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.members)
}

// Subscribe returns a channel that receives an event (object name = member name) whenever a
// member becomes usable or stops being usable. Use it with source.Channel to requeue dependants.
// Subscribe before the manager starts.
func (c *ClusterCache) Subscribe() <-chan event.GenericEvent {
	ch := make(chan event.GenericEvent, 1024)
	c.mu.Lock()
	c.subs = append(c.subs, ch)
	c.mu.Unlock()
	return ch
}

func (c *ClusterCache) notify(name string) {
	c.mu.RLock()
	subs := c.subs
	c.mu.RUnlock()
	for _, ch := range subs {
		obj := &memberRef{}
		obj.SetName(name)
		select {
		case ch <- event.GenericEvent{Object: obj}:
		default:
			// A full buffer means the subscriber is far behind; its periodic resync catches up.
		}
	}
}
