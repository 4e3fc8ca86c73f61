package membercluster

import (
	"encoding/base64"
	"encoding/pem"
	"errors"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
	"github.com/paddock-dev/paddock/test/envs"
)

// plantedToken is a bearer token no apiserver accepts; it must never be shown anywhere.
const plantedToken = "paddock-planted-token-6f1c2e9a4b7d"

// keySlices returns pieces from the middle of every test member's client key, both as it is in
// PEM and as it is in a kubeconfig (base64 of the PEM).
func keySlices(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, m := range env.Members {
		block, _ := pem.Decode(m.Config.KeyData)
		NewWithT(t).Expect(block).NotTo(BeNil())
		body := base64.StdEncoding.EncodeToString(block.Bytes)
		mid := len(body) / 2
		out = append(out, body[mid:mid+24])
		encoded := base64.StdEncoding.EncodeToString(m.Config.KeyData)
		mid = len(encoded) / 2
		out = append(out, encoded[mid:mid+24])
	}
	return out
}

// A planted token and slices from the middle of the members' keys never appear in conditions,
// events or logs (debug level included), whatever the kubeconfig does wrong: a token the member
// rejects, a refused field next to the key, a token in the server URL, a key that does not match
// its certificate, a corrupted key, and a document that does not parse.
func TestSecretsNeverReachConditionsEventsOrLogs(t *testing.T) {
	g := NewWithT(t)
	m1, m2 := env.Members[0], env.Members[1]
	base := m1.Kubeconfig()
	cases := map[string][]byte{
		"leak-token": modify(t, base, func(_ *clientcmdapi.Cluster, u *clientcmdapi.AuthInfo, _ *clientcmdapi.Config) {
			u.ClientCertificateData, u.ClientKeyData, u.Token = nil, nil, plantedToken
		}),
		"leak-exec": modify(t, base, func(_ *clientcmdapi.Cluster, u *clientcmdapi.AuthInfo, _ *clientcmdapi.Config) {
			u.Token = plantedToken
			u.Exec = &clientcmdapi.ExecConfig{APIVersion: "client.authentication.k8s.io/v1", Command: "/bin/true", InteractiveMode: clientcmdapi.NeverExecInteractiveMode}
		}),
		"leak-query": modify(t, base, func(c *clientcmdapi.Cluster, _ *clientcmdapi.AuthInfo, _ *clientcmdapi.Config) {
			c.Server += "/?access_token=" + plantedToken
		}),
		"leak-mismatched-key": modify(t, base, func(_ *clientcmdapi.Cluster, u *clientcmdapi.AuthInfo, _ *clientcmdapi.Config) {
			u.ClientKeyData = m2.Config.KeyData
		}),
		"leak-corrupt-key": modify(t, base, func(_ *clientcmdapi.Cluster, u *clientcmdapi.AuthInfo, _ *clientcmdapi.Config) {
			k := []byte(string(u.ClientKeyData))
			k[len(k)/3] ^= 0x01 // one flipped character in the base64 body
			u.ClientKeyData = k
		}),
		"leak-garbage": []byte("users:\n- name: u\n  user:\n    token: " + plantedToken + "\n    client-key-data: " +
			base64.StdEncoding.EncodeToString(m1.Config.KeyData) + "\n  }{ not yaml"),
	}
	for name, kc := range cases {
		attach(t, name, kc)
	}
	for name := range cases {
		waitCondition(t, name, clustersv1.ReadyCondition, metav1.ConditionFalse, "", eventuallyWait)
	}
	// The rejected token is probed a few times (each probe is logged at debug level).
	waitCondition(t, "leak-token", clustersv1.ReadyCondition, metav1.ConditionFalse, clustersv1.ReasonUnauthorized, eventuallyWait)
	g.Eventually(func() string { return suiteLogs.String() }, eventuallyWait, poll).Should(ContainSubstring(`"member": "leak-token"`))

	secrets := append(keySlices(t), plantedToken, "BEGIN RSA", "BEGIN EC", "PRIVATE KEY")
	var list clustersv1.MemberClusterList
	g.Expect(mgmt.List(ctx, &list)).To(Succeed())
	for _, mc := range list.Items {
		for _, c := range mc.Status.Conditions {
			for _, s := range secrets {
				g.Expect(c.Message).NotTo(ContainSubstring(s), "condition %s of %s", c.Type, mc.Name)
			}
		}
	}
	// Events are recorded asynchronously: wait for these members' own.
	for name := range cases {
		g.Eventually(func(g Gomega) []eventsv1.Event { return memberEvents(g, name) }, eventuallyWait, poll).ShouldNot(BeEmpty(), name)
	}
	var evs eventsv1.EventList
	g.Expect(mgmt.List(ctx, &evs)).To(Succeed())
	for _, e := range evs.Items {
		for _, s := range secrets {
			g.Expect(e.Note).NotTo(ContainSubstring(s), "event %s/%s", e.Regarding.Name, e.Reason)
		}
	}
	logs := suiteLogs.String()
	g.Expect(logs).To(ContainSubstring("leak-exec"), "the logs were captured")
	for i, s := range secrets {
		if at := strings.Index(logs, s); at >= 0 {
			// Show what came before it, not the secret itself.
			t.Errorf("secret #%d is in the logs, after: %q", i, logs[max(0, at-300):at])
		}
	}
}

