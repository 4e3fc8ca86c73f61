package clustercache

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"

	"github.com/paddock-dev/paddock/internal/scheme"
)

// fakeWatchMember serves a collection of namespaces (metadata only) and watch streams whose
// events the test sends.
type fakeWatchMember struct {
	mu      sync.Mutex
	objs    map[string]string // name -> resourceVersion
	listRV  string
	lists   int
	watches []string // resourceVersion of each watch request
	accepts []string
	events  chan string // raw JSON lines for the open watch stream; "" ends the stream
	listRVs []string    // resourceVersion parameter of each list ("" for a consistent read)
	// endAtOnce: every watch stream ends at once, without an event (a misbehaving proxy).
	endAtOnce bool
	// bookmarkFirst: such a stream carries one bookmark before it ends.
	bookmarkFirst bool
	// extra is added to every listed object's metadata (e.g. a large annotation).
	extra string
	// endless, when set, makes every watch stream one event that never ends; it counts the
	// bytes the member managed to send.
	endless *atomic.Int64
}

func (f *fakeWatchMember) handler(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/api/v1/namespaces" {
		http.NotFound(w, r)
		return
	}
	q := r.URL.Query()
	f.mu.Lock()
	f.accepts = append(f.accepts, r.Header.Get("Accept"))
	if q.Get("watch") != "true" {
		f.lists++
		f.listRVs = append(f.listRVs, q.Get("resourceVersion"))
		names := make([]string, 0, len(f.objs))
		for n := range f.objs {
			names = append(names, n)
		}
		sort.Strings(names)
		items := make([]string, 0, len(names))
		for _, n := range names {
			item := objJSON(n, f.objs[n])
			if f.extra != "" {
				item = strings.Replace(item, `"metadata":{`, `"metadata":{`+f.extra+`,`, 1)
			}
			items = append(items, item)
		}
		rv := f.listRV
		f.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = fmt.Fprintf(w, `{"kind":"PartialObjectMetadataList","apiVersion":"meta.k8s.io/v1","metadata":{"resourceVersion":%q},"items":[%s]}`, rv, strings.Join(items, ","))
		return
	}
	f.watches = append(f.watches, q.Get("resourceVersion"))
	endAtOnce, endless := f.endAtOnce, f.endless
	f.mu.Unlock()
	if endless != nil {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, `{"type":"MODIFIED","object":{"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/v1","metadata":{"name":"a","annotations":{"big":"`)
		chunk := strings.Repeat("x", 64<<10)
		for endless.Load() < 160<<20 {
			n, err := io.WriteString(w, chunk)
			endless.Add(int64(n))
			if err != nil {
				return
			}
		}
		return
	}
	if endAtOnce {
		w.Header().Set("Content-Type", "application/json")
		if f.bookmarkFirst {
			_, _ = fmt.Fprintln(w, `{"type":"BOOKMARK","object":{"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/v1","metadata":{"resourceVersion":"5"}}}`)
		}
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	w.(http.Flusher).Flush()
	for {
		select {
		case line := <-f.events:
			if line == "" {
				return
			}
			_, _ = fmt.Fprintln(w, line)
			w.(http.Flusher).Flush()
			if strings.Contains(line, `"type":"ERROR"`) {
				return // the apiserver ends a stream after an error event
			}
		case <-r.Context().Done():
			return
		}
	}
}

func objJSON(name, rv string) string {
	return fmt.Sprintf(`{"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/v1","metadata":{"name":%q,"resourceVersion":%q,"labels":{"a":"b"},"managedFields":[{"manager":"kubectl","operation":"Apply"}]}}`, name, rv)
}

func watchLine(t watch.EventType, name, rv string) string {
	return fmt.Sprintf(`{"type":%q,"object":%s}`, t, objJSON(name, rv))
}

func watchedCache(t *testing.T, f *fakeWatchMember) *ClusterCache {
	t.Helper()
	srv := httptest.NewTLSServer(http.HandlerFunc(f.handler))
	t.Cleanup(srv.Close)
	c := New(Options{Scheme: scheme.New()})
	c.timing = &watchTiming{listTimeout: 5 * time.Second, minBackoff: 20 * time.Millisecond, maxBackoff: 100 * time.Millisecond, minStream: time.Second, streamSeconds: 60,
		tooLargeRetry: time.Hour}
	acc, err := c.Connect("m", "v1", &rest.Config{Host: srv.URL, TLSClientConfig: rest.TLSClientConfig{Insecure: true}, BearerToken: "t"})
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	NewWithT(t).Expect(c.Admit(acc, "uid-1")).To(BeTrue())
	t.Cleanup(func() { c.Disconnect("m") })
	return c
}

