package pluginrelease

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"regexp"
	"sort"
	"strings"
	"time"

	"helm.sh/helm/v3/pkg/release"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"

	pluginsv1 "github.com/paddock-dev/paddock/api/plugins/v1alpha1"
	"github.com/paddock-dev/paddock/internal/clustercache"
	"github.com/paddock-dev/paddock/internal/drift"
	"github.com/paddock-dev/paddock/internal/helm"
	"github.com/paddock-dev/paddock/internal/rollout"
)

// Drift detection: after a target is deployed, a drift check reads the release's manifest from
// Helm's storage, compares every object with the member's (internal/drift), corrects what departs
// with a merge patch or a create (driftDetection.mode enabled) or reports it (warn), and watches
// the objects' kinds through the access layer (metadata only, selected by helm.ReleaseLabel, one
// shared watch per member, resource and namespace). A watch event that changes an object's
// generation, labels or annotations, or deletes it, marks the release's target dirty and wakes
// the PluginRelease, which checks it again. A check also runs when nothing was seen for Resync
// (a backstop for a watch that could not start) and once per target after the manager starts.
// Corrections touch the objects only: no Helm action, no new revision.

const (
	opDriftCheck     = "drift-check"
	opDriftCorrected = "drift-corrected"
	// driftMinInterval spaces the checks of one target: a stream of changes costs one check per
	// interval, not one per change.
	driftMinInterval = 2 * time.Second
	// driftRepeatLimit is how many times the same drift is corrected within driftRepeatWindow
	// before it is reported instead: another controller puts it back, and fighting it is worse.
	driftRepeatLimit  = 3
	driftRepeatWindow = 10 * time.Minute
	maxDriftObjects   = 10
)

type driftWatchKey struct {
	member string
	gvr    schema.GroupVersionResource
	ns     string
}

type driftWatch struct {
	stop  func()
	users map[actionKey]struct{}
	// seen is the last signature of every object the watch reported, by namespace/name (bounded
	// by the watch's object count, whatever UIDs a member sends).
	seen map[types.NamespacedName]string
}

type labelKey struct{ member, value string }

// driftState is drift detection's memory of one target.
type driftState struct {
	nn      types.NamespacedName
	label   string
	watches map[driftWatchKey]struct{}
	// watched: the watches cover every object of the release.
	watched   bool
	dirty     bool
	lastCheck time.Time
	// The last corrected drift, how often it was corrected, and whether it is now reported
	// instead of corrected (latched).
	lastSig       string
	repeats       int
	lastCorrected time.Time
	latched       bool
	// reportSig identifies the last drift report in full (status may hold it trimmed).
	reportSig string
}

func (r *Reconciler) driftStateLocked(key actionKey, prel *pluginsv1.PluginRelease) *driftState {
	st := r.drift[key]
	if st == nil {
		st = &driftState{nn: types.NamespacedName{Namespace: prel.Namespace, Name: prel.Name},
			label: helm.ReleaseLabelValue(prel.GetTargetNamespace(), prel.GetReleaseName()), watches: map[driftWatchKey]struct{}{}}
		r.drift[key] = st
		lk := labelKey{key.cluster, st.label}
		if r.byLabel[lk] == nil {
			r.byLabel[lk] = map[actionKey]struct{}{}
		}
		r.byLabel[lk][key] = struct{}{}
	}
	return st
}

// driftDue says whether a target needs a drift check now, or when it will.
func (r *Reconciler) driftDue(key actionKey, now time.Time) (bool, time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.drift[key]
	if st == nil {
		return true, time.Time{}
	}
	next := st.lastCheck.Add(r.resync())
	switch {
	case st.dirty || !st.watched:
		next = st.lastCheck.Add(driftMinInterval)
		if !st.watched && !st.dirty {
			// Watches could not start: check every minute instead.
			next = st.lastCheck.Add(time.Minute)
		}
	}
	return !now.Before(next), next
}

