package pluginrelease

import (
	"encoding/json"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	pluginsv1 "github.com/paddock-dev/paddock/api/plugins/v1alpha1"
)

// What the management cluster shows about a PluginRelease: its status and its events.
func visible(g Gomega, prel *pluginsv1.PluginRelease) string {
	got := getRelease(g, prel)
	b, err := json.Marshal(got.Status)
	g.Expect(err).NotTo(HaveOccurred())
	var list eventsv1.EventList
	g.Expect(mgmt.List(ctx, &list, client.InNamespace(prel.Namespace))).To(Succeed())
	var mine []eventsv1.Event
	for _, e := range list.Items {
		if e.Regarding.Kind == "PluginRelease" && e.Regarding.Name == prel.Name {
			mine = append(mine, e)
		}
	}
	g.Expect(mine).NotTo(BeEmpty())
	eb, err := json.Marshal(mine)
	g.Expect(err).NotTo(HaveOccurred())
	return string(b) + string(eb)
}

func TestValuesFromASecretAreUsedAndNeverShown(t *testing.T) {
	g := NewWithT(t)
	members := attachMembers(t)
	_, repo := serveHello(t, "0.1.0")
	const greeting, port = "pw-Zq8-very-secret", "70123"
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "hello-values", Namespace: "apps"},
		StringData: map[string]string{"values.yaml": "greeting: " + greeting + "\ninvalidPort: " + port + "\n"}}
	g.Expect(mgmt.Create(ctx, sec)).To(Succeed())
	t.Cleanup(func() { _ = mgmt.Delete(ctx, sec) })
	prel := helloRelease("secret-values", repo, members[:1], func(s *pluginsv1.PluginReleaseSpec) {
		s.ValuesFrom = []pluginsv1.ValuesReference{{Kind: "Secret", Name: sec.Name}}
	})
	createRelease(t, prel)

	// The Secret's port makes the install fail: the apiserver's error quotes it, Paddock does not.
	g.Eventually(func(g Gomega) {
		c := clusterStatus(getRelease(g, prel), members[0])
		g.Expect(c).NotTo(BeNil())
		g.Expect(c.Phase).To(Equal(pluginsv1.PhaseFailed))
		g.Expect(c.Message).To(ContainSubstring("Invalid value: [redacted]"))
	}, eventuallyWait, poll).Should(Succeed())
	g.Eventually(func() []string { return eventNotes(prel) }, eventuallyWait, poll).Should(ContainElement(ContainSubstring("[redacted]")))
	shown := visible(g, prel)
	g.Expect(shown).NotTo(ContainSubstring(greeting))
	g.Expect(shown).NotTo(ContainSubstring(port))

	// Fixed in the Secret (seen without a spec change): installed with the secret value.
	g.Expect(mgmt.Get(ctx, client.ObjectKeyFromObject(sec), sec)).To(Succeed())
	sec.Data = map[string][]byte{"values.yaml": []byte("greeting: " + greeting + "\n")}
	g.Expect(mgmt.Update(ctx, sec)).To(Succeed())
	// The Secret is read again every SecretValuesInterval; an annotation makes it now.
	g.Expect(mgmt.Patch(ctx, prel, client.RawPatch("application/merge-patch+json", []byte(`{"metadata":{"annotations":{"test/poke":"1"}}}`)))).To(Succeed())
	g.Eventually(func(g Gomega) {
		got := getRelease(g, prel)
		g.Expect(meta.IsStatusConditionTrue(got.Status.Conditions, pluginsv1.ReadyCondition)).To(BeTrue())
		g.Expect(configMapIn(g, 0, "secret-values").Data["greeting"]).To(Equal(greeting), "the Secret's values are used")
	}, eventuallyWait, poll).Should(Succeed())
	shown = visible(g, prel)
	g.Expect(shown).NotTo(ContainSubstring(greeting))
	g.Expect(strings.Contains(logs.String(), greeting)).To(BeFalse(), "the manager never logs a Secret's value")
	g.Expect(strings.Contains(logs.String(), "Invalid value: "+port)).To(BeFalse())
}

// A PluginRelease in the namespace of the manager's own Secrets cannot read values from Secrets:
// it could otherwise ship a member's kubeconfig to another member.
func TestValuesFromTheManagersSecretsAreRefused(t *testing.T) {
	g := NewWithT(t)
	members := attachMembers(t)
	_, repo := serveHello(t, "0.1.0")
	prel := &pluginsv1.PluginRelease{ObjectMeta: metav1.ObjectMeta{Name: "exfiltrate", Namespace: secretNS},
		Spec: pluginsv1.PluginReleaseSpec{
			Chart:      pluginsv1.ChartReference{Repository: repo.Name, Name: "hello", Version: "0.1.0"},
			Targets:    pluginsv1.Targets{ClusterNames: members[:1]},
			ValuesFrom: []pluginsv1.ValuesReference{{Kind: "Secret", Name: "member-1-kubeconfig", Key: "value"}},
		}}
	g.Expect(mgmt.Create(ctx, prel)).To(Succeed())
	t.Cleanup(func() { _ = mgmt.Delete(ctx, prel) })
	g.Eventually(func(g Gomega) {
		got := getRelease(g, prel)
		ready := meta.FindStatusCondition(got.Status.Conditions, pluginsv1.ReadyCondition)
		g.Expect(ready).NotTo(BeNil())
		g.Expect(ready.Reason).To(Equal(ReasonValuesInvalid))
		g.Expect(ready.Message).To(ContainSubstring("holds the manager's own Secrets"))
		g.Expect(meta.IsStatusConditionTrue(got.Status.Conditions, pluginsv1.StalledCondition)).To(BeTrue())
		g.Expect(got.Status.Clusters).To(BeEmpty())
	}, eventuallyWait, poll).Should(Succeed())
}
