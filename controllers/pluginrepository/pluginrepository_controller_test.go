package pluginrepository

import (
	"fmt"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
	pluginsv1 "github.com/paddock-dev/paddock/api/plugins/v1alpha1"
	"github.com/paddock-dev/paddock/internal/chartrepo"
	"github.com/paddock-dev/paddock/test/chartrepos"
)

const chartsDir = "../../test/testdata/charts/"

func packaged(t *testing.T, chart string, versions ...string) []chartrepos.Chart {
	t.Helper()
	var out []chartrepos.Chart
	for _, v := range versions {
		c, err := chartrepos.Package(chartsDir+chart, v)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

// createRepo creates a PluginRepository with a unique name and deletes it after the test.
func createRepo(t *testing.T, spec pluginsv1.PluginRepositorySpec) *pluginsv1.PluginRepository {
	t.Helper()
	repo := &pluginsv1.PluginRepository{ObjectMeta: metav1.ObjectMeta{GenerateName: "repo-"}, Spec: spec}
	NewWithT(t).Expect(mgmt.Create(ctx, repo)).To(Succeed())
	t.Cleanup(func() { _ = mgmt.Delete(ctx, repo) })
	return repo
}

func createSecret(t *testing.T, data map[string]string) *corev1.Secret {
	t.Helper()
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{GenerateName: "repo-creds-", Namespace: secretNS}, StringData: data}
	NewWithT(t).Expect(mgmt.Create(ctx, s)).To(Succeed())
	t.Cleanup(func() { _ = mgmt.Delete(ctx, s) })
	return s
}

// readyOf waits until the repository's Ready condition, for its current generation, has reason.
func waitReady(t *testing.T, repo *pluginsv1.PluginRepository, reason string) *pluginsv1.PluginRepository {
	t.Helper()
	got := &pluginsv1.PluginRepository{}
	NewWithT(t).Eventually(func(g Gomega) {
		g.Expect(mgmt.Get(ctx, client.ObjectKeyFromObject(repo), got)).To(Succeed())
		g.Expect(got.Status.ObservedGeneration).To(Equal(got.Generation))
		c := meta.FindStatusCondition(got.Status.Conditions, pluginsv1.ReadyCondition)
		g.Expect(c).NotTo(BeNil())
		g.Expect(c.Reason).To(Equal(reason), c.Message)
	}, eventuallyWait, poll).Should(Succeed())
	return got
}

// poke makes the controller reconcile now (an annotation change passes its predicate). A merge
// patch of the annotation only: an Update would also rewrite spec.interval "10m" as "10m0s".
func poke(t *testing.T, repo *pluginsv1.PluginRepository) {
	t.Helper()
	patch := fmt.Sprintf(`{"metadata":{"annotations":{"test.paddock.dev/poke":"%d"}}}`, time.Now().UnixNano())
	NewWithT(t).Expect(mgmt.Patch(ctx, &pluginsv1.PluginRepository{ObjectMeta: metav1.ObjectMeta{Name: repo.Name}},
		client.RawPatch(types.MergePatchType, []byte(patch)))).To(Succeed())
}

func kstatusOf(t *testing.T, obj runtime.Object) status.Status {
	t.Helper()
	u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	res, err := status.Compute(&unstructured.Unstructured{Object: u})
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	return res.Status
}

// eventsFor lists the events about a repository as "type reason note".
func eventsFor(repo *pluginsv1.PluginRepository) []string {
	var list eventsv1.EventList
	if err := mgmt.List(ctx, &list); err != nil {
		return nil
	}
	var out []string
	for _, e := range list.Items {
		if e.Regarding.Name == repo.Name && e.Regarding.Kind == "PluginRepository" {
			out = append(out, e.Type+" "+e.Reason+" "+e.Note)
		}
	}
	return out
}

func TestHelmRepositoryIsFetchedSummarisedAndParsedOncePerDigest(t *testing.T) {
	g := NewWithT(t)
	srv := chartrepos.NewHelmRepo(chartrepos.Options{})
	defer srv.Close()
	g.Expect(srv.Add(packaged(t, "hello", "0.1.0", "0.2.0")...)).To(Succeed())
	g.Expect(srv.Add(packaged(t, "with-crds", "0.1.0")...)).To(Succeed())

	repo := createRepo(t, pluginsv1.PluginRepositorySpec{Type: pluginsv1.RepositoryTypeHelm, URL: srv.URL()})
	got := waitReady(t, repo, pluginsv1.ReasonSucceeded)
	g.Expect(got.Status.ChartCount).To(Equal(int32(2)))
	g.Expect(got.Status.Charts).To(Equal([]pluginsv1.ChartSummary{
		{Name: "hello", LatestVersion: "0.2.0", AppVersion: "1.0.0"},
		{Name: "with-crds", LatestVersion: "0.1.0", AppVersion: "1.0.0"}}))
	g.Expect(got.Status.IndexDigest).To(HavePrefix("sha256:"))
	g.Expect(got.Status.LastFetchTime).NotTo(BeNil())
	g.Expect(kstatusOf(t, got)).To(Equal(status.CurrentStatus))
	src, ok := store.Get(repo.Name)
	g.Expect(ok).To(BeTrue())
	g.Expect(src.Index.Digest).To(Equal(got.Status.IndexDigest))
	g.Eventually(func() []string { return eventsFor(repo) }, eventuallyWait, poll).Should(ContainElement(HavePrefix("Normal IndexUpdated fetched index")))

	// Fetched again, unchanged: downloaded, never parsed again, and status not rewritten.
	rv := got.ResourceVersion
	fetches := srv.Hits("/index.yaml")
	for i := 0; i < 3; i++ {
		poke(t, repo)
		g.Eventually(func() int { return srv.Hits("/index.yaml") }, eventuallyWait, poll).Should(BeNumerically(">", fetches))
		fetches = srv.Hits("/index.yaml")
	}
	g.Expect(testutil.ToFloat64(indexParses.WithLabelValues(repo.Name))).To(Equal(1.0))
	g.Eventually(func() float64 { return testutil.ToFloat64(fetchesTotal.WithLabelValues(repo.Name, "unchanged")) },
		eventuallyWait, poll).Should(BeNumerically(">=", 3))
	again, _ := store.Get(repo.Name)
	g.Expect(again.Index).To(BeIdenticalTo(src.Index), "the parsed index is shared, not rebuilt")
	cur := &pluginsv1.PluginRepository{}
	g.Expect(mgmt.Get(ctx, client.ObjectKeyFromObject(repo), cur)).To(Succeed())
	g.Expect(cur.Status.LastFetchTime.Time).To(BeTemporally(">", got.Status.LastFetchTime.Time.Add(-time.Second)))
	cur.Status.LastFetchTime = got.Status.LastFetchTime
	g.Expect(cur.Status).To(Equal(got.Status), "only lastFetchTime moves (%s -> %s)", rv, cur.ResourceVersion)

	// A new version is picked up and parsed once.
	g.Expect(srv.Add(packaged(t, "hello", "0.3.0")...)).To(Succeed())
	poke(t, repo)
	g.Eventually(func(g Gomega) {
		g.Expect(mgmt.Get(ctx, client.ObjectKeyFromObject(repo), cur)).To(Succeed())
		g.Expect(cur.Status.Charts).To(ContainElement(pluginsv1.ChartSummary{Name: "hello", LatestVersion: "0.3.0", AppVersion: "1.0.0"}))
	}, eventuallyWait, poll).Should(Succeed())
	g.Expect(cur.Status.IndexDigest).NotTo(Equal(got.Status.IndexDigest))
	g.Expect(testutil.ToFloat64(indexParses.WithLabelValues(repo.Name))).To(Equal(2.0))

	// Deleted: the index leaves the store; no finalizer holds the object.
	g.Expect(mgmt.Delete(ctx, repo)).To(Succeed())
	g.Eventually(func() bool { _, ok := store.Get(repo.Name); return ok }, eventuallyWait, poll).Should(BeFalse())
}

// A failing repository keeps serving its last good index and says so; it recovers by itself.
func TestLastGoodIndexKeepsServingThroughFailures(t *testing.T) {
	g := NewWithT(t)
	srv := chartrepos.NewHelmRepo(chartrepos.Options{})
	defer srv.Close()
	g.Expect(srv.Add(packaged(t, "hello", "0.1.0")...)).To(Succeed())
	repo := createRepo(t, pluginsv1.PluginRepositorySpec{Type: pluginsv1.RepositoryTypeHelm, URL: srv.URL()})
	good := waitReady(t, repo, pluginsv1.ReasonSucceeded)
	src, _ := store.Get(repo.Name)

	for _, tc := range []struct {
		body   string
		reason string
	}{
		{"<html>maintenance</html>", pluginsv1.ReasonIndexInvalid},
		{"apiVersion: v1\n#" + strings.Repeat("x", testMaxIndex), pluginsv1.ReasonIndexTooLarge},
	} {
		srv.SetRawIndex([]byte(tc.body))
		poke(t, repo)
		bad := waitReady(t, repo, tc.reason)
		c := meta.FindStatusCondition(bad.Status.Conditions, pluginsv1.ReadyCondition)
		g.Expect(c.Status).To(Equal(metav1.ConditionFalse))
		g.Expect(c.Message).To(ContainSubstring("releases keep using the last good index " + good.Status.IndexDigest[:19]))
		g.Expect(bad.Status.IndexDigest).To(Equal(good.Status.IndexDigest))
		g.Expect(bad.Status.Charts).To(Equal(good.Status.Charts))
		g.Expect(kstatusOf(t, bad)).To(Equal(status.InProgressStatus), "retried: not stalled")
		cur, _ := store.Get(repo.Name)
		g.Expect(cur).To(BeIdenticalTo(src))
		g.Eventually(func() []string { return eventsFor(repo) }, eventuallyWait, poll).Should(ContainElement(HavePrefix("Warning " + tc.reason)))
	}
	// Fixed on the server: recovered by the retry (2 s in this suite), no poke.
	srv.SetRawIndex(nil)
	waitReady(t, repo, pluginsv1.ReasonSucceeded)
	g.Eventually(func() []string { return eventsFor(repo) }, eventuallyWait, poll).Should(ContainElement(HavePrefix("Normal Recovered")))
}

func TestPrivateRepositoryCredentials(t *testing.T) {
	g := NewWithT(t)
	const password = "s3cr3t-pa55word-value"
	srv := chartrepos.NewHelmRepo(chartrepos.Options{Username: "ops", Password: password, TLS: true})
	defer srv.Close()
	g.Expect(srv.Add(packaged(t, "hello", "0.1.0")...)).To(Succeed())
	secret := createSecret(t, map[string]string{"username": "ops", "password": "wrong-" + password, "ca.crt": string(srv.CAPEM())})
	repo := createRepo(t, pluginsv1.PluginRepositorySpec{Type: pluginsv1.RepositoryTypeHelm, URL: srv.URL(),
		SecretRef: &pluginsv1.LocalSecretReference{Name: secret.Name}})
	bad := waitReady(t, repo, pluginsv1.ReasonUnauthorized)
	g.Expect(meta.FindStatusCondition(bad.Status.Conditions, pluginsv1.ReadyCondition).Message).To(ContainSubstring("HTTP 401"))

	// Fixing the Secret is enough: the Secret watch requeues the repository.
	g.Eventually(func() error {
		cur := &corev1.Secret{}
		if err := mgmt.Get(ctx, client.ObjectKeyFromObject(secret), cur); err != nil {
			return err
		}
		cur.Data["password"] = []byte(password)
		return mgmt.Update(ctx, cur)
	}, eventuallyWait, poll).Should(Succeed())
	good := waitReady(t, repo, pluginsv1.ReasonSucceeded)
	g.Expect(good.Status.ChartCount).To(Equal(int32(1)))
	src, _ := store.Get(repo.Name)
	g.Expect(src.Credentials.Password).To(Equal(password), "kept in memory for chart downloads")

	// The password appears nowhere: status, events, logs.
	g.Expect(fmt.Sprintf("%+v", good.Status)).NotTo(ContainSubstring(password))
	g.Expect(strings.Join(eventsFor(repo), "\n")).NotTo(ContainSubstring(password))
	g.Expect(logs.String()).NotTo(ContainSubstring(password))

	// The Secret deleted: its credentials are not used again, while the last good index serves.
	g.Expect(mgmt.Delete(ctx, secret)).To(Succeed())
	gone := waitReady(t, repo, pluginsv1.ReasonSecretNotFound)
	g.Expect(gone.Status.ChartCount).To(Equal(int32(1)), "the last good index")
	src, _ = store.Get(repo.Name)
	g.Expect(src.Index).NotTo(BeNil())
	g.Expect(src.Credentials.Authenticates()).To(BeFalse(), "withdrawn")
	g.Expect(src.Private).To(BeTrue(), "its cached charts stay its own")

	// The TLS CA is the Secret's: without it, a TLS error.
	noCA := createSecret(t, map[string]string{"username": "ops", "password": password})
	repo2 := createRepo(t, pluginsv1.PluginRepositorySpec{Type: pluginsv1.RepositoryTypeHelm, URL: srv.URL(),
		SecretRef: &pluginsv1.LocalSecretReference{Name: noCA.Name}})
	waitReady(t, repo2, pluginsv1.ReasonTLSError)
}

// Configuration a retry cannot fix stalls (kstatus Failed), with a message that says what to do,
// and nothing is sent.
func TestRefusedConfigurationStalls(t *testing.T) {
	g := NewWithT(t)
	plain := chartrepos.NewHelmRepo(chartrepos.Options{Username: "ops", Password: "pw"})
	defer plain.Close()
	creds := createSecret(t, map[string]string{"username": "ops", "password": "pw"})
	broken := createSecret(t, map[string]string{"username": "ops"})
	// A ServiceAccount token (the manager's own, say) is never a repository's bearer token.
	saToken := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{GenerateName: "sa-token-", Namespace: secretNS,
		Annotations: map[string]string{corev1.ServiceAccountNameKey: "default"}},
		Type: corev1.SecretTypeServiceAccountToken, Data: map[string][]byte{"token": []byte("sa-token-value")}}
	g.Expect(mgmt.Create(ctx, saToken)).To(Succeed())
	t.Cleanup(func() { _ = mgmt.Delete(ctx, saToken) })
	// Nor a member's kubeconfig Secret, whatever its keys.
	kubeconfig := createSecret(t, map[string]string{"token": "member-bearer-token"})
	member := &clustersv1.MemberCluster{ObjectMeta: metav1.ObjectMeta{GenerateName: "uses-secret-"},
		Spec: clustersv1.MemberClusterSpec{Attach: &clustersv1.AttachSpec{KubeconfigSecretRef: clustersv1.SecretKeyReference{
			Namespace: secretNS, Name: kubeconfig.Name, Key: "token"}}}}
	g.Expect(mgmt.Create(ctx, member)).To(Succeed())
	t.Cleanup(func() { _ = mgmt.Delete(ctx, member) })
	capiSecret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{GenerateName: "workload-kubeconfig-", Namespace: secretNS,
		Labels: map[string]string{"cluster.x-k8s.io/cluster-name": "workload"}}, StringData: map[string]string{"token": "capi-token"}}
	g.Expect(mgmt.Create(ctx, capiSecret)).To(Succeed())
	t.Cleanup(func() { _ = mgmt.Delete(ctx, capiSecret) })
	cases := []struct {
		name   string
		spec   pluginsv1.PluginRepositorySpec
		reason string
		msg    string
	}{
		{"credentials over http", pluginsv1.PluginRepositorySpec{Type: pluginsv1.RepositoryTypeHelm, URL: plain.URL(),
			SecretRef: &pluginsv1.LocalSecretReference{Name: creds.Name}}, pluginsv1.ReasonInsecureCredentials, "never sent over plain http"},
		{"metadata address", pluginsv1.PluginRepositorySpec{Type: pluginsv1.RepositoryTypeHelm, URL: "http://169.254.169.254/charts"},
			pluginsv1.ReasonURLNotAllowed, "link-local"},
		{"missing secret", pluginsv1.PluginRepositorySpec{Type: pluginsv1.RepositoryTypeHelm, URL: "https://charts.example.com",
			SecretRef: &pluginsv1.LocalSecretReference{Name: "does-not-exist"}}, pluginsv1.ReasonSecretNotFound, "does not exist"},
		{"half a credential", pluginsv1.PluginRepositorySpec{Type: pluginsv1.RepositoryTypeHelm, URL: "https://charts.example.com",
			SecretRef: &pluginsv1.LocalSecretReference{Name: broken.Name}}, pluginsv1.ReasonSecretInvalid, `needs both "username" and "password"`},
		{"a ServiceAccount token", pluginsv1.PluginRepositorySpec{Type: pluginsv1.RepositoryTypeHelm, URL: "https://charts.example.com",
			SecretRef: &pluginsv1.LocalSecretReference{Name: saToken.Name}}, pluginsv1.ReasonSecretInvalid, "not a repository credentials Secret"},
		{"a Cluster API cluster's Secret", pluginsv1.PluginRepositorySpec{Type: pluginsv1.RepositoryTypeHelm, URL: "https://charts.example.com",
			SecretRef: &pluginsv1.LocalSecretReference{Name: capiSecret.Name}}, pluginsv1.ReasonSecretInvalid, "a Cluster API cluster's"},
		{"a member's kubeconfig", pluginsv1.PluginRepositorySpec{Type: pluginsv1.RepositoryTypeHelm, URL: "https://charts.example.com",
			SecretRef: &pluginsv1.LocalSecretReference{Name: kubeconfig.Name}}, pluginsv1.ReasonSecretInvalid, "kubeconfig, not a repository credentials Secret"},
	}
	for _, tc := range cases {
		repo := createRepo(t, tc.spec)
		got := waitReady(t, repo, tc.reason)
		g.Expect(meta.FindStatusCondition(got.Status.Conditions, pluginsv1.ReadyCondition).Message).To(ContainSubstring(tc.msg), tc.name)
		g.Expect(meta.IsStatusConditionTrue(got.Status.Conditions, pluginsv1.StalledCondition)).To(BeTrue(), tc.name)
		g.Expect(kstatusOf(t, got)).To(Equal(status.FailedStatus), tc.name)
	}
	g.Expect(plain.Hits("/index.yaml")+plain.Denied()).To(BeZero(), "no request reached the plain-http repository")

	// A Secret created later un-stalls the repository (the Secret watch).
	repo := createRepo(t, pluginsv1.PluginRepositorySpec{Type: pluginsv1.RepositoryTypeHelm, URL: plain.URL(),
		SecretRef: &pluginsv1.LocalSecretReference{Name: "created-later"}})
	waitReady(t, repo, pluginsv1.ReasonSecretNotFound)
	later := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "created-later", Namespace: secretNS}, StringData: map[string]string{"ca.crt": ""}}
	g.Expect(mgmt.Create(ctx, later)).To(Succeed())
	t.Cleanup(func() { _ = mgmt.Delete(ctx, later) })
	waitReady(t, repo, pluginsv1.ReasonUnauthorized)
}