// startDriftCheck runs a drift check of one deployed target in an action goroutine.
func (r *Reconciler) startDriftCheck(s *scope, name string) {
	c := s.cluster(name)
	prel, digest, revision, manifest := s.prel.DeepCopy(), c.ConfigDigest, int(c.Revision), c.ManifestDigest
	key := actionKey{prel.UID, name}
	r.run(prel, name, digest, opDriftCheck, "", func(ctx context.Context) outcome {
		r.mu.Lock()
		st := r.driftStateLocked(key, prel)
		st.dirty, st.lastCheck = false, time.Now()
		r.mu.Unlock()
		o := r.checkDrift(ctx, prel, name, revision, manifest)
		o.action, o.digest = firstNonEmpty(o.action, opDriftCheck), digest
		if ctx.Err() != nil {
			o.cancelled = true
		}
		return o
	})
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// drifted is one object that departs from the manifest.
type drifted struct {
	desired *unstructured.Unstructured
	live    *unstructured.Unstructured
	paths   []string
	ignored []string
}

func (d drifted) String() string {
	id := d.desired.GetKind() + " " + d.desired.GetName()
	if ns := d.desired.GetNamespace(); ns != "" {
		id = d.desired.GetKind() + " " + ns + "/" + d.desired.GetName()
	}
	if d.live == nil {
		return id + ": deleted"
	}
	paths := d.paths
	if len(paths) > 5 {
		paths = append(append([]string{}, paths[:5]...), fmt.Sprintf("and %d more", len(d.paths)-5))
	}
	return id + ": " + strings.Join(paths, ", ")
}

func (r *Reconciler) checkDrift(ctx context.Context, prel *pluginsv1.PluginRelease, cluster string, revision int, manifest string) outcome {
	o := outcome{started: time.Now(), phase: pluginsv1.PhaseDeployed}
	fail := func(msg string) outcome {
		o.failed, o.msg, o.finished = true, msg, time.Now()
		return o
	}
	acc, err := r.Cache.Get(ctx, cluster)
	if err != nil {
		o.unreachable = true
		return fail(notUsable(cluster, err))
	}
	hc, err := helm.New(acc, prel.GetReleaseName(), prel.GetTargetNamespace(), r.log, r.redactor(prel.UID))
	if err != nil {
		return fail(err.Error())
	}
	rel, err := hc.Last()
	if err != nil {
		return fail("reading the release: " + r.clean(prel.UID, err))
	}
	o.finished = time.Now()
	if rel == nil || rel.Info == nil || rel.Info.Status == release.StatusUninstalled {
		o.reinstall = true
		o.msg = fmt.Sprintf("the release %s/%s is gone from %s (removed outside Paddock); installing it again",
			prel.GetTargetNamespace(), prel.GetReleaseName(), cluster)
		return o
	}
	if rel.Labels[helm.OwnerLabel] != ownerValue(prel) || rel.Info.Status != release.StatusDeployed {
		// Not ours any more, or not deployed (an action under way, or one run by hand that
		// failed): nothing to compare, and said so rather than shown as no drift.
		o.driftObjects = []string{fmt.Sprintf("Helm release record revision %d", rel.Version)}
		if rel.Labels[helm.OwnerLabel] != ownerValue(prel) {
			o.msg = fmt.Sprintf("the latest release record in the member (revision %d) was not made by this PluginRelease; nothing is compared or corrected until the next install or upgrade", rel.Version)
		} else {
			o.msg = fmt.Sprintf("the latest release record in the member (revision %d) is %s, not deployed; nothing is compared until it is", rel.Version, rel.Info.Status)
		}
		return o
	}
	o.revision, o.version = rel.Version, chartVersion(rel)
	if rel.Version != revision || manifest == "" || r.digests.manifest(rel.Manifest) != manifest {
		// Never trust a release record Paddock did not write: whoever may write Secrets in the
		// release namespace could otherwise have Paddock create or patch anything.
		o.driftObjects = []string{fmt.Sprintf("Helm release record revision %d", rel.Version)}
		o.msg = fmt.Sprintf("the release record in the member is not the one Paddock's revision %d wrote; nothing is compared or corrected until the next install or upgrade", revision)
		return o
	}
	objs, err := drift.ParseManifest(rel.Manifest)
	if err != nil {
		return fail(err.Error())
	}
	cl, err := acc.Client()
	if err != nil {
		return fail(err.Error())
	}
	var rules []drift.Rule
	if dd := prel.Spec.DriftDetection; dd != nil {
		for _, ir := range dd.Ignore {
			rule := drift.Rule{Paths: ir.Paths}
			if ir.Target != nil {
				rule.Group, rule.Kind, rule.Name = ir.Target.Group, ir.Target.Kind, ir.Target.Name
			}
			rules = append(rules, rule)
		}
	}
	specs := map[driftWatchKey]struct{}{}
	complete := true
	var found []drifted
	for _, d := range objs {
		gvk := d.GroupVersionKind()
		m, err := cl.RESTMapper().RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			// A kind the member no longer serves (its CRD removed): nothing to compare against.
			complete = false
			continue
		}
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			if d.GetNamespace() == "" {
				d.SetNamespace(rel.Namespace)
			}
		} else {
			d.SetNamespace("")
		}
		specs[driftWatchKey{member: cluster, gvr: m.Resource, ns: d.GetNamespace()}] = struct{}{}
		desired := drift.Normalize(d)
		ignored := drift.IgnoredPaths(rules, d)
		live := &unstructured.Unstructured{}
		live.SetGroupVersionKind(gvk)
		err = cl.Get(ctx, client.ObjectKeyFromObject(d), live)
		switch {
		case apierrors.IsNotFound(err):
			found = append(found, drifted{desired: desired, ignored: ignored})
		case err != nil:
			return fail(fmt.Sprintf("reading %s %s: %s", gvk.Kind, d.GetName(), r.clean(prel.UID, err)))
		default:
			if paths := drift.Diff(desired.Object, live.Object, ignored); len(paths) > 0 {
				found = append(found, drifted{desired: desired, live: live, paths: paths, ignored: ignored})
			}
		}
	}
	if !r.watchRelease(actionKey{prel.UID, cluster}, prel, specs) {
		complete = false
	}
	r.mu.Lock()
	if st := r.drift[actionKey{prel.UID, cluster}]; st != nil {
		st.watched = complete
	}
	r.mu.Unlock()
	if len(found) == 0 {
		r.driftClean(actionKey{prel.UID, cluster})
		return o
	}
	for i, d := range found {
		if i == maxDriftObjects {
			break
		}
		o.driftObjects = append(o.driftObjects, truncate(d.String(), 300))
	}
	if prel.Spec.GetDriftMode() != pluginsv1.DriftEnabled {
		o.msg = "driftDetection.mode is warn: reported, not corrected"
		return o
	}
	if r.repeatedDrift(actionKey{prel.UID, cluster}, driftSignature(found)) {
		o.msg = fmt.Sprintf("this drift came back after %d corrections within %s: something else in the cluster sets these fields; "+
			"add a driftDetection.ignore rule for them (not corrected again until it changes)", driftRepeatLimit, driftRepeatWindow)
		return o
	}
	// Every object is tried: one the member refuses (a webhook, a quota) must not leave the
	// others drifted until it is fixed.
	var failed []string
	for _, d := range found {
		if err := r.correct(ctx, cl, rel, d); err != nil {
			failed = append(failed, fmt.Sprintf("correcting %s: %s", d.String(), r.clean(prel.UID, errors.New(refusal(err)))))
		}
	}
	if len(failed) > 0 {
		msg := fmt.Sprintf("corrected %d of %d drifted objects; %s", len(found)-len(failed), len(found), failed[0])
		if len(failed) > 1 {
			msg += fmt.Sprintf(" (and %d more)", len(failed)-1)
		}
		return fail(msg)
	}
	o.action, o.finished = opDriftCorrected, time.Now()
	o.msg = fmt.Sprintf("corrected %d objects without a new revision", len(found))
	return o
}