type recorder struct {
	mu  sync.Mutex
	got []string
}

func (r *recorder) handle(ev WatchEvent) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ev.Object.ManagedFields != nil {
		r.got = append(r.got, "managedFields kept")
	}
	r.got = append(r.got, fmt.Sprintf("%s %s@%s", ev.Type, ev.Object.Name, ev.Object.ResourceVersion))
}

func (r *recorder) events() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.got...)
}

var nsSpec = WatchSpec{Resource: corev1.SchemeGroupVersion.WithResource("namespaces"), LabelSelector: "a=b"}

// The watch lists, follows the stream (bookmarks move its resourceVersion), re-watches from where a
// stream the server ended stopped, and on an expired resourceVersion lists again and reports what
// changed meanwhile, deletions included.
func TestWatchListsFollowsAndRelists(t *testing.T) {
	g := NewWithT(t)
	f := &fakeWatchMember{objs: map[string]string{"a": "1", "b": "2"}, listRV: "2", events: make(chan string)}
	c := watchedCache(t, f)
	rec := &recorder{}
	stop, err := c.Watch(context.Background(), "m", nsSpec, rec.handle)
	g.Expect(err).NotTo(HaveOccurred())
	defer stop()
	g.Expect(c.WaitForWatchSynced(context.Background(), "m", nsSpec)).To(Succeed())
	g.Eventually(rec.events).Should(ConsistOf("ADDED a@1", "ADDED b@2"))

	f.events <- watchLine(watch.Modified, "a", "3")
	f.events <- `{"type":"BOOKMARK","object":{"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/v1","metadata":{"resourceVersion":"7"}}}`
	f.events <- "" // the server ends the stream (its timeout)
	g.Eventually(func() []string { f.mu.Lock(); defer f.mu.Unlock(); return f.watches }).Should(Equal([]string{"2", "7"}),
		"re-watched from the bookmark, without listing again")
	g.Expect(f.lists).To(Equal(1))

	// Meanwhile b is deleted and c created; the member says the resourceVersion expired.
	f.mu.Lock()
	f.objs = map[string]string{"a": "3", "c": "9"}
	f.listRV = "9"
	f.mu.Unlock()
	f.events <- `{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Expired","code":410}}`
	want := []string{"ADDED a@1", "ADDED b@2", "MODIFIED a@3", "ADDED c@9", "DELETED b@2"}
	g.Eventually(rec.events).Should(Equal(want))
	g.Eventually(func() []string { f.mu.Lock(); defer f.mu.Unlock(); return f.watches }).Should(Equal([]string{"2", "7", "9"}))
	f.mu.Lock()
	g.Expect(f.lists).To(Equal(2))
	g.Expect(f.listRVs).To(Equal([]string{"0", ""}), "after an expiry the list is a consistent read, not the watch cache again")
	for _, a := range f.accepts {
		g.Expect(a).To(ContainSubstring("as=PartialObjectMetadata"), "metadata only")
	}
	f.mu.Unlock()

	// A second handler joining the running watch first hears of every current object.
	late := &recorder{}
	stop2, err := c.Watch(context.Background(), "m", nsSpec, late.handle)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(late.events()).To(ConsistOf("ADDED a@3", "ADDED c@9"))
	g.Expect(c.Watches()).To(Equal(1), "shared")
	f.events <- watchLine(watch.Deleted, "c", "10")
	g.Eventually(late.events).Should(ContainElement("DELETED c@10"))
	g.Eventually(rec.events).Should(ContainElement("DELETED c@10"))
	stop2()
	g.Expect(c.Watches()).To(Equal(1), "the first handler keeps it")
	stop()
	g.Expect(c.Watches()).To(BeZero())
}

// A watch matching more than MaxWatchedObjects is stopped, and joining it is refused.
func TestWatchTooLargeIsStopped(t *testing.T) {
	g := NewWithT(t)
	objs := make(map[string]string, MaxWatchedObjects+1)
	for i := range MaxWatchedObjects + 1 {
		objs[fmt.Sprintf("ns-%06d", i)] = "1"
	}
	f := &fakeWatchMember{objs: objs, listRV: "1", events: make(chan string)}
	c := watchedCache(t, f)
	rec := &recorder{}
	_, err := c.Watch(context.Background(), "m", nsSpec, rec.handle)
	g.Expect(err).NotTo(HaveOccurred())
	g.Eventually(func() error {
		_, err := c.Watch(context.Background(), "m", nsSpec, rec.handle)
		return err
	}, 10*time.Second).Should(MatchError(ErrWatchTooLarge))
	g.Expect(rec.events()).To(HaveEach("ERROR @"), "no handler is told of a part of the objects, only that the watch ended")
	f.mu.Lock()
	defer f.mu.Unlock()
	g.Expect(f.watches).To(BeEmpty(), "no watch stream after a too large list")
}