func TestOCIRegistry(t *testing.T) {
	g := NewWithT(t)
	open := chartrepos.NewOCIRegistry(chartrepos.Options{})
	defer open.Close()
	g.Expect(open.Push(packaged(t, "hello", "0.1.0")...)).To(Succeed())
	repo := createRepo(t, pluginsv1.PluginRepositorySpec{Type: pluginsv1.RepositoryTypeOCI, URL: open.URL(), Insecure: true})
	got := waitReady(t, repo, pluginsv1.ReasonSucceeded)
	g.Expect(kstatusOf(t, got)).To(Equal(status.CurrentStatus))
	src, _ := store.Get(repo.Name)
	g.Expect(src.Registry).NotTo(BeNil())
	g.Expect(src.Registry.Path).To(Equal("charts"))

	locked := chartrepos.NewOCIRegistry(chartrepos.Options{Username: "ops", Password: "pw", TLS: true})
	defer locked.Close()
	secret := createSecret(t, map[string]string{"username": "ops", "password": "nope", "ca.crt": string(locked.CAPEM())})
	repo2 := createRepo(t, pluginsv1.PluginRepositorySpec{Type: pluginsv1.RepositoryTypeOCI, URL: locked.URL(),
		SecretRef: &pluginsv1.LocalSecretReference{Name: secret.Name}})
	waitReady(t, repo2, pluginsv1.ReasonUnauthorized)
	g.Eventually(func() error {
		cur := &corev1.Secret{}
		if err := mgmt.Get(ctx, client.ObjectKeyFromObject(secret), cur); err != nil {
			return err
		}
		cur.Data["password"] = []byte("pw")
		return mgmt.Update(ctx, cur)
	}, eventuallyWait, poll).Should(Succeed())
	waitReady(t, repo2, pluginsv1.ReasonSucceeded)

	// Credentials with insecure (plain http) are refused.
	repo3 := createRepo(t, pluginsv1.PluginRepositorySpec{Type: pluginsv1.RepositoryTypeOCI, URL: open.URL(), Insecure: true,
		SecretRef: &pluginsv1.LocalSecretReference{Name: secret.Name}})
	waitReady(t, repo3, pluginsv1.ReasonInsecureCredentials)
}

