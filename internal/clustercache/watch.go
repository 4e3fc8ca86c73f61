package clustercache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"path"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
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

// path is the collection's URL path in the member.
func (s WatchSpec) path() string {
	p := []string{"/api", s.Resource.Version}
	if s.Resource.Group != "" {
		p = []string{"/apis", s.Resource.Group, s.Resource.Version}
	}
	if s.Namespace != "" {
		p = append(p, "namespaces", s.Namespace)
	}
	return path.Join(append(p, s.Resource.Resource)...)
}

// WatchEvent is one change seen by a watch.
type WatchEvent struct {
	Member string
	// Type is Added, Modified or Deleted; or Error, once, when the watch has ended (its
	// connection was replaced, revoked or dropped, or it grew too large): call Watch again once
	// Get succeeds. An Error event's Object is empty.
	Type watch.EventType
	// Object is shared between handlers: do not modify it. Its managedFields are dropped.
	Object  *metav1.PartialObjectMetadata
	Watched WatchSpec
}

// WatchHandler is called for every event, one at a time per watch; it must not block (enqueue and
// return) and must not call back into the watch (Watch or stop).
type WatchHandler func(WatchEvent)

// MaxWatchedObjects bounds one watch: a watch whose selector matches more objects than this is
// stopped, and its handlers are told nothing more (narrow the selector).
const MaxWatchedObjects = 50_000

// MaxWatchedBytes bounds the metadata one watch keeps (labels, annotations, owner references...),
// and MaxWatchEventBytes one event: etcd refuses objects over 1.5 MiB, so a larger event is not
// a real object's metadata.
const (
	MaxWatchedBytes    int64 = 64 << 20
	MaxWatchEventBytes       = 2 << 20
)

// ErrWatchTooLarge is returned by Watch for a spec whose watch was stopped for MaxWatchedObjects,
// MaxWatchedBytes or MaxWatchEventBytes.
var ErrWatchTooLarge = errors.New("the watch matched more objects, or larger metadata, than Paddock keeps; narrow its selector")

// Accept headers asking the member for metadata only.
const (
	metaAccept     = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
	metaListAccept = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
)

// sharedWatch is one list-and-watch loop in one goroutine: it lists (from the watch cache),
// watches from the list's resourceVersion, re-watches when the server ends the stream, and lists
// again (telling handlers what was added, changed or deleted meanwhile) when the resourceVersion
// has expired or the stream failed. It keeps only the objects' metadata, without managedFields.
// It costs one goroutine and one HTTP/2 stream on the member's shared connection, where an
// informer costs seven goroutines and a few ring buffers.
type sharedWatch struct {
	spec   WatchSpec
	acc    *Accessor
	cancel context.CancelFunc
	synced chan struct{}
	// done is closed when the watch's loop has ended.
	done chan struct{}
	// selector is spec.LabelSelector, checked again here: a member's answer is not trusted to
	// match it.
	selector labels.Selector

	// mu is held while handlers run, so that they see events one at a time and in order, and a
	// joining handler's replay of the current objects is not interleaved with live events.
	mu       sync.Mutex
	handlers map[int]WatchHandler
	next     int
	tooLarge bool
	// stopping: the last handler left and the watch is being removed; a Watch joining now
	// starts a new one instead.
	stopping atomic.Bool
	objs     map[string]*metav1.PartialObjectMetadata
	bytes    int64
	// stoppedTooLarge is closed when the watch stops for being too large, at tooLargeAt (unix
	// nanoseconds; atomic, so that Watch reads it under c.mu without taking w.mu).
	stoppedTooLarge chan struct{}
	tooLargeAt      atomic.Int64
}

type watchKey struct {
	gen  uint64
	spec WatchSpec
}