// Revoking the member's identity or dropping its connection stops its watches (and their
// streams in the member).
func TestWatchStopsWithTheConnection(t *testing.T) {
	g := NewWithT(t)
	f := &fakeWatchMember{objs: map[string]string{"a": "1"}, listRV: "1", events: make(chan string)}
	c := watchedCache(t, f)
	rec := &recorder{}
	_, err := c.Watch(context.Background(), "m", nsSpec, rec.handle)
	g.Expect(err).NotTo(HaveOccurred())
	g.Eventually(func() int { f.mu.Lock(); defer f.mu.Unlock(); return len(f.watches) }).Should(Equal(1))
	c.Revoke("m", "ClusterIdentityChanged", true)
	g.Expect(c.Watches()).To(BeZero())
	// Its handler is told, once, that the watch ended (so it can watch again when the member is
	// usable, even if it missed the revoke).
	g.Eventually(rec.events, 5*time.Second).Should(Equal([]string{"ADDED a@1", "ERROR @"}))
	// The stream's request is cancelled: the server's handler returns, so the next event has no
	// reader.
	g.Eventually(func() bool {
		select {
		case f.events <- watchLine(watch.Modified, "a", "2"):
			return false
		case <-time.After(20 * time.Millisecond):
			return true
		}
	}, 5*time.Second).Should(BeTrue())
	_, err = c.Watch(context.Background(), "m", nsSpec, (&recorder{}).handle)
	_, notReady := IsNotReady(err)
	g.Expect(notReady).To(BeTrue(), "no watch through a connection whose identity is not confirmed: %v", err)
}

// A member (or a proxy) that ends every watch stream at once, without an event, is re-watched
// with a growing backoff, not in a loop that would use up the member's request budget.
func TestWatchBacksOffFromStreamsThatEndAtOnce(t *testing.T) {
	t.Run("empty", func(t *testing.T) { testShortStreams(t, false) })
	t.Run("one event", func(t *testing.T) { testShortStreams(t, true) })
}

func testShortStreams(t *testing.T, bookmarkFirst bool) {
	g := NewWithT(t)
	f := &fakeWatchMember{objs: map[string]string{"a": "1"}, listRV: "1", events: make(chan string), endAtOnce: true, bookmarkFirst: bookmarkFirst}
	c := watchedCache(t, f)
	stop, err := c.Watch(context.Background(), "m", nsSpec, (&recorder{}).handle)
	g.Expect(err).NotTo(HaveOccurred())
	defer stop()
	g.Eventually(func() int { f.mu.Lock(); defer f.mu.Unlock(); return len(f.watches) }).Should(BeNumerically(">=", 3))
	f.mu.Lock()
	n0 := len(f.watches)
	f.mu.Unlock()
	// With the backoff at its 100 ms cap, about 10 watches a second; without it, the work
	// limiter's 20 per second and its burst of 40.
	g.Consistently(func() int { f.mu.Lock(); defer f.mu.Unlock(); return len(f.watches) - n0 }, time.Second, 50*time.Millisecond).
		Should(BeNumerically("<", 16))
}

