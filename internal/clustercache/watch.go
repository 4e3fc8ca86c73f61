package clustercache

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
)

// WatchSpec says what to watch in a member: metadata only (names, labels, annotations, owner
// references, resourceVersions), so a watch costs bounded memory whatever the objects hold.
// Narrow it with a label selector (e.g. app.kubernetes.io/managed-by=paddock) and, where the
// resource supports it, a field selector.
type WatchSpec struct {
	Resource      schema.GroupVersionResource
	Namespace     string
	LabelSelector string
	FieldSelector string
}

func (s WatchSpec) String() string {
	return fmt.Sprintf("%s ns=%q labels=%q fields=%q", s.Resource, s.Namespace, s.LabelSelector, s.FieldSelector)
}

// WatchEvent is one change seen by a watch.
type WatchEvent struct {
	Member  string
	Type    watch.EventType // Added, Modified or Deleted
	Object  *metav1.PartialObjectMetadata
	Watched WatchSpec
}

// WatchHandler is called for every event; it must not block (enqueue and return).
type WatchHandler func(WatchEvent)

// MaxWatchedObjects bounds one watch: a watch whose selector matches more objects than this is
// stopped, and its handlers are told nothing more (narrow the selector).
const MaxWatchedObjects = 50_000

// ErrWatchTooLarge is returned by Watch for a spec whose watch was stopped for MaxWatchedObjects.
var ErrWatchTooLarge = errors.New("the watch matched too many objects; narrow its selector")

type sharedWatch struct {
	spec     WatchSpec
	acc      *Accessor
	cancel   context.CancelFunc
	mu       sync.Mutex
	handlers map[int]WatchHandler
	next     int
	tooLarge bool
	count    int
	synced   chan struct{}
}

type watchKey struct {
	gen  uint64
	spec WatchSpec
}

// Watch starts (or joins) a metadata watch of spec in the member and calls h for every event,
// starting with an Added event per existing object. It works only while the member is usable
// (Get succeeds): the watch is stopped when the member's connection is replaced, revoked for a
// changed identity, or dropped, and the caller hears of that through Subscribe and calls Watch
// again once Get succeeds. Watches of the same spec on the same connection are shared. The
// returned stop removes h (the watch stops with its last handler).
func (c *ClusterCache) Watch(ctx context.Context, member string, spec WatchSpec, h WatchHandler) (stop func(), err error) {
	acc, err := c.Get(ctx, member)
	if err != nil {
		return nil, err
	}
	key := watchKey{gen: acc.Generation, spec: spec}
	c.mu.Lock()
	// Re-checked under the write lock: a Connect, Revoke or Disconnect since Get stopped this
	// connection's watches, and a watch started now would outlive it.
	if e, ok := c.members[member]; !ok || e.acc != acc || !e.usable() {
		c.mu.Unlock()
		return nil, &NotReadyError{Member: member, Reason: ReasonProbePending}
	}
	if c.watches == nil {
		c.watches = map[watchKey]*sharedWatch{}
	}
	w, ok := c.watches[key]
	if !ok {
		w, err = c.startWatch(acc, spec)
		if err != nil {
			c.mu.Unlock()
			return nil, err
		}
		c.watches[key] = w
	}
	c.mu.Unlock()

	w.mu.Lock()
	if w.tooLarge {
		w.mu.Unlock()
		return nil, fmt.Errorf("%w: %s in member %s", ErrWatchTooLarge, spec, member)
	}
	id := w.next
	w.next++
	w.handlers[id] = h
	w.mu.Unlock()
	return func() {
		w.mu.Lock()
		delete(w.handlers, id)
		empty := len(w.handlers) == 0
		w.mu.Unlock()
		if empty {
			c.mu.Lock()
			if c.watches[key] == w {
				delete(c.watches, key)
			}
			c.mu.Unlock()
			w.cancel()
		}
	}, nil
}

// WaitForWatchSynced waits until the watch of spec in the member has listed once.
func (c *ClusterCache) WaitForWatchSynced(ctx context.Context, member string, spec WatchSpec) error {
	acc, err := c.Get(ctx, member)
	if err != nil {
		return err
	}
	c.mu.RLock()
	w, ok := c.watches[watchKey{gen: acc.Generation, spec: spec}]
	c.mu.RUnlock()
	if !ok {
		return fmt.Errorf("no watch of %s in member %s", spec, member)
	}
	select {
	case <-w.synced:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// startWatch (c.mu held) starts the informer of a new shared watch.
func (c *ClusterCache) startWatch(acc *Accessor, spec WatchSpec) (*sharedWatch, error) {
	// Watches stream for minutes: the work client's request timeout must not cut them. The
	// transport (and its connections) is the member's shared one.
	cfg := rest.CopyConfig(acc.Config)
	cfg.Timeout = 0
	hc := &http.Client{Transport: acc.httpClient.Transport, CheckRedirect: refuseRedirect}
	mc, err := metadata.NewForConfigAndClient(cfg, hc)
	if err != nil {
		return nil, fmt.Errorf("building metadata client for member %q: %w", acc.Name, err)
	}
	ri := mc.Resource(spec.Resource).Namespace(spec.Namespace)
	opts := func(o *metav1.ListOptions) {
		o.LabelSelector, o.FieldSelector = spec.LabelSelector, spec.FieldSelector
	}
	lw := &toolscache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			opts(&o)
			return ri.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			opts(&o)
			return ri.Watch(ctx, o)
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &sharedWatch{spec: spec, acc: acc, cancel: cancel, handlers: map[int]WatchHandler{}, synced: make(chan struct{})}
	inf := toolscache.NewSharedIndexInformerWithOptions(lw, &metav1.PartialObjectMetadata{}, toolscache.SharedIndexInformerOptions{
		ResyncPeriod: 0,
	})
	dispatch := func(t watch.EventType, obj any) {
		if d, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		m, ok := obj.(*metav1.PartialObjectMetadata)
		if !ok {
			return
		}
		w.mu.Lock()
		switch t {
		case watch.Added:
			w.count++
		case watch.Deleted:
			w.count--
		}
		if w.count > MaxWatchedObjects || w.tooLarge {
			w.tooLarge = true
			w.handlers = map[int]WatchHandler{}
			w.mu.Unlock()
			cancel()
			return
		}
		hs := make([]WatchHandler, 0, len(w.handlers))
		for _, h := range w.handlers {
			hs = append(hs, h)
		}
		w.mu.Unlock()
		for _, h := range hs {
			h(WatchEvent{Member: acc.Name, Type: t, Object: m, Watched: spec})
		}
	}
	if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { dispatch(watch.Added, obj) },
		UpdateFunc: func(_, obj any) { dispatch(watch.Modified, obj) },
		DeleteFunc: func(obj any) { dispatch(watch.Deleted, obj) },
	}); err != nil {
		cancel()
		return nil, err
	}
	go inf.RunWithContext(ctx)
	go func() {
		if toolscache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
			close(w.synced)
		}
	}()
	return w, nil
}

// stopWatches (c.mu held) stops every watch on connections of member other than keep (0: all).
func (c *ClusterCache) stopWatches(member string, keep uint64) {
	for key, w := range c.watches {
		if w.acc.Name == member && key.gen != keep {
			delete(c.watches, key)
			w.cancel()
		}
	}
}

// Watches is the number of watches running (shared ones count once).
func (c *ClusterCache) Watches() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.watches)
}