// Watch starts (or joins) a metadata watch of spec in the member and calls h for every event,
// starting with an Added event per existing object (also when joining a running watch). It works
// only while the member is usable (Get succeeds): the watch is stopped when the member's
// connection is replaced, revoked for a changed identity, or dropped, and the caller hears of that
// through Subscribe and calls Watch again once Get succeeds. Watches of the same spec on the same
// connection are shared. The returned stop removes h (the watch stops with its last handler).
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
	w, ok := c.watches[member][key]
	if ok && w.stopping.Load() {
		// Its last handler left while we looked: a new watch, not a dying one.
		c.removeWatch(member, key, w)
		ok = false
	}
	if ok {
		if at := w.tooLargeAt.Load(); at != 0 && time.Since(time.Unix(0, at)) >= c.watchTiming().tooLargeRetry {
			// Stopped for being too large a while ago: try again, the objects may have shrunk.
			c.removeWatch(member, key, w)
			ok = false
		}
	}
	if !ok {
		w, err = c.startWatch(acc, spec)
		if err != nil {
			c.mu.Unlock()
			return nil, err
		}
		// Looked up only now: removeWatch above drops a member's map once it is empty, and a
		// watch stored in a dropped map would never be stopped with its connection.
		if c.watches == nil {
			c.watches = map[string]map[watchKey]*sharedWatch{}
		}
		byMember := c.watches[member]
		if byMember == nil {
			byMember = map[watchKey]*sharedWatch{}
			c.watches[member] = byMember
		}
		byMember[key] = w
		c.watchCount++
	}
	c.mu.Unlock()

	w.mu.Lock()
	if w.tooLarge {
		w.mu.Unlock()
		return nil, fmt.Errorf("%w: %s in member %s", ErrWatchTooLarge, spec, member)
	}
	if w.stopping.Load() {
		// Stopped between our lookup and now: start (or join) a live one.
		w.mu.Unlock()
		return c.Watch(ctx, member, spec, h)
	}
	id := w.next
	w.next++
	w.handlers[id] = h
	for _, obj := range w.objs {
		h(WatchEvent{Member: member, Type: watch.Added, Object: obj, Watched: spec})
	}
	w.mu.Unlock()
	return func() {
		w.mu.Lock()
		delete(w.handlers, id)
		empty := len(w.handlers) == 0 && !w.tooLarge
		if empty {
			w.stopping.Store(true)
		}
		w.mu.Unlock()
		if empty {
			c.mu.Lock()
			c.removeWatch(member, key, w)
			c.mu.Unlock()
		}
	}, nil
}

// removeWatch (c.mu held) stops w and forgets it, if it is still the watch of key.
func (c *ClusterCache) removeWatch(member string, key watchKey, w *sharedWatch) {
	byMember := c.watches[member]
	if byMember[key] != w {
		return
	}
	delete(byMember, key)
	if len(byMember) == 0 {
		delete(c.watches, member)
	}
	c.watchCount--
	// A Watch that found w before this removal must not join it (it would never hear a thing).
	w.stopping.Store(true)
	w.cancel()
}

