package clustercache

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/client-go/rest"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
)

// validKubeconfig has a real CA (generated once, see testCA); caLine is its CA line.
var validKubeconfig = strings.Replace(kubeconfigTemplate, "certificate-authority-data: Y2E=", caLine, 1)

var (
	testCAPEM = testCA()
	caLine    = "certificate-authority-data: " + base64.StdEncoding.EncodeToString(testCAPEM)
)

const kubeconfigTemplate = `apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: https://10.0.0.1:6443
    certificate-authority-data: Y2E=
users:
- name: u
  user:
    token: secret-token
contexts:
- name: ctx
  context: {cluster: c, user: u}
- name: other
  context: {cluster: c2, user: u}
current-context: ctx
`

func withServer(server string) []byte {
	return []byte(strings.Replace(validKubeconfig, "https://10.0.0.1:6443", server, 1))
}

func withUser(user string) []byte {
	return []byte(strings.Replace(validKubeconfig, "    token: secret-token\n", user, 1))
}

func TestPolicyAcceptsAnInlineKubeconfig(t *testing.T) {
	g := NewWithT(t)
	cfg, err := Policy{}.Load([]byte(validKubeconfig), "")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(cfg.Host).To(Equal("https://10.0.0.1:6443"))
	g.Expect(cfg.BearerToken).To(Equal("secret-token"))
	g.Expect(cfg.CAData).To(Equal(testCAPEM))
	assertInert(g, cfg)
	proxy, err := cfg.Proxy(&http.Request{})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(proxy).To(BeNil(), "HTTPS_PROXY of the manager must not apply")
}

func TestPolicyRefusals(t *testing.T) {
	cases := []struct {
		name   string
		policy Policy
		data   []byte
		ctx    string
		reason string
	}{
		{"exec", Policy{}, withUser("    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: /bin/sh\n"), "", clustersv1.ReasonExecNotAllowed},
		{"auth-provider", Policy{}, withUser("    auth-provider:\n      name: gcp\n"), "", clustersv1.ReasonAuthProviderNotAllowed},
		{"tokenFile", Policy{}, withUser("    tokenFile: /var/run/secrets/token\n"), "", clustersv1.ReasonTokenFileNotAllowed},
		{"client-certificate", Policy{}, withUser("    client-certificate: /etc/cert\n    client-key-data: a2V5\n"), "", clustersv1.ReasonLocalFileNotAllowed},
		{"client-key", Policy{}, withUser("    client-certificate-data: Y2VydA==\n    client-key: /etc/key\n"), "", clustersv1.ReasonLocalFileNotAllowed},
		{"ca-not-pem", Policy{}, []byte(kubeconfigTemplate), "", clustersv1.ReasonInvalidKubeconfig},
		{"not-a-key-pair", Policy{}, withUser("    client-certificate-data: Y2VydA==\n    client-key-data: a2V5\n"), "", clustersv1.ReasonInvalidKubeconfig},
		{"cert-without-key", Policy{}, withUser("    client-certificate-data: Y2VydA==\n"), "", clustersv1.ReasonInvalidKubeconfig},
		{"as", Policy{}, withUser("    token: t\n    as: admin\n"), "", clustersv1.ReasonImpersonationNotAllowed},
		{"as-uid", Policy{}, withUser("    token: t\n    as-uid: \"1\"\n"), "", clustersv1.ReasonImpersonationNotAllowed},
		{"as-user-extra", Policy{}, withUser("    token: t\n    as-user-extra:\n      k: [v]\n"), "", clustersv1.ReasonImpersonationNotAllowed},
		{"ca-file", Policy{}, []byte(strings.Replace(validKubeconfig, caLine, "certificate-authority: /etc/ca", 1)), "", clustersv1.ReasonLocalFileNotAllowed},
		{"proxy-url", Policy{}, []byte(strings.Replace(validKubeconfig, caLine, caLine+"\n    proxy-url: socks5://1.2.3.4:1080", 1)), "", clustersv1.ReasonProxyNotAllowed},
		{"insecure", Policy{}, []byte(strings.Replace(validKubeconfig, caLine, "insecure-skip-tls-verify: true", 1)), "", clustersv1.ReasonInsecureSkipTLSVerifyNotAllowed},
		{"http", Policy{}, withServer("http://10.0.0.1:6443"), "", clustersv1.ReasonInsecureServerNotAllowed},
		{"no-scheme", Policy{}, withServer("10.0.0.1:6443"), "", clustersv1.ReasonInvalidKubeconfig},
		{"metadata", Policy{}, withServer("https://169.254.169.254"), "", clustersv1.ReasonServerAddressNotAllowed},
		{"metadata-mapped", Policy{}, withServer("https://[::ffff:169.254.169.254]"), "", clustersv1.ReasonServerAddressNotAllowed},
		{"link-local-v6", Policy{AllowLoopback: true}, withServer("https://[fe80::1%25eth0]:6443"), "", clustersv1.ReasonServerAddressNotAllowed},
		{"loopback", Policy{}, withServer("https://127.0.0.1:6443"), "", clustersv1.ReasonServerAddressNotAllowed},
		{"loopback-v6", Policy{}, withServer("https://[::1]:6443"), "", clustersv1.ReasonServerAddressNotAllowed},
		{"localhost", Policy{}, withServer("https://localhost:6443"), "", clustersv1.ReasonServerAddressNotAllowed},
		{"unspecified", Policy{AllowLoopback: true}, withServer("https://0.0.0.0:6443"), "", clustersv1.ReasonServerAddressNotAllowed},
		{"userinfo", Policy{}, withServer("https://user:pw@10.0.0.1"), "", clustersv1.ReasonInvalidKubeconfig},
		{"query", Policy{}, withServer("https://10.0.0.1/?access_token=secret-token"), "", clustersv1.ReasonInvalidKubeconfig},
		{"fragment", Policy{}, withServer("https://10.0.0.1/#secret-token"), "", clustersv1.ReasonInvalidKubeconfig},
		{"missing-context", Policy{}, []byte(validKubeconfig), "nope", clustersv1.ReasonContextNotFound},
		{"context-missing-cluster", Policy{}, []byte(validKubeconfig), "other", clustersv1.ReasonInvalidKubeconfig},
		{"no-current-context", Policy{}, []byte(strings.Replace(validKubeconfig, "current-context: ctx", "", 1)), "", clustersv1.ReasonContextNotFound},
		{"empty", Policy{}, nil, "", clustersv1.ReasonInvalidKubeconfig},
		{"too-large", Policy{MaxBytes: 100}, []byte(validKubeconfig), "", clustersv1.ReasonSecretTooLarge},
		{"garbage", Policy{}, []byte("{{{{"), "", clustersv1.ReasonInvalidKubeconfig},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			cfg, err := tc.policy.Load(tc.data, tc.ctx)
			g.Expect(err).To(HaveOccurred())
			g.Expect(cfg).To(BeNil())
			pe, ok := IsPolicyError(err)
			g.Expect(ok).To(BeTrue())
			g.Expect(pe.Reason).To(Equal(tc.reason), pe.Message)
			g.Expect(pe.Message).NotTo(ContainSubstring("secret-token"))
		})
	}
}

