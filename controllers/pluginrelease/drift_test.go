package pluginrelease

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	pluginsv1 "github.com/paddock-dev/paddock/api/plugins/v1alpha1"
)

// helmRevisions counts the release's revisions in Helm's storage in a member.
func helmRevisions(g Gomega, member int, name string) int {
	var list corev1.SecretList
	g.Expect(env.Members[member].Client.List(ctx, &list, client.InNamespace("apps"),
		client.MatchingLabels{"owner": "helm", "name": name})).To(Succeed())
	return len(list.Items)
}

func mergePatchRelease(g Gomega, prel *pluginsv1.PluginRelease, patch string) {
	g.Expect(mgmt.Patch(ctx, prel, client.RawPatch(types.MergePatchType, []byte(patch)))).To(Succeed())
}

func TestDriftIsCorrectedWithoutANewRevision(t *testing.T) {
	g := NewWithT(t)
	members := attachMembers(t)
	_, repo := serveHello(t, "0.1.0")
	prel := helloRelease("drift", repo, members[:1], func(s *pluginsv1.PluginReleaseSpec) {
		s.Values = jsonValues(`{"greeting":"desired"}`)
	})
	createRelease(t, prel)
	waitReleaseReady(t, prel)
	member := env.Members[0].Client
	g.Expect(helmRevisions(g, 0, "drift")).To(Equal(1))
	cm := configMapIn(g, 0, "drift")
	g.Expect(cm.Labels).To(HaveKey("plugins.paddock.dev/release"), "the post-renderer labels every object for the watches")

	// Someone edits the ConfigMap in the member: put back through the watch, no Helm action.
	edit := func(mutate func(cm *corev1.ConfigMap)) {
		g.Eventually(func() error {
			cm := configMapIn(g, 0, "drift")
			mutate(cm)
			return member.Update(ctx, cm)
		}, eventuallyWait, poll).Should(Succeed())
	}
	edit(func(cm *corev1.ConfigMap) { cm.Data["greeting"] = "hand-edited" })
	g.Eventually(func(g Gomega) {
		g.Expect(configMapIn(g, 0, "drift").Data["greeting"]).To(Equal("desired"))
	}, eventuallyWait, poll).Should(Succeed())
	g.Expect(helmRevisions(g, 0, "drift")).To(Equal(1), "corrected without a new Helm revision")
	got := &pluginsv1.PluginRelease{}
	g.Eventually(func(g Gomega) {
		g.Expect(mgmt.Get(ctx, client.ObjectKeyFromObject(prel), got)).To(Succeed())
		g.Expect(got.Status.History).NotTo(BeEmpty())
		h := got.Status.History[0]
		g.Expect(h.Action).To(Equal("drift-corrected"))
		g.Expect(h.Revision).To(Equal(int32(1)))
		g.Expect(h.Message).To(ContainSubstring("ConfigMap apps/drift-hello: /data/greeting"))
		g.Expect(got.Status.Clusters[0].LastOperation).To(Equal("drift-corrected"))
		g.Expect(got.Status.Clusters[0].Revision).To(Equal(int32(1)))
	}, eventuallyWait, poll).Should(Succeed())
	g.Expect(meta.IsStatusConditionTrue(got.Status.Conditions, pluginsv1.ReadyCondition)).To(BeTrue(), "a correction never makes it unready")
	g.Eventually(func() []string { return eventNotes(prel) }, eventuallyWait, poll).Should(ContainElement(
		MatchRegexp(`^corrected drift of hello on ` + members[0] + ` without a new revision \(still revision 1\): ConfigMap apps/drift-hello: /data/greeting$`)))

	// Deleted by hand: created again.
	g.Expect(member.Delete(ctx, configMapIn(g, 0, "drift"))).To(Succeed())
	g.Eventually(func(g Gomega) {
		cm := configMapIn(g, 0, "drift")
		g.Expect(cm).NotTo(BeNil())
		g.Expect(cm.Data["greeting"]).To(Equal("desired"))
		g.Expect(cm.Annotations).To(HaveKeyWithValue("meta.helm.sh/release-name", "drift"), "Helm still owns it")
	}, eventuallyWait, poll).Should(Succeed())
	g.Expect(helmRevisions(g, 0, "drift")).To(Equal(1))

	// warn: reported in status and a condition, left as it is.
	mergePatchRelease(g, prel, `{"spec":{"driftDetection":{"mode":"warn"}}}`)
	waitReleaseReady(t, prel)
	edit(func(cm *corev1.ConfigMap) { cm.Data["greeting"] = "hand-edited" })
	g.Eventually(func(g Gomega) {
		g.Expect(mgmt.Get(ctx, client.ObjectKeyFromObject(prel), got)).To(Succeed())
		c := meta.FindStatusCondition(got.Status.Conditions, pluginsv1.DriftedCondition)
		g.Expect(c).NotTo(BeNil())
		g.Expect(c.Message).To(ContainSubstring(members[0] + ": ConfigMap apps/drift-hello: /data/greeting"))
		g.Expect(got.Status.Clusters[0].Drift).NotTo(BeNil())
		g.Expect(got.Status.Clusters[0].Drift.Objects).To(ConsistOf("ConfigMap apps/drift-hello: /data/greeting"))
	}, eventuallyWait, poll).Should(Succeed())
	g.Consistently(func(g Gomega) {
		g.Expect(configMapIn(g, 0, "drift").Data["greeting"]).To(Equal("hand-edited"))
	}, 3*time.Second, poll).Should(Succeed())
	g.Expect(meta.IsStatusConditionTrue(got.Status.Conditions, pluginsv1.ReadyCondition)).To(BeTrue())

	// An ignore rule for the field: not drift any more; enabled again, the rest is still corrected.
	mergePatchRelease(g, prel, `{"spec":{"driftDetection":{"mode":"enabled","ignore":[{"paths":["/data/greeting"],"target":{"kind":"ConfigMap"}}]}}}`)
	waitReleaseReady(t, prel)
	edit(func(cm *corev1.ConfigMap) { cm.Data["greeting"] = "hand-edited-again" })
	g.Eventually(func(g Gomega) {
		g.Expect(mgmt.Get(ctx, client.ObjectKeyFromObject(prel), got)).To(Succeed())
		g.Expect(meta.FindStatusCondition(got.Status.Conditions, pluginsv1.DriftedCondition)).To(BeNil())
		g.Expect(got.Status.Clusters[0].Drift).To(BeNil())
	}, eventuallyWait, poll).Should(Succeed())
	edit(func(cm *corev1.ConfigMap) { cm.Labels["app.kubernetes.io/name"] = "changed" })
	g.Eventually(func(g Gomega) {
		g.Expect(configMapIn(g, 0, "drift").Labels).To(HaveKeyWithValue("app.kubernetes.io/name", "hello"))
	}, eventuallyWait, poll).Should(Succeed())
	g.Expect(configMapIn(g, 0, "drift").Data["greeting"]).To(Equal("hand-edited-again"), "the ignored field keeps the member's value")
	g.Expect(helmRevisions(g, 0, "drift")).To(Equal(1), "no drift correction ever made a revision")
}

