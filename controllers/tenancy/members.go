package tenancy

import (
	"context"
	"fmt"
	"hash/fnv"
	"sync"
	"sync/atomic"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/event"

	"github.com/paddock-dev/paddock/internal/clustercache"
)

// What the tenancy controllers place in members is kept in place the same way for both kinds:
//
//   - every object carries a label naming its owner (a NamespaceQuota or a RoleGrant);
//   - per member, one shared metadata watch per kind, selected by that label, through the access
//     layer: an event marks the owner's cluster dirty and wakes the owner, which reads and
//     restores that cluster only (events of Paddock's own writes are recognised by their
//     resourceVersion and ignored);
//   - a cluster is also worked on when what is desired there changed, when its last pass failed
//     (retried with a backoff), and every resync period (the backstop for a watch that missed
//     something); while a member's watches cannot run, every backstopResync;
//   - a quiet fleet therefore costs the watches' streams and one pass per cluster per resync.

const (
	// DefaultResync is how often a cluster that saw no change is read and restored anyway.
	DefaultResync = 10 * time.Minute
	// backstopResync is the resync of a cluster whose member's watches are not running: the
	// bound on restoring a hand-deleted object (30 s, documented) holds without them.
	backstopResync = 20 * time.Second
	// minInterval spaces passes over one cluster that its watches make dirty: a stream of
	// changes (a busy namespace's quota usage) costs one pass per interval.
	minInterval = 2 * time.Second
	// usageInterval spaces the passes that changes of a member's quota usage call for (its
	// ResourceQuota's status changes with every pod): the status follows usage that often.
	usageInterval = 10 * time.Second
	// retryMin and retryMax bound the backoff of a failed cluster.
	retryMin = 2 * time.Second
	retryMax = 2 * time.Minute
)

// syncKey is one owner (by name) in one cluster.
type syncKey struct {
	owner   string
	cluster string
}

// clusterSync is the controller's memory of one owner in one cluster.
type clusterSync struct {
	uid types.UID
	// desired identifies what was last applied (a hash of the spec parts that matter there).
	desired string
	at      time.Time
	dirty   bool
	// usage: only an object whose changes are mostly usage changed (see usageInterval).
	usage bool
	// events counts the changes seen; a pass that started at a count lower than this one has not
	// seen them all, and leaves the cluster dirty.
	events uint64
	failed int
	// written are the resourceVersions of the objects as Paddock last wrote or read them, by
	// kind/namespace/name: their watch events are Paddock's own and change nothing.
	written map[string]string
	// created is the UID of the namespace a pass created there (status says so too, but a pass
	// may read a copy of status older than its own last write).
	created string
}

// syncState is what the controller remembers of every owner's clusters (lost on restart: the
// first pass after a restart works on every cluster once).
type syncState struct {
	mu sync.Mutex
	m  map[syncKey]*clusterSync
	// members lists the owners with state in each cluster (to wake them when the member
	// changes).
	members map[string]map[string]struct{}
}

func newSyncState() *syncState {
	return &syncState{m: map[syncKey]*clusterSync{}, members: map[string]map[string]struct{}{}}
}

// due says whether the owner's cluster needs a pass now, else when it will.
func (s *syncState) due(owner string, uid types.UID, cluster, desired string, watched bool, resync time.Duration, now time.Time) (bool, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cs := s.m[syncKey{owner, cluster}]
	if cs == nil || cs.uid != uid || cs.desired != desired {
		return true, now
	}
	if cs.failed > 0 {
		backoff := retryMin << min(cs.failed-1, 6)
		if backoff > retryMax {
			backoff = retryMax
		}
		next := cs.at.Add(backoff)
		return !now.Before(next), next
	}
	if !watched && resync > backstopResync {
		resync = backstopResync
	}
	// Spread over ±10% per owner and cluster, so that the passes of a fleet started together do
	// not all come due together.
	resync = jitter(resync, owner+"/"+cluster)
	next := cs.at.Add(resync)
	switch {
	case cs.dirty:
		next = cs.at.Add(minInterval)
	case cs.usage:
		next = cs.at.Add(usageInterval)
	}
	return !now.Before(next), next
}

// applied is what the last pass over the owner's cluster applied ("" if none in this process).
func (s *syncState) applied(owner string, uid types.UID, cluster string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cs := s.m[syncKey{owner, cluster}]; cs != nil && cs.uid == uid && cs.failed == 0 {
		return cs.desired
	}
	return ""
}

