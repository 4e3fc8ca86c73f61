package pluginrelease

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"hash"

	pluginsv1 "github.com/paddock-dev/paddock/api/plugins/v1alpha1"
)

// digester computes the digests status holds. They cover values (valuesFrom Secrets included) and
// rendered manifests (which may hold Secrets), so they are HMACs under the manager's digest key
// (internal/digestkey): a reader of status cannot test guesses of a secret value against them.
type digester struct{ key []byte }

// digestPrefix names the algorithm (HMAC-SHA256); 128 bits of the HMAC are kept, in unpadded
// base64url (a PluginRelease at 2,000 targets holds two per target).
const digestPrefix = "hmac:"

func (d digester) new() hash.Hash { return hmac.New(sha256.New, d.key) }

func finish(h hash.Hash) string {
	return digestPrefix + base64.RawURLEncoding.EncodeToString(h.Sum(nil)[:16])
}

// config identifies what a target must run: the chart archive and the values (JSON with sorted
// keys), plus the settings that change the release's objects.
func (d digester) config(chartDigest string, vals map[string]any, prel *pluginsv1.PluginRelease) string {
	b, _ := json.Marshal(vals)
	h := d.new()
	fmt.Fprintf(h, "config\n%s\n%s\n%s\n%t\n", chartDigest, prel.GetReleaseName(), prel.GetTargetNamespace(), prel.Spec.CreateNamespace)
	h.Write(b)
	return finish(h)
}

// rollout identifies a change as the rollout sees it: the chart, the shared values and the
// template (per-cluster renders differ, the change is the same).
func (d digester) rollout(chartDigest string, base map[string]any, prel *pluginsv1.PluginRelease) string {
	b, _ := json.Marshal(base)
	h := d.new()
	fmt.Fprintf(h, "rollout\n%s\n%s\n%s\n", chartDigest, prel.Spec.ValuesTemplate, prel.GetTargetNamespace())
	h.Write(b)
	return finish(h)
}

// manifest identifies a release manifest.
func (d digester) manifest(manifest string) string {
	h := d.new()
	h.Write([]byte("manifest\n"))
	h.Write([]byte(manifest))
	return finish(h)
}