// One object the member refuses to put back does not leave the others drifted: each is tried, and
// the refusal is reported with what was corrected.
func TestOneRefusedCorrectionDoesNotStopTheOthers(t *testing.T) {
	g := NewWithT(t)
	members := attachMembers(t)
	_, repo := serveHello(t, "0.1.0")
	prel := helloRelease("drift-refused", repo, members[:1], func(s *pluginsv1.PluginReleaseSpec) {
		s.Values = jsonValues(`{"greeting":"desired","second":true}`)
	})
	createRelease(t, prel)
	waitReleaseReady(t, prel)
	member := env.Members[0].Client

	// The first object in the manifest is edited and made immutable (its data cannot be patched
	// back any more); the second is deleted.
	g.Eventually(func() error {
		cm := configMapIn(g, 0, "drift-refused")
		cm.Data["greeting"] = "hand-edited"
		cm.Immutable = ptrTo(true)
		return member.Update(ctx, cm)
	}, eventuallyWait, poll).Should(Succeed())
	g.Expect(member.Delete(ctx, configMapNamed(g, 0, "drift-refused-second"))).To(Succeed())

	g.Eventually(func(g Gomega) {
		cm := configMapNamed(g, 0, "drift-refused-second")
		g.Expect(cm).NotTo(BeNil(), "the deleted object is created again")
		g.Expect(cm.Data["greeting"]).To(Equal("desired"))
	}, eventuallyWait, poll).Should(Succeed())
	got := &pluginsv1.PluginRelease{}
	g.Eventually(func(g Gomega) {
		g.Expect(mgmt.Get(ctx, client.ObjectKeyFromObject(prel), got)).To(Succeed())
		d := got.Status.Clusters[0].Drift
		g.Expect(d).NotTo(BeNil())
		g.Expect(d.Message).To(ContainSubstring("corrected 1 of 2 drifted objects; correcting ConfigMap apps/drift-refused-hello"))
		g.Expect(d.Message).To(ContainSubstring("immutable"))
	}, eventuallyWait, poll).Should(Succeed())
	g.Expect(configMapIn(g, 0, "drift-refused").Data["greeting"]).To(Equal("hand-edited"))
	g.Expect(helmRevisions(g, 0, "drift-refused")).To(Equal(1))
}

