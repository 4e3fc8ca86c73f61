// Package chartrepo reaches chart repositories on a user's behalf: Helm repository indexes over
// HTTP(S) and OCI registries. Everything it downloads is size-capped and parsed in memory; it
// connects only under the outbound address policy (internal/netpolicy), through no proxy, never
// sends credentials over plain http or to another host after a redirect, and never reads a local
// file, a HOME configuration or a credential helper. Errors carry a PluginRepository condition
// reason and a message free of credentials and URL queries.
package chartrepo
