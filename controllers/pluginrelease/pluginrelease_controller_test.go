package pluginrelease

import (
	"testing"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	pluginsv1 "github.com/paddock-dev/paddock/api/plugins/v1alpha1"
	"github.com/paddock-dev/paddock/test/chartrepos"
)

func serveHello(t *testing.T, versions ...string) (*chartrepos.HelmRepo, *pluginsv1.PluginRepository) {
	t.Helper()
	g := NewWithT(t)
	srv := chartrepos.NewHelmRepo(chartrepos.Options{})
	t.Cleanup(srv.Close)
	for _, v := range versions {
		c, err := chartrepos.Package("../../test/testdata/charts/hello", v)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(srv.Add(c)).To(Succeed())
	}
	repo := &pluginsv1.PluginRepository{ObjectMeta: metav1.ObjectMeta{GenerateName: "charts-"},
		Spec: pluginsv1.PluginRepositorySpec{Type: pluginsv1.RepositoryTypeHelm, URL: srv.URL()}}
	g.Expect(mgmt.Create(ctx, repo)).To(Succeed())
	t.Cleanup(func() { _ = mgmt.Delete(ctx, repo) })
	return srv, repo
}

// helloRelease is a PluginRelease in the apps namespace of the hello chart 0.1.0 from repo into
// clusters, creating its namespace; edit adjusts the spec before it is returned.
func helloRelease(name string, repo *pluginsv1.PluginRepository, clusters []string, edit ...func(*pluginsv1.PluginReleaseSpec)) *pluginsv1.PluginRelease {
	prel := &pluginsv1.PluginRelease{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "apps"},
		Spec: pluginsv1.PluginReleaseSpec{
			Chart:           pluginsv1.ChartReference{Repository: repo.Name, Name: "hello", Version: "0.1.0"},
			Targets:         pluginsv1.Targets{ClusterNames: clusters},
			CreateNamespace: true,
		}}
	for _, e := range edit {
		e(&prel.Spec)
	}
	return prel
}

// createRelease creates prel and deletes it when the test ends.
func createRelease(t *testing.T, prel *pluginsv1.PluginRelease) {
	t.Helper()
	NewWithT(t).Expect(mgmt.Create(ctx, prel)).To(Succeed())
	t.Cleanup(func() { _ = mgmt.Delete(ctx, prel) })
}

// jsonValues is spec.values from a JSON text.
func jsonValues(raw string) *apiextensionsv1.JSON { return &apiextensionsv1.JSON{Raw: []byte(raw)} }

func waitReleaseReady(t *testing.T, prel *pluginsv1.PluginRelease) *pluginsv1.PluginRelease {
	t.Helper()
	got := &pluginsv1.PluginRelease{}
	NewWithT(t).Eventually(func(g Gomega) {
		g.Expect(mgmt.Get(ctx, client.ObjectKeyFromObject(prel), got)).To(Succeed())
		g.Expect(got.Status.ObservedGeneration).To(Equal(got.Generation))
		c := meta.FindStatusCondition(got.Status.Conditions, pluginsv1.ReadyCondition)
		g.Expect(c).NotTo(BeNil())
		g.Expect(c.Status).To(Equal(metav1.ConditionTrue), c.Message)
	}, eventuallyWait, poll).Should(Succeed())
	return got
}

// configMapIn reads the hello chart's ConfigMap in a member.
func configMapIn(g Gomega, member int, name string) *corev1.ConfigMap {
	return configMapNamed(g, member, name+"-hello")
}

// configMapNamed reads a ConfigMap in the apps namespace of a member (nil if there is none).
func configMapNamed(g Gomega, member int, name string) *corev1.ConfigMap {
	cm := &corev1.ConfigMap{}
	err := env.Members[member].Client.Get(ctx, client.ObjectKey{Namespace: "apps", Name: name}, cm)
	if apierrors.IsNotFound(err) {
		return nil
	}
	g.Expect(err).NotTo(HaveOccurred())
	return cm
}