// correct puts one object back: created again when it is gone, merge-patched when it departs.
func (r *Reconciler) correct(ctx context.Context, cl client.Client, rel *release.Release, d drifted) error {
	if d.live != nil {
		// An object another Helm release took over (its ownership annotations name that one) is
		// that release's now: reported, not patched back into this one.
		ann := d.live.GetAnnotations()
		name, ns := ann["meta.helm.sh/release-name"], ann["meta.helm.sh/release-namespace"]
		if (name != "" && name != rel.Name) || (ns != "" && ns != rel.Namespace) {
			return fmt.Errorf("not corrected: it belongs to Helm release %s/%s now", truncate(ns, 63), truncate(name, 63))
		}
	}
	if d.live == nil {
		obj := d.desired.DeepCopy()
		// Helm's own ownership marks, so that the next upgrade takes the object as its own.
		labels := obj.GetLabels()
		if labels == nil {
			labels = map[string]string{}
		}
		labels["app.kubernetes.io/managed-by"] = "Helm"
		obj.SetLabels(labels)
		ann := obj.GetAnnotations()
		if ann == nil {
			ann = map[string]string{}
		}
		ann["meta.helm.sh/release-name"], ann["meta.helm.sh/release-namespace"] = rel.Name, rel.Namespace
		obj.SetAnnotations(ann)
		err := cl.Create(ctx, obj, client.FieldOwner("paddock"), client.FieldValidation(metav1.FieldValidationStrict))
		if apierrors.IsAlreadyExists(err) {
			return nil
		}
		return err
	}
	patch, err := drift.MergePatch(d.desired.Object, d.live.Object, d.paths, d.ignored)
	if err != nil {
		return err
	}
	// Strict: a field the member does not know (a chart's typo, a CRD of another version) is
	// dropped by the apiserver on install and would be "corrected" again on every check.
	return cl.Patch(ctx, d.live, client.RawPatch(types.MergePatchType, patch), client.FieldOwner("paddock"),
		client.FieldValidation(metav1.FieldValidationStrict))
}