func TestPolicyFlagsAllowLoopbackAndInsecure(t *testing.T) {
	g := NewWithT(t)
	_, err := Policy{AllowLoopback: true}.Load(withServer("https://127.0.0.1:6443"), "")
	g.Expect(err).NotTo(HaveOccurred())
	_, err = Policy{AllowLoopback: true}.Load(withServer("https://localhost:6443"), "")
	g.Expect(err).NotTo(HaveOccurred())
	cfg, err := Policy{AllowInsecureSkipTLSVerify: true}.Load([]byte(strings.Replace(validKubeconfig, caLine, "insecure-skip-tls-verify: true", 1)), "")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(cfg.Insecure).To(BeTrue())
}

// A DNS name that resolves to a forbidden address is refused when dialling.
func TestDialerRefusesForbiddenAddressesAfterResolution(t *testing.T) {
	g := NewWithT(t)
	d := Policy{}.dialer()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := d.DialContext(ctx, "tcp", "localhost:1")
	g.Expect(err).To(MatchError(ContainSubstring("refusing to dial")))
	_, err = d.DialContext(ctx, "tcp", "169.254.169.254:80")
	g.Expect(err).To(MatchError(ContainSubstring("link-local")))
	_, err = Policy{AllowLoopback: true}.dialer().DialContext(ctx, "tcp", "127.0.0.1:1")
	g.Expect(err).To(MatchError(ContainSubstring("refused")), "loopback allowed: the dial itself happens (nothing listens on port 1)")
}

// assertInert checks that a rest.Config can neither run a command nor read a file.
func assertInert(g Gomega, cfg *rest.Config) {
	g.Expect(cfg.ExecProvider).To(BeNil())
	g.Expect(cfg.AuthProvider).To(BeNil())
	g.Expect(cfg.BearerTokenFile).To(BeEmpty())
	g.Expect(cfg.CAFile).To(BeEmpty())
	g.Expect(cfg.CertFile).To(BeEmpty())
	g.Expect(cfg.KeyFile).To(BeEmpty())
	g.Expect(cfg.Impersonate.UserName).To(BeEmpty())
	g.Expect(cfg.Impersonate.Groups).To(BeEmpty())
	g.Expect(cfg.Dial).NotTo(BeNil())
}