// An event larger than any real object's metadata, or a list whose metadata is over
// MaxWatchedBytes, stops the watch like too many objects do.
func TestWatchStopsOnOversizedMetadata(t *testing.T) {
	t.Run("event", func(t *testing.T) {
		g := NewWithT(t)
		f := &fakeWatchMember{objs: map[string]string{"a": "1"}, listRV: "1", events: make(chan string)}
		c := watchedCache(t, f)
		rec := &recorder{}
		_, err := c.Watch(context.Background(), "m", nsSpec, rec.handle)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(c.WaitForWatchSynced(context.Background(), "m", nsSpec)).To(Succeed())
		big := strings.Repeat("x", MaxWatchEventBytes)
		f.events <- fmt.Sprintf(`{"type":"MODIFIED","object":{"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/v1","metadata":{"name":"a","resourceVersion":"2","annotations":{"big":%q}}}}`, big)
		g.Eventually(joinErr(c), 5*time.Second).Should(MatchError(ErrWatchTooLarge))
		g.Expect(rec.events()).To(Equal([]string{"ADDED a@1", "ERROR @"}), "the oversized event reached no handler; the end of the watch did")

		// It refuses joiners until tooLargeRetry has passed, then a Watch tries again (the
		// member's objects are small again) and works.
		_, err = c.Watch(context.Background(), "m", nsSpec, func(WatchEvent) {})
		g.Expect(err).To(MatchError(ErrWatchTooLarge), "not retried at once")
		c.timing.tooLargeRetry = 0
		again := &recorder{}
		stop, err := c.Watch(context.Background(), "m", nsSpec, again.handle)
		g.Expect(err).NotTo(HaveOccurred())
		defer stop()
		g.Expect(c.WaitForWatchSynced(context.Background(), "m", nsSpec)).To(Succeed())
		g.Eventually(again.events, 5*time.Second).Should(Equal([]string{"ADDED a@1"}))
		g.Expect(c.Watches()).To(Equal(1), "the stopped watch was replaced, not kept beside the new one")
		c.Disconnect("m")
		g.Expect(c.Watches()).To(BeZero(), "the new watch stops with its connection")
	})
	t.Run("endless event", func(t *testing.T) {
		// A member that streams one event without end: the watch stops after reading about
		// MaxWatchEventBytes of it, instead of buffering it up to the response cap (128 MiB).
		g := NewWithT(t)
		f := &fakeWatchMember{objs: map[string]string{"a": "1"}, listRV: "1", events: make(chan string)}
		c := watchedCache(t, f)
		rec := &recorder{}
		_, err := c.Watch(context.Background(), "m", nsSpec, rec.handle)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(c.WaitForWatchSynced(context.Background(), "m", nsSpec)).To(Succeed())
		g.Eventually(func() int { f.mu.Lock(); defer f.mu.Unlock(); return len(f.watches) }, 5*time.Second).Should(Equal(1))
		sent := &atomic.Int64{}
		f.mu.Lock()
		f.endless = sent
		f.mu.Unlock()
		f.events <- "" // the current stream ends; the next one is endless
		g.Eventually(joinErr(c), 10*time.Second).Should(MatchError(ErrWatchTooLarge))
		g.Eventually(sent.Load, 5*time.Second).Should(BeNumerically(">", MaxWatchEventBytes))
		// What the member got out before the connection closed: the part read plus the sockets'
		// buffers, far below the response cap.
		g.Consistently(sent.Load, 500*time.Millisecond).Should(BeNumerically("<", 32<<20))
		t.Logf("the member sent %d MiB of the endless event", sent.Load()>>20)
		g.Expect(rec.events()).To(Equal([]string{"ADDED a@1", "ERROR @"}))
	})
	t.Run("list", func(t *testing.T) {
		g := NewWithT(t)
		objs := map[string]string{}
		per := int64(1 << 20)
		for i := range MaxWatchedBytes/per + 1 {
			objs[fmt.Sprintf("ns-%03d", i)] = "1"
		}
		f := &fakeWatchMember{objs: objs, listRV: "1", events: make(chan string),
			extra: fmt.Sprintf(`"annotations":{"big":%q}`, strings.Repeat("x", int(per)))}
		c := watchedCache(t, f)
		rec := &recorder{}
		_, err := c.Watch(context.Background(), "m", nsSpec, rec.handle)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(c.WaitForWatchSynced(context.Background(), "m", nsSpec)).To(MatchError(ErrWatchTooLarge))
		g.Expect(rec.events()).To(Equal([]string{"ERROR @"}), "told the watch ended, of no object")
	})
}

// The member's answer is checked against the selector: objects it sends that do not match are
// never handed to a handler.
func TestWatchDropsObjectsOutsideItsSelector(t *testing.T) {
	g := NewWithT(t)
	f := &fakeWatchMember{objs: map[string]string{"a": "1"}, listRV: "1", events: make(chan string)}
	c := watchedCache(t, f)
	rec := &recorder{}
	_, err := c.Watch(context.Background(), "m", nsSpec, rec.handle)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(c.WaitForWatchSynced(context.Background(), "m", nsSpec)).To(Succeed())
	g.Eventually(func() int { f.mu.Lock(); defer f.mu.Unlock(); return len(f.watches) }).Should(Equal(1))
	f.events <- strings.Replace(watchLine(watch.Added, "stranger", "2"), `"labels":{"a":"b"}`, `"labels":{"a":"c"}`, 1)
	f.events <- watchLine(watch.Added, "b", "3")
	g.Eventually(rec.events, 5*time.Second).Should(Equal([]string{"ADDED a@1", "ADDED b@3"}))
}

// joinErr returns what joining the watch of nsSpec in member m says now (a join that succeeds is
// left at once).
func joinErr(c *ClusterCache) func() error {
	return func() error {
		stop, err := c.Watch(context.Background(), "m", nsSpec, func(WatchEvent) {})
		if err == nil {
			stop()
		}
		return err
	}
}