// invalidValue is the value part of a field error ("Invalid value: <value>: <detail>"): a string
// in Go quotes, or anything up to the next colon.
var invalidValue = regexp.MustCompile(`Invalid value: (?:"(?:[^"\\]|\\.)*"|[^:]*): `)

// refusal words the member's refusal of a correction without the values it echoes: a merge
// patch refused as a whole quotes the entire patched object (a Secret's data included) in its
// message, and Paddock's status is no place for that.
func refusal(err error) string {
	var st apierrors.APIStatus
	if !errors.As(err, &st) {
		return err.Error()
	}
	s := st.Status()
	var causes []string
	if s.Details != nil {
		for _, c := range s.Details.Causes {
			msg := invalidValue.ReplaceAllString(c.Message, "")
			if strings.Contains(msg, "Invalid value: ") || len(msg) > 200 {
				msg = string(c.Type)
			}
			causes = append(causes, strings.TrimPrefix(c.Field+": "+msg, ": "))
		}
	}
	switch {
	case len(causes) > 0:
		return fmt.Sprintf("the member refused it (%s): %s", s.Reason, strings.Join(causes, "; "))
	case s.Reason == metav1.StatusReasonInvalid:
		return "the member refused it (Invalid)"
	default:
		return s.Message
	}
}

func driftSignature(found []drifted) string {
	h := fnv.New64a()
	for _, d := range found {
		fmt.Fprintf(h, "%s\n", d.String())
	}
	return fmt.Sprintf("%x", h.Sum64())
}

// repeatedDrift records a correction of sig and says whether it came back too often: after
// driftRepeatLimit corrections within driftRepeatWindow it is reported, not corrected, for as
// long as the same drift stays (a new drift, or a clean check, ends that).
func (r *Reconciler) repeatedDrift(key actionKey, sig string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.drift[key]
	if st == nil {
		return false
	}
	now := time.Now()
	if st.lastSig == sig && (st.latched || now.Sub(st.lastCorrected) < driftRepeatWindow) {
		if st.repeats >= driftRepeatLimit {
			st.latched = true
			return true
		}
		st.repeats++
	} else {
		st.lastSig, st.repeats, st.latched = sig, 1, false
	}
	st.lastCorrected = now
	return false
}

// driftClean records a check that found no drift. It ends a latched report (whatever fought
// the chart stopped), but does not clear the count of corrections: the check that follows every
// correction is clean until the other controller sets its value again, seconds or minutes later
// (an autoscaler), and clearing there would let a fight go on forever. The count expires with
// driftRepeatWindow.
func (r *Reconciler) driftClean(key actionKey) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if st := r.drift[key]; st != nil && st.latched {
		st.lastSig, st.repeats, st.latched = "", 0, false
	}
}