// createdHere records that a pass created the namespace of this UID in the owner's cluster.
func (s *syncState) createdHere(owner string, uid types.UID, cluster, nsUID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := syncKey{owner, cluster}
	cs := s.m[k]
	if cs == nil {
		cs = &clusterSync{uid: uid}
		s.m[k] = cs
	}
	cs.created = nsUID
}

// createdUID is the UID of the namespace a pass of this process created there, if any.
func (s *syncState) createdUID(owner string, uid types.UID, cluster string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cs := s.m[syncKey{owner, cluster}]; cs != nil && (cs.uid == uid || cs.uid == "") {
		return cs.created
	}
	return ""
}

// begin is called before a pass over the owner's cluster; done is given what it returned.
func (s *syncState) begin(owner, cluster string) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cs := s.m[syncKey{owner, cluster}]; cs != nil {
		return cs.events
	}
	return 0
}

// done records a pass over the owner's cluster: what it applied, whether it failed, and the
// resourceVersions of what it wrote or read. Changes seen since begin leave it dirty.
func (s *syncState) done(owner string, uid types.UID, cluster, desired string, failed bool, written map[string]string, begun uint64, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := syncKey{owner, cluster}
	cs := s.m[k]
	if cs == nil {
		cs = &clusterSync{}
		s.m[k] = cs
	}
	cs.uid, cs.desired, cs.at, cs.dirty = uid, desired, at, cs.events != begun && cs.dirty
	cs.usage = cs.events != begun && cs.usage
	if failed {
		cs.failed++
	} else {
		cs.failed = 0
	}
	cs.written = written
	if s.members[cluster] == nil {
		s.members[cluster] = map[string]struct{}{}
	}
	s.members[cluster][owner] = struct{}{}
}

// markDirty records a change seen in a member; it says false for an event of Paddock's own
// write (nothing to do). usage marks a change that is most likely usage (a quota's status).
func (s *syncState) markDirty(owner, cluster, objKey, resourceVersion string, deleted, usage bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := syncKey{owner, cluster}
	cs := s.m[k]
	if cs == nil {
		// Not worked on by this process yet (or a pass is under way for the first time): its
		// pass reads everything, and the count tells a pass under way that it missed this.
		cs = &clusterSync{}
		s.m[k] = cs
		if s.members[cluster] == nil {
			s.members[cluster] = map[string]struct{}{}
		}
		s.members[cluster][owner] = struct{}{}
	}
	if !deleted && objKey != "" && cs.written[objKey] == resourceVersion {
		return false
	}
	if usage {
		cs.usage = true
	} else {
		cs.dirty = true
	}
	cs.events++
	return true
}

// markMember makes every owner's pass over cluster due (its member's connection changed: it
// may have been down while things changed) and returns the owners.
func (s *syncState) markMember(cluster string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for owner := range s.members[cluster] {
		if cs := s.m[syncKey{owner, cluster}]; cs != nil {
			cs.dirty, cs.failed = true, 0
			cs.events++
		}
		out = append(out, owner)
	}
	return out
}

// redo makes the owner's passes over clusters due again (what they found was not written to
// status: a conflict with a newer copy).
func (s *syncState) redo(owner string, clusters []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range clusters {
		if cs := s.m[syncKey{owner, c}]; cs != nil {
			cs.dirty = true
			cs.at = time.Time{}
			cs.events++
		}
	}
}

// forget drops the owner's state in cluster.
func (s *syncState) forget(owner, cluster string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, syncKey{owner, cluster})
	if o := s.members[cluster]; o != nil {
		delete(o, owner)
		if len(o) == 0 {
			delete(s.members, cluster)
		}
	}
}

// forgetOwner drops all of the owner's state except in the clusters listed in keep.
func (s *syncState) forgetOwner(owner string, keep map[string]bool) {
	s.mu.Lock()
	var drop []string
	for k := range s.m {
		if k.owner == owner && !keep[k.cluster] {
			drop = append(drop, k.cluster)
		}
	}
	s.mu.Unlock()
	for _, c := range drop {
		s.forget(owner, c)
	}
}

// jitter spreads d by ±10%, the same way for the same key.
func jitter(d time.Duration, key string) time.Duration {
	h := fnv.New32a()
	_, _ = h.Write([]byte(key))
	f := 0.9 + 0.2*float64(h.Sum32()%1000)/1000
	return time.Duration(float64(d) * f)
}

