package pluginrelease

import (
	"context"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	pluginsv1 "github.com/paddock-dev/paddock/api/plugins/v1alpha1"
)

// DefaultSweepInterval is how often the in-memory state of PluginReleases that are gone is
// dropped.
const DefaultSweepInterval = 5 * time.Minute

// sweeper drops, every SweepInterval, what the controller holds in memory for PluginReleases
// that no longer exist: the ones whose deletion never reached a pass of this process (a
// finalizer removed by hand, or a delete while a pass was failing). Without it outcomes, drift
// watches and Secret values for redaction would be kept for ever.
func (r *Reconciler) sweeper(ctx context.Context) {
	every := r.SweepInterval
	if every <= 0 {
		every = DefaultSweepInterval
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := r.sweep(ctx); err != nil && ctx.Err() == nil {
				r.log.Error(err, "Dropping the state of deleted PluginReleases")
			}
		}
	}
}

// sweep drops the state of every PluginRelease that was known before it listed them and is not in
// the list (one known only after the list began may be new: it waits for the next sweep). A
// target with an action still running keeps its state until a later sweep.
func (r *Reconciler) sweep(ctx context.Context) error {
	known := r.knownUIDs()
	if len(known) == 0 {
		return nil
	}
	var list pluginsv1.PluginReleaseList
	if err := r.Client.List(ctx, &list, client.UnsafeDisableDeepCopy); err != nil {
		return err
	}
	for i := range list.Items {
		delete(known, list.Items[i].UID)
	}
	if len(known) == 0 {
		return nil
	}
	r.mu.Lock()
	busy := map[types.UID]bool{}
	for k := range r.running {
		busy[k.uid] = true
	}
	var stops []func()
	for uid := range known {
		if busy[uid] {
			continue
		}
		for k := range r.drift {
			if k.uid == uid {
				stops = append(stops, r.forgetDriftLocked(k)...)
			}
		}
		for k := range r.done {
			if k.uid == uid {
				delete(r.done, k)
			}
		}
		for k := range r.uninstallAfter {
			if k.uid == uid {
				delete(r.uninstallAfter, k)
			}
		}
		for k := range r.uninstallFailing {
			if k.uid == uid {
				delete(r.uninstallFailing, k)
			}
		}
		for k := range r.rechecked {
			if k.uid == uid {
				delete(r.rechecked, k)
			}
		}
		delete(r.written, uid)
		delete(r.secrets, uid)
	}
	r.mu.Unlock()
	for _, stop := range stops {
		stop()
	}
	return nil
}

// knownUIDs are the PluginReleases the controller holds any state for.
func (r *Reconciler) knownUIDs() map[types.UID]struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[types.UID]struct{}{}
	for k := range r.done {
		out[k.uid] = struct{}{}
	}
	for k := range r.drift {
		out[k.uid] = struct{}{}
	}
	for k := range r.uninstallAfter {
		out[k.uid] = struct{}{}
	}
	for k := range r.uninstallFailing {
		out[k.uid] = struct{}{}
	}
	for k := range r.rechecked {
		out[k.uid] = struct{}{}
	}
	for uid := range r.written {
		out[uid] = struct{}{}
	}
	for uid := range r.secrets {
		out[uid] = struct{}{}
	}
	return out
}