// A field the member does not know is dropped by the apiserver on install; drift detection then
// finds it missing every time. Its correction is sent with strict field validation, so it fails
// once with the member's reason instead of being "corrected" on every check.
func TestAFieldTheMemberDoesNotKnowIsReportedNotCorrectedForever(t *testing.T) {
	g := NewWithT(t)
	members := attachMembers(t)
	_, repo := serveHello(t, "0.1.0")
	prel := helloRelease("drift-unknown", repo, members[:1], func(s *pluginsv1.PluginReleaseSpec) {
		s.Values = jsonValues(`{"unknownField":"oops"}`)
	})
	createRelease(t, prel)
	waitReleaseReady(t, prel)
	got := &pluginsv1.PluginRelease{}
	g.Eventually(func(g Gomega) {
		g.Expect(mgmt.Get(ctx, client.ObjectKeyFromObject(prel), got)).To(Succeed())
		d := got.Status.Clusters[0].Drift
		g.Expect(d).NotTo(BeNil())
		g.Expect(d.Message).To(ContainSubstring(`strict decoding error: unknown field "unknownField"`))
		g.Expect(d.Message).NotTo(ContainSubstring("greeting"), "the refused object is not quoted (it could be a Secret)")
		t.Log(d.Message)
		g.Expect(d.Objects).To(ConsistOf("ConfigMap apps/drift-unknown-hello: /unknownField"))
	}, eventuallyWait, poll).Should(Succeed())
	for _, h := range got.Status.History {
		g.Expect(h.Action).NotTo(Equal("drift-corrected"), "nothing was corrected")
	}
	g.Expect(helmRevisions(g, 0, "drift-unknown")).To(Equal(1))
}

// An object another Helm release took over (its ownership annotations say so) is reported, not
// patched back into this release.
func TestAnObjectAnotherReleaseTookOverIsNotCorrected(t *testing.T) {
	g := NewWithT(t)
	members := attachMembers(t)
	_, repo := serveHello(t, "0.1.0")
	prel := helloRelease("drift-taken", repo, members[:1], func(s *pluginsv1.PluginReleaseSpec) {
		s.Values = jsonValues(`{"greeting":"desired"}`)
	})
	createRelease(t, prel)
	waitReleaseReady(t, prel)
	g.Eventually(func() error {
		cm := configMapIn(g, 0, "drift-taken")
		cm.Data["greeting"] = "theirs"
		cm.Annotations["meta.helm.sh/release-name"] = "someone-else"
		return env.Members[0].Client.Update(ctx, cm)
	}, eventuallyWait, poll).Should(Succeed())
	g.Eventually(func(g Gomega) {
		d := clusterStatus(getRelease(g, prel), members[0]).Drift
		g.Expect(d).NotTo(BeNil())
		g.Expect(d.Message).To(ContainSubstring("belongs to Helm release apps/someone-else"))
	}, eventuallyWait, poll).Should(Succeed())
	g.Expect(configMapIn(g, 0, "drift-taken").Data["greeting"]).To(Equal("theirs"))
}
