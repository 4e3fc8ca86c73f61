// Package pluginrelease reconciles PluginReleases: one Helm chart, installed as one release in
// every target member cluster through the access layer, rolled out in waves by internal/rollout.
// Helm actions run in goroutines of their own under a global limit; a reconcile decides what to
// start, folds in what finished, and writes status, history and events.
//
// Built so far (issue 7): install, upgrade on a version or values change, per-cluster values
// templates, uninstall from clusters that leave the targets and on deletion (bounded), waves,
// remediation, adoption refusal, pending-release recovery. Still to come: drift correction,
// the benchmark, make dev's sample.
package pluginrelease