func chartVersion(rel *release.Release) string {
	if rel.Chart != nil && rel.Chart.Metadata != nil {
		return rel.Chart.Metadata.Version
	}
	return ""
}

// watchRelease makes the shared watches of key's objects exactly specs. It reports whether every
// watch runs.
func (r *Reconciler) watchRelease(key actionKey, prel *pluginsv1.PluginRelease, specs map[driftWatchKey]struct{}) bool {
	ok := true
	var stops []func()
	var wakeAfter []types.NamespacedName
	defer func() { r.poke(wakeAfter...) }()
	r.mu.Lock()
	st := r.driftStateLocked(key, prel)
	for k := range st.watches {
		if _, want := specs[k]; !want {
			stops = append(stops, r.unwatchLocked(key, k))
		}
	}
	r.mu.Unlock()
	for k := range specs {
		r.mu.Lock()
		if _, has := st.watches[k]; has && r.watches[k] != nil {
			r.mu.Unlock()
			continue
		}
		if w := r.watches[k]; w != nil {
			w.users[key] = struct{}{}
			st.watches[k] = struct{}{}
			r.mu.Unlock()
			continue
		}
		w := &driftWatch{users: map[actionKey]struct{}{key: {}}, seen: map[types.NamespacedName]string{}}
		r.watches[k] = w
		st.watches[k] = struct{}{}
		r.mu.Unlock()
		// Never under r.mu: Watch calls the handler, which takes it.
		stop, err := r.Cache.Watch(r.ctx, k.member, clustercache.WatchSpec{Resource: k.gvr, Namespace: k.ns, LabelSelector: helm.ReleaseLabel},
			r.driftHandler(k, w))
		r.mu.Lock()
		alive := r.watches[k] == w
		if err != nil {
			ok = false
			if alive {
				delete(r.watches, k)
			}
			delete(st.watches, k)
		} else {
			w.stop = stop
			// A change made between the check that is running now and the new watch's first
			// list arrives as an Added event, which wakes nobody: one more check, once it runs.
			for u := range w.users {
				if ust := r.drift[u]; ust != nil {
					ust.dirty = true
					wakeAfter = append(wakeAfter, ust.nn)
				}
			}
		}
		r.mu.Unlock()
		if err == nil && !alive {
			// Ended (or left by its users) while it started.
			stop()
		}
	}
	for _, stop := range stops {
		if stop != nil {
			stop()
		}
	}
	return ok
}

// unwatchLocked removes key from the watch k and returns the watch's stop when it has no user
// left (call it without r.mu).
func (r *Reconciler) unwatchLocked(key actionKey, k driftWatchKey) func() {
	if st := r.drift[key]; st != nil {
		delete(st.watches, k)
	}
	w := r.watches[k]
	if w == nil {
		return nil
	}
	delete(w.users, key)
	if len(w.users) > 0 {
		return nil
	}
	delete(r.watches, k)
	return w.stop
}

// forgetDriftLocked drops key's drift state and returns the stops of the watches nobody uses any
// more (call them without r.mu).
func (r *Reconciler) forgetDriftLocked(key actionKey) []func() {
	st := r.drift[key]
	if st == nil {
		return nil
	}
	var stops []func()
	for k := range st.watches {
		if stop := r.unwatchLocked(key, k); stop != nil {
			stops = append(stops, stop)
		}
	}
	lk := labelKey{key.cluster, st.label}
	delete(r.byLabel[lk], key)
	if len(r.byLabel[lk]) == 0 {
		delete(r.byLabel, lk)
	}
	delete(r.drift, key)
	return stops
}

// forgetDrift drops the drift state of key (cluster "" : every cluster of the release).
func (r *Reconciler) forgetDrift(uid types.UID, cluster string) {
	r.mu.Lock()
	var stops []func()
	for key := range r.drift {
		if key.uid == uid && (cluster == "" || key.cluster == cluster) {
			stops = append(stops, r.forgetDriftLocked(key)...)
		}
	}
	r.mu.Unlock()
	for _, stop := range stops {
		stop()
	}
}

