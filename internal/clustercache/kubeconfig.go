package clustercache

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
	"github.com/paddock-dev/paddock/internal/netpolicy"
)

// DefaultMaxKubeconfigBytes bounds the size of a kubeconfig read from a Secret.
const DefaultMaxKubeconfigBytes = 256 * 1024

// Policy says which kubeconfigs the manager accepts. The zero value is the strictest.
type Policy struct {
	// AllowLoopback accepts servers on loopback addresses (127.0.0.0/8, ::1, localhost). Only for
	// local development and tests: in a real deployment a loopback server is the manager's own pod.
	AllowLoopback bool
	// AllowInsecureSkipTLSVerify accepts insecure-skip-tls-verify: true.
	AllowInsecureSkipTLSVerify bool
	// MaxBytes bounds the kubeconfig size; 0 means DefaultMaxKubeconfigBytes.
	MaxBytes int
	// DeniedCIDRs are refused before anything else is checked (--member-denied-cidrs: the
	// management cluster's own pod, service and node networks).
	DeniedCIDRs []netip.Prefix
}

// ParseCIDRs parses a comma-separated list of CIDRs (for --member-denied-cidrs).
func ParseCIDRs(list string) ([]netip.Prefix, error) { return netpolicy.ParseCIDRs(list) }

// net is the outbound address policy of member servers.
func (p Policy) net() netpolicy.Policy {
	return netpolicy.Policy{AllowLoopback: p.AllowLoopback, DeniedCIDRs: p.DeniedCIDRs,
		LoopbackFlag: "--allow-loopback-members", DeniedCIDRsFlag: "--member-denied-cidrs"}
}

// PolicyError is a kubeconfig the policy refuses. Reason is a MemberCluster condition reason and
// Message names the offending field, never its value.
type PolicyError struct {
	Reason  string
	Message string
}

func (e *PolicyError) Error() string { return e.Message }

// IsPolicyError tells whether err is (or wraps) a PolicyError and returns it.
func IsPolicyError(err error) (*PolicyError, bool) {
	var pe *PolicyError
	ok := errors.As(err, &pe)
	return pe, ok
}

func refuse(reason, format string, args ...any) error {
	return &PolicyError{Reason: reason, Message: fmt.Sprintf(format, args...)}
}

func (p Policy) maxBytes() int {
	if p.MaxBytes > 0 {
		return p.MaxBytes
	}
	return DefaultMaxKubeconfigBytes
}

// Load parses a kubeconfig, checks it against the policy and builds a rest.Config from its inline
// fields only. Nothing in the kubeconfig can make it run a command, read a file, or use a proxy:
// the checks run on the parsed structure before anything is built, and the rest.Config is then
// assembled field by field rather than by client-go's loader (which reads tokenFile while
// building). contextName selects a context; empty means the kubeconfig's current-context.
func (p Policy) Load(data []byte, contextName string) (*rest.Config, error) {
	if len(data) == 0 {
		return nil, refuse(clustersv1.ReasonInvalidKubeconfig, "the kubeconfig is empty")
	}
	if len(data) > p.maxBytes() {
		return nil, refuse(clustersv1.ReasonSecretTooLarge, "the kubeconfig is %d bytes, more than the limit of %d", len(data), p.maxBytes())
	}
	cfg, err := clientcmd.Load(data)
	if err != nil {
		return nil, refuse(clustersv1.ReasonInvalidKubeconfig, "the kubeconfig does not parse: %s", sanitizeParseError(err))
	}
	if contextName == "" {
		contextName = cfg.CurrentContext
	}
	if contextName == "" {
		return nil, refuse(clustersv1.ReasonContextNotFound, "the kubeconfig has no current-context and spec.attach.context is empty")
	}
	kctx, ok := cfg.Contexts[contextName]
	if !ok || kctx == nil {
		return nil, refuse(clustersv1.ReasonContextNotFound, "context %q is not in the kubeconfig", contextName)
	}
	cluster, ok := cfg.Clusters[kctx.Cluster]
	if !ok || cluster == nil {
		return nil, refuse(clustersv1.ReasonInvalidKubeconfig, "context %q names cluster %q, which is not in the kubeconfig", contextName, kctx.Cluster)
	}
	user, ok := cfg.AuthInfos[kctx.AuthInfo]
	if kctx.AuthInfo != "" && (!ok || user == nil) {
		return nil, refuse(clustersv1.ReasonInvalidKubeconfig, "context %q names user %q, which is not in the kubeconfig", contextName, kctx.AuthInfo)
	}
	if user == nil {
		user = &clientcmdapi.AuthInfo{}
	}
	if err := p.checkCluster(kctx.Cluster, cluster); err != nil {
		return nil, err
	}
	if err := checkUser(kctx.AuthInfo, user); err != nil {
		return nil, err
	}
	if err := checkTLSMaterial(kctx.Cluster, kctx.AuthInfo, cluster, user); err != nil {
		return nil, err
	}

	rc := &rest.Config{
		Host: cluster.Server,
		TLSClientConfig: rest.TLSClientConfig{
			Insecure:   cluster.InsecureSkipTLSVerify,
			ServerName: cluster.TLSServerName,
			CAData:     cluster.CertificateAuthorityData,
			CertData:   user.ClientCertificateData,
			KeyData:    user.ClientKeyData,
		},
		BearerToken: user.Token,
		Username:    user.Username,
		Password:    user.Password,
		// No proxy, whatever HTTPS_PROXY says in the manager's environment: a member's traffic goes
		// straight to the server the policy checked.
		Proxy: func(*http.Request) (*url.URL, error) { return nil, nil },
		Dial:  p.dialer().DialContext,
	}
	return rc, nil
}