func TestInstallUpgradeAndUninstallAcrossTwoMembers(t *testing.T) {
	g := NewWithT(t)
	members := attachMembers(t)
	_, repo := serveHello(t, "0.1.0", "0.2.0")
	downloads := charts.Downloads()
	prel := &pluginsv1.PluginRelease{ObjectMeta: metav1.ObjectMeta{Name: "hello", Namespace: "apps"},
		Spec: pluginsv1.PluginReleaseSpec{
			Chart:           pluginsv1.ChartReference{Repository: repo.Name, Name: "hello", Version: "0.1.x"},
			Targets:         pluginsv1.Targets{ClusterNames: members},
			CreateNamespace: true,
			Values:          &apiextensionsv1.JSON{Raw: []byte(`{"greeting":"hi"}`)},
			ValuesTemplate:  `greeting: "hi from {{ .Cluster.Name }}"`,
		}}
	g.Expect(mgmt.Create(ctx, prel)).To(Succeed())

	got := waitReleaseReady(t, prel)
	g.Expect(got.Status.ChartVersion).To(Equal("0.1.0"))
	g.Expect(got.Status.ClusterSummary).To(Equal("2/2"))
	g.Expect(got.Status.Clusters).To(HaveLen(2))
	for i, c := range got.Status.Clusters {
		g.Expect(c.Phase).To(Equal(pluginsv1.PhaseDeployed))
		g.Expect(c.Revision).To(Equal(int32(1)))
		cm := configMapIn(g, i, "hello")
		g.Expect(cm).NotTo(BeNil())
		g.Expect(cm.Data["greeting"]).To(Equal("hi from "+members[i]), "the template renders per cluster")
	}
	g.Expect(got.Status.History).To(HaveLen(2))
	g.Expect(got.Status.History[0].Action).To(Equal("install"))
	g.Expect(charts.Downloads()-downloads).To(BeNumerically("<=", 1), "one download for both clusters (none if another test's identical archive is cached)")
	g.Eventually(func() []string { return eventNotes(prel) }, eventuallyWait, poll).Should(
		ContainElement(MatchRegexp(`^installed hello 0\.1\.0 on ` + members[0] + `, revision 1, in [0-9.]+m?s$`)))

	// A version bump upgrades both.
	mergePatchRelease(g, prel, `{"spec":{"chart":{"version":"0.2.0"}}}`)
	g.Eventually(func(g Gomega) {
		cur := waitReleaseReady(t, prel)
		g.Expect(cur.Status.ChartVersion).To(Equal("0.2.0"))
		for i, c := range cur.Status.Clusters {
			g.Expect(c.ChartVersion).To(Equal("0.2.0"))
			g.Expect(c.Revision).To(Equal(int32(2)))
			g.Expect(configMapIn(g, i, "hello").Data["chartVersion"]).To(Equal("0.2.0"))
		}
	}, eventuallyWait, poll).Should(Succeed())

	// Narrowing the targets uninstalls from the removed member only.
	mergePatchRelease(g, prel, `{"spec":{"targets":{"clusterNames":["`+members[0]+`"]}}}`)
	g.Eventually(func(g Gomega) {
		g.Expect(configMapIn(g, 1, "hello")).To(BeNil())
		cur := waitReleaseReady(t, prel)
		g.Expect(cur.Status.Clusters).To(HaveLen(1))
	}, eventuallyWait, poll).Should(Succeed())
	g.Expect(configMapIn(g, 0, "hello")).NotTo(BeNil())
	g.Expect(eventNotes(prel)).To(ContainElement(MatchRegexp(`^upgraded hello 0\.1\.0 → 0\.2\.0 on ` + members[1] + `, revision 2`)))
	g.Expect(eventNotes(prel)).To(ContainElement(HavePrefix("uninstalled hello from " + members[1])))

	// Deleting uninstalls everywhere, then the finalizer goes.
	g.Expect(mgmt.Delete(ctx, prel)).To(Succeed())
	g.Eventually(func() bool {
		return apierrors.IsNotFound(mgmt.Get(ctx, client.ObjectKeyFromObject(prel), &pluginsv1.PluginRelease{}))
	}, eventuallyWait, poll).Should(BeTrue())
	g.Expect(configMapIn(g, 0, "hello")).To(BeNil())
}

// eventNotes lists the notes of the events about a PluginRelease.
func eventNotes(prel *pluginsv1.PluginRelease) []string {
	var list eventsv1.EventList
	if err := mgmt.List(ctx, &list, client.InNamespace(prel.Namespace)); err != nil {
		return nil
	}
	var out []string
	for _, e := range list.Items {
		if e.Regarding.Kind == "PluginRelease" && e.Regarding.Name == prel.Name {
			out = append(out, e.Note)
		}
	}
	return out
}