// A MemberCluster whose Secret lives outside --kubeconfig-secret-namespaces is refused, even when
// the Secret exists: the manager neither caches nor reads Secrets there.
func TestSecretInAnotherNamespaceIsRefused(t *testing.T) {
	g := NewWithT(t)
	const elsewhere = "not-for-paddock"
	g.Expect(envs.EnsureNamespace(ctx, mgmt, elsewhere)).To(Succeed())
	_, err := envs.WriteKubeconfigSecret(ctx, mgmt, elsewhere, "elsewhere", env.Members[0].Kubeconfig())
	g.Expect(err).NotTo(HaveOccurred())
	attach(t, "elsewhere", env.Members[0].Kubeconfig(), func(mc *clustersv1.MemberCluster) {
		mc.Spec.Attach.KubeconfigSecretRef.Namespace = elsewhere
	})
	mc := waitCondition(t, "elsewhere", clustersv1.KubeconfigValidCondition, metav1.ConditionFalse, clustersv1.ReasonSecretNamespaceNotAllowed, eventuallyWait)
	msg := meta.FindStatusCondition(mc.Status.Conditions, clustersv1.KubeconfigValidCondition).Message
	g.Expect(msg).To(ContainSubstring(secretNS))
	g.Expect(msg).To(ContainSubstring(elsewhere))
	g.Expect(meta.IsStatusConditionTrue(mc.Status.Conditions, clustersv1.StalledCondition)).To(BeTrue())
	g.Expect(mc.Status.ClusterID).To(BeEmpty(), "never connected")
	_, err = cache.Get(ctx, "elsewhere")
	g.Expect(err).To(HaveOccurred())
	g.Eventually(func(g Gomega) []string { return eventReasons(g, "elsewhere") }, 5*time.Second, poll).Should(ContainElement(clustersv1.ReasonSecretNamespaceNotAllowed))
}

