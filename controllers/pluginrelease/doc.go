// Package pluginrelease reconciles PluginReleases: one Helm chart, installed as one release in
// every target member cluster through the access layer, rolled out in waves, with drift
// correction and a record of every operation. (Being built under issue 7: so far the package
// holds the API's admission tests.)
package pluginrelease