// objectSignature changes when an object's desired state may have: its generation (spec), or,
// for kinds without one (ConfigMaps, Secrets), its resourceVersion; and its labels and
// annotations. A status update changes none of them.
func objectSignature(o *metav1.PartialObjectMetadata) string {
	h := fnv.New64a()
	if o.Generation != 0 {
		fmt.Fprintf(h, "g%d\n", o.Generation)
	} else {
		fmt.Fprintf(h, "rv%s\n", o.ResourceVersion)
	}
	for _, m := range []map[string]string{o.Labels, o.Annotations} {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(h, "%s=%s\n", k, m[k])
		}
		h.Write([]byte{0})
	}
	return fmt.Sprintf("%x", h.Sum64())
}

// driftHandler routes one shared watch's events to the targets whose objects they are about.
func (r *Reconciler) driftHandler(k driftWatchKey, w *driftWatch) clustercache.WatchHandler {
	return func(e clustercache.WatchEvent) {
		var wake []types.NamespacedName
		r.mu.Lock()
		if r.watches[k] != w {
			r.mu.Unlock()
			return
		}
		if e.Type == watch.Error {
			// The watch ended (member gone, connection replaced, too large): its users check again
			// (and watch again) once the member is usable.
			delete(r.watches, k)
			for u := range w.users {
				if st := r.drift[u]; st != nil {
					delete(st.watches, k)
					st.watched, st.dirty = false, true
					wake = append(wake, st.nn)
				}
			}
			r.mu.Unlock()
			r.poke(wake...)
			return
		}
		obj := e.Object
		sig := objectSignature(obj)
		id := types.NamespacedName{Namespace: obj.Namespace, Name: obj.Name}
		prev, had := w.seen[id]
		switch e.Type {
		case watch.Added:
			w.seen[id] = sig
			r.mu.Unlock()
			return
		case watch.Modified:
			w.seen[id] = sig
			if had && prev == sig {
				r.mu.Unlock()
				return
			}
		case watch.Deleted:
			delete(w.seen, id)
		}
		for u := range r.byLabel[labelKey{k.member, obj.Labels[helm.ReleaseLabel]}] {
			// Woken once per check: a stream of changes does not make a stream of reconciles.
			if st := r.drift[u]; st != nil && !st.dirty {
				st.dirty = true
				wake = append(wake, st.nn)
			}
		}
		r.mu.Unlock()
		r.poke(wake...)
	}
}

// poke wakes PluginReleases without blocking the caller: names are coalesced and handed to the
// controller by pump.
func (r *Reconciler) poke(nns ...types.NamespacedName) {
	if len(nns) == 0 {
		return
	}
	r.mu.Lock()
	for _, nn := range nns {
		r.pokes[nn] = struct{}{}
	}
	r.mu.Unlock()
	select {
	case r.pokeSignal <- struct{}{}:
	default:
	}
}

func (r *Reconciler) pump(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.pokeSignal:
		}
		r.mu.Lock()
		nns := make([]types.NamespacedName, 0, len(r.pokes))
		for nn := range r.pokes {
			nns = append(nns, nn)
		}
		clear(r.pokes)
		r.mu.Unlock()
		for _, nn := range nns {
			obj := &pluginsv1.PluginRelease{ObjectMeta: metav1.ObjectMeta{Namespace: nn.Namespace, Name: nn.Name}}
			select {
			case r.wake <- event.GenericEvent{Object: obj}:
			case <-ctx.Done():
				return
			}
		}
	}
}

// scheduleDrift starts the drift checks that are due on deployed targets and says when the next
// one is.
func (r *Reconciler) scheduleDrift(s *scope, states map[string]rollout.State, now time.Time) time.Time {
	prel := s.prel
	if prel.Spec.GetDriftMode() == pluginsv1.DriftDisabled {
		r.forgetDrift(prel.UID, "")
		for _, c := range s.clusters {
			c.Drift = nil
		}
		return time.Time{}
	}
	var next time.Time
	for name := range s.targets {
		if states[name] != rollout.Succeeded || r.isRunning(s, name) {
			continue
		}
		due, at := r.driftDue(actionKey{prel.UID, name}, now)
		if due {
			r.startDriftCheck(s, name)
			continue
		}
		if next.IsZero() || at.Before(next) {
			next = at
		}
	}
	return next
}

