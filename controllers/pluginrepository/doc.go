// Package pluginrepository reconciles PluginRepositories: it fetches a Helm repository's index
// (or checks an OCI registry) under the outbound address policy and size limits, caches the
// parsed index by digest, and reports it in status. (The controller is being built under issue 7;
// so far the package holds the API's admission tests.)
package pluginrepository