// WaitForWatchSynced waits until the watch of spec in the member has listed once.
func (c *ClusterCache) WaitForWatchSynced(ctx context.Context, member string, spec WatchSpec) error {
	acc, err := c.Get(ctx, member)
	if err != nil {
		return err
	}
	c.mu.RLock()
	w, ok := c.watches[member][watchKey{gen: acc.Generation, spec: spec}]
	c.mu.RUnlock()
	if !ok {
		return fmt.Errorf("no watch of %s in member %s", spec, member)
	}
	select {
	case <-w.synced:
		return nil
	case <-w.stoppedTooLarge:
		return fmt.Errorf("%w: %s in member %s", ErrWatchTooLarge, spec, member)
	case <-w.done:
		return fmt.Errorf("the watch of %s in member %s has ended (its connection was replaced, revoked or dropped)", spec, member)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// watchClient returns the accessor's REST client for watches: the shared transport, the work
// clients' limiter, no client timeout (a watch streams for minutes; each list has its own).
func (a *Accessor) watchClient() (rest.Interface, error) {
	return a.watchREST.get(a, "watch client", func() (rest.Interface, error) {
		cfg := rest.CopyConfig(a.Config)
		cfg.Timeout = 0
		cfg.GroupVersion = &schema.GroupVersion{Version: "v1"}
		cfg.APIPath = "/api"
		cfg.NegotiatedSerializer = clientgoscheme.Codecs.WithoutConversion()
		hc := &http.Client{Transport: a.httpClient.Transport, CheckRedirect: refuseRedirect}
		return rest.RESTClientForConfigAndClient(cfg, hc)
	})
}

// startWatch (c.mu held) starts the loop of a new shared watch.
func (c *ClusterCache) startWatch(acc *Accessor, spec WatchSpec) (*sharedWatch, error) {
	rc, err := acc.watchClient()
	if err != nil {
		return nil, err
	}
	sel, err := labels.Parse(spec.LabelSelector)
	if err != nil {
		return nil, fmt.Errorf("watch of %s: %w", spec, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &sharedWatch{spec: spec, acc: acc, cancel: cancel, handlers: map[int]WatchHandler{}, selector: sel,
		synced: make(chan struct{}), done: make(chan struct{}), objs: map[string]*metav1.PartialObjectMetadata{}, stoppedTooLarge: make(chan struct{})}
	go func() {
		defer w.ended()
		w.run(ctx, rc, c.watchTiming())
	}()
	return w, nil
}

// watchTiming is how a watch paces itself (tests shorten it).
type watchTiming struct {
	listTimeout            time.Duration
	minBackoff, maxBackoff time.Duration
	// minStream: a stream that ends sooner without any event is retried only after a backoff.
	minStream time.Duration
	// streamSeconds is how long the server keeps one watch stream open (randomised up to twice).
	streamSeconds int
	// tooLargeRetry is how long a watch stopped for being too large refuses joiners before a
	// Watch call may try it again (the member's objects may have shrunk meanwhile).
	tooLargeRetry time.Duration
	// relistEvery: lists closer together than this back off (doubling up to maxBackoff), so a
	// member that expires every stream cannot make the manager list it again and again.
	relistEvery time.Duration
}

func (c *ClusterCache) watchTiming() watchTiming {
	if c.timing != nil {
		return *c.timing
	}
	return watchTiming{listTimeout: time.Minute, minBackoff: 500 * time.Millisecond, maxBackoff: 30 * time.Second, minStream: time.Second, streamSeconds: 300,
		tooLargeRetry: 5 * time.Minute, relistEvery: time.Minute}
}

// errRelist says the watch must list again (its resourceVersion expired, or the stream failed).
var errRelist = errors.New("relist")

func (w *sharedWatch) run(ctx context.Context, rc rest.Interface, t watchTiming) {
	backoff := t.minBackoff
	wait := func() bool {
		d := backoff/2 + rand.N(backoff/2+1)
		backoff = min(2*backoff, t.maxBackoff)
		select {
		case <-ctx.Done():
			return false
		case <-time.After(d):
			return true
		}
	}
	// consistent: the next list must be a quorum read (resourceVersion ""), not from a watch cache
	// that may be behind the resourceVersion that just expired (another apiserver of an HA
	// member), which would expire again at once.
	consistent := false
	var lastList time.Time
	listBackoff := t.minBackoff
	for ctx.Err() == nil {
		if !lastList.IsZero() && time.Since(lastList) < t.relistEvery {
			select {
			case <-ctx.Done():
				return
			case <-time.After(listBackoff/2 + rand.N(listBackoff/2+1)):
			}
			listBackoff = min(2*listBackoff, t.maxBackoff)
		} else {
			listBackoff = t.minBackoff
		}
		lastList = time.Now()
		rv, err := w.list(ctx, rc, t.listTimeout, consistent)
		if err != nil {
			if errors.Is(err, ErrWatchTooLarge) || !wait() {
				return
			}
			continue
		}
		consistent = false
		for ctx.Err() == nil {
			began := time.Now()
			rv, err = w.stream(ctx, rc, rv, t.streamSeconds)
			if errors.Is(err, ErrWatchTooLarge) {
				return
			}
			// Only a stream that lasted resets the backoff; one that ends at once (a proxy
			// answering with an empty body, or a member sending one event and hanging up) must
			// not make us spin, whatever it carried.
			if time.Since(began) >= t.minStream {
				backoff = t.minBackoff
			} else if !wait() {
				return
			}
			if err == nil {
				continue // the server ended the stream: watch again from where it stopped
			}
			consistent = errors.Is(err, errRelist)
			break
		}
		if ctx.Err() != nil || !wait() {
			return
		}
	}
}

// list reads the current objects (from the member's watch cache) and tells handlers what changed
// since the last list. It returns the list's resourceVersion.
func (w *sharedWatch) list(ctx context.Context, rc rest.Interface, timeout time.Duration, consistent bool) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req := rc.Get().AbsPath(w.spec.path()).
		Param("labelSelector", w.spec.LabelSelector).Param("fieldSelector", w.spec.FieldSelector).
		SetHeader("Accept", metaListAccept)
	if !consistent {
		req = req.Param("resourceVersion", "0")
	}
	raw, err := req.Do(ctx).Raw()
	if errors.Is(err, ErrResponseTooLarge) {
		// Retrying would read the same oversized list again and again.
		w.stopTooLarge()
		return "", ErrWatchTooLarge
	}
	if err != nil {
		return "", err
	}
	var list metav1.PartialObjectMetadataList
	if err := json.Unmarshal(raw, &list); err != nil {
		return "", fmt.Errorf("decoding the list of %s: %w", w.spec, err)
	}
	if len(list.Items) > MaxWatchedObjects {
		w.stopTooLarge()
		return "", ErrWatchTooLarge
	}
	seen := make(map[string]*metav1.PartialObjectMetadata, len(list.Items))
	var bytes int64
	kept := list.Items[:0]
	for i := range list.Items {
		obj := &list.Items[i]
		if !w.selector.Matches(labels.Set(obj.Labels)) {
			continue // not what was asked for, whatever the member sent
		}
		obj.ManagedFields = nil
		bytes += objSize(obj)
		kept = append(kept, *obj)
	}
	list.Items = kept
	if bytes > MaxWatchedBytes {
		w.stopTooLarge()
		return "", ErrWatchTooLarge
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if ctx.Err() != nil {
		return "", ctx.Err()
	}
	w.bytes = bytes
	for i := range list.Items {
		// A copy: pointers into list.Items would keep the whole array alive until the next list.
		item := list.Items[i]
		obj := &item
		k := objKey(obj)
		seen[k] = obj
		switch old, ok := w.objs[k]; {
		case !ok:
			w.dispatchLocked(watch.Added, obj)
		case old.ResourceVersion != obj.ResourceVersion:
			w.dispatchLocked(watch.Modified, obj)
		}
	}
	for k, old := range w.objs {
		if _, ok := seen[k]; !ok {
			w.dispatchLocked(watch.Deleted, old)
		}
	}
	w.objs = seen
	select {
	case <-w.synced:
	default:
		close(w.synced)
	}
	return list.ResourceVersion, nil
}

// watchEnvelopeBytes is room for an event's envelope ({"type":...,"object":...}) and whitespace.
const watchEnvelopeBytes = 4 << 10

var errEventTooLarge = errors.New("a watch event is larger than Paddock accepts")

// eventBoundReader refuses to read past max bytes of the stream in total; the stream's reader
// moves max on before each event.
type eventBoundReader struct {
	r      io.Reader
	n, max int64
}

func (b *eventBoundReader) Read(p []byte) (int, error) {
	left := b.max - b.n
	if left <= 0 {
		return 0, errEventTooLarge
	}
	if int64(len(p)) > left {
		p = p[:left]
	}
	n, err := b.r.Read(p)
	b.n += int64(n)
	return n, err
}

// watchEvent is one event of a JSON watch stream.
type watchEvent struct {
	Type   watch.EventType `json:"type"`
	Object json.RawMessage `json:"object"`
}

// stream watches from rv until the server ends the stream (nil error), the resourceVersion
// expires or the stream fails (errRelist or another error: list again). It returns the last
// resourceVersion seen.
func (w *sharedWatch) stream(ctx context.Context, rc rest.Interface, rv string, seconds int) (string, error) {
	timeout := seconds + rand.N(seconds+1)
	body, err := rc.Get().AbsPath(w.spec.path()).
		Param("labelSelector", w.spec.LabelSelector).Param("fieldSelector", w.spec.FieldSelector).
		Param("watch", "true").Param("allowWatchBookmarks", "true").
		Param("resourceVersion", rv).Param("timeoutSeconds", strconv.Itoa(timeout)).
		SetHeader("Accept", metaAccept).Stream(ctx)
	if err != nil {
		if apierrors.IsResourceExpired(err) || apierrors.IsGone(err) {
			return rv, errRelist
		}
		return rv, err
	}
	defer func() { _ = body.Close() }()
	br := &eventBoundReader{r: body}
	dec := json.NewDecoder(br)
	for {
		var ev watchEvent
		// The decoder may read at most one event's worth ahead of what it has consumed: an event
		// that never ends is refused after MaxWatchEventBytes, not buffered up to the response cap.
		br.max = dec.InputOffset() + MaxWatchEventBytes + watchEnvelopeBytes
		if err := dec.Decode(&ev); err != nil {
			if errors.Is(err, errEventTooLarge) {
				w.stopTooLarge()
				return rv, ErrWatchTooLarge
			}
			if errors.Is(err, io.EOF) && ctx.Err() == nil {
				return rv, nil
			}
			return rv, fmt.Errorf("reading the watch of %s: %w", w.spec, err)
		}
		if len(ev.Object) > MaxWatchEventBytes {
			w.stopTooLarge()
			return rv, ErrWatchTooLarge
		}
		switch ev.Type {
		case watch.Error:
			var st metav1.Status
			_ = json.Unmarshal(ev.Object, &st)
			return rv, fmt.Errorf("%w: the member ended the watch of %s: %s (%d)", errRelist, w.spec, st.Reason, st.Code)
		case watch.Bookmark, watch.Added, watch.Modified, watch.Deleted:
		default:
			return rv, fmt.Errorf("%w: unknown watch event type %q", errRelist, ev.Type)
		}
		obj := &metav1.PartialObjectMetadata{}
		if err := json.Unmarshal(ev.Object, obj); err != nil {
			return rv, fmt.Errorf("decoding a watch event of %s: %w", w.spec, err)
		}
		if obj.ResourceVersion != "" {
			rv = obj.ResourceVersion
		}
		if ev.Type == watch.Bookmark {
			continue
		}
		if ev.Type != watch.Deleted && !w.selector.Matches(labels.Set(obj.Labels)) {
			continue // not what was asked for, whatever the member sent
		}
		obj.ManagedFields = nil
		if err := w.apply(ctx, ev.Type, obj); err != nil {
			return rv, err
		}
	}
}

// apply records one watch event and hands it to the handlers.
func (w *sharedWatch) apply(ctx context.Context, t watch.EventType, obj *metav1.PartialObjectMetadata) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	k := objKey(obj)
	old, had := w.objs[k]
	if had {
		w.bytes -= objSize(old)
	}
	if t == watch.Deleted {
		delete(w.objs, k)
	} else {
		w.bytes += objSize(obj)
		if (!had && len(w.objs) >= MaxWatchedObjects) || w.bytes > MaxWatchedBytes {
			w.stopTooLargeLocked()
			return ErrWatchTooLarge
		}
		w.objs[k] = obj
	}
	w.dispatchLocked(t, obj)
	return nil
}

func (w *sharedWatch) dispatchLocked(t watch.EventType, obj *metav1.PartialObjectMetadata) {
	for _, h := range w.handlers {
		h(WatchEvent{Member: w.acc.Name, Type: t, Object: obj, Watched: w.spec})
	}
}

func (w *sharedWatch) stopTooLarge() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stopTooLargeLocked()
}

// ended tells the handlers still registered that the watch has ended, once its loop is done.
func (w *sharedWatch) ended() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.endLocked()
	close(w.done)
}

// endLocked (w.mu held) tells the handlers the watch has ended and drops them.
func (w *sharedWatch) endLocked() {
	w.dispatchLocked(watch.Error, &metav1.PartialObjectMetadata{})
	w.handlers = map[int]WatchHandler{}
}

func (w *sharedWatch) stopTooLargeLocked() {
	first := !w.tooLarge
	w.tooLarge = true
	// The handlers are told first: whoever WaitForWatchSynced releases knows they have been.
	w.endLocked()
	if first {
		w.tooLargeAt.Store(time.Now().UnixNano())
		close(w.stoppedTooLarge)
	}
	w.objs = map[string]*metav1.PartialObjectMetadata{}
	w.bytes = 0
	w.cancel()
}

// objSize estimates what an object's metadata holds in memory (its strings), to bound a watch by
// bytes as well as by count: a hostile member could otherwise fill 50,000 objects with large
// annotations.
func objSize(obj *metav1.PartialObjectMetadata) int64 {
	// Strings count their bytes plus their headers; map entries and slice elements their
	// overhead (about 64 bytes each), so that many tiny labels cost what they really do.
	const entry = 64
	n := len(obj.Name) + len(obj.Namespace) + len(obj.UID) + len(obj.ResourceVersion) + len(obj.GenerateName) + 512
	for k, v := range obj.Labels {
		n += len(k) + len(v) + entry
	}
	for k, v := range obj.Annotations {
		n += len(k) + len(v) + entry
	}
	for _, o := range obj.OwnerReferences {
		n += len(o.APIVersion) + len(o.Kind) + len(o.Name) + len(o.UID) + 2*entry
	}
	for _, f := range obj.Finalizers {
		n += len(f) + entry
	}
	return int64(n)
}

func objKey(obj *metav1.PartialObjectMetadata) string {
	if obj.Namespace == "" {
		return obj.Name
	}
	return obj.Namespace + "/" + obj.Name
}

// stopWatches (c.mu held) stops every watch of member on connections other than keep (0: all).
func (c *ClusterCache) stopWatches(member string, keep uint64) {
	for key, w := range c.watches[member] {
		if key.gen != keep {
			c.removeWatch(member, key, w)
		}
	}
}

// Watches is the number of watches running (shared ones count once).
func (c *ClusterCache) Watches() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.watchCount
}