// objectKey names an object in written: "<resource>/<namespace>/<name>".
func objectKey(resource, namespace, name string) string {
	return resource + "/" + namespace + "/" + name
}

// memberWatches runs, per member, the shared metadata watches of what a controller places there
// (selected by its owner label) and turns their events into wake-ups of the owners.
type memberWatches struct {
	cache clustercache.Reader
	specs []clustercache.WatchSpec
	// label is the owner label: its value is the owner's name.
	label string
	state *syncState
	wake  *waker

	mu      sync.Mutex
	running map[string]*watchSet
}

// watchSet is one member's watches.
type watchSet struct {
	stops []func()
	// ended is set by a handler (under the watch's own lock, so never w.mu) when a watch ended.
	ended atomic.Bool
}

func newMemberWatches(cache clustercache.Reader, label string, state *syncState, wake *waker, specs ...clustercache.WatchSpec) *memberWatches {
	return &memberWatches{cache: cache, specs: specs, label: label, state: state, wake: wake, running: map[string]*watchSet{}}
}

// ensure starts the member's watches unless they are running, and says whether they are.
func (w *memberWatches) ensure(ctx context.Context, member string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if ws := w.running[member]; ws != nil {
		if !ws.ended.Load() {
			return nil
		}
		for _, s := range ws.stops {
			s()
		}
		delete(w.running, member)
	}
	ws := &watchSet{}
	for _, spec := range w.specs {
		stop, err := w.cache.Watch(ctx, member, spec, func(ev clustercache.WatchEvent) { w.handle(ws, ev) })
		if err != nil {
			for _, s := range ws.stops {
				s()
			}
			return fmt.Errorf("watching %s in %s: %w", spec.Resource.Resource, member, err)
		}
		ws.stops = append(ws.stops, stop)
	}
	w.running[member] = ws
	return nil
}

// watched says whether the member's watches are running.
func (w *memberWatches) watched(member string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	ws := w.running[member]
	return ws != nil && !ws.ended.Load()
}

// handle runs for every event (it must not block, and must not call back into the watch).
func (w *memberWatches) handle(ws *watchSet, ev clustercache.WatchEvent) {
	if ev.Type == watch.Error {
		ws.ended.Store(true)
		// Every owner there is worked on again, and starts the watches again once the member is
		// usable (or learns that it is not).
		w.wake.add(w.state.markMember(ev.Member)...)
		return
	}
	owner := ev.Object.GetLabels()[w.label]
	if owner == "" {
		return
	}
	key := objectKey(ev.Watched.Resource.Resource, ev.Object.GetNamespace(), ev.Object.GetName())
	usage := ev.Type == watch.Modified && ev.Watched.Resource == resourceQuotasGVR
	if w.state.markDirty(owner, ev.Member, key, ev.Object.GetResourceVersion(), ev.Type == watch.Deleted, usage) {
		w.wake.add(owner)
	}
}

// stopAll stops every watch (the manager is stopping).
func (w *memberWatches) stopAll() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for m, ws := range w.running {
		for _, s := range ws.stops {
			s()
		}
		delete(w.running, m)
	}
}

// waker turns owner names into GenericEvents for the controller's channel source, without ever
// blocking its callers (watch handlers): names are coalesced in a set that a pump drains.
type waker struct {
	mu     sync.Mutex
	names  map[string]struct{}
	signal chan struct{}
	out    chan event.GenericEvent
}

func newWaker() *waker {
	return &waker{names: map[string]struct{}{}, signal: make(chan struct{}, 1), out: make(chan event.GenericEvent)}
}

func (k *waker) add(names ...string) {
	if len(names) == 0 {
		return
	}
	k.mu.Lock()
	for _, n := range names {
		k.names[n] = struct{}{}
	}
	k.mu.Unlock()
	select {
	case k.signal <- struct{}{}:
	default:
	}
}

// pump delivers the names until ctx ends.
func (k *waker) pump(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-k.signal:
		}
		k.mu.Lock()
		names := k.names
		k.names = map[string]struct{}{}
		k.mu.Unlock()
		for n := range names {
			select {
			case k.out <- event.GenericEvent{Object: &metav1.PartialObjectMetadata{ObjectMeta: metav1.ObjectMeta{Name: n}}}:
			case <-ctx.Done():
				return
			}
		}
	}
}