// Deletion order: while another Paddock controller's finalizer is on a deleted MemberCluster, Get
// refuses the member, GetForCleanup serves it (also from a restarted manager, once a probe through
// its own connection proved the identity), and the MemberCluster's own finalizer and the marker
// namespace stay; once the dependant is done, the member is cleaned up and released.
func TestDeletionWaitsForDependantsAndServesCleanupAfterARestart(t *testing.T) {
	g := NewWithT(t)
	m3 := env.Members[2]
	const dependant = "test.paddock.dev/placed-things"
	// Everything below up to the dependant's removal happens well inside the suite's grace
	// period (6 s), so the suite's Reconciler must not have released anything yet.
	attach(t, "with-dependant", m3.Kubeconfig(), func(mc *clustersv1.MemberCluster) {
		mc.Finalizers = []string{dependant}
	})
	mc := waitCondition(t, "with-dependant", clustersv1.ReadyCondition, metav1.ConditionTrue, "", eventuallyWait)
	g.Eventually(func() error { return m3.Client.Get(ctx, client.ObjectKey{Name: MarkerNamespace}, &corev1.Namespace{}) }, eventuallyWait, poll).Should(Succeed())
	g.Expect(mgmt.Delete(ctx, mc)).To(Succeed())

	g.Eventually(func() error { _, err := cache.Get(ctx, "with-dependant"); return err }, 5*time.Second, 10*time.Millisecond).Should(HaveOccurred())
	acc, err := cache.GetForCleanup(ctx, "with-dependant")
	g.Expect(err).NotTo(HaveOccurred(), "dependants clean up through GetForCleanup")
	g.Expect(acc.Config.Host).To(Equal(m3.Server()))

	// A manager restart mid-deletion: the fresh Reconciler connects, proves the identity through
	// its own connection, and serves cleanup only.
	fresh, freshCache := freshReconciler(t)
	_, err = freshCache.GetForCleanup(ctx, "with-dependant")
	g.Expect(err).To(HaveOccurred(), "nothing before a reconcile proved the identity")
	_, _ = fresh.Reconcile(ctx, ctrl.Request{NamespacedName: types.NamespacedName{Name: "with-dependant"}})
	acc, err = freshCache.GetForCleanup(ctx, "with-dependant")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(acc.Config.Host).To(Equal(m3.Server()))
	_, err = freshCache.Get(ctx, "with-dependant")
	g.Expect(err).To(HaveOccurred(), "a member being deleted is for cleanup only")

	cur := get(g, "with-dependant")
	g.Expect(time.Since(cur.DeletionTimestamp.Time)).To(BeNumerically("<", deletionGrace-time.Second), "the test ran too slowly to see the window")
	// Inside the grace period: our finalizer and the marker namespace wait for the dependant.
	g.Consistently(func(g Gomega) {
		g.Expect(get(g, "with-dependant").Finalizers).To(ContainElement(clustersv1.MemberClusterFinalizer))
		ns := &corev1.Namespace{}
		g.Expect(m3.Client.Get(ctx, client.ObjectKey{Name: MarkerNamespace}, ns)).To(Succeed())
		g.Expect(ns.DeletionTimestamp.IsZero()).To(BeTrue())
	}, time.Second, poll).Should(Succeed())
	cur = get(g, "with-dependant")
	// The dependant is done.
	orig := cur.DeepCopy()
	controllerutil.RemoveFinalizer(cur, dependant)
	g.Expect(mgmt.Patch(ctx, cur, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{}))).To(Succeed())
	g.Eventually(func() bool {
		return apierrors.IsNotFound(mgmt.Get(ctx, client.ObjectKey{Name: "with-dependant"}, &clustersv1.MemberCluster{}))
	}, eventuallyWait, poll).Should(BeTrue())
}

// The grace period is for members that may come back; one whose Secret is gone can never be
// reached again, so its MemberCluster is released at once, with an event saying nothing was
// cleaned up.
func TestDeletionWithItsSecretGoneIsReleasedAtOnce(t *testing.T) {
	g := NewWithT(t)
	attach(t, "secret-gone", env.Members[0].Kubeconfig())
	mc := waitCondition(t, "secret-gone", clustersv1.ReadyCondition, metav1.ConditionTrue, "", eventuallyWait)
	g.Expect(mc.Status.ClusterID).NotTo(BeEmpty())
	g.Expect(mgmt.Delete(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: secretNS, Name: envs.KubeconfigSecretName("secret-gone")}})).To(Succeed())
	waitCondition(t, "secret-gone", clustersv1.KubeconfigValidCondition, metav1.ConditionFalse, clustersv1.ReasonSecretNotFound, eventuallyWait)

	deleteAndWaitReleasedAtOnce(t, mc)
	g.Eventually(func(g Gomega) []string { return eventReasons(g, "secret-gone") }, 5*time.Second, poll).Should(ContainElement("CleanupSkipped"))
	var note string
	for _, e := range memberEvents(g, "secret-gone") {
		if e.Reason == "CleanupSkipped" {
			note = e.Note
		}
	}
	g.Expect(note).To(ContainSubstring(clustersv1.ReasonSecretNotFound))
	g.Expect(strings.Contains(note, "released")).To(BeTrue(), note)
}