func TestSuspendedRepositoryIsNotFetched(t *testing.T) {
	g := NewWithT(t)
	srv := chartrepos.NewHelmRepo(chartrepos.Options{})
	defer srv.Close()
	g.Expect(srv.Add(packaged(t, "hello", "0.1.0")...)).To(Succeed())
	repo := createRepo(t, pluginsv1.PluginRepositorySpec{Type: pluginsv1.RepositoryTypeHelm, URL: srv.URL()})
	waitReady(t, repo, pluginsv1.ReasonSucceeded)
	cur := &pluginsv1.PluginRepository{}
	g.Expect(mgmt.Get(ctx, client.ObjectKeyFromObject(repo), cur)).To(Succeed())
	cur.Spec.Suspend = true
	g.Expect(mgmt.Update(ctx, cur)).To(Succeed())
	got := waitReady(t, repo, pluginsv1.ReasonSuspended)
	g.Expect(meta.IsStatusConditionTrue(got.Status.Conditions, pluginsv1.ReadyCondition)).To(BeTrue(), "still serving its index")
	hits := srv.Hits("/index.yaml")
	poke(t, repo)
	poke(t, repo)
	g.Consistently(func() int { return srv.Hits("/index.yaml") }, 2*time.Second, poll).Should(Equal(hits))
	_, ok := store.Get(repo.Name)
	g.Expect(ok).To(BeTrue())
	_ = chartrepo.Source{}
}
