package pluginrelease

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	pluginsv1 "github.com/paddock-dev/paddock/api/plugins/v1alpha1"
	"github.com/paddock-dev/paddock/internal/digestkey"
)

// The digests in status are keyed: someone who reads status and knows every input but a secret
// value cannot test guesses of it without the key.
func TestStatusDigestsAreKeyed(t *testing.T) {
	g := NewWithT(t)
	prel := &pluginsv1.PluginRelease{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "apps"}}
	vals := map[string]any{"password": "hunter2"}
	a := digester{key: []byte("0123456789abcdef0123456789abcdef")}
	b := digester{key: []byte("fedcba9876543210fedcba9876543210")}

	g.Expect(a.config("sha256:chart", vals, prel)).To(Equal(a.config("sha256:chart", vals, prel)), "stable under one key")
	g.Expect(a.config("sha256:chart", vals, prel)).To(HavePrefix(digestPrefix))
	g.Expect(a.config("sha256:chart", vals, prel)).NotTo(Equal(b.config("sha256:chart", vals, prel)))
	g.Expect(a.config("sha256:chart", vals, prel)).NotTo(Equal(a.config("sha256:chart", map[string]any{"password": "hunter3"}, prel)))
	g.Expect(a.rollout("sha256:chart", vals, prel)).NotTo(Equal(b.rollout("sha256:chart", vals, prel)))
	g.Expect(a.manifest("kind: Secret")).NotTo(Equal(b.manifest("kind: Secret")))
	// The three kinds never collide on the same input.
	g.Expect(a.config("", nil, prel)).NotTo(Equal(a.rollout("", nil, prel)))

	// What the unkeyed digests of before were: a guess reproduces them, never the keyed one.
	js, _ := json.Marshal(vals)
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n%s\n%t\n", "sha256:chart", prel.GetReleaseName(), prel.GetTargetNamespace(), false)
	h.Write(js)
	unkeyed := hex.EncodeToString(h.Sum(nil))[:32]
	g.Expect(a.config("sha256:chart", vals, prel)).NotTo(ContainSubstring(unkeyed))
}

// The manager's key Secret: created once with a random key, read back by every later start, one
// key when replicas start together, and a clear refusal of a key too short to be one.
func TestDigestKeySecret(t *testing.T) {
	g := NewWithT(t)
	// The suite's manager created the default one.
	stored := &corev1.Secret{}
	g.Expect(mgmt.Get(ctx, client.ObjectKey{Namespace: secretNS, Name: digestkey.DefaultSecretName}, stored)).To(Succeed())
	g.Expect(stored.Data[digestkey.DataKey]).To(Equal(digestKey))
	g.Expect(digestKey).To(HaveLen(digestkey.MinBytes))
	g.Expect(stored.Immutable).To(HaveValue(BeTrue()))
	again, err := digestkey.Ensure(ctx, mgmt, mgmt, secretNS, digestkey.DefaultSecretName)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(again).To(Equal(digestKey), "a restart keeps the key, so nothing is redeployed")

	// Replicas starting together.
	var wg sync.WaitGroup
	keys := make([][]byte, 8)
	errs := make([]error, 8)
	for i := range keys {
		wg.Go(func() { keys[i], errs[i] = digestkey.Ensure(ctx, mgmt, mgmt, secretNS, "digest-key-race") })
	}
	wg.Wait()
	for i := range keys {
		g.Expect(errs[i]).NotTo(HaveOccurred())
		g.Expect(keys[i]).To(Equal(keys[0]))
	}
	g.Expect(keys[0]).NotTo(Equal(digestKey), "random, not a constant")

	short := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: secretNS, Name: "digest-key-short"},
		Data: map[string][]byte{digestkey.DataKey: []byte("short")}}
	g.Expect(mgmt.Create(ctx, short)).To(Succeed())
	_, err = digestkey.Ensure(ctx, mgmt, mgmt, secretNS, "digest-key-short")
	g.Expect(err).To(MatchError(ContainSubstring("at least 32 bytes")))
	g.Expect(err.Error()).NotTo(ContainSubstring("short\""), "the Secret's content is not told")
}

// A drift that another controller keeps setting is corrected driftRepeatLimit times, then
// reported: the clean check that follows each correction (the other controller has not set its
// value again yet) does not restart the count, or an autoscaler would be fought forever.
func TestARecurringDriftIsCorrectedALimitedNumberOfTimes(t *testing.T) {
	g := NewWithT(t)
	key := actionKey{uid: "u", cluster: "c"}
	r := &Reconciler{drift: map[actionKey]*driftState{key: {}}}
	corrections := 0
	for range 10 {
		if !r.repeatedDrift(key, "Deployment apps/web: /spec/replicas") {
			corrections++
			r.driftClean(key) // the check right after the correction
		}
	}
	g.Expect(corrections).To(Equal(driftRepeatLimit))
	// A clean check while it is reported ends the report; a new fight is counted afresh.
	r.driftClean(key)
	g.Expect(r.repeatedDrift(key, "Deployment apps/web: /spec/replicas")).To(BeFalse())
	g.Expect(r.repeatedDrift(key, "ConfigMap apps/other: /data")).To(BeFalse(), "another drift is corrected")
}

// The values of a release's Secrets are always all redacted, however many there are, and
// earlier (rotated) ones as many as fit; the list a reader holds is never changed under it.
func TestRememberedSecretsKeepEveryCurrentValue(t *testing.T) {
	g := NewWithT(t)
	var old []string
	for i := range maxRememberedSecrets {
		old = append(old, fmt.Sprintf("old-%04d", i))
	}
	held := slices.Clone(old)
	current := []string{"zzz-current", "aaa-current", "zzz-current"}
	got := rememberSecrets(old, current)
	g.Expect(got).To(HaveLen(maxRememberedSecrets))
	g.Expect(got[:2]).To(Equal([]string{"zzz-current", "aaa-current"}), "the current values, whatever they sort as")
	g.Expect(got).To(ContainElement("old-0000"), "the newest earlier ones")
	g.Expect(old).To(Equal(held))

	many := make([]string, 2*maxRememberedSecrets)
	for i := range many {
		many[i] = fmt.Sprintf("v-%d", i)
	}
	g.Expect(rememberSecrets(old, many)).To(Equal(many), "a Secret with more values than the bound")
}