// foldDrift moves a drift check's outcome into the target's status (r.mu held).
func (r *Reconciler) foldDrift(s *scope, cluster string, o outcome) {
	c, ok := s.clusters[cluster]
	if !ok || o.cancelled || c.ConfigDigest != o.digest || c.Phase != pluginsv1.PhaseDeployed {
		// Superseded: the target changed while it was checked.
		return
	}
	prel := s.prel
	switch {
	case o.reinstall:
		setPhase(c, pluginsv1.PhasePending, o.msg)
		c.Revision, c.ConfigDigest, c.Drift = 0, "", nil
		s.events = append(s.events, func() {
			if r.Recorder != nil {
				r.Recorder.Eventf(prel, memberRef(cluster), "Warning", "ReleaseMissing", "DriftCheck", "%s", o.msg)
			}
		})
	case o.failed && o.unreachable:
	case o.failed:
		c.Drift = &pluginsv1.DriftStatus{DetectedAt: metav1.Time{Time: o.finished}, Message: truncate("drift check failed: "+o.msg, 512)}
		if len(o.driftObjects) > 0 {
			c.Drift.Objects = o.driftObjects
		}
	case len(o.driftObjects) == 0:
		c.Drift = nil
		s.keepReportSig(cluster, "")
	case o.action == opDriftCorrected:
		c.Drift, c.LastOperation = nil, opDriftCorrected
		s.keepReportSig(cluster, "")
		dur := o.finished.Sub(o.started).Round(100 * time.Millisecond)
		s.history = append(s.history, pluginsv1.HistoryEntry{Time: metav1.Time{Time: o.finished}, Cluster: cluster,
			Action: opDriftCorrected, FromVersion: o.version, ToVersion: o.version, Revision: int32(o.revision),
			Result: "Succeeded", Duration: dur.String(), Message: truncate(strings.Join(o.driftObjects, "; "), 256)})
		s.events = append(s.events, func() {
			if r.Recorder != nil {
				r.Recorder.Eventf(prel, memberRef(cluster), "Normal", "DriftCorrected", opDriftCorrected,
					"corrected drift of %s on %s without a new revision (still revision %d): %s", prel.Spec.Chart.Name, cluster,
					o.revision, truncate(strings.Join(o.driftObjects, "; "), 400))
			}
		})
	default:
		// Compared in full with the last report this process saw; else (after a restart) as
		// status holds it, trimmed for many targets, or it would be new every time.
		// The signature is kept once status is written (forgetFolded): a pass whose write
		// conflicts folds this outcome again, and must find it as new again.
		sig := strings.Join(o.driftObjects, "\n")
		last, known := s.reportSigs[cluster]
		if st := r.drift[actionKey{prel.UID, cluster}]; !known && st != nil {
			last = st.reportSig
		}
		var fresh bool
		if last != "" {
			fresh = c.Drift == nil || last != sig
		} else {
			fresh = c.Drift == nil || !sameDriftObjects(c.Drift.Objects, o.driftObjects)
		}
		s.keepReportSig(cluster, sig)
		detected := metav1.Time{Time: o.finished}
		if !fresh {
			detected = c.Drift.DetectedAt
		}
		c.Drift = &pluginsv1.DriftStatus{DetectedAt: detected, Objects: o.driftObjects, Message: truncate(o.msg, 512)}
		if fresh {
			s.events = append(s.events, func() {
				if r.Recorder != nil {
					r.Recorder.Eventf(prel, memberRef(cluster), "Warning", "DriftDetected", opDriftCheck, "drift of %s on %s, not corrected (%s): %s",
						prel.Spec.Chart.Name, cluster, truncate(o.msg, 200), truncate(strings.Join(o.driftObjects, "; "), 400))
				}
			})
		}
	}
}

// keepReportSig notes the drift report folded for cluster in this pass ("" for none): kept
// once status is written.
func (s *scope) keepReportSig(cluster, sig string) {
	if s.reportSigs == nil {
		s.reportSigs = map[string]string{}
	}
	s.reportSigs[cluster] = sig
}