// A MemberCluster whose kubeconfig is now refused (here: re-pointed at the cloud metadata address)
// is released at once too, with CleanupSkipped naming the refusal: there is no connection Paddock
// may use to clean up.
func TestDeletionWithItsKubeconfigRefusedIsReleasedAtOnce(t *testing.T) {
	g := NewWithT(t)
	m := env.Members[0]
	attach(t, "secret-refused", m.Kubeconfig())
	mc := waitCondition(t, "secret-refused", clustersv1.ReadyCondition, metav1.ConditionTrue, "", eventuallyWait)
	g.Expect(mc.Status.ClusterID).NotTo(BeEmpty())
	_, err := writeSecret("secret-refused", envs.KubeconfigFor(m.Config, "https://169.254.169.254", "refused"))
	g.Expect(err).NotTo(HaveOccurred())
	waitCondition(t, "secret-refused", clustersv1.KubeconfigValidCondition, metav1.ConditionFalse, clustersv1.ReasonServerAddressNotAllowed, eventuallyWait)

	deleteAndWaitReleasedAtOnce(t, mc)
	var note string
	g.Eventually(func(g Gomega) string {
		for _, e := range memberEvents(g, "secret-refused") {
			if e.Reason == "CleanupSkipped" {
				note = e.Note
			}
		}
		return note
	}, 5*time.Second, poll).Should(ContainSubstring(clustersv1.ReasonServerAddressNotAllowed))
	g.Expect(note).To(ContainSubstring("released"))
}

// deleteAndWaitReleasedAtOnce deletes mc and waits until it is gone, well before the grace period.
func deleteAndWaitReleasedAtOnce(t *testing.T, mc *clustersv1.MemberCluster) {
	t.Helper()
	g := NewWithT(t)
	start := time.Now()
	g.Expect(mgmt.Delete(ctx, mc)).To(Succeed())
	g.Eventually(func() bool {
		return apierrors.IsNotFound(mgmt.Get(ctx, client.ObjectKey{Name: mc.Name}, &clustersv1.MemberCluster{}))
	}, eventuallyWait, 10*time.Millisecond).Should(BeTrue())
	took := time.Since(start)
	t.Logf("released %s after deletion (grace %s)", took, deletionGrace)
	g.Expect(took).To(BeNumerically("<", deletionGrace-time.Second-100*time.Millisecond), "released before the grace period")
}

// liveMarker makes sure the member has a Paddock-labelled marker namespace that is not being
// deleted (envtest has no namespace controller: a deleted one is finished by hand) and returns
// its UID.
func liveMarker(t *testing.T, m *envs.Member) types.UID {
	t.Helper()
	g := NewWithT(t)
	var uid types.UID
	g.Eventually(func() error {
		ns := &corev1.Namespace{}
		err := m.Client.Get(ctx, client.ObjectKey{Name: MarkerNamespace}, ns)
		switch {
		case apierrors.IsNotFound(err):
			if err := m.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: MarkerNamespace,
				Labels: map[string]string{ManagedByLabel: ManagedByValue}}}); err != nil {
				return err
			}
			return errors.New("created; reading it back")
		case err != nil:
			return err
		case !ns.DeletionTimestamp.IsZero():
			ns.Spec.Finalizers = nil
			if err := m.Client.SubResource("finalize").Update(ctx, ns); err != nil {
				return err
			}
			return errors.New("finishing the deletion of the old one")
		}
		uid = ns.UID
		return nil
	}, eventuallyWait, poll).Should(Succeed())
	return uid
}

