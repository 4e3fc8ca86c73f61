package chartrepo

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"

	pluginsv1 "github.com/paddock-dev/paddock/api/plugins/v1alpha1"
	"github.com/paddock-dev/paddock/internal/netpolicy"
)

// Error is a repository failure with the condition reason that describes it.
type Error struct {
	Reason  string
	Message string
}

func (e *Error) Error() string { return e.Message }

// AsError returns err's reason and message, classifying errors that are not an *Error.
func AsError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return classify(err)
}

func fail(reason, format string, args ...any) *Error {
	return &Error{Reason: reason, Message: fmt.Sprintf(format, args...)}
}

// classify turns a transport error into a reason. The message is the innermost cause: a
// *url.Error's own text quotes the URL, query included.
func classify(err error) *Error {
	if err == nil {
		return nil
	}
	if re, ok := netpolicy.IsRefused(err); ok {
		return fail(pluginsv1.ReasonURLNotAllowed, "the repository's address is not allowed: %s", re.Err)
	}
	var (
		unknownCA   x509.UnknownAuthorityError
		hostname    x509.HostnameError
		invalid     x509.CertificateInvalidError
		verify      *tls.CertificateVerificationError
		recordHdr   tls.RecordHeaderError
		alert       tls.AlertError
		echRejected *tls.ECHRejectionError
	)
	switch {
	case errors.As(err, &unknownCA), errors.As(err, &hostname), errors.As(err, &invalid), errors.As(err, &verify):
		return fail(pluginsv1.ReasonTLSError, "TLS: the repository's certificate is not trusted: %s", tlsCause(err))
	case errors.As(err, &recordHdr), strings.Contains(err.Error(), "server gave HTTP response to HTTPS client"):
		return fail(pluginsv1.ReasonTLSError, "TLS: the repository did not answer with TLS (is it plain http?)")
	case errors.As(err, &alert), errors.As(err, &echRejected):
		return fail(pluginsv1.ReasonTLSError, "TLS: the handshake failed: %s", tlsCause(err))
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		if ue.Timeout() {
			return fail(pluginsv1.ReasonRepositoryNotReachable, "the repository did not answer in time")
		}
		return fail(pluginsv1.ReasonRepositoryNotReachable, "the repository is not reachable: %s", withoutQueries(ue.Err.Error()))
	}
	return fail(pluginsv1.ReasonRepositoryNotReachable, "the repository is not reachable: %s", withoutQueries(err.Error()))
}

var urlQuery = regexp.MustCompile(`(?i)(\b[a-z][a-z0-9+.-]*://[^\s?#"']*)[?#][^\s"']*`)

// withoutQueries drops the query and fragment of every URL in msg: after a redirect to a CDN an
// error may quote a presigned URL, whose query is a credential.
func withoutQueries(msg string) string {
	return urlQuery.ReplaceAllString(msg, "$1?…")
}

// tlsCause is err's message without the *url.Error wrapping (which quotes the URL).
func tlsCause(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err.Error()
	}
	return err.Error()
}