// FuzzPolicyLoad: no input makes Load panic, run a command or open a file, and any config it
// returns is inert. The seeds point exec, tokenFile and file paths at planted markers.
func FuzzPolicyLoad(f *testing.F) {
	dir := f.TempDir()
	ran := filepath.Join(dir, "ran")
	cmd := filepath.Join(dir, "cmd")
	if err := os.WriteFile(cmd, []byte("#!/bin/sh\ntouch "+ran+"\n"), 0o755); err != nil {
		f.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		f.Fatal(err)
	}
	opened := make(chan struct{})
	go func() {
		if w, err := os.OpenFile(fifo, os.O_WRONLY, 0); err == nil {
			close(opened)
			_ = w.Close()
		}
	}()
	f.Add([]byte(validKubeconfig), "")
	f.Add(withUser("    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: "+cmd+"\n"), "")
	f.Add(withUser("    tokenFile: "+fifo+"\n"), "")
	f.Add(withUser("    client-certificate: "+fifo+"\n    client-key: "+fifo+"\n"), "")
	f.Add([]byte(strings.Replace(validKubeconfig, caLine, "certificate-authority: "+fifo, 1)), "")
	f.Add(withUser("    auth-provider:\n      name: oidc\n      config:\n        cmd-path: "+cmd+"\n"), "")
	f.Add([]byte(`{"apiVersion":"v1","kind":"Config","clusters":[{"name":"c","cluster":{"server":"https://a"}}]}`), "ctx")
	f.Add([]byte("a: &a [1,2]\nb: &b [*a,*a]\nc: [*b,*b]\n"), "")
	f.Fuzz(func(t *testing.T, data []byte, ctx string) {
		for _, p := range []Policy{{}, {AllowLoopback: true, AllowInsecureSkipTLSVerify: true}} {
			cfg, err := p.Load(data, ctx)
			if err != nil {
				if _, ok := IsPolicyError(err); !ok {
					t.Fatalf("error is not a PolicyError: %v", err)
				}
				continue
			}
			if cfg.ExecProvider != nil || cfg.AuthProvider != nil || cfg.BearerTokenFile != "" ||
				cfg.CAFile != "" || cfg.CertFile != "" || cfg.KeyFile != "" ||
				cfg.Impersonate.UserName != "" || len(cfg.Impersonate.Groups) > 0 || cfg.Dial == nil {
				t.Fatalf("Load returned a config that is not inert: %+v", cfg)
			}
			if !strings.HasPrefix(cfg.Host, "https://") {
				t.Fatalf("Load returned a non-https server %q", cfg.Host)
			}
			// The proxy stays disabled: an explicit "no proxy" (a nil Proxy would mean
			// HTTPS_PROXY from the manager's environment) and no transport of the input's own.
			if cfg.Proxy == nil || cfg.Transport != nil || cfg.WrapTransport != nil {
				t.Fatalf("Load returned a config that may use a proxy: %+v", cfg)
			}
			req, rerr := http.NewRequest(http.MethodGet, cfg.Host, nil)
			if rerr != nil {
				t.Fatalf("server %q is not a URL: %v", cfg.Host, rerr)
			}
			if u, perr := cfg.Proxy(req); u != nil || perr != nil {
				t.Fatalf("Load returned a config whose proxy is %v (%v)", u, perr)
			}
		}
		if _, err := os.Stat(ran); err == nil {
			t.Fatal("the marker command ran")
		}
		select {
		case <-opened:
			t.Fatal("the marker file was opened")
		default:
		}
	})
}

func TestPolicyRefusesMetadataAndEmbeddedIPv4AndDeniedCIDRs(t *testing.T) {
	g := NewWithT(t)
	for _, server := range []string{
		"https://[fd00:ec2::254]:443", "https://100.100.100.200", "https://[64:ff9b::a9fe:a9fe]",
		"https://[::a9fe:a9fe]", "https://[::ffff:169.254.169.254]",
		"https://[64:ff9b:1::a9fe:a9fe]", "https://[2002:a9fe:a9fe::1]",
	} {
		_, err := Policy{AllowLoopback: true}.Load(withServer(server), "")
		pe, ok := IsPolicyError(err)
		g.Expect(ok).To(BeTrue(), server)
		g.Expect(pe.Reason).To(Equal("ServerAddressNotAllowed"), server)
	}
	denied, err := ParseCIDRs("10.96.0.0/12, 192.168.0.0/16")
	g.Expect(err).NotTo(HaveOccurred())
	p := Policy{DeniedCIDRs: denied, AllowLoopback: true}
	_, err = p.Load(withServer("https://10.96.0.1"), "")
	g.Expect(err).To(MatchError(ContainSubstring("--member-denied-cidrs")))
	_, err = p.Load(withServer("https://10.200.0.1"), "")
	g.Expect(err).NotTo(HaveOccurred(), "outside the denied networks")
	// Checked at dial time too (a name that resolves into a denied network).
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err = Policy{DeniedCIDRs: mustCIDRs(t, "127.0.0.0/8"), AllowLoopback: true}.dialer().DialContext(ctx, "tcp", "localhost:1")
	g.Expect(err).To(MatchError(ContainSubstring("denied network")))
	_, err = ParseCIDRs("10.0.0.0/33")
	g.Expect(err).To(HaveOccurred())
}

func mustCIDRs(t *testing.T, s string) []netip.Prefix {
	p, err := ParseCIDRs(s)
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	return p
}

// testCA returns a self-signed CA certificate in PEM.
func testCA() []byte {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