// markerUntouched asserts the member's marker namespace is still the one with uid, not deleted.
func markerUntouched(g Gomega, m *envs.Member, uid types.UID) {
	ns := &corev1.Namespace{}
	g.Expect(m.Client.Get(ctx, client.ObjectKey{Name: MarkerNamespace}, ns)).To(Succeed())
	g.Expect(ns.UID).To(Equal(uid))
	g.Expect(ns.DeletionTimestamp.IsZero()).To(BeTrue(), "the marker namespace is being deleted")
}

// A MemberCluster whose Secret was re-pointed at another cluster is deleted: cleanup reads the
// kube-system UID through the connection it would delete with, finds the other cluster, and
// deletes nothing there (neither in the cluster it used to manage, which it cannot reach through
// this Secret). It is released at once with CleanupSkipped saying why.
func TestDeletionWithARepointedSecretLeavesTheOtherClusterAlone(t *testing.T) {
	g := NewWithT(t)
	m1, m3 := env.Members[0], env.Members[2]
	mc := attach(t, "repointed-del", m1.Kubeconfig())
	mc = waitCondition(t, "repointed-del", clustersv1.ReadyCondition, metav1.ConditionTrue, "", eventuallyWait)
	pinned := mc.Status.ClusterID
	// No other MemberCluster manages member-1 now, so cleanup is not skipped for that reason.
	g.Eventually(func(g Gomega) {
		var list clustersv1.MemberClusterList
		g.Expect(mgmt.List(ctx, &list)).To(Succeed())
		for _, o := range list.Items {
			if o.Name != mc.Name {
				g.Expect(o.Status.ClusterID).NotTo(Equal(pinned), o.Name)
			}
		}
	}, eventuallyWait, poll).Should(Succeed())
	m1Marker := liveMarker(t, m1)

	_, err := writeSecret("repointed-del", m3.Kubeconfig())
	g.Expect(err).NotTo(HaveOccurred())
	waitCondition(t, "repointed-del", clustersv1.StalledCondition, metav1.ConditionTrue, clustersv1.ReasonClusterIdentityChanged, eventuallyWait)
	m3Marker := liveMarker(t, m3)

	deleteAndWaitReleasedAtOnce(t, mc)
	var note, eventType string
	g.Eventually(func(g Gomega) string {
		for _, e := range memberEvents(g, "repointed-del") {
			if e.Reason == "CleanupSkipped" {
				note, eventType = e.Note, e.Type
			}
		}
		return note
	}, 5*time.Second, poll).Should(ContainSubstring("different cluster"))
	g.Expect(note).To(ContainSubstring(kubeSystemUID(t, m3)))
	g.Expect(eventType).To(Equal(corev1.EventTypeWarning))
	g.Consistently(func(g Gomega) {
		markerUntouched(g, m3, m3Marker)
		markerUntouched(g, m1, m1Marker)
	}, 2*time.Second, poll).Should(Succeed())
}

// Deleting one of two MemberClusters of the same cluster leaves the marker namespace to the other,
// and says so in a Normal CleanupSkipped event.
func TestDeletionLeavesASharedClusterToTheOtherMemberCluster(t *testing.T) {
	g := NewWithT(t)
	m1 := env.Members[0]
	a := attach(t, "shared-a", m1.Kubeconfig())
	attach(t, "shared-b", m1.Kubeconfig())
	waitCondition(t, "shared-a", clustersv1.ReadyCondition, metav1.ConditionTrue, "", eventuallyWait)
	waitCondition(t, "shared-b", clustersv1.ReadyCondition, metav1.ConditionTrue, "", eventuallyWait)
	marker := liveMarker(t, m1)

	deleteAndWaitReleasedAtOnce(t, a)
	var e eventsv1.Event
	g.Eventually(func(g Gomega) string {
		for _, ev := range memberEvents(g, "shared-a") {
			if ev.Reason == "CleanupSkipped" {
				e = ev
			}
		}
		return e.Note
	}, 5*time.Second, poll).Should(ContainSubstring("MemberCluster shared-b still manages the same cluster"))
	g.Expect(e.Type).To(Equal(corev1.EventTypeNormal))
	g.Consistently(func(g Gomega) { markerUntouched(g, m1, marker) }, time.Second, poll).Should(Succeed())
}
