package membercluster

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
	"github.com/paddock-dev/paddock/test/envs"
)

// plantMarkers creates a marker command (which would create a file if anything ran it) and a FIFO
// marker file (opening it for reading would complete the writer-side open below). It returns
// their paths and a check that fails the test if either was touched.
func plantMarkers(t *testing.T) (command, file string, untouched func()) {
	t.Helper()
	g := NewWithT(t)
	dir := t.TempDir()
	ran := filepath.Join(dir, "command-ran")
	command = filepath.Join(dir, "marker-command")
	g.Expect(os.WriteFile(command, []byte("#!/bin/sh\ntouch "+ran+"\necho '{}'\n"), 0o755)).To(Succeed())
	file = filepath.Join(dir, "marker-file")
	g.Expect(syscall.Mkfifo(file, 0o644)).To(Succeed())
	opened := make(chan struct{})
	go func() {
		// Blocks until a reader opens the FIFO; only the test's cleanup below should.
		f, err := os.OpenFile(file, os.O_WRONLY, 0)
		if err == nil {
			close(opened)
			_ = f.Close()
		}
	}()
	return command, file, func() {
		_, err := os.Stat(ran)
		g.Expect(os.IsNotExist(err)).To(BeTrue(), "the marker command ran")
		select {
		case <-opened:
			t.Fatal("the marker file was opened for reading")
		case <-time.After(100 * time.Millisecond):
		}
		// Release the writer goroutine.
		if f, err := os.OpenFile(file, os.O_RDONLY|syscall.O_NONBLOCK, 0); err == nil {
			_ = f.Close()
		}
	}
}

