package chartrepo

import (
	"crypto/tls"
	"crypto/x509"
	"strings"

	pluginsv1 "github.com/paddock-dev/paddock/api/plugins/v1alpha1"
)

// Keys of a repository credentials Secret.
const (
	KeyUsername = "username"
	KeyPassword = "password"
	KeyToken    = "token"
	KeyTLSCert  = "tls.crt"
	KeyTLSKey   = "tls.key"
	KeyCA       = "ca.crt"
)

// maxSecretValueBytes bounds every value read from a credentials Secret.
const maxSecretValueBytes = 64 * 1024

// Credentials are what a repository Secret holds. The zero value is anonymous.
type Credentials struct {
	Username, Password string
	Token              string
	ClientCert         *tls.Certificate
	CAs                *x509.CertPool
}

// Authenticates tells whether the credentials identify the client (and so must never be sent
// over plain http): basic auth, a token or a client certificate. A CA bundle alone does not.
func (c Credentials) Authenticates() bool {
	return c.Username != "" || c.Password != "" || c.Token != "" || c.ClientCert != nil
}

// CredentialsFromSecret reads a credentials Secret's data. Errors name keys, never values.
func CredentialsFromSecret(name string, data map[string][]byte) (Credentials, error) {
	var c Credentials
	for k, v := range data {
		if len(v) > maxSecretValueBytes {
			return c, fail(pluginsv1.ReasonSecretInvalid, "Secret %s: key %q is larger than %d bytes", name, k, maxSecretValueBytes)
		}
	}
	str := func(k string) string { return strings.TrimRight(string(data[k]), "\r\n") }
	c.Username, c.Password, c.Token = str(KeyUsername), str(KeyPassword), str(KeyToken)
	switch {
	case (c.Username == "") != (c.Password == ""):
		return c, fail(pluginsv1.ReasonSecretInvalid, "Secret %s needs both %q and %q, or neither", name, KeyUsername, KeyPassword)
	case c.Username != "" && c.Token != "":
		return c, fail(pluginsv1.ReasonSecretInvalid, "Secret %s has both %q/%q and %q; keep one way to authenticate", name, KeyUsername, KeyPassword, KeyToken)
	case strings.ContainsAny(c.Username, ":\r\n"):
		return c, fail(pluginsv1.ReasonSecretInvalid, "Secret %s: %q must not contain a colon or a line break", name, KeyUsername)
	case strings.ContainsAny(c.Password+c.Token, "\r\n"):
		return c, fail(pluginsv1.ReasonSecretInvalid, "Secret %s: %q and %q must be one line", name, KeyPassword, KeyToken)
	}
	crt, key := data[KeyTLSCert], data[KeyTLSKey]
	switch {
	case (len(crt) > 0) != (len(key) > 0):
		return c, fail(pluginsv1.ReasonSecretInvalid, "Secret %s needs both %q and %q, or neither", name, KeyTLSCert, KeyTLSKey)
	case len(crt) > 0:
		pair, err := tls.X509KeyPair(crt, key)
		if err != nil {
			// The parse error may quote PEM block types of the key; keep the message fixed.
			return c, fail(pluginsv1.ReasonSecretInvalid, "Secret %s: %q and %q are not a usable key pair (not PEM, or the key does not match the certificate)", name, KeyTLSCert, KeyTLSKey)
		}
		c.ClientCert = &pair
	}
	if ca := data[KeyCA]; len(ca) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(ca) {
			return c, fail(pluginsv1.ReasonSecretInvalid, "Secret %s: %q holds no PEM certificate", name, KeyCA)
		}
		c.CAs = pool
	}
	return c, nil
}