// sanitizeParseError keeps a parse error short and free of the document's content.
func sanitizeParseError(err error) string {
	msg := err.Error()
	// YAML/JSON decoders may quote parts of the input; keep only the first line, bounded.
	if i := strings.IndexByte(msg, '\n'); i >= 0 {
		msg = msg[:i]
	}
	if len(msg) > 200 {
		msg = msg[:200] + "..."
	}
	return msg
}

func (p Policy) checkCluster(name string, c *clientcmdapi.Cluster) error {
	field := fmt.Sprintf("clusters[%q]", name)
	if c.CertificateAuthority != "" {
		return refuse(clustersv1.ReasonLocalFileNotAllowed, "%s.certificate-authority names a local file; use certificate-authority-data", field)
	}
	if c.ProxyURL != "" {
		return refuse(clustersv1.ReasonProxyNotAllowed, "%s.proxy-url is not allowed", field)
	}
	if c.InsecureSkipTLSVerify && !p.AllowInsecureSkipTLSVerify {
		return refuse(clustersv1.ReasonInsecureSkipTLSVerifyNotAllowed, "%s.insecure-skip-tls-verify is not allowed (the manager runs without --allow-insecure-kubeconfig)", field)
	}
	if c.Server == "" {
		return refuse(clustersv1.ReasonInvalidKubeconfig, "%s.server is empty", field)
	}
	u, err := url.Parse(c.Server)
	if err != nil || u.Host == "" {
		return refuse(clustersv1.ReasonInvalidKubeconfig, "%s.server is not a valid URL", field)
	}
	if u.Scheme != "https" {
		return refuse(clustersv1.ReasonInsecureServerNotAllowed, "%s.server must use https, not %q", field, u.Scheme)
	}
	if u.User != nil {
		return refuse(clustersv1.ReasonInvalidKubeconfig, "%s.server must not carry credentials in the URL", field)
	}
	if u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
		// A query would be sent with every request and shown in every error that quotes a URL.
		return refuse(clustersv1.ReasonInvalidKubeconfig, "%s.server must not have a query or fragment", field)
	}
	if err := p.net().CheckHost(u.Hostname()); err != nil {
		return refuse(clustersv1.ReasonServerAddressNotAllowed, "%s.server: %s", field, err)
	}
	return nil
}

func checkUser(name string, u *clientcmdapi.AuthInfo) error {
	field := fmt.Sprintf("users[%q]", name)
	switch {
	case u.Exec != nil:
		return refuse(clustersv1.ReasonExecNotAllowed, "%s.exec is not allowed: the manager never runs commands from a kubeconfig", field)
	case u.AuthProvider != nil:
		return refuse(clustersv1.ReasonAuthProviderNotAllowed, "%s.auth-provider is not allowed; use a token or client certificate", field)
	case u.TokenFile != "":
		return refuse(clustersv1.ReasonTokenFileNotAllowed, "%s.tokenFile names a local file; use token", field)
	case u.ClientCertificate != "":
		return refuse(clustersv1.ReasonLocalFileNotAllowed, "%s.client-certificate names a local file; use client-certificate-data", field)
	case u.ClientKey != "":
		return refuse(clustersv1.ReasonLocalFileNotAllowed, "%s.client-key names a local file; use client-key-data", field)
	case u.Impersonate != "" || u.ImpersonateUID != "" || len(u.ImpersonateGroups) > 0 || len(u.ImpersonateUserExtra) > 0:
		return refuse(clustersv1.ReasonImpersonationNotAllowed, "%s impersonation (as, as-uid, as-groups, as-user-extra) is not allowed", field)
	case (len(u.ClientCertificateData) > 0) != (len(u.ClientKeyData) > 0):
		return refuse(clustersv1.ReasonInvalidKubeconfig, "%s needs both client-certificate-data and client-key-data, or neither", field)
	}
	return nil
}

// checkTLSMaterial refuses a CA or a client key pair that cannot be used, here rather than when
// the transport is built, so that it is a refused kubeconfig with a condition, not a retried
// error. The messages are fixed: parse errors may quote the input's PEM block types.
func checkTLSMaterial(clusterName, userName string, c *clientcmdapi.Cluster, u *clientcmdapi.AuthInfo) error {
	if len(c.CertificateAuthorityData) > 0 && !x509.NewCertPool().AppendCertsFromPEM(c.CertificateAuthorityData) {
		return refuse(clustersv1.ReasonInvalidKubeconfig, "clusters[%q].certificate-authority-data holds no PEM certificate", clusterName)
	}
	if len(u.ClientCertificateData) > 0 {
		if _, err := tls.X509KeyPair(u.ClientCertificateData, u.ClientKeyData); err != nil {
			return refuse(clustersv1.ReasonInvalidKubeconfig,
				"users[%q]: client-certificate-data and client-key-data are not a usable key pair (not PEM, or the key does not match the certificate)", userName)
		}
	}
	return nil
}

// dialer checks every address after DNS resolution, right before connecting.
func (p Policy) dialer() *net.Dialer { return p.net().Dialer(10 * time.Second) }

// dialContext is the signature rest.Config.Dial expects.
var _ func(ctx context.Context, network, address string) (net.Conn, error) = (&net.Dialer{}).DialContext