func TestRefusedKubeconfigs(t *testing.T) {
	m1 := env.Members[0]
	base := m1.Kubeconfig()
	command, file, untouched := plantMarkers(t)
	host := strings.TrimPrefix(m1.Server(), "https://")
	port := host[strings.LastIndex(host, ":")+1:]

	type edit = func(c *clientcmdapi.Cluster, u *clientcmdapi.AuthInfo, cfg *clientcmdapi.Config)
	cases := []struct {
		name, reason, field string
		kubeconfig          []byte
	}{
		{"exec", clustersv1.ReasonExecNotAllowed, "exec", modify(t, base, func(_ *clientcmdapi.Cluster, u *clientcmdapi.AuthInfo, _ *clientcmdapi.Config) {
			u.ClientCertificateData, u.ClientKeyData = nil, nil
			u.Exec = &clientcmdapi.ExecConfig{Command: command, APIVersion: "client.authentication.k8s.io/v1", InteractiveMode: clientcmdapi.NeverExecInteractiveMode}
		})},
		{"auth-provider", clustersv1.ReasonAuthProviderNotAllowed, "auth-provider", modify(t, base, func(_ *clientcmdapi.Cluster, u *clientcmdapi.AuthInfo, _ *clientcmdapi.Config) {
			u.AuthProvider = &clientcmdapi.AuthProviderConfig{Name: "oidc", Config: map[string]string{"cmd-path": command}}
		})},
		{"token-file", clustersv1.ReasonTokenFileNotAllowed, "tokenFile", modify(t, base, func(_ *clientcmdapi.Cluster, u *clientcmdapi.AuthInfo, _ *clientcmdapi.Config) {
			u.TokenFile = file
		})},
		{"client-cert-file", clustersv1.ReasonLocalFileNotAllowed, "client-certificate", modify(t, base, func(_ *clientcmdapi.Cluster, u *clientcmdapi.AuthInfo, _ *clientcmdapi.Config) {
			u.ClientCertificate, u.ClientCertificateData = file, nil
		})},
		{"client-key-file", clustersv1.ReasonLocalFileNotAllowed, "client-key", modify(t, base, func(_ *clientcmdapi.Cluster, u *clientcmdapi.AuthInfo, _ *clientcmdapi.Config) {
			u.ClientKey, u.ClientKeyData = file, nil
		})},
		{"ca-file", clustersv1.ReasonLocalFileNotAllowed, "certificate-authority", modify(t, base, func(c *clientcmdapi.Cluster, _ *clientcmdapi.AuthInfo, _ *clientcmdapi.Config) {
			c.CertificateAuthority = file
		})},
		{"proxy", clustersv1.ReasonProxyNotAllowed, "proxy-url", modify(t, base, func(c *clientcmdapi.Cluster, _ *clientcmdapi.AuthInfo, _ *clientcmdapi.Config) {
			c.ProxyURL = "http://127.0.0.1:1"
		})},
		{"impersonate", clustersv1.ReasonImpersonationNotAllowed, "impersonation", modify(t, base, func(_ *clientcmdapi.Cluster, u *clientcmdapi.AuthInfo, _ *clientcmdapi.Config) {
			u.Impersonate = "system:admin"
		})},
		{"impersonate-groups", clustersv1.ReasonImpersonationNotAllowed, "impersonation", modify(t, base, func(_ *clientcmdapi.Cluster, u *clientcmdapi.AuthInfo, _ *clientcmdapi.Config) {
			u.ImpersonateGroups = []string{"system:masters"}
		})},
		{"http", clustersv1.ReasonInsecureServerNotAllowed, "https", modify(t, base, func(c *clientcmdapi.Cluster, _ *clientcmdapi.AuthInfo, _ *clientcmdapi.Config) {
			c.Server = "http://" + host
		})},
		{"metadata-ip", clustersv1.ReasonServerAddressNotAllowed, "link-local", modify(t, base, func(c *clientcmdapi.Cluster, _ *clientcmdapi.AuthInfo, _ *clientcmdapi.Config) {
			c.Server = "https://169.254.169.254:" + port
		})},
		{"link-local-v6", clustersv1.ReasonServerAddressNotAllowed, "link-local", modify(t, base, func(c *clientcmdapi.Cluster, _ *clientcmdapi.AuthInfo, _ *clientcmdapi.Config) {
			c.Server = "https://[fe80::1]:" + port
		})},
		{"insecure-skip-tls-verify", clustersv1.ReasonInsecureSkipTLSVerifyNotAllowed, "insecure-skip-tls-verify", modify(t, base, func(c *clientcmdapi.Cluster, _ *clientcmdapi.AuthInfo, _ *clientcmdapi.Config) {
			c.InsecureSkipTLSVerify, c.CertificateAuthorityData = true, nil
		})},
		{"missing-context", clustersv1.ReasonContextNotFound, "context", modify(t, base, func(_ *clientcmdapi.Cluster, _ *clientcmdapi.AuthInfo, cfg *clientcmdapi.Config) {
			cfg.CurrentContext = "nope"
		})},
		{"garbage", clustersv1.ReasonInvalidKubeconfig, "parse", []byte("\x00\x01 this is { not : a kubeconfig ]")},
		{"truncated", clustersv1.ReasonInvalidKubeconfig, "", base[:len(base)/2]},
		{"huge", clustersv1.ReasonSecretTooLarge, "limit", append([]byte("# "), make([]byte, 300*1024)...)},
		{"yaml-bomb", "", "", yamlBomb()},
	}
	for _, tc := range cases {
		attach(t, "refused-"+tc.name, tc.kubeconfig)
	}
	// A Secret that does not exist, and one with the kubeconfig under another key.
	attach(t, "refused-no-secret", base, func(mc *clustersv1.MemberCluster) { mc.Spec.Attach.KubeconfigSecretRef.Name = "does-not-exist" })
	attach(t, "refused-wrong-key", base, func(mc *clustersv1.MemberCluster) { mc.Spec.Attach.KubeconfigSecretRef.Key = "kubeconfig" })
	cases = append(cases,
		struct {
			name, reason, field string
			kubeconfig          []byte
		}{"no-secret", clustersv1.ReasonSecretNotFound, "does-not-exist", nil},
		struct {
			name, reason, field string
			kubeconfig          []byte
		}{"wrong-key", clustersv1.ReasonSecretKeyNotFound, `"kubeconfig"`, nil})

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			mc := waitCondition(t, "refused-"+tc.name, clustersv1.KubeconfigValidCondition, metav1.ConditionFalse, tc.reason, eventuallyWait)
			c := meta.FindStatusCondition(mc.Status.Conditions, clustersv1.KubeconfigValidCondition)
			g.Expect(c.Message).To(ContainSubstring(tc.field))
			ready := meta.FindStatusCondition(mc.Status.Conditions, clustersv1.ReadyCondition)
			g.Expect(ready.Status).To(Equal(metav1.ConditionFalse))
			g.Expect(ready.Reason).To(Equal(c.Reason))
			g.Expect(meta.IsStatusConditionTrue(mc.Status.Conditions, clustersv1.StalledCondition)).To(BeTrue())
			g.Expect(kstatusOf(g, mc)).To(Equal(status.FailedStatus))
			g.Expect(mc.Status.ObservedGeneration).To(Equal(mc.Generation))
			// No secret material leaks into conditions or events.
			for _, cond := range mc.Status.Conditions {
				assertNoSecrets(g, cond.Message)
			}
			for _, e := range memberEvents(g, mc.Name) {
				assertNoSecrets(g, e.Note)
			}
			g.Eventually(func(g Gomega) []string { return eventReasons(g, mc.Name) }, 5*time.Second, poll).Should(ContainElement(c.Reason))
		})
	}
	untouched()

	// Fixing the Secret brings the member back: the Secret watch triggers a reconcile.
	g := NewWithT(t)
	_, err := envs.WriteKubeconfigSecret(ctx, mgmt, secretNS, "refused-exec", base)
	g.Expect(err).NotTo(HaveOccurred())
	waitCondition(t, "refused-exec", clustersv1.ReadyCondition, metav1.ConditionTrue, clustersv1.ReasonReady, eventuallyWait)
	g.Expect(meta.FindStatusCondition(get(g, "refused-exec").Status.Conditions, clustersv1.StalledCondition)).To(BeNil())
}

// assertNoSecrets fails if s contains key material or a token of the test members.
func assertNoSecrets(g Gomega, s string) {
	g.Expect(s).NotTo(ContainSubstring("BEGIN"))
	g.Expect(s).NotTo(ContainSubstring("PRIVATE KEY"))
	for _, m := range env.Members {
		g.Expect(s).NotTo(ContainSubstring(string(m.Config.KeyData[:40])))
	}
}

// yamlBomb nests aliases so that naive expansion would need gigabytes; it must be refused fast.
func yamlBomb() []byte {
	var b strings.Builder
	b.WriteString("a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n")
	prev := "a"
	for i := 0; i < 9; i++ {
		name := fmt.Sprintf("l%d", i)
		fmt.Fprintf(&b, "%s: &%s [*%s,*%s,*%s,*%s,*%s,*%s,*%s,*%s,*%s]\n", name, name, prev, prev, prev, prev, prev, prev, prev, prev, prev)
		prev = name
	}
	return []byte(b.String())
}

var _ = client.ObjectKey{}
